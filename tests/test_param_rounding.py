"""round_params_stochastically: 16-bit parameters updated by stochastic rounding.

``optax.apply_updates(p, u')`` must be a stochastic rounding of ``p + u`` to
``p``'s dtype, exactly: it is compared, element by element, with a NumPy
model written from the definition (the two neighbours of ``x`` in the
parameter's dtype from ml_dtypes, the probability ``(x - lo) / (hi - lo)``)
that reads the same 16 random bits. Unbiasedness is tested statistically;
the compositions (flax.nnx, MultiSteps, apply_if_finite, masked,
inject_hyperparams) on one device, and ZeRO-1 and orbax on 8 devices in a
child process (see tests/devices.py), e.g. ``python -m tests.devices
tests.test_param_rounding:check_zero1_is_bit_identical``.
"""

from __future__ import annotations

import functools
import tempfile
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import adabelief_jax
from adabelief_jax import _rounding, sharding
from adabelief_jax._param_rounding import (
  STREAM,
  ParamRoundingState,
  round_params_stochastically,
  rounded_update,
)
from tests import devices

DTYPES = {'bfloat16': ml_dtypes.bfloat16, 'float16': np.float16}
BF16_SR = dict(mu_dtype='bfloat16', nu_dtype='bfloat16')
INT8 = dict(mu_dtype='int8', nu_dtype='int8', quantization_block_size=64)


def _tx(
  learning_rate: Any = 1e-2,
  *,
  rounding_seed: Any = 0,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  quantization_block_size: int = 256,
) -> optax.GradientTransformation:
  """AdaBelief, which ends in the parameter rounding."""
  return adabelief_jax.adabelief(
    learning_rate,
    rounding_seed=rounding_seed,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
    quantization_block_size=quantization_block_size,
  )


# --- the NumPy model ----------------------------------------------------------


@functools.cache
def _flushes_subnormals() -> bool:
  """Whether this backend's float32 arithmetic flushes subnormals to zero (XLA:CPU does)."""
  return bool(jax.jit(lambda a: a + a)(np.float32(2.0**-140)) == 0)


def _flush(x: np.ndarray) -> np.ndarray:
  tiny = np.finfo(np.float32).tiny
  return np.where(np.abs(x) < tiny, np.float32(0), x) if _flushes_subnormals() else x


