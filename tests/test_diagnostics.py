"""Belief statistics (track_stats=True) against a float64 NumPy computation, and in compositions."""

from __future__ import annotations

import re
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import adabelief_jax
from adabelief_jax import _storage, belief_stats, diagnostics, scale_by_belief, sharding
from tests import devices, reference
from tests.helpers import leaves64


def _params() -> dict[str, jax.Array]:
  """A small leaf (whole-leaf statistics) and one larger than the sample (diagnostics.SAMPLE)."""
  rng = np.random.default_rng(0)
  return {
    'small': jnp.asarray(rng.normal(size=(24, 40)), jnp.float32),
    'large': jnp.asarray(rng.normal(size=(100, 120)), jnp.float32),
  }


def _grads(params, steps: int, seed: int = 1) -> list:
  """Gradients whose sizes span decades, so that some elements are eps-dominated and some not."""
  rng = np.random.default_rng(seed)
  spread = jax.tree.map(lambda p: 10.0 ** rng.uniform(-7, -1, size=p.shape), params)
  return [
    jax.tree.map(
      lambda p, s: jnp.asarray(s * rng.normal(size=p.shape), jnp.float32), params, spread
    )
    for _ in range(steps)
  ]


@pytest.mark.parametrize(
  'options', [dict(), dict(amsgrad=True, rectify=True)], ids=['plain', 'amsgrad-rectify']
)
@pytest.mark.parametrize(
  'eps, eps_root',
  [(1e-4, 1e-16), (1e-10, 1e-8)],
  ids=['eps-outside-the-root', 'eps-root-floor'],
)
def test_stats_match_a_float64_computation_from_the_oracle(options, eps, eps_root):
  hyper = dict(b1=0.9, b2=0.99, eps=eps, eps_root=eps_root, **options)
  # Where the epsilons make up half the denominator: eps plus twice the
  # sqrt(s_hat) of a gradient that never deviates from its momentum.
  bound = eps + 2 * np.sqrt(eps_root / (1 - 0.99))
  params = _params()
  tx = scale_by_belief(**hyper, track_stats=True)
  oracle = reference.BeliefOracle(leaves64(params), **hyper)
  state, update = tx.init(params), jax.jit(tx.update)
  rng = np.random.default_rng(2)
  for t, grads in enumerate(_grads(params, 8), start=1):
    last = params  # Moved by a step of its own, which the next update measures.
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    _, state = update(grads, state, params)
    oracle.direction(leaves64(grads))
    stats = belief_stats(state)
    for name, leaf, p, p_last in zip(
      ('large', 'small'), oracle.states, leaves64(params), leaves64(last)
    ):
      s_hat = (leaf.nu_max if options.get('amsgrad') else leaf.nu) / reference.bias_correction(
        0.99, t
      )
      root = np.sqrt(s_hat)
      # Exact fraction, but for elements within float32 error of the boundary.
      near = np.abs(root - bound) < 1e-5 * bound
      got = float(stats[f'{name}/eps_dominated'])
      want = np.mean(root <= bound)
      assert abs(got - want) <= near.mean() + 1e-7, (t, name, got, want)
      assert 0 < want < 1  # Both regimes present: the check can fail either way.
      if name == 'small':  # The sample is the whole leaf: percentiles and RMS exact.
        np.testing.assert_allclose(
          float(stats['small/sqrt_s_hat_median']), np.median(root), rtol=1e-5
        )
        np.testing.assert_allclose(
          float(stats['small/sqrt_s_hat_p99']), np.percentile(root, 99), rtol=1e-5
        )
        step_rms = np.sqrt(np.mean((p - p_last) ** 2)) if t > 1 else np.nan
        np.testing.assert_allclose(float(stats['small/update_rms']), step_rms, rtol=1e-6)
        np.testing.assert_allclose(float(stats['small/param_rms']), np.sqrt(np.mean(p**2)), 1e-6)
      else:  # A strided sample of 12000: the estimates' ranks among all elements,
        # within 3.5 standard errors of a quantile of a random sample that size.
        median, p99 = (float(stats[f'large/sqrt_s_hat_{q}']) for q in ('median', 'p99'))
        for q, estimate in ((0.5, median), (0.99, p99)):
          tolerance = 3.5 * np.sqrt(q * (1 - q) / diagnostics.SAMPLE)
          assert abs(np.mean(root <= estimate) - q) < tolerance, (q, t)
    total = sum(np.size(x) for x in jax.tree.leaves(params))
    want_global = (
      sum(float(stats[f'{k}/eps_dominated']) * np.size(params[k]) for k in params) / total
    )
    np.testing.assert_allclose(float(stats['global/eps_dominated']), want_global, rtol=1e-6)
    if options.get('rectify'):
      assert float(stats['global/adaptive']) == float(reference.rho_t(0.99, t) >= 5.0)


