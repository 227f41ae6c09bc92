"""Low-memory optimizer state: stochastic rounding, 8-bit blocks, and every composition.

The float64 oracle (tests/reference.py) models round-to-nearest storage
exactly; stochastic rounding is tested for what it promises: unbiased (the
mean of many roundings of a value is the value, within the statistical
bound), deterministic for a seed, different across seeds, steps and leaves,
and the same on 8 devices under ZeRO-1 as on one.
"""

from __future__ import annotations

import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import adabelief_jax
from adabelief_jax import _quantize, _rounding, scale_by_belief, sharding
from tests import devices, reference
from tests.helpers import leaves64, maybe_jit

# Dtypes as strings: optax.inject_hyperparams would call a class like jnp.bfloat16.
BF16_SR = dict(mu_dtype='bfloat16', nu_dtype='bfloat16')
INT8 = dict(mu_dtype='int8', nu_dtype='int8', quantization_block_size=64)
STATES = {'bf16-sr': BF16_SR, 'int8': INT8}


def _params(seed: int = 0) -> dict[str, jax.Array]:
  """A matrix large enough for 8-bit blocks (two of them per row), and a small bias."""
  rng = np.random.default_rng(seed)
  return {
    'w': jnp.asarray(rng.normal(size=(48, 100)), jnp.float32),
    'b': jnp.asarray(rng.normal(size=(100,)), jnp.float32),
  }


def _grads(params, steps: int, seed: int = 1) -> list:
  rng = np.random.default_rng(seed)
  return [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 1e-2, p.dtype), params)
    for _ in range(steps)
  ]


def _run(tx, params, grads_seq, jit: bool = True):
  state, update = tx.init(params), maybe_jit(tx.update, jit)
  outputs = []
  for grads in grads_seq:
    u, state = update(grads, state, params)
    outputs.append(u)
  return outputs, state


# --- round to nearest: the oracle's storage models, element by element ------


EPS32 = 2.0**-24


def _tie_gap(
  x: np.ndarray, fmt: str, kind: str, scales: np.ndarray | None, block: int
) -> np.ndarray:
  """The absolute distance from each float64 value to the nearest rounding tie of ``fmt``.

  A tie is the midpoint of two neighbouring stored values: bfloat16 (or the
  float32 of small 8-bit leaves) values, or an 8-bit block's code values
  times its scale.
  """
  if fmt == 'bfloat16' or scales is None:
    bits = reference.SIGNIFICANT_BITS['float32' if fmt == 'int8' else fmt]
    fraction, exponent = np.frexp(x)
    scaled = np.abs(np.ldexp(fraction, bits))
    return np.abs(scaled - np.floor(scaled) - 0.5) * np.ldexp(1.0, exponent - bits)
  values = reference.int8_values(kind)
  middles = (values[1:] + values[:-1]) / 2
  scale = reference.per_element(scales, block, x.shape[-1])
  v = np.abs(x) / np.where(scale > 0, scale, 1)
  nearest = np.abs(v[..., None] - middles).min(axis=-1)
  return nearest * scale


def _rounds_either_way(raw, error, fmt, kind, scales, block) -> np.ndarray:
  """Where float32 arithmetic (absolute error up to ``error``) may round otherwise than float64."""
  return _tie_gap(raw, fmt, kind, scales, block) <= error + 1e-6 * np.abs(raw)


def _stored(moment) -> list:
  """A moment tree's per-leaf stored moments: _quantize.Blocks, or float arrays."""
  if isinstance(moment, _quantize.QuantizedMoment):
    return _quantize.leaves(moment, jax.tree.structure(moment.codes))
  return jax.tree.leaves(moment)


def _decoded(moment) -> list[np.ndarray]:
  """The stored moments' values, float64, leaf by leaf (8-bit blocks decoded)."""
  return [
    np.asarray(_quantize.decode(x) if isinstance(x, _quantize.Blocks) else x, np.float64)
    for x in _stored(moment)
  ]