def _add32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``a + b`` in float32 as the backend computes it (subnormals flushed where it flushes them)."""
  return _flush(_flush(a.astype(np.float32)) + _flush(b.astype(np.float32)))


def _bits(shape: tuple[int, ...], seed: int, count: int, leaf: int) -> np.ndarray:
  """The 16 bits per element that the transformation draws at step ``count``."""
  bits = _rounding.random_bits(shape, seed, jnp.int32(count), leaf, STREAM)
  return np.asarray(bits) & 0xFFFF


def _neighbours(x: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
  """The largest value of ``dtype`` <= x and the smallest >= x (float32 x, finite)."""
  with np.errstate(over='ignore'):  # float16 x beyond 65504: 65504 and infinity.
    near = x.astype(dtype)
    wide, x64 = near.astype(np.float64), x.astype(np.float64)
    lo = np.where(wide > x64, np.nextafter(near, np.array(-np.inf, dtype)), near)
    hi = np.where(wide < x64, np.nextafter(near, np.array(np.inf, dtype)), near)
  return lo, hi


def _model_round(x: np.ndarray, dtype: Any, bits: np.ndarray) -> np.ndarray:
  """Stochastic rounding of float32 ``x`` to ``dtype`` with 16 random bits per element.

  Away from zero with probability ``f = |x - t| / |a - t|`` (``t`` the
  neighbour toward zero, ``a`` the other). Which draws go away is the
  implementation's convention, so that the model compares the same draw:
  for bfloat16 those whose bits, added to the 16 bits of ``x`` below
  bfloat16's cut (``2^16 f`` of them), carry; for float16 those with
  ``(bits + 1/2) 2^-16 < f``.
  """
  lo, hi = _neighbours(x, dtype)
  toward, away = (np.where(x >= 0, lo, hi), np.where(x >= 0, hi, lo))
  t64, a64 = toward.astype(np.float64), away.astype(np.float64)
  gap = np.abs(a64 - t64)
  with np.errstate(invalid='ignore', divide='ignore'):
    f = np.where(gap > 0, np.abs(x.astype(np.float64) - t64) / gap, 0.0)
  f = np.where(np.isfinite(gap), f, 0.0)  # A step to infinity: probability 0.
  if dtype == ml_dtypes.bfloat16:
    carried = bits + f * 2.0**16
    assert np.all(carried == np.round(carried)), 'float32 x is 2^-16 steps of bfloat16'
    go_away = carried >= 2.0**16
  else:
    go_away = bits + 0.5 < f * 2.0**16
  return np.where(go_away, away, toward)


def _cases(param: str, update: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Parameters over the dtype's range (subnormals included) and updates of every size
  against them: below half a step, zero crossings, cancelling p to 2^-1..2^-30 of it,
  larger than p, and sizes independent of p; both signs, finite sums only."""
  rng = np.random.default_rng(seed)
  dtype = DTYPES[param]
  tiny = float(ml_dtypes.finfo(dtype).smallest_normal)
  if param == 'bfloat16':
    exponents = rng.uniform(-30, 30, 1000)
    subnormal = rng.uniform(0, tiny, 100)
  else:
    exponents = rng.uniform(-7.3, 4.8, 1000)  # 5e-8 (subnormal) .. 63000.
    subnormal = rng.uniform(0, tiny, 200)
  magnitude = np.concatenate([10.0**exponents, subnormal, [0.0, tiny]])
  p = (magnitude * rng.choice([-1, 1], magnitude.size)).astype(dtype).astype(np.float64)
  cancel = [-1 + s * 2.0**-k for k in range(1, 31) for s in (-1, 1)]
  ratios = [0.0, 1e-6, 2.0**-10, 2.0**-9, 3 * 2.0**-9, 0.01, 0.5, -1.0, -2.0, 1.5, 3.0, 1e3, 1e6]
  ratios += [-r for r in ratios if r > 0] + cancel
  relative = np.outer(p, ratios).ravel()
  scale = 30 if param == 'bfloat16' else 4.8
  absolute = 10.0 ** rng.uniform(-scale, scale, relative.size) * rng.choice([-1, 1], relative.size)
  p_all = np.concatenate([np.repeat(p, len(ratios)), rng.permutation(np.repeat(p, len(ratios)))])
  with np.errstate(over='ignore'):
    u_all = np.concatenate([relative, absolute]).astype(DTYPES.get(update, np.float32))
  p_all = p_all.astype(dtype)
  x = _add32(p_all, u_all)
  keep = np.isfinite(u_all.astype(np.float64)) & np.isfinite(x)
  if param == 'bfloat16':  # bfloat16's step beyond its largest value is tested on its own.
    keep &= np.abs(x) <= float(ml_dtypes.finfo(dtype).max)
  return p_all[keep], u_all[keep]


def _update(tx: optax.GradientTransformation, updates: Any, params: Any, steps: int = 1) -> Any:
  """The updates of step ``steps`` with the same inputs every step (jitted)."""
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(steps):
    out, state = update(updates, state, params)
  return out


# --- exactness ----------------------------------------------------------------


@pytest.mark.parametrize('update', ['float32', 'bfloat16', 'float16'])
@pytest.mark.parametrize('param', ['bfloat16', 'float16'])
def test_apply_updates_is_the_models_stochastic_rounding_exactly(param, update):
  p, u = _cases(param, update)
  tx = round_params_stochastically(seed=5)
  new_u = _update(tx, u, p, steps=2)
  assert new_u.dtype == jnp.float32
  x = _add32(p, u)
  want = _model_round(x, DTYPES[param], _bits(p.shape, seed=5, count=2, leaf=0))
  applied = {
    'eager': optax.apply_updates(p, new_u),
    'jit': jax.jit(optax.apply_updates)(p, new_u),
    'fused': jax.jit(lambda p, u: optax.apply_updates(p, _update_once(tx, u, p)))(p, u),
  }
  for how, got in applied.items():
    assert got.dtype == p.dtype, how
    np.testing.assert_array_equal(np.asarray(got, np.float64), want.astype(np.float64), how)
  # The cases cover the difficult regions: some round up, some down, some cross zero ...
  x64, p64, r64 = x.astype(np.float64), p.astype(np.float64), want.astype(np.float64)
  assert np.sum(r64 > x64) > 1000 and np.sum(r64 < x64) > 1000
  assert np.sum(np.sign(r64) * np.sign(p64) < 0) > 1000
  # ... some cancel p to below 2^-16 of it (float32 updates: 16-bit ones cannot) ...
  if update == 'float32':
    assert np.sum((x64 != 0) & (np.abs(x64) < 2.0**-16 * np.abs(p64))) > 100
  # ... some r - p is not exact in float32, and apply_updates still lands on r,
  r_minus_p = want.astype(np.float32) - p.astype(np.float32)
  assert np.sum(r_minus_p.astype(np.float64) != r64 - p64) > 100
  # ... and r is subnormal (float16: float32 arithmetic keeps its subnormals).
  tiny = float(ml_dtypes.finfo(DTYPES[param]).smallest_normal)
  if param == 'float16' or not _flushes_subnormals():
    assert np.sum((r64 != 0) & (np.abs(r64) < tiny)) > 100