@pytest.mark.parametrize('state_dtype', [None, 'bfloat16', 'int8'])
def test_tracking_changes_no_number_and_costs_no_state_when_off(state_dtype):
  """Also with low-memory state, whose eps-dominated fraction is that of the
  stored s (the s the step divides by)."""
  params = _params()
  grads_seq = _grads(params, 5)
  options = dict(mu_dtype=state_dtype, nu_dtype=state_dtype, eps=1e-6, eps_root=1e-16)
  runs = {}
  for track in (False, True):
    tx = adabelief_jax.adabelief(1e-2, weight_decay=1e-2, track_stats=track, **options)
    state, p = tx.init(params), params
    for g in grads_seq:
      u, state = jax.jit(tx.update)(g, state, p)
      p = optax.apply_updates(p, u)
    runs[track] = (p, state)
  chex.assert_trees_all_equal(runs[False][0], runs[True][0])
  chex.assert_trees_all_equal(runs[False][1][0][:4], runs[True][1][0][:4])
  assert runs[False][1][0].stats == optax.EmptyState()
  belief = runs[True][1][0]
  correction = 1 - 0.999 ** len(grads_seq)
  bound = 1e-6 * np.sqrt(correction) + 2 * np.sqrt(1e-16 * correction / 1e-3)
  nus = _storage.leaves(belief.nu, jax.tree.structure(params))
  for name, nu in zip(sorted(params), nus):
    s = np.asarray(_storage.load(nu, jnp.float32), np.float64)
    want = np.mean(s <= bound**2)
    assert 0.05 < want < 0.95  # Neither regime everywhere: the count is tested.
    assert float(belief_stats(runs[True][1])[f'{name}/eps_dominated']) == pytest.approx(
      want, abs=1e-6
    )


@pytest.mark.parametrize('mode', ['decoupled', 'fixed', 'l2'])
def test_update_rms_is_the_step_applied_since_the_last_update(mode):
  """update_rms is that of the change of the parameters between two updates,
  whatever made it: here the learning rate (a schedule) and the weight decay
  (masked) of adabelief in every decay mode, and optax.apply_updates."""
  rng = np.random.default_rng(0)
  params = {
    'w': jnp.asarray(rng.normal(size=(16, 32)), jnp.float32),
    'b': jnp.asarray(rng.normal(size=(32,)), jnp.float32),
  }
  tx = adabelief_jax.adabelief(
    optax.linear_schedule(1e-2, 1e-3, 4),
    weight_decay=0.5,
    weight_decay_mode=mode,
    weight_decay_mask={'w': True, 'b': False},
    track_stats=True,
  )
  state, update = tx.init(params), jax.jit(tx.update)
  last = None
  for grads in _grads(params, 4):
    u, state = update(grads, state, params)
    stats = belief_stats(state)
    for k in params:
      want = (
        np.nan if last is None else np.sqrt(np.mean(np.square(leaves64(params[k])[0] - last[k])))
      )
      np.testing.assert_allclose(float(stats[f'{k}/update_rms']), want, rtol=1e-6)
    last = {k: leaves64(v)[0] for k, v in params.items()}
    params = optax.apply_updates(params, u)
  squares = sum(float(stats[f'{k}/update_rms']) ** 2 * params[k].size for k in params)
  np.testing.assert_allclose(
    float(stats['global/update_rms']), np.sqrt(squares / sum(p.size for p in params.values())), 1e-6
  )