def _scales(moment) -> list[np.ndarray | None]:
  """The block scales of 8-bit leaves (None for float ones), leaf by leaf."""
  return [
    np.asarray(x.scales, np.float64) if isinstance(x, _quantize.Blocks) else None
    for x in _stored(moment)
  ]


def _oracle_states(state, amsgrad: bool) -> list:
  """Our state as the oracle's leaf states (values decoded, block scales kept)."""
  nu_max = state.nu_max if amsgrad else state.nu
  trees = (state.mu, state.nu, nu_max)
  columns = [*map(_decoded, trees), *map(_scales, trees)]
  return [reference.LeafState(*leaf) for leaf in zip(*columns)]


@pytest.mark.parametrize('fmt', ['bfloat16', 'int8'])
@pytest.mark.parametrize(
  'options', [dict(), dict(amsgrad=True, nesterov=True)], ids=['plain', 'amsgrad-nesterov']
)
def test_round_to_nearest_state_matches_oracle(fmt, options):
  """Step by step from the same state, the stored m and s are the oracle's rounded
  values, and the direction uses them (not the values before rounding).

  The oracle rounds float64 values; ours are float32, so an element may round
  the other way only when its value lies within float32 error of a tie.
  """
  block = 32
  params = _params()

  grads_seq = _grads(params, 25)
  dtype = jnp.int8 if fmt == 'int8' else jnp.bfloat16
  storage = dict(mu_dtype=dtype, nu_dtype=dtype, stochastic_rounding=False)
  tx = scale_by_belief(**options, **storage, quantization_block_size=block)
  hyper = dict(options, mu_format=fmt, nu_format=fmt, quantization_block_size=block)
  oracle = reference.BeliefOracle(leaves64(params), **hyper)
  state, update = tx.init(params), jax.jit(tx.update)
  for step, grads in enumerate(grads_seq, start=1):
    oracle.states = _oracle_states(state, bool(options.get('amsgrad')))
    before, g64 = oracle.states, leaves64(grads)
    want = oracle.direction(g64)
    u, state = update(grads, state)
    for got, new in zip(_oracle_states(state, bool(options.get('amsgrad'))), oracle.states):
      for name in ('mu_scales', 'nu_scales', 'nu_max_scales'):
        if getattr(new, name) is not None:  # 8-bit blocks: the oracle's bounds.
          np.testing.assert_allclose(getattr(got, name), getattr(new, name), rtol=1e-6)
    leaves = zip(
      _decoded(state.mu), _decoded(state.nu), jax.tree.leaves(u), before, oracle.states, g64, want
    )
    for got_m, got_s, got_u, prev, new, g, want_u in leaves:
      # The values before rounding, and bounds of float32's error on them (m
      # may cancel: its error is relative to its terms, not to itself).
      m = reference.update_first_moment(prev.mu, g, 0.9)
      m_error = 4 * EPS32 * (np.abs(0.9 * prev.mu) + np.abs(0.1 * g))
      d = g - new.mu
      s = reference.update_belief(prev.nu, g, new.mu, 0.999, 1e-16)
      s_error = 4 * EPS32 * (s + 0.002 * np.abs(d) * (np.abs(g) + np.abs(new.mu)))
      m_differs = ~np.isclose(got_m, new.mu, rtol=1e-5, atol=0)  # Far below a code step.
      s_differs = ~np.isclose(got_s, new.nu, rtol=1e-5, atol=0) & ~m_differs
      m_ties = _rounds_either_way(m, m_error, fmt, 'signed', new.mu_scales, block)
      s_ties = _rounds_either_way(s, s_error, fmt, 'nonnegative', new.nu_scales, block)
      assert np.all(m_ties[m_differs]) and np.all(s_ties[s_differs]), step
      # Where the stored values agree, so does the direction that uses them.
      agree = ~(m_differs | s_differs)
      error = np.abs(np.asarray(got_u, np.float64) - want_u)[agree]
      assert np.max(error, initial=0) <= 1e-5 * np.max(np.abs(want_u)), step