def _update_once(tx: optax.GradientTransformation, updates: Any, params: Any) -> Any:
  """The second step's updates (as _update with steps=2), traced into the caller's jit."""
  state = tx.init(params)
  _, state = tx.update(updates, state, params)
  return tx.update(updates, state, params)[0]


def test_only_an_overflowing_r_minus_p_is_not_exact():
  """bfloat16 r and p of opposite signs whose float32 difference overflows: the one case.

  Every bfloat16 p of the top two binades against float32 updates up to
  float32's largest value: where the model's float32 r - p is finite,
  apply_updates gives r; where it overflows, u' and the parameter are
  infinite, which needs |u| > 2^128 - 2^120 - 2^104 (bfloat16's largest value
  less a float32 step); some updates near that bound overflow.
  """
  rng = np.random.default_rng(0)
  top = np.arange(2.0**126, 2.0**128 - 2.0**119, 2.0**119)  # The bfloat16 values there.
  bound = 2.0**128 - 2.0**120 - 2.0**104
  steps = np.concatenate(  # In float32 steps (2^104) below float32's largest value.
    [np.arange(1, 300), rng.integers(2**16 - 300, 2**16 + 300, 300), rng.integers(1, 2**17, 300)]
  )
  p = np.repeat(-top, steps.size).astype(ml_dtypes.bfloat16)
  u = np.tile(2.0**128 - steps * 2.0**104, top.size).astype(np.float32)
  p, u = np.concatenate([p, -p]), np.concatenate([u, -u])
  new_u = _update(round_params_stochastically(seed=1), u, p)
  got = np.asarray(optax.apply_updates(p, new_u), np.float64)
  want = _model_round(_add32(p, u), ml_dtypes.bfloat16, _bits(p.shape, seed=1, count=1, leaf=0))
  with np.errstate(over='ignore'):
    overflows = ~np.isfinite(want.astype(np.float32) - p.astype(np.float32))
  np.testing.assert_array_equal(got[~overflows], want[~overflows].astype(np.float64))
  np.testing.assert_array_equal(got[overflows], np.sign(u[overflows]) * np.inf)
  magnitude = np.abs(u.astype(np.float64))
  assert np.all(magnitude[overflows] > bound)
  assert overflows.sum() > 100 and np.min(magnitude[overflows]) < bound + 2.0**112
  assert (~overflows & (magnitude > bound)).sum() > 100  # Above the bound, most are exact.


def test_a_bfloat16_update_cannot_reach_every_rounding():
  """From p = -1, no bfloat16 u' makes apply_updates give 1.0078125; the float32 u' does."""
  every = np.arange(2**16, dtype=np.uint16).view(ml_dtypes.bfloat16)
  p = np.full(every.shape, -1.0, ml_dtypes.bfloat16)
  with np.errstate(invalid='ignore'):  # -1 + NaN.
    reached = np.asarray(optax.apply_updates(p, every), np.float64)
  assert 1.0078125 not in reached and {1.0, 1.015625} <= set(reached)
  u = _update(round_params_stochastically(), np.full(1024, 2.0078125, np.float32), p[:1024])
  assert set(np.unique(np.asarray(optax.apply_updates(p[:1024], u), np.float64))) == {1.0078125}


def test_bfloat16_beyond_its_largest_value_rounds_up_to_infinity_with_its_probability():
  top = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
  p = np.full(2**16, top, ml_dtypes.bfloat16)
  u = np.full(p.shape, 2.0**118, np.float32)  # x = top + a quarter of the step above it.
  got = np.asarray(optax.apply_updates(p, _update(round_params_stochastically(), u, p)))
  assert set(np.unique(got.astype(np.float64))) == {top, np.inf}
  assert abs(np.mean(np.isinf(got)) - 0.25) < 5 * np.sqrt(0.25 * 0.75 / p.size)


# --- unbiased -----------------------------------------------------------------