def test_update_rms_is_measured_only_between_updates_given_params():
  """Without params an update measures nothing: update_rms stays NaN until two
  updates have had params, and is then the change between those two."""
  params = {'w': jnp.ones((4, 5)), 'x': 2.0}  # A Python number as a leaf, as optax allows.
  tx = scale_by_belief(track_stats=True)
  state = tx.init(params)
  grads = {'w': jnp.full((4, 5), 0.1), 'x': 0.1}
  _, state = tx.update(grads, state)  # No params.
  assert np.isnan(float(belief_stats(state)['w/update_rms']))
  _, state = tx.update(grads, state, params)
  assert np.isnan(float(belief_stats(state)['w/update_rms']))
  moved = {'w': params['w'] + 0.5, 'x': 2.5}
  _, state = tx.update(grads, state, moved)
  np.testing.assert_allclose(float(belief_stats(state)['w/update_rms']), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(belief_stats(state)['x/update_rms']), 0.5, rtol=1e-6)


def test_update_rms_shows_bfloat16_parameters_that_do_not_move():
  """Rounded to nearest (stochastic_rounding=False), steps below half a bfloat16
  step are lost in optax.apply_updates: the parameters do not move, and
  update_rms, measured on them, says 0; rounded stochastically, they move."""
  params = {'w': jnp.ones((8, 8), jnp.bfloat16)}
  for lr, stochastic, moves in ((1e-4, False, False), (1e-4, True, True), (1e-1, False, True)):
    tx = adabelief_jax.adabelief(lr, track_stats=True, stochastic_rounding=stochastic)
    state, p = tx.init(params), params
    for grads in _grads(params, 3):
      u, state = jax.jit(tx.update)(jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads), state, p)
      p = optax.apply_updates(p, u)
    assert (float(belief_stats(state)['w/update_rms']) > 0) == moves, lr


def test_an_empty_parameter_has_nan_stats_and_leaves_the_global_ones_alone():
  params = {'empty': jnp.zeros((0, 3)), 'w': jnp.ones((4, 5))}
  grads = {'empty': jnp.zeros((0, 3)), 'w': jnp.full((4, 5), 1e-3)}
  states = {}
  for name, p, g in (('both', params, grads), ('w', {'w': params['w']}, {'w': grads['w']})):
    tx = adabelief_jax.adabelief(1e-3, track_stats=True)
    states[name] = belief_stats(tx.update(g, tx.init(p), p)[1])
  assert all(np.isnan(float(v)) for k, v in states['both'].items() if k.startswith('empty/'))
  for key, value in states['w'].items():
    np.testing.assert_allclose(float(states['both'][key]), float(value), rtol=1e-6)


def test_belief_stats_without_stats_says_how_to_enable_them():
  params = {'w': jnp.ones(3)}
  with pytest.raises(ValueError, match='track_stats=True'):
    belief_stats(adabelief_jax.adabelief(1e-3).init(params))


def test_state_with_and_without_stats_do_not_mix():
  params = {'w': jnp.ones(3)}
  state = adabelief_jax.adabelief(1e-3, track_stats=True).init(params)
  with pytest.raises(ValueError, match='track_stats'):
    adabelief_jax.adabelief(1e-3).update(params, state, params)


