r"""The scalars of one AdaBelief step, shared by every leaf.

With them each leaf's step is a single elementwise expression:

.. math::

  u = \frac{(\mathrm{mu\_scale}\, m_t + \mathrm{grad\_scale}\, g_t)\,
      \mathrm{step\_scale}}{\sqrt{s_t} + \mathrm{eps\_scaled}}

where, at step :math:`t`,

* ``mu_scale`` :math:`= 1/(1 - b_1^t)` and ``grad_scale`` :math:`= 0`, or with
  Nesterov momentum :math:`b_1/(1 - b_1^{t+1})` and :math:`(1 - b_1)/(1 - b_1^t)`,
  so that the numerator is :math:`\hat m_t`;
* ``step_scale`` :math:`= r_t \sqrt{1 - b_2^t}` and ``eps_scaled``
  :math:`= \epsilon \sqrt{1 - b_2^t}`, with :math:`r_t` RAdam's rectification
  (1 without it): the bias correction of :math:`s_t` is folded into two scalars
  instead of a division per element, and the expression equals
  :math:`r_t \hat m_t / (\sqrt{s_t / (1 - b_2^t)} + \epsilon)`.

On rectified steps before the threshold, ``adaptive`` is false and the step is
``sgd_scale`` times :math:`\hat m_t` (``sgd_scale`` is 1 with
``degenerate_to_sgd``, else 0).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from adabelief_jax._hyperparams import BeliefHyperparams


class StepScalars(NamedTuple):
  """The per-step scalars of the module docstring, and the decays they use."""

  b1: chex.Array
  b2: chex.Array
  # 1 - b1 and 1 - b2, taken in float64 for Python numbers: 1 - float32(0.999)
  # is off by 1.3e-5 relative, which would bias s by as much.
  one_minus_b1: chex.Array
  one_minus_b2: chex.Array
  eps_root: chex.Array
  mu_scale: chex.Array
  grad_scale: chex.Array
  step_scale: chex.Array
  eps_scaled: chex.Array
  adaptive: chex.Array
  sgd_scale: chex.Array
  sqrt_bias_correction2: chex.Array  # For the statistics: sqrt(s_hat) = sqrt(s) / this.

  def cast(self, dtype: jnp.dtype) -> StepScalars:
    """The scalars in ``dtype`` (``adaptive`` stays boolean)."""
    return StepScalars(
      *(x if x.dtype == jnp.bool_ else x.astype(dtype) for x in map(jnp.asarray, self))
    )


def _log(decay: chex.Numeric) -> float | jax.Array:
  """log(decay); exact in float64 for Python numbers, -inf for a zero decay."""
  if isinstance(decay, numbers.Real):
    return math.log(decay) if decay > 0 else -math.inf
  return jnp.log(decay)


def _one_minus_pow(log_decay: chex.Numeric, t: chex.Array) -> chex.Array:
  """1 - decay^t as -expm1(t log decay): no cancellation for decay near 1."""
  return -jnp.expm1(t * log_decay)


def _expm1_minus_x(y: chex.Array) -> chex.Array:
  """h(y) = e^y - 1 - y, accurate to float precision for y <= 1."""
  # Taylor series y^2 sum_k y^k / (k+2)! below |y| = 1 (error < 1e-12), where
  # expm1(y) - y would cancel; the clamp keeps the unused branch finite.
  small = jnp.clip(y, -1.0, 1.0)
  series = jnp.zeros_like(small)
  for k in range(12, -1, -1):
    series = series * small + 1.0 / math.factorial(k + 2)
  return jnp.where(jnp.abs(y) < 1.0, small * small * series, jnp.expm1(y) - y)


def rho(b2: chex.Numeric, t: chex.Array) -> tuple[chex.Array, chex.Array]:
  """(rho_inf, rho_t) of RAdam's rectification, without cancellation.

  rho_t = rho_inf - 2 t b2^t / (1 - b2^t) subtracts two numbers of size
  rho_inf (about 2000 for b2 = 0.999) to get a small one; in float32 that loses
  four digits. With x = -log(b2), q = 1 - b2 and h(y) = e^y - 1 - y,

      rho_t + 1 = 2 [e^{-tx} h(tx) + t e^{-tx} h(-x)] / (q (1 - b2^t)),

  a sum of non-negative terms.
  """
  # b2 below e^-50 behaves as b2 = 0 in float32; the clamp keeps inf * 0 away.
  x = jnp.minimum(-_log(b2), 50.0)
  tx = t * x
  q = -jnp.expm1(-x)
  # e^{-y} h(y) for y >= 0, written as 1 - e^{-y} (1 + y) once y is large.
  e_h_tx = jnp.where(
    tx < 1.0,
    jnp.exp(-tx) * _expm1_minus_x(jnp.minimum(tx, 1.0)),
    -jnp.expm1(-tx) - tx * jnp.exp(-tx),
  )
  numerator = e_h_tx + t * jnp.exp(-tx) * _expm1_minus_x(-x)
  rho_t = 2.0 * numerator / (q * -jnp.expm1(-tx)) - 1.0
  return 2.0 / q - 1.0, rho_t


def _rectification(hp: BeliefHyperparams, t: chex.Array) -> tuple[jax.Array, jax.Array]:
  """(r_t, whether step t is adaptive) of RAdam's variance rectification."""
  rho_inf, rho_t = rho(hp.b2, t)
  # rho_t is clamped so the formula stays finite (and differentiable) on steps
  # where the SGD branch is taken and r_t is unused.
  rho_c = jnp.maximum(rho_t, jnp.maximum(hp.sma_threshold, 4.0 + 1e-3))
  r_t = jnp.sqrt(
    (rho_c - 4.0) * (rho_c - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_c)
  )
  return r_t, jnp.asarray(rho_t >= hp.sma_threshold)