@pytest.mark.parametrize(
  'param, p0, u0',
  [
    ('bfloat16', 1.0, -1e-3),  # Below half a step: rounding to nearest keeps 1.
    ('bfloat16', -3.0, 7e-4),
    ('bfloat16', 2.0**-10, -1.3 * 2.0**-10),  # Across zero.
    ('bfloat16', 1e-30, 3.3e-33),
    ('float16', 1.0, -1e-4),
    ('float16', 3e-6, 1.7e-7),  # float16 subnormals.
  ],
)
def test_rounding_is_unbiased(param, p0, u0):
  """The mean of 2^20 roundings of one p + u is x, within 5 standard errors."""
  n = 2**20
  p = jnp.full((n,), p0, param)
  u = jnp.full((n,), u0, jnp.float32)
  got = np.asarray(optax.apply_updates(p, _update(round_params_stochastically(), u, p)), np.float64)
  x = float(_add32(np.asarray(p[:1]), np.asarray(u[:1]))[0])
  low, high = np.min(got), np.max(got)
  assert set(np.unique(got)) == {low, high} and low < x < high
  f = (x - low) / (high - low)
  assert abs(got.mean() - x) < 5 * (high - low) * np.sqrt(f * (1 - f) / n)


def test_many_small_steps_move_the_parameter_as_float32_would():
  """200 steps of -1e-4 on bfloat16 ones (half a step is 2^-9 = 2e-3): to nearest the
  parameter never moves; stochastically its mean follows 1 - 0.02, within 5 standard errors
  (each step's rounding error has mean 0 given the past and variance <= step^2 / 4)."""
  n, steps, u = 4096, 200, -1e-4
  tx = round_params_stochastically(seed=3)

  def body(_, carry):
    p, state = carry
    new_u, state = tx.update(jnp.full(p.shape, u, jnp.float32), state, p)
    return optax.apply_updates(p, new_u), state

  p0 = jnp.ones((n,), jnp.bfloat16)
  p, state = jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, tx.init(p))))(p0)
  assert int(state.count) == steps
  want = 1.0
  for _ in range(steps):
    want = float(np.float32(want) + np.float32(u))
  standard_error = 2.0**-8 * np.sqrt(steps / (4 * n))
  assert abs(float(jnp.mean(p.astype(jnp.float32))) - want) < 5 * standard_error
  nearest = p0
  for _ in range(steps):
    nearest = optax.apply_updates(nearest, jnp.full((n,), u, jnp.float32))
  assert bool(jnp.all(nearest == 1))


# --- bits: deterministic, and different across seeds, steps and leaves -------


def _half_way(seed: int = 0, steps: int = 1, leaves: int = 1) -> list[np.ndarray]:
  """Parameters after one rounding of 1 + half a bfloat16 step: each element a fair coin."""
  p = jnp.ones((8192,), jnp.bfloat16)
  params = {f'leaf{i}': p for i in range(leaves)}
  updates = {k: jnp.full(p.shape, 2.0**-8, jnp.float32) for k in params}
  new_u = _update(round_params_stochastically(seed), updates, params, steps)
  return [np.asarray(x) for x in jax.tree.leaves(optax.apply_updates(params, new_u))]


def test_rounding_is_deterministic_and_differs_across_seeds_steps_and_leaves():
  (base,) = _half_way()
  np.testing.assert_array_equal(base, _half_way()[0])
  assert 0.45 < np.mean(base > 1) < 0.55
  others = {
    'seed': _half_way(seed=1)[0],
    'largest seed': _half_way(seed=2**32 - 1)[0],
    'step': _half_way(steps=2)[0],
    'leaf': _half_way(leaves=2)[1],
  }
  for what, other in others.items():
    assert 0.4 < np.mean(other != base) < 0.6, what


@pytest.mark.parametrize('seed', [-1, 2**32, 1.5, True, 'a'])
def test_invalid_seed_is_named(seed):
  with pytest.raises(ValueError, match='seed must be an integer in'):
    round_params_stochastically(seed)


# --- what is left alone ---------------------------------------------------------


def test_float32_and_wider_updates_are_returned_unchanged():
  params = {
    'f32': jnp.ones((3, 4)),
    'c64': jnp.ones((5,), jnp.complex64),
    'f32_bf16_update': jnp.ones((6,)),
  }
  updates = {
    'f32': jnp.full((3, 4), 1e-9),
    'c64': jnp.full((5,), 1e-9 + 1j, jnp.complex64),
    'f32_bf16_update': jnp.full((6,), 1e-3, jnp.bfloat16),
  }
  tx = round_params_stochastically()
  eager, _ = tx.update(updates, tx.init(params), params)
  for k in params:
    assert eager[k] is updates[k], k
  chex.assert_trees_all_equal(_update(tx, updates, params), updates)