@pytest.mark.parametrize(
  'wrap',
  ['scan', 'inject_hyperparams', 'multi_steps', 'apply_if_finite', 'masked'],
)
def test_stats_in_compositions(wrap):
  params = _params()
  grads = _grads(params, 4)  # MultiSteps updates its inner state every 2: twice.
  base = lambda **kw: adabelief_jax.adabelief(1e-3, track_stats=True, **kw)
  tx = {
    'scan': base(),
    'inject_hyperparams': optax.inject_hyperparams(adabelief_jax.adabelief)(1e-3, track_stats=True),
    'multi_steps': optax.MultiSteps(base(), every_k_schedule=2),
    'apply_if_finite': optax.apply_if_finite(base(), max_consecutive_errors=2),
    'masked': optax.masked(base(), {'small': True, 'large': False}),
  }[wrap]
  state = tx.init(params)
  if wrap == 'scan':
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    step = lambda s, g: (tx.update(g, s, params)[1], None)
    state, _ = jax.lax.scan(step, state, stacked)
  else:
    for g in grads:
      _, state = jax.jit(tx.update)(g, state, params)
  stats = belief_stats(state)
  keys = {k.rsplit('/', 1)[0] for k in stats}
  assert keys == ({'small', 'global'} if wrap == 'masked' else {'small', 'large', 'global'})
  assert all(np.isfinite(float(v)) for v in stats.values())
  assert float(stats['global/param_rms']) > 0


def test_stats_from_a_flax_nnx_optimizer():
  from flax import nnx

  model = nnx.Linear(64, 128, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, adabelief_jax.adabelief(1e-3, track_stats=True), wrt=nnx.Param)
  x = jnp.ones((4, 64))

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

  cached = nnx.cached_partial(step, model, optimizer)
  cached()
  cached()
  stats = belief_stats(
    nnx.to_pure_dict(nnx.state(optimizer, nnx.OptState)) if False else optimizer.opt_state
  )
  assert {'kernel/eps_dominated', 'bias/update_to_param_rms', 'global/sqrt_s_hat_p99'} <= set(stats)


def _two_updates(tx, params, moved):
  """belief_stats after an update given ``params`` and one given ``moved``: update_rms
  is then the RMS of ``moved - params``."""
  state = tx.init(params)
  grads = jax.tree.map(lambda p: 0.1 * p, params)
  _, state = jax.jit(tx.update)(grads, state, params)
  _, state = jax.jit(tx.update)(grads, state, moved)
  return belief_stats(state)


def _rms(x) -> float:
  return float(np.sqrt(np.mean(np.abs(np.asarray(x, np.complex128)) ** 2)))


def test_update_rms_with_a_weight_decay_mask_that_reads_shapes():
  """A callable mask that decays only leaves of more than one element: the decay,
  10x the adaptive step here, is in update_rms (it was probed on (1,) * rank
  arrays, which such a mask leaves undecayed: 15x too small at 64a9ff6)."""
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(10 * rng.normal(size=(16, 32)), jnp.float32), 'x': jnp.ones(())}
  mask = lambda p: jax.tree.map(lambda x: x.size > 1, p)
  tx = adabelief_jax.adabelief(1e-2, weight_decay=1.0, weight_decay_mask=mask, track_stats=True)
  state, update, steps = tx.init(params), jax.jit(tx.update), []
  for _ in range(3):
    u, state = update(jax.tree.map(lambda p: jnp.sign(p) * 1e-3, params), state, params)
    steps.append(u)
    params = optax.apply_updates(params, u)
  _, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
  stats = belief_stats(state)
  # The last step as applied: learning rate times (adaptive step + decay), decay dominant.
  assert _rms(steps[-1]['w']) > 5 * 1e-2 * np.sqrt(2)  # The decay is there to be missed.
  np.testing.assert_allclose(float(stats['w/update_rms']), _rms(steps[-1]['w']), rtol=1e-5)
  np.testing.assert_allclose(float(stats['x/update_rms']), _rms(steps[-1]['x']), rtol=1e-5)


def test_complex_parameters_keep_their_imaginary_part():
  """param_rms and update_rms of a complex parameter are those of |p| and |dp|
  (at 64a9ff6 they were those of the real part)."""
  rng = np.random.default_rng(0)
  shape = (12, 10)
  p = jnp.asarray(rng.normal(size=shape) + 3j * rng.normal(size=shape), jnp.complex64)
  moved = p + jnp.asarray(0.1 * rng.normal(size=shape) + 2j, jnp.complex64)
  stats = _two_updates(scale_by_belief(track_stats=True), {'z': p}, {'z': moved})
  np.testing.assert_allclose(float(stats['z/param_rms']), _rms(moved), rtol=1e-6)
  np.testing.assert_allclose(float(stats['z/update_rms']), _rms(moved - p), rtol=1e-6)
  assert _rms(moved - p) > 5 * _rms((moved - p).real)  # The imaginary part dominates.