# --- stochastic rounding ------------------------------------------------------


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize('value', [1.0 + 2**-12, -3.3e-3, 7.1e-6, 6.5e-8])
def test_stochastic_rounding_is_unbiased(dtype, value):
  """The mean of a million roundings is the value, to within 5 standard errors."""
  n = 1_000_000
  x = jnp.full((n,), value, jnp.float32)
  bits = _rounding.random_bits16((n,), 0, jnp.int32(3), 0, 1)[0]
  y = np.asarray(_rounding.round_to(x, jnp.dtype(dtype), bits), np.float64)
  low, high = np.min(y), np.max(y)
  assert set(np.unique(y)) == {low, high}, 'two neighbours, and only them'
  assert low <= float(x[0]) <= high
  p = (float(x[0]) - low) / (high - low)
  standard_error = (high - low) * np.sqrt(p * (1 - p) / n)
  assert abs(y.mean() - float(x[0])) < 5 * standard_error


def test_rounding_bits_depend_on_seed_step_leaf_and_stream():
  shape = (1000,)
  base = _rounding.random_bits(shape, 0, jnp.int32(1), 0, 0)
  np.testing.assert_array_equal(base, _rounding.random_bits(shape, 0, jnp.int32(1), 0, 0))
  for other in [
    _rounding.random_bits(shape, 1, jnp.int32(1), 0, 0),
    _rounding.random_bits(shape, 0, jnp.int32(2), 0, 0),
    _rounding.random_bits(shape, 0, jnp.int32(1), 1, 0),
    _rounding.random_bits(shape, 0, jnp.int32(1), 0, 1),
  ]:
    agree = np.mean(np.asarray(other) == np.asarray(base))
    assert agree < 0.01
    # Each bit is a fair coin: about half of the elements have it set.
    bit_means = [np.mean((np.asarray(other) >> k) & 1) for k in range(32)]
    assert all(0.4 < m < 0.6 for m in bit_means), bit_means


@pytest.mark.parametrize('state', STATES)
def test_runs_are_deterministic_and_seed_dependent(state):
  params = _params()
  grads_seq = _grads(params, 5)
  run = lambda seed: _run(scale_by_belief(**STATES[state], rounding_seed=seed), params, grads_seq)
  (u0, s0), (u0_again, s0_again), (_, s1) = run(0), run(0), run(1)
  chex.assert_trees_all_equal((u0, s0), (u0_again, s0_again))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)))


def test_stochastic_rounding_keeps_bfloat16_s_decaying():
  """After one large prediction error and then a constant gradient, s decays by
  b2 = 0.999 a step. To nearest, bf16 rounds 0.999 s back to s: s stops
  decaying. Stochastically, it follows float32 state on average."""
  params = {'w': jnp.zeros((4096,))}
  grads = [{'w': jnp.full((4096,), 20.0)}] + [{'w': jnp.full((4096,), 0.5)}] * 999
  mean_s = {}
  for name, storage in [
    ('float32', {}),
    ('nearest', dict(**BF16_SR, stochastic_rounding=False)),
    ('stochastic', BF16_SR),
  ]:
    _, state = _run(scale_by_belief(**storage), params, grads)
    mean_s[name] = float(np.mean(np.asarray(state.nu['w'], np.float64)))
  assert abs(mean_s['stochastic'] / mean_s['float32'] - 1) < 0.01, mean_s
  assert mean_s['nearest'] / mean_s['float32'] > 2, mean_s


# --- every composition, with bf16 (stochastic rounding) and 8-bit state ------


@pytest.fixture(params=list(STATES))
def storage(request) -> dict:
  return STATES[request.param]


