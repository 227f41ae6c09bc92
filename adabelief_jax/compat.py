"""Constructors that take the reference packages' arguments and give their numbers."""

from __future__ import annotations

import optax

from adabelief_jax import _checks
from adabelief_jax.alias import _chain
from adabelief_jax.transform import _scale_by_belief


def adabelief_pytorch(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-16,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    amsgrad: bool = False,
    weight_decouple: bool = True,
    fixed_decay: bool = False,
    rectify: bool = True,
    degenerated_to_sgd: bool = True,
) -> optax.GradientTransformation:
  r"""``adabelief_pytorch.AdaBelief`` (version 0.2.1), argument for argument.

  Same defaults and, up to float32 rounding, the same parameters after every
  step as the PyTorch reference. Its conventions, reproduced here:

  * ``eps`` is added to ``s`` in place every step (our ``eps_root``) and again
    to :math:`\sqrt{\hat s_t}` (our ``eps``).
  * Rectified adaptive steps divide by :math:`\sqrt{s_t} + \epsilon`, with
    :math:`\sqrt{1 - b_2^t}` folded into the step size, so their eps is not
    bias-corrected; the rectification threshold is 5.
  * With ``rectify=True`` the AMSGrad maximum is kept but never used, so
    ``amsgrad`` changes nothing then.
  * ``weight_decouple=True``: :math:`p \leftarrow p (1 - \eta\lambda)`, or
    :math:`p (1 - \lambda)` with ``fixed_decay=True``; ``weight_decouple=False``
    adds :math:`\lambda p` to the gradient (``fixed_decay`` is then ignored).

  Args:
    lr: learning rate (a number or an optax schedule).
    betas: ``(b1, b2)``.
    eps: the reference's single epsilon.
    weight_decay: :math:`\lambda` (a number or an optax schedule).
    amsgrad: keep the running maximum of ``s``.
    weight_decouple: decoupled (AdamW-style) decay instead of L2.
    fixed_decay: decoupled decay not scaled by the learning rate.
    rectify: RAdam's rectification.
    degenerated_to_sgd: momentum-SGD steps before rectification starts.

  Returns:
    An ``optax.GradientTransformation``.
  """
  b1, b2 = betas
  _checks.check_decay('betas[0]', b1)
  _checks.check_decay('betas[1]', b2)
  _checks.check_nonnegative('eps', eps)
  _checks.check_nonnegative('lr', lr)
  if weight_decouple:
    mode = 'fixed' if fixed_decay else 'decoupled'
  else:
    mode = 'l2'
  return _chain(
      lr, weight_decay, None, mode,
      _scale_by_belief(
          b1, b2, eps, eps,
          amsgrad=amsgrad and not rectify, rectify=rectify, sma_threshold=5.0,
          degenerate_to_sgd=degenerated_to_sgd, nesterov=False,
          mu_dtype=None, nu_dtype=None, torch_rectified_eps=True,
      ),
  )