@pytest.mark.parametrize('param', ['bfloat16', 'float16'])
@pytest.mark.parametrize('update', ['float32', 'bfloat16'])
def test_zero_update_gives_zero_exactly(param, update):
  p, _ = _cases(param, 'float32')
  zeros = np.zeros(p.shape, update)
  new_u = np.asarray(_update(round_params_stochastically(), zeros, p))
  assert np.all(new_u == 0) and not np.any(np.signbit(new_u))
  chex.assert_trees_all_equal(optax.apply_updates(p, new_u), optax.apply_updates(p, zeros))


@pytest.mark.parametrize('param', ['bfloat16', 'float16'])
def test_non_finite_updates_stay_non_finite(param):
  """NaN stays NaN whatever its payload (a payload with its high mantissa bits set would
  carry into the sign bit in bfloat16's bit arithmetic), and infinities stay infinite."""
  payloads = np.array([0x7FC00000, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFC00000], np.uint32)
  special = np.concatenate([payloads.view(np.float32), [np.inf, -np.inf]])
  u = np.tile(np.concatenate([special, np.full(10, 1e-3, np.float32)]), 100)
  p = np.ones(u.shape, DTYPES[param])
  new_u = np.asarray(_update(round_params_stochastically(), u, p))
  applied = np.asarray(optax.apply_updates(p, new_u), np.float64)
  for got in (new_u, applied):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(u))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(u))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(u))


# --- errors ---------------------------------------------------------------------


def test_errors_name_the_argument():
  params = {'w': jnp.ones(3, jnp.bfloat16)}
  tx = round_params_stochastically()
  state = tx.init(params)
  with pytest.raises(ValueError, match=r'pass params to update \(tx.update\(grads, state, params'):
    tx.update(params, state)
  with pytest.raises(TypeError, match='ParamRoundingState'):
    tx.update(params, {'count': 0}, params)
  with pytest.raises(ValueError, match='structure'):
    tx.update(params, state, {'v': params['w']})
  with pytest.raises(ValueError, match=r"updates\['w'\] has shape \(4,\)"):
    tx.update({'w': jnp.ones(4)}, state, params)
  fp8 = {'w': jnp.ones(3, jnp.float8_e4m3fn)}
  with pytest.raises(ValueError, match=r"params\['w'\] is float8_e4m3fn"):
    tx.update({'w': jnp.ones(3)}, tx.init(fp8), fp8)


# --- compositions -----------------------------------------------------------------


def _bf16_params(seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {
    'w': jnp.asarray(rng.normal(size=(48, 100)), jnp.bfloat16),
    'b': jnp.asarray(rng.normal(size=(100,)) * 1e-2, jnp.bfloat16),
  }


def _bf16_grads(params: Any, steps: int, seed: int = 1) -> list[Any]:
  rng = np.random.default_rng(seed)
  return [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 1e-2, p.dtype), params)
    for _ in range(steps)
  ]


def _rounding_state(state: Any) -> ParamRoundingState:
  """The one ParamRoundingState in an optimizer's state."""
  is_rounding = lambda x: isinstance(x, ParamRoundingState)
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_rounding) if is_rounding(x)]
  return found


def _train(tx: optax.GradientTransformation, params: Any, grads_seq: list[Any]) -> tuple:
  """Params, state and every step's updates after one jitted step per gradient."""
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  all_updates = []
  for grads in grads_seq:
    params, state, updates = step(params, state, grads)
    all_updates.append(updates)
  return params, state, all_updates