def step_scalars(count: chex.Array, hp: BeliefHyperparams) -> StepScalars:
  """The scalars of step ``count`` (1-based), in the default float dtype."""
  t = count.astype(jnp.result_type(float))
  log_b1 = _log(hp.b1)
  bias_correction1 = _one_minus_pow(log_b1, t)
  sqrt_bias_correction2 = jnp.sqrt(_one_minus_pow(_log(hp.b2), t))
  if hp.nesterov:
    mu_scale = hp.b1 / _one_minus_pow(log_b1, t + 1.0)
    grad_scale = (1.0 - hp.b1) / bias_correction1
  else:
    mu_scale = 1.0 / bias_correction1
    grad_scale = jnp.zeros_like(t)
  step_scale: chex.Numeric = sqrt_bias_correction2
  eps_scaled: chex.Numeric = hp.eps * sqrt_bias_correction2
  adaptive = jnp.ones((), bool)
  sgd_scale = jnp.zeros_like(t)
  if hp.rectify:
    r_t, adaptive = _rectification(hp, t)
    step_scale = r_t * sqrt_bias_correction2
    if hp.torch_rectified_eps:
      eps_scaled = hp.eps * jnp.ones_like(t)
    sgd_scale = jnp.full_like(t, 1.0 if hp.degenerate_to_sgd else 0.0)
  return StepScalars(
    b1=jnp.asarray(hp.b1),
    b2=jnp.asarray(hp.b2),
    one_minus_b1=jnp.asarray(1.0 - hp.b1),
    one_minus_b2=jnp.asarray(1.0 - hp.b2),
    eps_root=jnp.asarray(hp.eps_root),
    mu_scale=jnp.asarray(mu_scale),
    grad_scale=jnp.asarray(grad_scale),
    step_scale=jnp.asarray(step_scale),
    eps_scaled=jnp.asarray(eps_scaled),
    adaptive=adaptive,
    sgd_scale=sgd_scale,
    sqrt_bias_correction2=sqrt_bias_correction2,
  )