def test_state_is_a_pytree_whose_structure_depends_on_configuration_only(storage):
  params = _params()
  state = scale_by_belief(**storage, amsgrad=True).init(params)
  other = scale_by_belief(**storage, amsgrad=True).init(jax.tree.map(lambda p: 3 * p, params))
  assert jax.tree.structure(state) == jax.tree.structure(other)
  for moment in (state.mu, state.nu, state.nu_max):
    if storage is INT8:  # The matrix in 8-bit blocks (two per row: 64 + 36), the bias in float32.
      assert isinstance(moment, _quantize.QuantizedMoment)
      w, b = moment.codes['w'], moment.codes['b']
      assert w.shape == (48, 100) and w.dtype == (jnp.int8 if moment is state.mu else jnp.uint8)
      assert moment.scales['w'].shape == (48, 2) and moment.scales['w'].dtype == jnp.float32
      assert b.dtype == jnp.float32 and moment.scales['b'].shape == ()
    else:
      assert moment['w'].dtype == moment['b'].dtype == jnp.bfloat16
  abstract = jax.eval_shape(scale_by_belief(**storage).init, params)
  assert jax.tree.structure(abstract) == jax.tree.structure(scale_by_belief(**storage).init(params))
  # The 8-bit block size belongs to the structure: states of other sizes do not mix.
  if storage is INT8:
    other_blocks = scale_by_belief(**{**storage, 'quantization_block_size': 32}).init(params)
    assert jax.tree.structure(other_blocks) != jax.tree.structure(state)


def test_jit_and_eager_agree(storage):
  params = _params()
  grads_seq = _grads(params, 4)
  tx = scale_by_belief(**storage)
  jitted, jit_state = _run(tx, params, grads_seq, jit=True)
  eager, eager_state = _run(tx, params, grads_seq, jit=False)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(jit_state, eager_state, rtol=1e-5, atol=1e-7)


def test_vmap_over_independent_problems(storage):
  tx = scale_by_belief(**storage)
  batch = jnp.stack([_params(seed)['w'] for seed in range(3)])
  grads = batch * 0.01
  u, states = jax.vmap(tx.update)(grads, jax.vmap(tx.init)(batch))
  for i in range(3):
    want, state = tx.update(grads[i], tx.init(batch[i]))
    chex.assert_trees_all_equal(u[i], want)
    chex.assert_trees_all_equal(jax.tree.map(lambda x, i=i: x[i], states), state)


def test_multisteps_steps_with_the_mean_gradient(storage):
  params = _params()
  g1, g2 = _grads(params, 2)
  tx = optax.MultiSteps(scale_by_belief(**storage), every_k_schedule=2)
  state = tx.init(params)
  update = jax.jit(tx.update)
  u1, state = update(g1, state, params)
  assert all(np.all(x == 0) for x in jax.tree.leaves(u1))
  u2, state = update(g2, state, params)
  inner = scale_by_belief(**storage)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  want, want_state = jax.jit(inner.update)(mean, inner.init(params))
  # MultiSteps averages in its own order: an element may round the other way.
  chex.assert_trees_all_close(u2, want, rtol=1e-2, atol=0)
  chex.assert_trees_all_close(
    _decoded(state.inner_opt_state), _decoded(want_state), rtol=1e-2, atol=1e-12
  )


def test_masked_leaves_pass_through(storage):
  params = _params()
  (grads,) = _grads(params, 1)
  tx = optax.masked(scale_by_belief(**storage), {'w': True, 'b': False})
  u, _ = jax.jit(tx.update)(grads, tx.init(params))
  chex.assert_trees_all_equal(u['b'], grads['b'])
  alone = scale_by_belief(**storage)
  want, _ = jax.jit(alone.update)({'w': grads['w']}, alone.init({'w': params['w']}))
  chex.assert_trees_all_equal(u['w'], want['w'])