class _Pair:
  """A pytree node registered without keys: its children's paths are flat indices."""

  def __init__(self, a, b):
    self.a, self.b = a, b


jax.tree_util.register_pytree_node(_Pair, lambda x: ((x.a, x.b), None), lambda _, c: _Pair(*c))


@pytest.mark.parametrize(
  'params, names',
  [
    (_Pair(jnp.full(3, 2.0), jnp.full(4, 5.0)), {'0': 2.0, '1': 5.0}),
    ({'layer': _Pair(jnp.full(3, 2.0), jnp.full(4, 5.0))}, {'layer/0': 2.0, 'layer/1': 5.0}),
    # A parameter named like the global statistics, or two whose paths read alike.
    ({'global': jnp.full(3, 2.0), 'w': jnp.full(4, 5.0)}, {"['global']": 2.0, 'w': 5.0}),
    ({'a/b': jnp.full(3, 2.0), 'a': {'b': jnp.full(4, 5.0)}}, {"['a/b']": 2.0, "['a']['b']": 5.0}),
    # Names that do not collide keep their readable paths.
    ({'overall': jnp.full(3, 2.0), 'global2': jnp.full(4, 5.0)}, {'overall': 2.0, 'global2': 5.0}),
    (([jnp.full(3, 2.0)], [jnp.full(4, 5.0), None]), {'0/0': 2.0, '1/0': 5.0}),
  ],
  ids=['keyless-node', 'keyless-node-in-dict', 'named-global', 'slash-in-key', 'overall', 'lists'],
)
def test_every_parameter_has_its_own_keys(params, names):
  """Each parameter's statistics under keys of its own, the global ones apart
  (at 8e557cd a keyless node's leaves shared the keys '/<statistic>', a
  parameter named 'global' was overwritten by the global statistics, and 'a/b'
  by a/b)."""
  stats = _two_updates(
    scale_by_belief(track_stats=True), params, jax.tree.map(lambda p: p + 0.5, params)
  )
  per_param = {k.rsplit('/', 1)[0] for k in stats} - {'global'}
  assert per_param == set(names)
  for name, value in names.items():
    np.testing.assert_allclose(float(stats[f'{name}/param_rms']), value + 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(stats[f'{name}/update_rms']), 0.5, rtol=1e-5)
  moved = np.concatenate([np.ravel(x) + 0.5 for x in jax.tree.leaves(params)])
  overall = np.sqrt(np.mean(moved**2))
  np.testing.assert_allclose(float(stats['global/param_rms']), overall, rtol=1e-6)
  assert len(stats) == 6 * (len(names) + 1) + 1  # + global/adaptive


@pytest.mark.parametrize(
  'shape', [(1000003,), (3, 333667), (1009, 1013), (4096, 1), (3,) * 7, (24, 40), (7,)]
)
def test_sample_is_bounded_and_spread_for_any_shape(shape):
  """At most SAMPLE elements (all of a smaller leaf), every k-th along each axis, also
  for prime lengths (at 8e557cd a prime-length leaf was sampled whole: 1000003
  elements kept in the state)."""
  size = int(np.prod(shape))
  struct = jax.ShapeDtypeStruct(shape, jnp.float32)
  state = jax.eval_shape(scale_by_belief(track_stats=True).init, {'w': struct})
  kept = state.stats.last_params['w'].size
  if size <= diagnostics.SAMPLE:
    assert kept == size
  else:
    assert diagnostics.SAMPLE // 2 <= kept <= diagnostics.SAMPLE, kept
  if size <= 2_000_000:  # The elements, by their flat indices:
    index = np.asarray(
      jax.jit(diagnostics.strided)(jnp.arange(size, dtype=jnp.int32).reshape(shape))
    )
    assert index.size == kept and np.all(np.diff(index) > 0)
    coordinates = np.unravel_index(index, shape)
    assert index.size == np.prod([len(np.unique(c)) for c in coordinates])  # A grid,
    for axis, along in enumerate(coordinates):  # evenly spaced along each whole axis.
      taken = np.unique(along)
      step = taken[1] - taken[0] if len(taken) > 1 else shape[axis]
      assert taken[0] == 0 and np.all(np.diff(taken) == step), axis
      assert taken[-1] + step >= shape[axis], axis


