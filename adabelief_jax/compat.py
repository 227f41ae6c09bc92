"""Constructors that take the reference packages' arguments and give their numbers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adabelief_jax import _checks
from adabelief_jax._hyperparams import BeliefHyperparams
from adabelief_jax.alias import chain_with_weight_decay
from adabelief_jax.transform import scale_by_belief_from


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
  if not isinstance(betas, tuple | list) or len(betas) != 2:
    raise ValueError(f'betas must be a pair (beta1, beta2), got {betas!r}.')
  b1, b2 = betas
  for name, value, ours in (
    ('betas[0]', b1, 'b1'),
    ('betas[1]', b2, 'b2'),
    ('lr', lr, 'learning_rate'),
  ):
    _checks.check_scalar(name, value, _checks.LIMITS[ours])
  mode = ('fixed' if fixed_decay else 'decoupled') if weight_decouple else 'l2'
  belief = BeliefHyperparams(
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps,
    amsgrad=amsgrad and not rectify,
    rectify=rectify,
    degenerate_to_sgd=degenerated_to_sgd,
    torch_rectified_eps=True,
  )
  return chain_with_weight_decay(lr, weight_decay, None, mode, scale_by_belief_from(belief))


def _tf_learning_rate(
  learning_rate: float, total_steps: int, warmup_proportion: float, min_lr: float
) -> optax.ScalarOrSchedule:
  """adabelief-tf's built-in schedule: linear warm-up, then linear decay to min_lr."""
  if total_steps <= 0:
    return learning_rate
  _checks.check_scalar(
    'warmup_proportion',
    warmup_proportion,
    _checks.Interval(0.0, 1.0, low_open=True, high_open=False, why='when total_steps > 0'),
  )
  warmup_steps = total_steps * warmup_proportion
  decay_steps = max(total_steps - warmup_steps, 1.0)
  decay_rate = (min_lr - learning_rate) / decay_steps

  def schedule(count: Any) -> jax.Array:
    t = count + 1.0  # The reference counts steps from 1, optax from 0.
    return jnp.where(
      t <= warmup_steps,
      learning_rate * t / warmup_steps,
      learning_rate + decay_rate * jnp.minimum(t - warmup_steps, decay_steps),
    )

  return schedule


def adabelief_tf(
  learning_rate: float = 1e-3,
  beta_1: float = 0.9,
  beta_2: float = 0.999,
  epsilon: float = 1e-14,
  weight_decay: float = 0.0,
  rectify: bool = True,
  amsgrad: bool = False,
  sma_threshold: float = 5.0,
  total_steps: int = 0,
  warmup_proportion: float = 0.1,
  min_lr: float = 0.0,
) -> optax.GradientTransformation:
  r"""``adabelief_tf.AdaBeliefOptimizer`` (version 0.2.1), argument for argument.

  The TensorFlow reference follows the paper's form exactly: ``epsilon`` is
  added to ``s`` every step and to the bias-corrected :math:`\sqrt{\hat s_t}`;
  weight decay is decoupled and scaled by the learning rate; rectified steps
  before ``sma_threshold`` are momentum-SGD steps. With ``total_steps > 0`` the
  learning rate warms up linearly over ``warmup_proportion * total_steps``
  steps, then decays linearly to ``min_lr`` at ``total_steps``.

  Args:
    learning_rate: the peak learning rate (a number).
    beta_1: decay of the first moment.
    beta_2: decay of the second moment.
    epsilon: the reference's single epsilon (default 1e-14).
    weight_decay: decoupled decay, multiplied by the learning rate.
    rectify: RAdam's rectification.
    amsgrad: keep and use the running maximum of ``s``.
    sma_threshold: the rectification threshold.
    total_steps: length of the built-in warm-up/decay schedule (0: none).
    warmup_proportion: the warm-up's share of ``total_steps``.
    min_lr: the learning rate at ``total_steps``.

  Returns:
    An ``optax.GradientTransformation``.
  """
  for name, value, ours in (
    ('learning_rate', learning_rate, 'learning_rate'),
    ('beta_1', beta_1, 'b1'),
    ('beta_2', beta_2, 'b2'),
    ('epsilon', epsilon, 'eps'),
    ('min_lr', min_lr, 'learning_rate'),
  ):
    _checks.check_scalar(name, value, _checks.LIMITS[ours])
  belief = BeliefHyperparams(
    b1=beta_1,
    b2=beta_2,
    eps=epsilon,
    eps_root=epsilon,
    amsgrad=amsgrad,
    rectify=rectify,
    sma_threshold=sma_threshold,
  )
  return chain_with_weight_decay(
    _tf_learning_rate(learning_rate, total_steps, warmup_proportion, min_lr),
    weight_decay,
    None,
    'decoupled',
    scale_by_belief_from(belief),
  )
