"""Tests of adabelief_jax.scale_by_belief: the math, the dtypes, the JAX transforms."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest

import adabelief_jax
from adabelief_jax import BeliefState, scale_by_belief
from tests import devices, reference
from tests.helpers import leaves64, maybe_jit, random_grads, relative_error, tree_of

STEPS = 100

OPTION_GRID = [
  dict(zip(('amsgrad', 'rectify', 'degenerate_to_sgd', 'nesterov'), flags))
  for flags in itertools.product([False, True], repeat=4)
  if flags[1] or flags[2]  # degenerate_to_sgd only matters with rectify
]


def run_direction(tx, grads_seq, params, jit):
  """The sequence of scale_by_belief outputs for a fixed gradient sequence."""
  state = tx.init(params)
  update = maybe_jit(tx.update, jit)
  outputs = []
  for grads in grads_seq:
    u, state = update(grads, state)
    outputs.append(u)
  return outputs, state


@pytest.mark.parametrize(
  'options', OPTION_GRID, ids=lambda o: '-'.join(k for k, v in o.items() if v) or 'plain'
)
@pytest.mark.parametrize(
  'hyper',
  [
    dict(b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16),
    dict(b1=0.5, b2=0.99, eps=1e-8, eps_root=1e-12),
  ],
  ids=['default', 'other'],
)
def test_matches_float64_oracle(options, hyper):
  params = tree_of(np.float32)
  grads_seq = random_grads(params, STEPS, seed=1)
  tx = scale_by_belief(**hyper, **options)
  outputs, _ = run_direction(tx, grads_seq, params, jit=True)
  oracle = reference.BeliefOracle(leaves64(params), **hyper, **options)
  worst = 0.0
  for step, (grads, got) in enumerate(zip(grads_seq, outputs), start=1):
    want = oracle.direction([np.asarray(g, np.float64) for g in jax.tree.leaves(grads)])
    err = relative_error(jax.tree.leaves(got), want)
    worst = max(worst, err)
    assert err < 1e-5, f'step {step}: relative error {err:.3g}'
  assert worst > 0.0  # float32 vs float64: identical results would mean no real comparison


# eps (1e-4) against sqrt(s_hat) of about 1e-3, and eps_root (1e-8 a step)
# against (1 - b2) |g - m|^2 of about 1e-8: both shape the direction here.
SMALL_GRADS = dict(b1=0.9, b2=0.99, eps=1e-4, eps_root=1e-8)


def _mutant_directions(params, grads_seq, **hyper):
  """The oracle's directions with eps not bias-corrected: eps / sqrt(1 - b2^t)."""
  states = [reference.LeafState.zeros_like(x) for x in leaves64(params)]
  out = []
  for t, grads in enumerate(grads_seq, start=1):
    eps = hyper['eps'] / np.sqrt(reference.bias_correction(hyper['b2'], t))
    steps = [
      reference.leaf_direction(state, g, t, **{**hyper, 'eps': eps})
      for state, g in zip(states, leaves64(grads))
    ]
    states = [state for _, state in steps]
    out.append([u for u, _ in steps])
  return out


@pytest.mark.parametrize('options', [dict(), dict(rectify=True), dict(amsgrad=True)])
def test_eps_terms_are_exact_in_float32(options):
  """eps_root and eps's bias correction are checked in float32, not only float64.

  With gradients of 1e-3, dropping eps_root or the bias correction of eps
  moves the direction by far more than the 1e-5 the float32 result must
  match the oracle to.
  """
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 50, seed=8, scale=1e-3)
  hyper = {**SMALL_GRADS, **options}
  outputs, _ = run_direction(scale_by_belief(**hyper), grads_seq, params, jit=True)
  exact = reference.BeliefOracle(leaves64(params), **hyper)
  no_eps_root = reference.BeliefOracle(leaves64(params), **{**hyper, 'eps_root': 0.0})
  mutants = _mutant_directions(params, grads_seq, **hyper)
  for got, grads, mutant in zip(outputs, grads_seq, mutants):
    g64 = leaves64(grads)
    want = exact.direction(g64)
    assert relative_error(jax.tree.leaves(got), want) < 1e-5
    if options.get('rectify') and exact.count < 6:
      continue  # Momentum-SGD steps: neither eps term is used.
    assert relative_error(no_eps_root.direction(g64), want) > 1e-3
    assert relative_error(mutant, want) > 1e-3