def test_flax_nnx_optimizer_with_bfloat16_params():
  """nnx.Optimizer gives the steps of a plain loop, bit for bit (the rounding is
  deterministic and apply_updates lands on it), with updates in the gradients' dtype."""
  from flax import nnx

  model = nnx.Linear(64, 128, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  graphdef, plain = nnx.split(nnx.clone(model))
  tx = _tx(1e-3)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 64)), jnp.float32)
  loss = lambda model: jnp.mean(jnp.square(model(x) - 1.0))

  @nnx.jit
  def step(model, optimizer):
    return optimizer.update(model, nnx.grad(loss)(model))

  @jax.jit
  def plain_step(params, state):
    grads = jax.grad(lambda p: loss(nnx.merge(graphdef, p)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(plain)
  for _ in range(3):
    updates = step(model, optimizer)
    plain, state = plain_step(plain, state)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  got = nnx.split(model)[1]
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(got))
  chex.assert_trees_all_equal(got, plain)


def test_multisteps_mini_steps_leave_the_params_unchanged():
  """Inside MultiSteps, and after it: a mini-step's zero update stays zero, bit for bit;
  inside, the rounding's step advances with the emitted steps only."""
  params = _bf16_params()
  grads_seq = _bf16_grads(params, 6)
  inside = optax.MultiSteps(_tx(), every_k_schedule=3)
  after = optax.chain(
    optax.MultiSteps(optax.sgd(1e-2), every_k_schedule=3), round_params_stochastically()
  )
  counts = {}
  for name, tx in (('inside', inside), ('after', after)):
    state, p, update = tx.init(params), params, jax.jit(tx.update)
    for i, grads in enumerate(grads_seq):
      updates, state = update(grads, state, p)
      new = optax.apply_updates(p, updates)
      if i % 3 == 2:
        assert all(np.any(a != b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(p)))
      else:
        for u in jax.tree.leaves(updates):
          assert np.all(np.asarray(u) == 0), (name, i)
        chex.assert_trees_all_equal(new, p)
      p = new
    counts[name] = int(_rounding_state(state).count)
  assert counts == {'inside': 2, 'after': 6}


def test_apply_if_finite_skips_a_nan_step():
  """A NaN gradient's step is skipped: zero updates, the parameters and the inner state
  unchanged; the next step is the unwrapped optimizer's. adabelief returns its updates
  in the gradients' dtype, as apply_if_finite's skip does, for 16-bit gradients too."""
  params = _bf16_params()
  good, later = _bf16_grads(params, 2)
  tx = optax.apply_if_finite(_tx(), max_consecutive_errors=3)
  update = jax.jit(tx.update)
  updates, state = update(good, tx.init(params), params)
  params = optax.apply_updates(params, updates)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), later)
  skipped, rejected = update(bad, state, params)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(skipped))
  chex.assert_trees_all_equal(optax.apply_updates(params, skipped), params)
  chex.assert_trees_all_equal(rejected.inner_state, state.inner_state)
  assert int(rejected.notfinite_count) == 1
  resumed, _ = update(later, rejected, params)
  chex.assert_trees_all_equal(resumed, jax.jit(_tx().update)(later, state.inner_state, params)[0])
  alone = optax.chain(optax.sgd(1e-2), round_params_stochastically())
  with pytest.raises(TypeError, match='cond branches must have equal output types'):
    # Alone, the rounding returns float32 updates, which apply_if_finite's zeros are not.
    optax.apply_if_finite(alone, 3).update(
      good, optax.apply_if_finite(alone, 3).init(params), params
    )


def test_apply_if_finite_before_the_rounding_with_16_bit_gradients():
  """apply_if_finite around the optimizer only, the rounding after it: a skipped step's
  zero update stays zero, and the parameters do not move."""
  params = _bf16_params()
  good, later = _bf16_grads(params, 2)
  tx = optax.chain(
    optax.apply_if_finite(optax.sgd(1e-2), max_consecutive_errors=3), round_params_stochastically()
  )
  update = jax.jit(tx.update)
  updates, state = update(good, tx.init(params), params)
  params = optax.apply_updates(params, updates)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.inf), later)
  skipped, _ = update(bad, state, params)
  assert all(
    u.dtype == jnp.float32 and np.all(np.asarray(u) == 0) for u in jax.tree.leaves(skipped)
  )
  chex.assert_trees_all_equal(optax.apply_updates(params, skipped), params)


def test_masked_leaves_pass_through():
  """optax.masked: the masked-in leaf is rounded (as the model says, as leaf 0 of the
  masked tree), the masked-out one keeps its bfloat16 update, bit for bit."""
  params = _bf16_params()
  updates = jax.tree.map(lambda g: 30 * g, _bf16_grads(params, 1)[0])
  mask = {'w': True, 'b': False}
  got = _update(optax.masked(round_params_stochastically(seed=4), mask), updates, params)
  chex.assert_trees_all_equal(got['b'], updates['b'])
  assert got['w'].dtype == jnp.float32
  p, u = np.asarray(params['w']), np.asarray(updates['w'])
  want = _model_round(_add32(p, u), ml_dtypes.bfloat16, _bits(p.shape, seed=4, count=1, leaf=0))
  np.testing.assert_array_equal(np.asarray(optax.apply_updates(params, got)['w']), want)
  # The whole optimizer masked: the masked-out leaf's gradient passes through.
  (grads,) = _bf16_grads(params, 1)
  whole = _update(optax.masked(_tx(), mask), grads, params)
  chex.assert_trees_all_equal(whole['b'], grads['b'])
  assert whole['w'].dtype == jnp.bfloat16  # adabelief returns the gradients' dtype.