def _lines_run_in_diagnostics(fn, budget: int) -> int:
  """The number of lines of adabelief_jax/diagnostics.py that ``fn()`` runs; raises
  past ``budget`` (so that a loop over the elements fails fast)."""
  count = 0

  def local(frame, event, arg):
    nonlocal count
    if event == 'line':
      count += 1
      if count > budget:
        raise AssertionError(f'more than {budget} lines of diagnostics.py run')
    return local

  def calls(frame, event, arg):
    return local if frame.f_code.co_filename == diagnostics.__file__ else None

  previous = sys.gettrace()
  sys.settrace(calls)
  try:
    fn()
  finally:
    sys.settrace(previous)
  return count


def test_tracing_stats_of_a_huge_prime_leaf_runs_no_python_loop_over_it():
  """Tracing init and update of a 20000003-element (prime) leaf runs a bounded number
  of lines of diagnostics.py: no loop over the length (at 8e557cd a divisor
  search ran 2e7 iterations, seconds of tracing; minutes at 1e9)."""
  struct = {'w': jax.ShapeDtypeStruct((20_000_003,), jnp.float32)}
  tx = scale_by_belief(track_stats=True)
  state = jax.eval_shape(tx.init, struct)
  lines = _lines_run_in_diagnostics(lambda: jax.eval_shape(tx.update, struct, state, struct), 3000)
  assert lines > 0  # The tracer saw diagnostics.py.
  assert state.stats.last_params['w'].size <= diagnostics.SAMPLE


# --- 8 devices (run in a child process: see tests/devices.py) -----------------

CHECKS = devices.Checks()


@CHECKS
def check_stats_under_zero1_equal_one_device() -> dict:
  mesh = jax.make_mesh((devices.N_DEVICES,), ('data',))
  params = jax.device_put(
    {'w': jnp.asarray(np.random.default_rng(0).normal(size=(64, 128)), jnp.float32)},
    NamedSharding(mesh, PartitionSpec()),
  )
  grads = _grads(jax.tree.map(np.asarray, params), 3)
  tx = adabelief_jax.adabelief(1e-3, track_stats=True, eps=1e-4)
  zero_state = sharding.init_sharded(tx, params, shard_axis='data')
  step = jax.jit(
    tx.update, out_shardings=(None, sharding.state_shardings(tx, params, shard_axis='data'))
  )
  plain_state = tx.init(jax.tree.map(np.asarray, params))
  for g in grads:
    _, zero_state = step(g, zero_state, params)
    _, plain_state = jax.jit(tx.update)(g, plain_state, jax.tree.map(np.asarray, params))
  got, want = belief_stats(zero_state), belief_stats(plain_state)
  for key in want:
    np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-6, err_msg=key)
  pmapped = jax.pmap(lambda p: belief_stats(tx.update(grads[0], tx.init(p), p)[1]))(
    jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices.N_DEVICES, *x.shape)), params)
  )
  # One update: no step measured yet, every other statistic finite on every replica.
  for key, value in pmapped.items():
    assert np.all(np.isnan(value) if 'update' in key else np.isfinite(value)), key
  return {'stats': len(want)}