@pytest.mark.parametrize('options', OPTION_GRID[:4])
def test_float64_matches_oracle_tightly(options):
  with jax.enable_x64(True):
    params = tree_of(np.float64)
    grads_seq = random_grads(params, 30, seed=2)
    outputs, _ = run_direction(scale_by_belief(**options), grads_seq, params, jit=True)
    oracle = reference.BeliefOracle(leaves64(params), **options)
    for got, grads in zip(outputs, grads_seq):
      want = oracle.direction([np.asarray(g) for g in jax.tree.leaves(grads)])
      for g, w in zip(jax.tree.leaves(got), want):
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, w, rtol=1e-11)


@pytest.mark.parametrize('nesterov', [False, True])
@pytest.mark.parametrize('hyper', [dict(), dict(b1=0.8, b2=0.95, eps=1e-8, eps_root=1e-10)])
def test_matches_optax_scale_by_belief(nesterov, hyper):
  # In float64, where neither implementation's rounding hides a difference.
  with jax.enable_x64(True):
    params = tree_of(np.float64)
    grads_seq = random_grads(params, STEPS, seed=3)
    ours, _ = run_direction(scale_by_belief(nesterov=nesterov, **hyper), grads_seq, params, True)
    theirs, _ = run_direction(
      optax.scale_by_belief(nesterov=nesterov, **hyper), grads_seq, params, True
    )
    for a, b in zip(ours, theirs):
      chex.assert_trees_all_close(a, b, rtol=1e-10, atol=0)


def test_state_structure_and_amsgrad_placeholder():
  params = tree_of(np.float32)
  state = scale_by_belief().init(params)
  assert isinstance(state, BeliefState)
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  assert state.nu_max == optax.EmptyState()
  ams = scale_by_belief(amsgrad=True).init(params)
  assert jax.tree.structure(ams.nu_max) == jax.tree.structure(params)
  # Structure depends on configuration only: init of different values agrees.
  other = scale_by_belief().init(jax.tree.map(lambda p: p * 3, params))
  assert jax.tree.structure(other) == jax.tree.structure(state)


@pytest.mark.parametrize('jit', [False, True])
def test_amsgrad_keeps_running_max(jit):
  tx = scale_by_belief(b2=0.5, amsgrad=True)
  state = tx.init({'w': jnp.zeros(4)})
  update = maybe_jit(tx.update, jit)
  for g in (10.0, -10.0):  # large prediction errors: s peaks
    _, state = update({'w': jnp.full(4, g)}, state)
  peak = state.nu['w']
  for _ in range(10):  # gradients equal to the momentum: s decays, its max stays
    _, state = update(state.mu, state)
    assert np.all(state.nu_max['w'] >= state.nu['w'])
  np.testing.assert_array_equal(state.nu_max['w'], peak)
  assert np.all(state.nu_max['w'] > 100 * state.nu['w'])