def test_inject_hyperparams_matches_constants():
  """The seed traced through optax.inject_hyperparams draws the bits of the constant seed."""
  params = _bf16_params()
  grads_seq = _bf16_grads(params, 3)
  constant = _train(optax.chain(optax.sgd(1e-2), round_params_stochastically(7)), params, grads_seq)
  injected_seed = optax.inject_hyperparams(round_params_stochastically)(seed=7)
  injected = _train(optax.chain(optax.sgd(1e-2), injected_seed), params, grads_seq)
  chex.assert_trees_all_equal(injected[0], constant[0])
  chex.assert_trees_all_equal(injected[2], constant[2])


def test_inject_hyperparams_of_the_whole_optimizer_matches_constants():
  """Its seed and learning rate traced (float32: bfloat16 params would make them
  bfloat16), its dtypes static."""
  params = _bf16_params()
  grads_seq = _bf16_grads(params, 3)
  options = dict(rounding_seed=3, mu_dtype='bfloat16', nu_dtype='bfloat16')
  constant = _train(_tx(1e-2, **options), params, grads_seq)
  factory = optax.inject_hyperparams(
    _tx, static_args=('mu_dtype', 'nu_dtype'), hyperparam_dtype=jnp.float32
  )
  injected = _train(factory(learning_rate=1e-2, **options), params, grads_seq)
  chex.assert_trees_all_equal(injected[0], constant[0])
  chex.assert_trees_all_equal(injected[2], constant[2])


def test_the_donated_step_needs_no_parameter_sized_temporary():
  """The rounding fuses into the step: the compiled step's temporaries do not grow by
  anything like a parameter (512 KiB here)."""
  params = {'w': jnp.zeros((256, 1024), jnp.bfloat16)}

  def temp_bytes(tx: optax.GradientTransformation) -> int:
    def step(p, s, g):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    state = jax.eval_shape(tx.init, params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  for belief in (adabelief_jax.adabelief(1e-3), adabelief_jax.adabelief(1e-3, **BF16_SR)):
    without = temp_bytes(belief)
    with_rounding = temp_bytes(optax.chain(belief, round_params_stochastically()))
    assert with_rounding <= without + 1024, (with_rounding, without)


# --- 8 devices (run in a child process: see tests/devices.py) -----------------

CHECKS = devices.Checks()


def _big_params() -> dict[str, np.ndarray]:
  """bfloat16 leaves whose rows split over 8 devices (and 8-bit blocks), and a small bias."""
  rng = np.random.default_rng(2)
  shapes = {'w': (64, 128), 'v': (128, 40), 'b': (128,)}
  return {k: rng.normal(size=s).astype(ml_dtypes.bfloat16) for k, s in shapes.items()}


@CHECKS
def check_zero1_is_bit_identical() -> dict:
  """The same gradients through a ZeRO-1 state on 8 devices and a plain one: the same
  updates, state and parameters, bit for bit."""
  mesh = jax.make_mesh((devices.N_DEVICES,), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded_leaves = 0
  for storage in (BF16_SR, INT8):
    tx = _tx(1e-2, rounding_seed=11, **storage)
    params = jax.device_put(_big_params(), replicated)
    host = _big_params()
    grads_seq = _bf16_grads(host, 5)
    state_sh = sharding.state_shardings(tx, params, shard_axis='data')
    zero_state = sharding.init_sharded(tx, params, shard_axis='data')
    zero_step = jax.jit(tx.update, out_shardings=(None, state_sh))
    plain_step, plain_state = jax.jit(tx.update), tx.init(host)
    for grads in grads_seq:
      u_zero, zero_state = zero_step(jax.device_put(grads, replicated), zero_state, params)
      u_plain, plain_state = plain_step(grads, plain_state, host)
      chex.assert_trees_all_equal(jax.tree.map(np.asarray, u_zero), u_plain)
      params = jax.jit(optax.apply_updates)(params, u_zero)
      host = jax.jit(optax.apply_updates)(host, u_plain)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, (params, zero_state)), (host, plain_state))
    moments = [x for x in jax.tree.leaves(zero_state) if x.ndim == 2 and x.shape[0] in (64, 128)]
    assert moments and all(not x.sharding.is_fully_replicated for x in moments)
    sharded_leaves += len(moments)
  return {'sharded_moment_leaves': sharded_leaves}