def test_inject_hyperparams_matches_constants(storage):
  """Injected (traced) hyperparameters give the constants' steps; an 8-bit block
  size must then be static."""
  params = _params()
  grads_seq = _grads(params, 5)
  make = optax.inject_hyperparams(adabelief_jax.adabelief, static_args=('quantization_block_size',))
  injected, _ = _run(make(learning_rate=1e-2, **storage), params, grads_seq)
  constant, _ = _run(adabelief_jax.adabelief(1e-2, **storage), params, grads_seq)
  # float32 hyperparameters (injected) against float64 ones: an element may
  # round the other way at a tie, moving its step by one storage step; no more.
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  differ = ~np.isclose(flat(injected), flat(constant), rtol=1e-5, atol=1e-9)
  assert differ.mean() < 0.01, differ.mean()
  with pytest.raises(ValueError, match="mu_dtype='bfloat16'"):
    tx = optax.inject_hyperparams(adabelief_jax.adabelief)(
      learning_rate=1e-2, mu_dtype=jnp.bfloat16
    )
    tx.init(params)
  if storage is INT8:
    with pytest.raises(ValueError, match='quantization_block_size'):
      tx = optax.inject_hyperparams(adabelief_jax.adabelief)(learning_rate=1e-2, **storage)
      jax.jit(tx.init)(params)


def test_apply_if_finite_keeps_the_state_on_rejection(storage):
  params = _params()
  (grads,) = _grads(params, 1)
  tx = optax.apply_if_finite(scale_by_belief(**storage), max_consecutive_errors=3)
  update = jax.jit(tx.update)
  _, state = update(grads, tx.init(params), params)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
  u, rejected = update(bad, state, params)
  assert all(np.all(x == 0) for x in jax.tree.leaves(u))
  chex.assert_trees_all_equal(rejected.inner_state, state.inner_state)
  assert int(rejected.notfinite_count) == 1


# --- 8 devices (run in a child process: see tests/devices.py) -----------------

CHECKS = devices.Checks()


def _big_params() -> dict[str, np.ndarray]:
  """Leaves for 8-bit blocks whose rows split over 8 devices, and a small bias."""
  rng = np.random.default_rng(2)
  shapes = {'w': (64, 128), 'v': (128, 40), 'b': (128,)}
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _zero1_against_one_device(storage: dict) -> dict:
  """The same gradients through a ZeRO-1 state on 8 devices and a plain one: bit-identical."""
  mesh = jax.make_mesh((devices.N_DEVICES,), ('data',))
  params = jax.device_put(_big_params(), NamedSharding(mesh, PartitionSpec()))
  grads_seq = _grads(params, 6)
  tx = adabelief_jax.adabelief(1e-2, weight_decay=1e-2, amsgrad=True, **storage)
  state_sh = sharding.state_shardings(tx, params, shard_axis='data')
  zero_state = sharding.init_sharded(tx, params, shard_axis='data')
  step = jax.jit(tx.update, out_shardings=(None, state_sh))
  plain = jax.jit(tx.update)
  host = jax.tree.map(np.asarray, params)
  plain_state = tx.init(host)
  for grads in grads_seq:
    u_zero, zero_state = step(grads, zero_state, params)
    u_plain, plain_state = plain(jax.tree.map(np.asarray, grads), plain_state, host)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, u_zero), jax.tree.map(np.asarray, u_plain))
  chex.assert_trees_all_equal(
    jax.tree.map(np.asarray, zero_state), jax.tree.map(np.asarray, plain_state)
  )
  moments = [x for x in jax.tree.leaves(zero_state) if x.ndim == 2 and x.shape[0] in (64, 128)]
  assert all(not x.sharding.is_fully_replicated for x in moments)
  return {'sharded_moment_leaves': len(moments)}


@CHECKS
def check_zero1_bf16_stochastic_rounding_is_bit_identical() -> dict:
  return _zero1_against_one_device(BF16_SR)


@CHECKS
def check_zero1_int8_is_bit_identical() -> dict:
  return _zero1_against_one_device(INT8)


def test_zero1_bf16_stochastic_rounding_is_bit_identical(device_checks):
  assert (
    device_checks.metrics('check_zero1_bf16_stochastic_rounding_is_bit_identical')[
      'sharded_moment_leaves'
    ]
    > 0
  )


def test_zero1_int8_is_bit_identical(device_checks):
  assert device_checks.metrics('check_zero1_int8_is_bit_identical')['sharded_moment_leaves'] > 0