# --- precision -------------------------------------------------------------


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize(
  'dtype,state_dtype',
  [
    (jnp.bfloat16, jnp.float32),
    (jnp.float16, jnp.float32),
    (jnp.float32, jnp.float32),
  ],
)
def test_dtypes_of_state_and_updates(jit, dtype, state_dtype):
  params = {'w': jnp.ones((3, 2), dtype), 'b': jnp.ones(2, dtype)}
  tx = scale_by_belief(amsgrad=True)
  state = tx.init(params)
  for leaf in jax.tree.leaves((state.mu, state.nu, state.nu_max)):
    assert leaf.dtype == state_dtype
  grads = jax.tree.map(lambda p: (p * 0.01).astype(dtype), params)
  u, state = maybe_jit(tx.update, jit)(grads, state)
  for leaf in jax.tree.leaves(u):  # float16's unscaled step can overflow: it stays float32.
    assert leaf.dtype == (jnp.float32 if dtype == jnp.float16 else dtype)
  for leaf in jax.tree.leaves((state.mu, state.nu, state.nu_max)):
    assert leaf.dtype == state_dtype


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_computes_in_float32(dtype):
  """16-bit gradients give the float64 oracle's numbers, computed in float32: rounded
  once at the end to bfloat16, or returned in float32 for float16 gradients (whose
  unscaled step could overflow)."""
  params = tree_of(np.float32)
  grads_seq = [
    jax.tree.map(lambda g: g.astype(dtype), g) for g in random_grads(params, 50, seed=4, scale=1e-3)
  ]
  half_params = jax.tree.map(lambda p: p.astype(dtype), params)
  outputs, state = run_direction(scale_by_belief(), grads_seq, half_params, True)
  oracle = reference.BeliefOracle(leaves64(params))
  eps16 = float(jnp.finfo(dtype).eps)
  for got, grads in zip(outputs, grads_seq):
    want = oracle.direction(
      [np.asarray(g.astype(jnp.float32), np.float64) for g in jax.tree.leaves(grads)]
    )
    if dtype == jnp.float16:
      assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(got))
      # float32 arithmetic: far below one 16-bit rounding (half an ulp of the step's scale).
      assert relative_error(jax.tree.leaves(got), want) <= eps16 / 2 / 100
    else:  # One rounding to bfloat16 at the end: half an ulp of the update's scale.
      assert relative_error(jax.tree.leaves(got), want) <= eps16 / 2 * 1.01
  # An s of about 1e-6 * 1e-3 would be zero or subnormal in float16: it is kept.
  assert all(np.all(np.asarray(s) > 0) for s in jax.tree.leaves(state.nu))


def test_explicit_state_dtypes():
  params = {'w': jnp.ones((4, 4), jnp.float32)}
  tx = scale_by_belief(mu_dtype=jnp.bfloat16, nu_dtype='float32')
  state = tx.init(params)
  assert state.mu['w'].dtype == jnp.bfloat16 and state.nu['w'].dtype == jnp.float32
  u, state = jax.jit(tx.update)({'w': jnp.full((4, 4), 0.1)}, state)
  assert state.mu['w'].dtype == jnp.bfloat16 and u['w'].dtype == jnp.float32


def test_complex_parameters_match_oracle():
  rng = np.random.default_rng(5)
  shape = (3, 4)
  params = {'z': jnp.zeros(shape, jnp.complex64)}
  tx = scale_by_belief()
  state = tx.init(params)
  assert state.mu['z'].dtype == jnp.complex64 and state.nu['z'].dtype == jnp.float32
  oracle = reference.BeliefOracle([np.zeros(shape, np.complex128)])
  update = jax.jit(tx.update)
  for _ in range(30):
    g = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    u, state = update({'z': jnp.asarray(g)}, state)
    (want,) = oracle.direction([g.astype(np.complex128)])
    assert u['z'].dtype == jnp.complex64
    assert relative_error(u['z'], want) < 1e-5


# --- JAX transformations and optax wrappers -----------------------------------


def test_none_leaves_pass_through():
  params = {'w': jnp.ones(3), 'frozen': None}
  tx = scale_by_belief()
  state = tx.init(params)
  u, state = jax.jit(tx.update)({'w': jnp.ones(3), 'frozen': None}, state)
  assert u['frozen'] is None and state.mu['frozen'] is None


def test_shape_dtype_struct_init():
  params = {'w': jax.ShapeDtypeStruct((5, 3), jnp.bfloat16)}
  state = scale_by_belief(amsgrad=True).init(params)
  assert state.mu['w'].shape == (5, 3) and state.mu['w'].dtype == jnp.float32
  shapes = jax.eval_shape(scale_by_belief().init, {'w': jnp.ones((5, 3))})
  assert shapes.nu['w'].shape == (5, 3)


def test_vmap_over_independent_problems():
  tx = scale_by_belief()
  grads = jnp.asarray(np.random.default_rng(6).normal(size=(4, 7)), jnp.float32)
  states = jax.vmap(tx.init)(grads)
  u, _ = jax.vmap(tx.update)(grads, states)
  for i in range(4):
    want, _ = tx.update(grads[i], tx.init(grads[i]))
    np.testing.assert_allclose(u[i], want, rtol=1e-6)