@CHECKS
def check_sample_is_bounded_and_shard_aligned_under_explicit_axes() -> dict:
  """Under Explicit mesh axes, leaves whose shards have prime lengths (1009, 13) and
  one whose shards its strides divide: the sample is at most SAMPLE elements (at
  8e557cd, the whole 8072-element leaf), every shard gives as many, the only
  communication is the gather of the sample, and where the strides divide the
  shards it is the unsharded leaf's sample; the statistics are those of the
  parameters."""
  mesh = jax.make_mesh((devices.N_DEVICES,), ('data',), axis_types=(AxisType.Explicit,))
  columns = PartitionSpec(None, 'data')
  # Each leaf's shape, spec, and the shard that holds element i of the flat leaf.
  leaves = {
    'v': ((8 * 1009,), PartitionSpec('data'), lambda i: i // 1009),
    'm': ((16, 8 * 13), columns, lambda i: i % 104 // 13),
    'a': ((64, 8 * 16), columns, lambda i: i % 128 // 16),
  }
  sizes = {}
  for name, (shape, spec, owner) in leaves.items():
    index = jnp.arange(np.prod(shape), dtype=jnp.int32).reshape(shape)
    sample = jax.jit(diagnostics.strided)
    sharded = jax.device_put(index, NamedSharding(mesh, spec))
    got = np.asarray(sample(sharded))
    sizes[name] = got.size
    assert got.size <= diagnostics.SAMPLE, (name, got.size)
    assert np.all(np.bincount(owner(got), minlength=8) == got.size // 8), name
    if name == 'a':  # Strides 2 and 4: the unsharded leaf's elements.
      np.testing.assert_array_equal(got, np.asarray(sample(index)))
    hlo = sample.lower(sharded).compile().as_text()
    moved = re.findall(
      r'= \w+\[([\d,]*)\]\S* (?:all-gather|all-to-all|all-reduce|collective-permute)', hlo
    )
    assert moved and all(np.prod([int(d) for d in m.split(',')]) <= got.size for m in moved), moved
  shapes = {name: shape for name, (shape, _, _) in leaves.items()}
  specs = {name: spec for name, (_, spec, _) in leaves.items()}
  rng = np.random.default_rng(0)
  host = {k: rng.normal(size=shape).astype(np.float32) for k, shape in shapes.items()}
  params = jax.device_put(host, {k: NamedSharding(mesh, s) for k, s in specs.items()})
  tx = adabelief_jax.adabelief(1e-3, track_stats=True)
  state, step = sharding.init_sharded(tx, params), jax.jit(tx.update)
  for shift in (0.0, 0.5):
    moved_params = jax.tree.map(lambda p, shift=shift: p + shift, params)
    _, state = step(jax.tree.map(lambda p: 1e-2 * p, params), state, moved_params)
  stats = belief_stats(state)
  for name, p in host.items():
    np.testing.assert_allclose(float(stats[f'{name}/update_rms']), 0.5, rtol=1e-6)
    whole = np.sqrt(np.mean(np.square(p + 0.5)))  # About 1000 of N(0.5, 1): within 10%.
    assert abs(float(stats[f'{name}/param_rms']) / whole - 1) < 0.1, name
  # A state made for unsharded parameters samples 'm' otherwise ('a' alike): refused by
  # name (it was a TypeError from a broadcast in the update).
  try:
    step(params, tx.init(host), params)
  except ValueError as error:
    assert "params['m'] is sampled as (896,)" in str(error) and 'init_sharded' in str(error)
  else:
    raise AssertionError('a state sampled otherwise was accepted')
  return {'sample_sizes': sizes}


def test_sample_is_bounded_and_shard_aligned_under_explicit_axes(device_checks):
  sizes = device_checks.metrics('check_sample_is_bounded_and_shard_aligned_under_explicit_axes')
  assert all(0 < n <= diagnostics.SAMPLE for n in sizes['sample_sizes'].values())


def test_stats_under_zero1_equal_one_device(device_checks):
  assert device_checks.metrics('check_stats_under_zero1_equal_one_device')['stats'] > 0


def test_module_documents_every_statistic():
  for name in (*diagnostics.PER_PARAM, 'update_to_param_rms', 'adaptive'):
    assert name in diagnostics.__doc__
