"""Constructors that take the reference packages' arguments and give their numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from adabelief_jax import _checks
from adabelief_jax._hyperparams import BeliefHyperparams
from adabelief_jax.alias import chain_with_weight_decay
from adabelief_jax.transform import scale_by_belief_from


def adabelief_pytorch(
  lr: optax.ScalarOrSchedule = 1e-3,
  betas: Sequence[float] = (0.9, 0.999),
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
    to ``sqrt(s_hat)`` (our ``eps``).
  * Rectified adaptive steps divide by ``sqrt(s_t) + eps``, with
    ``sqrt(1 - b2^t)`` folded into the step size, so their eps is not
    bias-corrected; the rectification threshold is 5.
  * With ``rectify=True`` the AMSGrad maximum is kept but never used, so
    ``amsgrad`` changes nothing then.
  * ``weight_decouple=True``: ``p *= 1 - lr * wd``, or ``p *= 1 - wd`` with
    ``fixed_decay=True``; ``weight_decouple=False`` adds ``wd * p`` to the
    gradient (``fixed_decay`` is then ignored).

  Args:
    lr: learning rate (a number or an optax schedule).
    betas: ``(b1, b2)``: any sequence or array of two real numbers (a tuple, a
      list, a NumPy or JAX array...), as PyTorch takes.
    eps: the reference's single epsilon.
    weight_decay: the weight decay ``wd`` (a number or an optax schedule).
    amsgrad: keep the running maximum of ``s``.
    weight_decouple: decoupled (AdamW-style) decay instead of L2.
    fixed_decay: decoupled decay not scaled by the learning rate.
    rectify: RAdam's rectification.
    degenerated_to_sgd: momentum-SGD steps before rectification starts.

  Returns:
    An ``optax.GradientTransformation``.
  """
  b1, b2 = _pair('betas', betas)
  for name, value, ours in (
    ('betas[0]', b1, 'b1'),
    ('betas[1]', b2, 'b2'),
    ('lr', lr, 'learning_rate'),
  ):
    _checks.check_scalar(name, value, _checks.LIMITS[ours])
  # Elements of a torch or NumPy array, as Python numbers: JAX takes no torch scalar.
  b1, b2 = (b if isinstance(b, jax.Array) else float(np.asarray(b)) for b in (b1, b2))
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
    compute_dtype_updates=True,
  )
  return chain_with_weight_decay(lr, weight_decay, None, mode, scale_by_belief_from(belief))


def _pair(name: str, value: Any) -> tuple[Any, Any]:
  """``value``'s two elements: any sequence or array of length 2 (PyTorch indexes
  ``betas``, so takes any pair); the elements are checked by the caller."""
  try:
    if isinstance(value, str | bytes | Mapping) or len(value) != 2:
      raise TypeError
    return value[0], value[1]
  except (TypeError, IndexError, KeyError):
    raise ValueError(
      f'{name} must be a pair (beta1, beta2): a sequence or array of two real numbers, '
      f'got {value!r}.'
    ) from None


def _total_steps(value: Any) -> int:
  """``total_steps`` as a Python int >= 0: it decides the optimizer's structure (a
  schedule or none), so it cannot be traced."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
      'total_steps is traced: optax.inject_hyperparams makes every numeric argument a '
      'hyperparameter, but total_steps decides whether there is a schedule. List it in '
      "static_args: optax.inject_hyperparams(adabelief_tf, static_args=('total_steps',))."
    )
  try:
    return _checks.check_integer('total_steps', value, 0)
  except ValueError as error:
    raise ValueError(
      f'{error} It is the length of the warm-up/decay schedule, 0 for none.'
    ) from None


def _tf_learning_rate(
  learning_rate: optax.ScalarOrSchedule,
  total_steps: int,
  warmup_proportion: chex.Numeric,
  min_lr: chex.Numeric,
) -> optax.ScalarOrSchedule:
  """adabelief-tf's built-in schedule: linear warm-up, then linear decay to ``min_lr``.

  As in the reference, it reshapes the learning rate of the step, a
  schedule's value if ``learning_rate`` is one (a Keras schedule there): with
  ``lr = learning_rate(count)`` and ``t = count + 1``, ``lr t / w`` while ``t
  <= w = warmup_proportion total_steps``, then ``lr + (min_lr - lr) min(t - w,
  d) / d`` with ``d = max(total_steps - w, 1)``. ``warmup_proportion = 0``: decay
  only. The arithmetic is JAX's, so the numbers may be traced
  (``optax.inject_hyperparams``).
  """
  if total_steps == 0:
    return learning_rate
  for name, value in (('warmup_proportion', warmup_proportion), ('min_lr', min_lr)):
    if callable(value):
      raise ValueError(f'{name} must be a number (the reference takes no schedule), got {value!r}.')
  within = _checks.Interval(0.0, 1.0, high_open=False)
  _checks.check_scalar('warmup_proportion', warmup_proportion, within)
  warmup_steps = total_steps * warmup_proportion
  decay_steps = jnp.maximum(total_steps - warmup_steps, 1.0)

  def schedule(count: Any) -> jax.Array:
    t = count + 1.0  # The reference counts steps from 1, optax from 0.
    lr: Any = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.where(
      t <= warmup_steps,
      # Taken only where t <= warmup_steps, so warmup_steps >= 1: the maximum
      # keeps the other branch finite with no warm-up.
      lr * t / jnp.maximum(warmup_steps, 1.0),
      lr + (min_lr - lr) / decay_steps * jnp.minimum(t - warmup_steps, decay_steps),
    )

  return schedule


def adabelief_tf(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  beta_1: float = 0.9,
  beta_2: float = 0.999,
  epsilon: float = 1e-14,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  rectify: bool = True,
  amsgrad: bool = False,
  sma_threshold: float = 5.0,
  total_steps: int = 0,
  warmup_proportion: float = 0.1,
  min_lr: float = 0.0,
) -> optax.GradientTransformation:
  r"""``adabelief_tf.AdaBeliefOptimizer`` (version 0.2.1), argument for argument.

  The TensorFlow reference follows the paper's form exactly: ``epsilon`` is
  added to ``s`` every step and to the bias-corrected ``sqrt(s_hat)``;
  weight decay is decoupled and scaled by the learning rate; rectified steps
  before ``sma_threshold`` are momentum-SGD steps. With ``total_steps > 0`` the
  learning rate warms up linearly over ``warmup_proportion * total_steps``
  steps, then decays linearly to ``min_lr`` at ``total_steps`` (a learning-rate
  schedule's value at each step is warmed up and decayed so, as the reference
  does with a Keras schedule).

  Args:
    learning_rate: the peak learning rate (a number or an optax schedule).
    beta_1: decay of the first moment.
    beta_2: decay of the second moment.
    epsilon: the reference's single epsilon (default 1e-14).
    weight_decay: decoupled decay, multiplied by the learning rate (a number or
      an optax schedule).
    rectify: RAdam's rectification.
    amsgrad: keep and use the running maximum of ``s``.
    sma_threshold: the rectification threshold.
    total_steps: length of the built-in warm-up/decay schedule, an integer >= 0
      (0: none). It decides the optimizer's structure: under
      ``optax.inject_hyperparams``, list it in ``static_args``.
    warmup_proportion: the warm-up's share of ``total_steps``, in [0, 1] (0:
      decay only).
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
    compute_dtype_updates=True,
  )
  return chain_with_weight_decay(
    _tf_learning_rate(learning_rate, _total_steps(total_steps), warmup_proportion, min_lr),
    weight_decay,
    None,
    'decoupled',
    scale_by_belief_from(belief),
  )