@CHECKS
def check_pmap_matches_one_device() -> dict:
  """pmap over 8 replicas: each replica's step is the one-device step, bit for bit."""
  n = jax.local_device_count()
  for storage in STATES.values():
    tx = scale_by_belief(**storage)
    params = _big_params()
    grads = _grads(params, 1)[0]
    stack = lambda tree: jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), tree)
    u, states = jax.pmap(tx.update)(stack(grads), jax.pmap(tx.init)(stack(params)))
    want, state = jax.jit(tx.update)(grads, tx.init(params))
    for i in range(n):
      chex.assert_trees_all_equal(jax.tree.map(lambda x, i=i: np.asarray(x)[i], u), want)
      chex.assert_trees_all_equal(jax.tree.map(lambda x, i=i: np.asarray(x)[i], states), state)
  return {'replicas': n}


@CHECKS
def check_orbax_resume_is_bit_exact() -> dict:
  """Save a ZeRO-1 state mid-training, restore it into its abstract state, go on:
  the same parameters and state, bit for bit, as training that never stopped."""
  import orbax.checkpoint as ocp  # A slow import: only here.

  mesh = jax.make_mesh((devices.N_DEVICES,), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  grads_seq = _grads(_big_params(), 8)
  restored_leaves = 0
  for storage in STATES.values():
    tx = adabelief_jax.adabelief(1e-2, **storage)
    params = jax.device_put(_big_params(), replicated)
    step = jax.jit(
      lambda p, s, g, tx=tx: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p))
    )

    def train(p, s, grads_seq, step=step):
      for g in grads_seq:
        p, s = step(p, s, g)
      return p, s

    fresh = lambda tx=tx, params=params: (
      params,
      sharding.init_sharded(tx, params, shard_axis='data'),
    )
    want = train(*fresh(), grads_seq)
    p, s = train(*fresh(), grads_seq[:3])
    with tempfile.TemporaryDirectory() as tmp, ocp.StandardCheckpointer() as ckpt:
      ckpt.save(f'{tmp}/ckpt', s)
      ckpt.wait_until_finished()
      restored = ckpt.restore(f'{tmp}/ckpt', sharding.abstract_state(tx, params, shard_axis='data'))
    restored_leaves += len(jax.tree.leaves(restored))
    chex.assert_trees_all_equal(train(p, restored, grads_seq[3:]), want)
  return {'restored_leaves': restored_leaves}


def test_pmap_matches_one_device(device_checks):
  assert device_checks.metrics('check_pmap_matches_one_device')['replicas'] == devices.N_DEVICES


def test_orbax_resume_is_bit_exact(device_checks):
  assert device_checks.metrics('check_orbax_resume_is_bit_exact')['restored_leaves'] > 0


# --- invalid input ------------------------------------------------------------


@pytest.mark.parametrize(
  'kwargs,name',
  [
    (dict(mu_dtype=jnp.int16), 'mu_dtype'),
    (dict(nu_dtype='uint8'), 'nu_dtype'),
    (dict(mu_dtype=jnp.float8_e4m3fn), 'mu_dtype'),
    (dict(nu_dtype=jnp.float8_e5m2), 'nu_dtype'),
    (dict(nu_dtype=jnp.complex64), 'nu_dtype'),
    (dict(nu_dtype=jnp.float16), 'nu_dtype'),
    (dict(mu_dtype='int4'), 'mu_dtype'),
    (dict(quantization_block_size=0), 'quantization_block_size'),
    (dict(quantization_block_size=-64), 'quantization_block_size'),
    (dict(quantization_block_size=2.5), 'quantization_block_size'),
    (dict(quantization_block_size='256'), 'quantization_block_size'),
    (dict(quantization_block_size=True), 'quantization_block_size'),
    (dict(rounding_seed=-1), 'rounding_seed'),
    (dict(rounding_seed=0.5), 'rounding_seed'),
  ],
)
def test_invalid_storage_arguments_name_themselves(kwargs, name):
  (value,) = kwargs.values()
  for make in (scale_by_belief, lambda **kw: adabelief_jax.adabelief(1e-3, **kw)):
    with pytest.raises(ValueError, match=name) as info:
      make(**kwargs)
    shown = {repr(value), str(value)}
    if name.endswith('_dtype') and not isinstance(value, str):
      shown.add(jnp.dtype(value).name)
    assert any(text in str(info.value) for text in shown), info.value