@CHECKS
def check_orbax_resume_is_bit_exact() -> dict:
  """Save bfloat16 params and a ZeRO-1 state mid-training, restore them into their abstract
  structure, go on: the same parameters and state, bit for bit, as a run that never stopped."""
  import orbax.checkpoint as ocp  # A slow import: only here.

  mesh = jax.make_mesh((devices.N_DEVICES,), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  grads_seq = _bf16_grads(_big_params(), 6)
  tx = _tx(1e-2, rounding_seed=5, **BF16_SR)
  params = jax.device_put(_big_params(), replicated)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def train(p, s, grads_seq):
    for g in grads_seq:
      p, s = step(p, s, g)
    return p, s

  fresh = lambda: (params, sharding.init_sharded(tx, params, shard_axis='data'))
  want = train(*fresh(), grads_seq)
  p, s = train(*fresh(), grads_seq[:3])
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  target = {
    'params': jax.tree.map(abstract, p),
    'state': sharding.abstract_state(tx, params, shard_axis='data'),
  }
  with tempfile.TemporaryDirectory() as tmp, ocp.StandardCheckpointer() as ckpt:
    ckpt.save(f'{tmp}/ckpt', {'params': p, 'state': s})
    ckpt.wait_until_finished()
    restored = ckpt.restore(f'{tmp}/ckpt', target)
  assert int(_rounding_state(restored['state']).count) == 3
  chex.assert_trees_all_equal(train(restored['params'], restored['state'], grads_seq[3:]), want)
  return {'restored_leaves': len(jax.tree.leaves(restored))}


def test_zero1_is_bit_identical(device_checks):
  assert device_checks.metrics('check_zero1_is_bit_identical')['sharded_moment_leaves'] > 0


def test_orbax_resume_is_bit_exact(device_checks):
  assert device_checks.metrics('check_orbax_resume_is_bit_exact')['restored_leaves'] > 0


def test_every_check_has_a_test():
  tests = {name[len('test_') :] for name in globals() if name.startswith('test_')}
  assert {name[len('check_') :] for name in CHECKS.functions} <= tests


def test_update_without_params_skips_the_rounding_of_float32_gradients_only():
  """optax's tx.update(grads, state): float32 gradients (float32 parameters, most likely)
  need no parameters; 16-bit ones are refused, naming params."""
  params = {'w': jnp.ones(8)}
  tx = adabelief_jax.adabelief(1e-3)
  without, _ = tx.update(params, tx.init(params))
  chex.assert_trees_all_equal(without, tx.update(params, tx.init(params), params)[0])
  params = _bf16_params()
  with pytest.raises(ValueError, match=r'pass params to update'):
    tx.update(_bf16_grads(params, 1)[0], tx.init(params))


def test_adabelief_with_16bit_gradients_is_exact_where_r_minus_p_is_16bit():
  """adabelief returns its updates in the gradients' dtype (for optax.apply_if_finite):
  with bfloat16 gradients, u' = r - p is rounded to bfloat16. Where it is a bfloat16
  (always where p and r have one sign and |r| / |p| is in [1/2, 2], Sterbenz's lemma,
  so every update below half the parameter), apply_updates still gives r exactly;
  elsewhere (an update that crosses zero, or cancels most of the parameter, or exceeds
  it) at most one bfloat16 step of r or of u' away from it: the precision of any
  bfloat16 update."""
  rng = np.random.default_rng(7)
  p = (rng.choice([-1, 1], 200_000) * 10.0 ** rng.uniform(-6, 2, 200_000)).astype(
    ml_dtypes.bfloat16
  )
  u = p.astype(np.float32) * rng.choice([-1, 1], p.size) * 10.0 ** rng.uniform(-6, 1, p.size)
  bits = _bits(p.shape, seed=0, count=1, leaf=0)
  r = _model_round(_add32(p.astype(np.float32), u), ml_dtypes.bfloat16, bits).astype(np.float32)
  u16 = jax.jit(lambda p, u, b: rounded_update(p, u, b).astype(jnp.bfloat16))(p, u, bits)
  got = np.asarray(optax.apply_updates(jnp.asarray(p), u16), np.float32)
  exact = (r - p.astype(np.float32)).astype(ml_dtypes.bfloat16).astype(np.float32) == (
    r - p.astype(np.float32)
  )
  sterbenz = (
    (np.sign(r) == np.sign(p.astype(np.float32)))
    & (np.abs(r) <= 2 * np.abs(p.astype(np.float32)))
    & (np.abs(p.astype(np.float32)) <= 2 * np.abs(r))
  )
  assert np.all(exact[sterbenz])
  np.testing.assert_array_equal(got[exact], r[exact])
  assert 0 < np.sum(~exact) < np.sum(exact)  # Both regions are met.
  spacing = lambda x: np.abs(np.spacing(np.asarray(x, ml_dtypes.bfloat16)).astype(np.float32))
  step = np.maximum(spacing(r), spacing(u16))
  assert np.all(np.abs(got - r)[~exact] <= step[~exact])