def test_scan_and_cond_match_python_loop():
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 20, seed=7)
  tx = scale_by_belief(rectify=True)
  loop, final = run_direction(tx, grads_seq, params, jit=False)
  stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads_seq)

  def body(state, grads):
    u, new_state = tx.update(grads, state)
    # cond: both branches return the same types; the taken one is the update.
    return jax.lax.cond(True, lambda: (new_state, u), lambda: (state, grads))

  scanned_final, scanned = jax.lax.scan(body, tx.init(params), stacked)
  for i, u in enumerate(loop):
    assert relative_error(jax.tree.map(lambda a, i=i: a[i], scanned), u) < 1e-6
  assert int(scanned_final.count) == int(final.count) == 20


def test_multisteps_accumulates_then_steps():
  params = {'w': jnp.zeros(3)}
  tx = optax.MultiSteps(scale_by_belief(), every_k_schedule=2)
  state = tx.init(params)
  g1, g2 = {'w': jnp.array([1.0, 2.0, 3.0])}, {'w': jnp.array([3.0, 2.0, 1.0])}
  u1, state = jax.jit(tx.update)(g1, state, params)
  assert np.all(u1['w'] == 0)
  u2, state = jax.jit(tx.update)(g2, state, params)
  mean = {'w': (g1['w'] + g2['w']) / 2}
  want, _ = scale_by_belief().update(mean, scale_by_belief().init(params))
  np.testing.assert_allclose(u2['w'], want['w'], rtol=1e-6)


def test_masked_and_multi_transform():
  params = {'w': jnp.ones(3), 'b': jnp.ones(2)}
  grads = {'w': jnp.full(3, 0.5), 'b': jnp.full(2, 0.5)}
  masked = optax.masked(scale_by_belief(), {'w': True, 'b': False})
  u, _ = jax.jit(masked.update)(grads, masked.init(params))
  np.testing.assert_allclose(u['b'], grads['b'])  # masked out: unchanged
  assert not np.allclose(u['w'], grads['w'])
  multi = optax.multi_transform(
    {'belief': scale_by_belief(), 'sgd': optax.identity()}, {'w': 'belief', 'b': 'sgd'}
  )
  u2, _ = jax.jit(multi.update)(grads, multi.init(params))
  np.testing.assert_allclose(u2['w'], u['w'])
  np.testing.assert_allclose(u2['b'], grads['b'])


def test_apply_if_finite_leaves_state_untouched_on_rejection():
  params = {'w': jnp.ones(3)}
  tx = optax.apply_if_finite(scale_by_belief(), max_consecutive_errors=3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  _, state = update({'w': jnp.full(3, 0.5)}, state, params)
  before = state.inner_state
  u, state = update({'w': jnp.array([1.0, jnp.nan, 1.0])}, state, params)
  assert np.all(u['w'] == 0)
  chex.assert_trees_all_equal(state.inner_state, before)
  assert int(state.notfinite_count) == 1


@pytest.mark.parametrize(
  'options',
  [dict(), dict(rectify=True, amsgrad=True), dict(nesterov=True)],
  ids=['plain', 'rectify-amsgrad', 'nesterov'],
)
def test_differentiable_through_update(options):
  """Gradients through 8 updates (rectified steps adaptive from step 6) match finite differences."""
  with jax.enable_x64(True):
    tx = scale_by_belief(eps_root=1e-8, **options)
    params = {'w': jnp.array([0.3, -1.2, 2.0])}

    def loss(grads_w):
      state = tx.init(params)
      total = 0.0
      for k in range(8):
        u, state = tx.update({'w': grads_w * (1.0 + 0.3 * np.cos(k))}, state)
        total = total + jnp.sum(u['w'] ** 2)
      return total

    x = jnp.array([0.1, -0.4, 0.7])
    assert np.all(np.isfinite(jax.grad(loss)(x)))
    jax.test_util.check_grads(loss, (x,), order=1, modes=['fwd', 'rev'])


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
  'kwargs,name',
  [
    (dict(b1=1.0), 'b1'),
    (dict(b1=-0.1), 'b1'),
    (dict(b2=1.5), 'b2'),
    (dict(b2=float('nan')), 'b2'),
    (dict(eps=-1e-8), 'eps'),
    (dict(eps_root=-1.0), 'eps_root'),
    (dict(sma_threshold=4.0), 'sma_threshold'),
    (dict(b1=jnp.asarray(1.0)), 'b1'),
    (dict(mu_dtype=jnp.int32), 'mu_dtype'),
  ],
)
def test_invalid_hyperparameters_raise(kwargs, name):
  (value,) = kwargs.values()
  with pytest.raises(ValueError, match=name) as info:
    scale_by_belief(**kwargs)
  assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_traced_hyperparameters_are_not_checked_at_construction():
  @jax.jit
  def f(b1):
    tx = scale_by_belief(b1=b1)
    return tx.update({'w': jnp.ones(2)}, tx.init({'w': jnp.ones(2)}))[0]['w']

  assert np.all(np.isfinite(f(0.9)))