def test_complex_mu_is_accepted():
  params = {'z': jnp.ones(3, jnp.complex64)}
  assert scale_by_belief(mu_dtype=jnp.complex64).init(params).mu['z'].dtype == jnp.complex64


def test_flax_nnx_optimizer_with_cached_partial(storage):
  """nnx.Optimizer wraps each parameter's state in a Variable: every moment has
  an array at each parameter's place, so the state survives NNX's graph
  round trips (cached_partial), and the steps are those of a plain loop."""
  from flax import nnx

  model = nnx.Linear(64, 128, rngs=nnx.Rngs(0))
  graphdef, plain = nnx.split(nnx.clone(model))  # A copy: the model's Variables change.
  tx = adabelief_jax.adabelief(1e-2, **storage)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 64)), jnp.float32)
  loss = lambda model: jnp.mean(jnp.square(model(x) - 1.0))

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(loss)(model))

  cached = nnx.cached_partial(step, model, optimizer)
  for _ in range(3):
    cached()
  # The same three steps on plain pytrees.
  state = tx.init(plain)
  for _ in range(3):
    grads = jax.grad(lambda p: loss(nnx.merge(graphdef, p)))(plain)
    updates, state = jax.jit(tx.update)(grads, state, plain)
    plain = optax.apply_updates(plain, updates)
  chex.assert_trees_all_close(nnx.split(model)[1], plain, rtol=1e-6, atol=1e-7)


# --- memory of the donated step -----------------------------------------------