def test_structure_mismatch_shows_both_structures():
  tx = scale_by_belief()
  state = tx.init({'w': jnp.ones(2), 'b': jnp.ones(1)})
  with pytest.raises(ValueError) as info:
    tx.update({'w': jnp.ones(2)}, state)
  message = str(info.value)
  assert "'b'" in message and 'updates' in message and 'state' in message


@pytest.mark.parametrize('leaf', [jnp.array([1, 2]), jnp.array([True, False])])
def test_integer_and_boolean_leaves_name_their_path(leaf):
  tx = scale_by_belief()
  with pytest.raises(TypeError, match=r"\['layer'\]\['step'\]"):
    tx.init({'layer': {'step': leaf, 'w': jnp.ones(2)}})
  state = tx.init({'layer': {'step': jnp.ones(2), 'w': jnp.ones(2)}})
  with pytest.raises(TypeError, match=r"\['layer'\]\['step'\]"):
    tx.update({'layer': {'step': leaf, 'w': jnp.ones(2)}}, state)


# --- 8 devices (run in a child process: see tests/devices.py) -----------------

CHECKS = devices.Checks()


@CHECKS
def check_pmap_replicated_update():
  n = jax.local_device_count()
  assert n == devices.N_DEVICES, n
  tx = scale_by_belief()
  params = {'w': jnp.ones((n, 3))}
  state = jax.pmap(tx.init)(params)
  grads = {'w': jnp.arange(3.0 * n).reshape(n, 3)}
  u, state = jax.pmap(tx.update)(grads, state)
  for i in range(n):
    want, _ = tx.update({'w': grads['w'][i]}, tx.init({'w': params['w'][i]}))
    np.testing.assert_allclose(u['w'][i], want['w'], rtol=1e-6)


@CHECKS
def check_sharded_eager_init_keeps_shardings():
  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharding = jax.sharding.NamedSharding(mesh, jax.P(None, 'model'))
  params = {'w': jax.device_put(jnp.ones((6, 8)), sharding)}
  state = scale_by_belief(amsgrad=True).init(params)
  for leaf in (state.mu['w'], state.nu['w'], state.nu_max['w']):
    assert leaf.sharding.is_equivalent_to(sharding, 2)
  sds = {'w': jax.ShapeDtypeStruct((6, 8), jnp.float32, sharding=sharding)}
  assert scale_by_belief().init(sds).mu['w'].sharding.is_equivalent_to(sharding, 2)


@CHECKS
def check_explicit_axes_state_types_are_stable():
  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  tx = adabelief_jax.adabelief(1e-3, weight_decay=1e-2, amsgrad=True, rectify=True)
  with jax.set_mesh(mesh):
    params = {
      'w': jax.device_put(jnp.ones((6, 8)), jax.P(None, 'model')),
      'b': jax.device_put(jnp.ones((8,)), jax.P('model')),
    }
    state = jax.jit(tx.init)(params)
    grads = jax.tree.map(lambda p: p * 0.1, params)
    _, new_state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, state)
    mu = state[0].mu
    assert jax.typeof(mu['w']) == jax.typeof(params['w'])


def test_pmap_replicated_update(device_checks):
  device_checks.metrics('check_pmap_replicated_update')


def test_sharded_eager_init_keeps_shardings(device_checks):
  device_checks.metrics('check_sharded_eager_init_keeps_shardings')


def test_explicit_axes_state_types_are_stable(device_checks):
  device_checks.metrics('check_explicit_axes_state_types_are_stable')