@pytest.mark.parametrize(
  'shape',
  [(64, 256), (64, 512), (8, 5000), (30000,), (4, 16, 300)],
  ids=['rows-of-1-block', 'rows-of-2-blocks', 'many-blocks-ragged', '1d', '3d'],
)
@pytest.mark.parametrize(
  'storage',
  [INT8 | {'quantization_block_size': 256}, dict(mu_dtype='int8'), dict(nu_dtype='int8')],
  ids=['int8', 'int8-mu', 'int8-nu'],
)
def test_8bit_state_is_updated_in_place(storage, shape):
  """The donated step (update and apply_updates) writes the new codes over the
  old ones and reads them back: no temporary buffer of a size proportional to
  the parameter, on XLA:CPU's memory analysis (a copy of the old codes alone
  would be a quarter of the parameter's bytes)."""
  for amsgrad in (False, True):
    tx = adabelief_jax.adabelief(1e-3, amsgrad=amsgrad, **storage)
    params = {'w': jax.ShapeDtypeStruct(shape, jnp.float32)}
    state = jax.eval_shape(tx.init, params)

    def step(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    param_bytes = 4 * np.prod(shape)
    assert compiled.memory_analysis().temp_size_in_bytes < 0.1 * param_bytes, amsgrad


# --- non-finite gradients, odd shapes, float16 (issue 17) ----------------------


@pytest.mark.parametrize('branch', ['cpu', 'default'])
@pytest.mark.parametrize(
  'storage',
  [dict(mu_dtype='int8', nu_dtype='int8'), dict(mu_dtype='int8'), dict(nu_dtype='int8')],
  ids=['int8', 'int8-mu', 'int8-nu'],
)
def test_a_non_finite_gradient_affects_its_element_alone(storage, branch, monkeypatch):
  """As with float32 state, the element with an inf or NaN gradient gets a
  non-finite step, now and later, and every other element a finite one. Its
  block's other elements keep their 8-bit moments for that one step (the
  block's new scale, bounded from the bad gradient, is not finite), then go on
  as with finite gradients: their steps stay as close to a clean run's as 8-bit
  storage allows. With a float32 m (int8-nu), the bad element's m stays
  non-finite, and so does the bound of its block's s, which keeps its other
  elements' s as they were (their steps stay finite). Both branches of the block
  maximum (a reduce-window on CPU, a reshape elsewhere) are run."""
  if branch == 'default':  # The accelerators' branch, run on this CPU.
    monkeypatch.setattr(_quantize, '_windows', _quantize._rows)
  rng = np.random.default_rng(0)
  shape = (8, 512)
  grads = [rng.normal(size=shape).astype(np.float32) for _ in range(8)]
  bad = [g.copy() for g in grads]
  where = [(0, 3), (1, 300), (2, 5)]
  for (i, j), value in zip(where, [np.inf, np.nan, -np.inf]):
    bad[2][i, j] = value
  elsewhere = np.ones(shape, bool)
  elsewhere[tuple(np.array(where).T)] = False

  def run(grads_seq):
    tx = scale_by_belief(**storage)
    state, out = tx.init({'w': jnp.zeros(shape)}), []
    for g in grads_seq:
      u, state = jax.jit(tx.update)({'w': jnp.asarray(g)}, state)
      out.append(np.asarray(u['w']))
    return out

  clean = run(grads)
  for step, (got, want) in enumerate(zip(run(bad)[2:], clean[2:])):
    assert not np.any(np.isfinite(got[~elsewhere]))
    assert np.all(np.isfinite(got[elsewhere]))
    if 'nu_dtype' not in storage or 'mu_dtype' in storage:
      # 8-bit noise only, once the step of the bad gradient is past.
      tolerance = 0.3 if step == 0 else 0.05
      assert np.median(np.abs(got - want)[elsewhere]) < tolerance * np.median(np.abs(want))


def test_leaves_with_short_rows_stay_float32():
  """One float32 scale per block of 1 would take 5 bytes per element."""
  params = {'column': jnp.ones((4096, 1)), 'rows': jnp.ones((512, 8))}
  state = scale_by_belief(mu_dtype='int8', nu_dtype='int8').init(params)
  assert state.mu.codes['column'].dtype == jnp.float32
  assert state.mu.codes['rows'].dtype == jnp.int8
  with pytest.raises(ValueError, match='quantization_block_size'):
    scale_by_belief(mu_dtype='int8', quantization_block_size=4)


def test_8bit_state_of_float64_parameters_is_encoded_from_float32():
  with jax.enable_x64(True):
    params = {'w': jnp.ones((64, 128), jnp.float64)}
    grads = {'w': jnp.linspace(-1, 1, 64 * 128).reshape(64, 128)}
    int8 = scale_by_belief(mu_dtype='int8', nu_dtype='int8')
    u64, _ = int8.update(grads, int8.init(params))
  params, grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), (params, grads))
  u32, _ = int8.update(grads, int8.init(params))
  assert u64['w'].dtype == jnp.float64
  # The same codes: the step differs by float32 against float64 arithmetic.
  np.testing.assert_allclose(u64['w'], u32['w'], rtol=1e-5)


def test_float16_moments_underflow_where_bfloat16_does_not():
  """What the float16 refusals say, measured: a first moment (1 - b1) g of a
  gradient of 1e-7 is 1e-8, below float16's smallest value, 6e-8, so stochastic
  rounding stores it as 0 or 6e-8 (each draw 500% off), where bfloat16 keeps 8
  bits of it."""
  m = jnp.full(4096, 1e-8, jnp.float32)
  bits = _rounding.random_bits16(m.shape, 0, jnp.asarray(1), 0, 1)[0]
  f16 = np.asarray(_rounding.round_to(m, jnp.float16, bits), np.float32)
  bf16 = np.asarray(_rounding.round_to(m, jnp.bfloat16, bits), np.float32)
  assert set(np.unique(f16)) <= {0.0, float(np.float16(2**-24))}
  assert np.max(np.abs(bf16 - 1e-8)) < 1e-8 / 128
  for name in ('mu_dtype', 'nu_dtype'):
    with pytest.raises(ValueError, match=f'{name}=float16 would underflow.*bfloat16'):
      scale_by_belief(**{name: 'float16'})
