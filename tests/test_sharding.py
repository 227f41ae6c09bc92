"""Tests of adabelief_jax.sharding and of AdaBelief under pmap, jit with shardings and ZeRO-1.

The checks need 8 CPU devices: they are registered in ``CHECKS`` and run in one
child process by the ``device_checks`` fixture (see tests/devices.py); each
``test_*`` function asserts on its check's result. Run a single check by hand
with ``python -m tests.devices tests.test_sharding:check_zero1_auto``.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adabelief_jax
from adabelief_jax import sharding
from tests import devices

N_DEVICES = devices.N_DEVICES

# ---------------------------------------------------------------------------
# Checks: run in the child process, with 8 CPU devices.
# ---------------------------------------------------------------------------

CHECKS = devices.Checks()


def _auto(n: int) -> tuple[AxisType, ...]:
  return (AxisType.Auto,) * n


def _explicit(n: int) -> tuple[AxisType, ...]:
  return (AxisType.Explicit,) * n


def _mlp_params(seed: int = 0, sizes: tuple[int, ...] = (16, 64, 8)) -> dict[str, Any]:
  """A two-layer perceptron's parameters as NumPy float32 arrays."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
    params[f'layer{i}'] = {
      'w': (rng.normal(size=(n_in, n_out)) / math.sqrt(n_in)).astype(np.float32),
      'b': np.zeros((n_out,), np.float32),
    }
  return params


def _batches(
  steps: int, batch: int = 32, n_in: int = 16, n_out: int = 8, seed: int = 1
) -> list[tuple[Any, Any]]:
  """``steps`` global batches (x, y) of a fixed nonlinear regression task."""
  rng = np.random.default_rng(seed)
  teacher = rng.normal(size=(n_in, n_out)).astype(np.float32)
  out = []
  for _ in range(steps):
    x = rng.normal(size=(batch, n_in)).astype(np.float32)
    out.append((x, np.sin(x @ teacher).astype(np.float32)))
  return out


def _loss(params: Any, batch: tuple[Any, Any], out_sharding: Any = None) -> Any:
  """Mean squared error of the MLP. ``out_sharding`` is only needed under
  Explicit mesh axes, where a contraction over a sharded dimension must say
  where its result goes."""
  x, y = batch
  h = jnp.tanh(x @ params['layer0']['w'] + params['layer0']['b'])
  out = jnp.dot(h, params['layer1']['w'], out_sharding=out_sharding)
  return jnp.mean((out + params['layer1']['b'] - y) ** 2)


def _optimizer(**kwargs: Any) -> Any:
  options = dict(learning_rate=3e-3, weight_decay=1e-2, rectify=True, amsgrad=True)
  options.update(kwargs)
  return adabelief_jax.adabelief(**options)


@functools.cache
def _reference_trajectory(max_steps: int = 100) -> dict[int, Any]:
  """Parameters after each step of the reference: one device, global batches.

  Plain jit, no mesh, ``_optimizer()`` and ``_batches(max_steps)`` (whose first
  ``k`` batches are ``_batches(k)``); computed once for all checks.
  """
  tx = _optimizer()
  device = jax.devices()[0]
  params = jax.device_put(_mlp_params(), device)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(_loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  trajectory = {}
  for i, batch in enumerate(_batches(max_steps)):
    params, state = step(params, state, jax.device_put(batch, device))
    trajectory[i + 1] = jax.tree.map(np.asarray, params)
  return trajectory


def _reference(steps: int) -> Any:
  return _reference_trajectory()[steps]


def _max_abs_diff(a: Any, b: Any) -> float:
  diffs = jax.tree.map(
    lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b
  )
  return max(jax.tree.leaves(diffs))


def _assert_same_shardings(tree: Any, shardings: Any, what: str) -> None:
  for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim), (
      f'{what}{jax.tree_util.keystr(path)}: {x.sharding} is not {s}'
    )


def _mesh_step(
  tx: Any, param_sh: Any, state_sh: Any, batch_sh: Any, out_sharding: Any = None
) -> Callable[..., Any]:
  """The user's train step: jit with in/out shardings and donation."""

  @functools.partial(
    jax.jit,
    in_shardings=(param_sh, state_sh, batch_sh),
    out_shardings=(param_sh, state_sh),
    donate_argnums=(0, 1),
  )
  def step(params, state, batch):
    grads = jax.grad(_loss)(params, batch, out_sharding)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


@CHECKS
def check_plan_follows_params() -> dict[str, Any]:
  """Moments follow their parameter; other leaves are replicated; any optax state."""
  mesh = jax.make_mesh((4, 2), ('data', 'model'), axis_types=_auto(2))
  specs = {'w': P(None, 'model'), 'b': P('model'), 'scale': P()}
  params = {
    'w': jax.device_put(jnp.ones((6, 8)), NamedSharding(mesh, specs['w'])),
    'b': jax.device_put(jnp.ones((8,), jnp.bfloat16), NamedSharding(mesh, specs['b'])),
    'scale': jnp.ones(()),  # Single-device: counts as replicated.
  }
  transforms = {
    'adabelief': _optimizer(),
    'scale_by_belief': adabelief_jax.scale_by_belief(),
    'masked': optax.masked(_optimizer(), {'w': True, 'b': False, 'scale': True}),
    'multi_transform': optax.multi_transform(
      {'belief': _optimizer(), 'sgd': optax.sgd(0.1, momentum=0.9)},
      {'w': 'belief', 'b': 'sgd', 'scale': 'belief'},
    ),
    'multi_steps': optax.MultiSteps(_optimizer(), every_k_schedule=2),
    'inject_hyperparams': optax.inject_hyperparams(adabelief_jax.adabelief)(
      learning_rate=1e-3, weight_decay=1e-4
    ),
  }
  counts = {}
  for name, tx in transforms.items():
    plan = sharding.describe(tx, params)
    moments = [leaf for leaf in plan.leaves if leaf.param is not None]
    others = [leaf for leaf in plan.leaves if leaf.param is None]
    assert moments, name
    for leaf in moments:
      key = leaf.param.strip("[]'")
      assert leaf.spec == specs[key], (name, leaf)
    for leaf in others:
      assert leaf.shape == () and leaf.spec == P(), (name, leaf)
    # The shardings fit jit(init) and the state then is where they say.
    state_sh = sharding.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    _assert_same_shardings(state, state_sh, name)
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params)), name
    counts[name] = (len(moments), len(others))
  # mesh=None takes the params' mesh; an explicit one must agree.
  assert jax.tree.leaves(sharding.state_shardings(_optimizer(), params, mesh)) == (
    jax.tree.leaves(sharding.state_shardings(_optimizer(), params))
  )
  return {'moment_and_other_leaves': counts}


@CHECKS
def check_plan_zero1() -> dict[str, Any]:
  """ZeRO-1 specs: largest divisible dimension, warnings, bytes per device."""
  mesh = jax.make_mesh((4, 2), ('data', 'model'), axis_types=_auto(2))
  sds = lambda shape, spec: jax.ShapeDtypeStruct(
    shape, jnp.float32, sharding=NamedSharding(mesh, spec)
  )
  params = {
    'emb': sds((12, 16), P()),  # both divide: 16 is larger
    'square': sds((8, 8), P()),  # a tie: the first dimension
    'kernel': sds((16, 6), P(None, 'model')),  # 6/2 = 3 per shard: dim 0
    'wide': sds((4, 16), P(None, 'model')),  # 16 / (2 * 4): dim 1, both axes
    'fsdp': sds((8, 8), P('data', None)),  # already along 'data'
    'odd': sds((3, 5), P()),  # nothing divides: warning
    'bias': sds((3,), P()),  # fewer elements than 4: no warning
    'scalar': jax.ShapeDtypeStruct((), jnp.float32),  # no sharding: replicated
  }
  want = {
    'emb': P(None, 'data'),
    'square': P('data'),
    'kernel': P('data', 'model'),
    'wide': P(None, ('model', 'data')),
    'fsdp': P('data', None),
    'odd': P(),
    'bias': P(),
    'scalar': P(),
  }
  tx = adabelief_jax.scale_by_belief()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    shardings = sharding.state_shardings(tx, params, shard_axis='data')
  messages = [str(w.message) for w in caught if issubclass(w.category, sharding.ShardingWarning)]
  assert len(messages) == 1 and "['odd'] (3, 5)" in messages[0], messages
  assert "'bias'" not in messages[0] and "'scalar'" not in messages[0], messages
  for moments in (shardings.mu, shardings.nu):
    for key, spec in want.items():
      assert moments[key].spec == spec, (key, moments[key].spec, spec)
  assert shardings.count.spec == P()
  moment_sh = sharding.moment_shardings(params, shard_axis='data')
  assert {k: v.spec for k, v in moment_sh.items()} == want
  plan = sharding.describe(tx, params, shard_axis='data')
  notes = {leaf.param: leaf.note for leaf in plan.leaves if leaf.note}
  assert set(notes) == {"['odd']", "['bias']", "['scalar']"}, notes
  assert 'a scalar' in notes["['scalar']"]
  # Bytes per device: the plan's arithmetic matches what the arrays hold.
  arrays = jax.tree.map(lambda s: jax.device_put(jnp.ones(s.shape, s.dtype), s.sharding), params)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', sharding.ShardingWarning)  # 'odd' again.
    state = sharding.init_sharded(tx, arrays, shard_axis='data')
    abstract = sharding.abstract_state(tx, params, shard_axis='data')
  measured = sharding.bytes_per_device(state)
  assert len(measured) == N_DEVICES
  assert max(measured.values()) == plan.bytes_per_device, (measured, plan.bytes_per_device)
  assert str(plan).splitlines()[-1].startswith(f'{plan.bytes_per_device} bytes per device')
  # abstract_state carries the same shardings.
  assert jax.tree.leaves(jax.tree.map(lambda a: a.sharding, abstract)) == jax.tree.leaves(shardings)
  # An axis of size one changes nothing.
  mesh1 = jax.make_mesh((8, 1), ('model', 'data'), axis_types=_auto(2))
  one = {'w': jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=NamedSharding(mesh1, P('model')))}
  assert sharding.state_shardings(tx, one, shard_axis='data').mu['w'].spec == P('model')
  return {'bytes_per_device': plan.bytes_per_device, 'unsharded_bytes': plan.nbytes}


@CHECKS
def check_errors_name_arguments() -> dict[str, Any]:
  mesh = jax.make_mesh((8,), ('data',), axis_types=_auto(1))
  other = jax.make_mesh((8,), ('data',), axis_types=_explicit(1))
  tx = _optimizer()
  params = {'w': jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P()))}

  def raises(exc: type[Exception], fragment: str, fn: Callable[[], Any]) -> None:
    try:
      fn()
    except exc as e:
      assert fragment in str(e), (fragment, str(e))
    else:
      raise AssertionError(f'no {exc.__name__} mentioning {fragment!r}')

  raises(
    ValueError,
    "`shard_axis`='batch'",
    lambda: sharding.state_shardings(tx, params, shard_axis='batch'),
  )
  raises(
    TypeError, '`shard_axis`', lambda: sharding.state_shardings(tx, params, shard_axis=('data',))
  )
  raises(
    ValueError,
    'pass `mesh=`',
    lambda: sharding.state_shardings(tx, {'w': np.ones((8, 4), np.float32)}),
  )
  raises(ValueError, 'not over `mesh`', lambda: sharding.state_shardings(tx, params, other))
  raises(
    TypeError,
    '`mesh` must be a jax.sharding.Mesh',
    lambda: sharding.state_shardings(tx, params, 'data'),
  )
  raises(TypeError, '`tx`', lambda: sharding.state_shardings(lambda p: p, params))
  raises(ValueError, 'no leaves', lambda: sharding.state_shardings(tx, {}, mesh))
  raises(
    TypeError,
    'abstract_state()',
    lambda: sharding.init_sharded(tx, {'w': jax.ShapeDtypeStruct((8, 4), jnp.float32)}, mesh),
  )
  pmapped = jax.pmap(lambda x: x)(jnp.ones((N_DEVICES, 4)))
  for given in (mesh, None):  # Without a mesh, pmap's own was used (before issue 17).
    raises(
      TypeError,
      "params['w'] comes from jax.pmap",
      lambda given=given: sharding.state_shardings(tx, {'w': pmapped}, given),
    )
  # NumPy params with a mesh given: replicated.
  np_sh = sharding.state_shardings(tx, {'w': np.ones((8, 4), np.float32)}, mesh, shard_axis='data')
  assert np_sh[0].mu['w'].spec == P('data')
  return {}


@CHECKS
def check_pmap_matches_single_device() -> dict[str, Any]:
  """pmap data parallelism with pmean'd gradients == one device, global batch."""
  tx, params, batches = _optimizer(), _mlp_params(), _batches(30)
  want = _reference(len(batches))

  @functools.partial(jax.pmap, axis_name='batch')
  def step(params, state, batch):
    grads = jax.lax.pmean(jax.grad(_loss)(params, batch), 'batch')
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  n = jax.local_device_count()
  assert n == N_DEVICES, n
  replicated = jax.tree.map(lambda a: np.broadcast_to(a, (n, *a.shape)), params)
  state = jax.pmap(tx.init)(replicated)
  for x, y in batches:
    split = (x.reshape(n, -1, x.shape[1]), y.reshape(n, -1, y.shape[1]))
    replicated, state = jax.block_until_ready(step(replicated, state, split))  # See _zero1.
  got = jax.tree.map(lambda a: np.asarray(a)[0], replicated)
  for i in range(1, n):  # Every replica holds the same parameters.
    jax.tree.map(
      lambda a, i=i: np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(a)[0]), replicated
    )
  diff = _max_abs_diff(got, want)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  return {'steps': len(batches), 'max_abs_diff': diff}


def _mesh_2d(
  axis_types: tuple[Any, ...], shard_axis: str | None = None, wrapper: bool = False, steps: int = 20
) -> dict[str, Any]:
  """data x model mesh, params sharded along model: state placed as planned
  after init and every step, results those of one device."""
  mesh = jax.make_mesh((4, 2), ('data', 'model'), axis_types=axis_types)
  explicit = axis_types[0] == AxisType.Explicit
  tx, params, batches = _optimizer(), _mlp_params(), _batches(steps)
  want = _reference(len(batches))
  specs = {
    'layer0': {'w': P(None, 'model'), 'b': P('model')},
    'layer1': {'w': P('model', None), 'b': P()},
  }
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  batch_sh = NamedSharding(mesh, P('data'))
  params = jax.device_put(params, param_sh)
  state_sh = sharding.state_shardings(tx, params, shard_axis=shard_axis)
  moment_sh = sharding.moment_shardings(params, shard_axis=shard_axis)
  if shard_axis is None:
    assert jax.tree.leaves(moment_sh) == jax.tree.leaves(param_sh)
  if wrapper:
    tx = sharding.with_sharded_state(tx, params, shard_axis=shard_axis)
    state = tx.init(params)
  else:
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
  step = _mesh_step(tx, param_sh, state_sh, batch_sh, out_sharding=batch_sh if explicit else None)

  def check_placement(state: Any, when: str) -> None:
    _assert_same_shardings(state, state_sh, f'state after {when}')
    for moments in (state[0].mu, state[0].nu, state[0].nu_max):
      _assert_same_shardings(moments, moment_sh, f'moments after {when}')
    assert state[0].count.sharding.is_fully_replicated

  check_placement(state, 'init')
  for i, batch in enumerate(batches):
    params, state = jax.block_until_ready(  # One step in flight: see _zero1.
      step(params, state, jax.device_put(batch, batch_sh))
    )
    check_placement(state, f'step {i + 1}')
    _assert_same_shardings(params, param_sh, f'params after step {i + 1}')
  diff = _max_abs_diff(params, want)
  chex.assert_trees_all_close(params, want, rtol=1e-5, atol=1e-6)
  return {
    'steps': len(batches),
    'max_abs_diff': diff,
    'moment_specs': {
      jax.tree_util.keystr(k): str(v.spec)
      for k, v in jax.tree_util.tree_leaves_with_path(moment_sh)
    },
  }


@CHECKS
def check_mesh_2d_auto() -> dict[str, Any]:
  return _mesh_2d(_auto(2))


@CHECKS
def check_mesh_2d_explicit() -> dict[str, Any]:
  return _mesh_2d(_explicit(2))


@CHECKS
def check_mesh_2d_zero1_explicit_with_sharded_state() -> dict[str, Any]:
  """Model-sharded params, moments also split along data, Explicit axes.

  Here moments and gradients are sharded differently (P(None, ('model',
  'data')) vs P(None, 'model')), which Explicit axes refuse to combine
  implicitly ("add got incompatible shardings"): with_sharded_state reshards.
  """
  return _mesh_2d(_explicit(2), shard_axis='data', wrapper=True, steps=10)


def _zero1(axis_types: tuple[Any, ...], wrapper: bool) -> dict[str, Any]:
  """ZeRO-1 over 8 data-parallel devices: 1/8 of the state per device, same training."""
  mesh = jax.make_mesh((N_DEVICES,), ('data',), axis_types=axis_types)
  steps = 100
  tx, params, batches = _optimizer(), _mlp_params(), _batches(steps)
  want = _reference(len(batches))
  replicated = NamedSharding(mesh, P())
  batch_sh = NamedSharding(mesh, P('data'))
  param_sh = jax.tree.map(lambda _: replicated, params)
  host_params, params = params, jax.device_put(params, param_sh)

  # Data-parallel without ZeRO: the state is replicated like the params.
  plain_sh = sharding.state_shardings(tx, params)
  plain_state = sharding.init_sharded(tx, params)
  plain_bytes = sharding.bytes_per_device(plain_state)
  with warnings.catch_warnings():
    warnings.simplefilter('error', sharding.ShardingWarning)  # All dims divide.
    zero_sh = sharding.state_shardings(tx, params, shard_axis='data')
    zero_tx = sharding.with_sharded_state(tx, params, shard_axis='data') if wrapper else tx
  zero_state = (
    zero_tx.init(params) if wrapper else sharding.init_sharded(tx, params, shard_axis='data')
  )
  _assert_same_shardings(zero_state, zero_sh, 'ZeRO state after init')
  zero_bytes = sharding.bytes_per_device(zero_state)
  assert len(zero_bytes) == N_DEVICES and len(set(zero_bytes.values())) == 1, zero_bytes
  n_moments = 3  # mu, nu, nu_max
  param_bytes = sum(p.nbytes for p in jax.tree.leaves(params))
  scalar_bytes = 8  # The int32 counts of scale_by_belief and of the parameters' rounding.
  assert max(plain_bytes.values()) == n_moments * param_bytes + scalar_bytes
  assert max(zero_bytes.values()) == n_moments * param_bytes // N_DEVICES + scalar_bytes, (
    zero_bytes,
    plain_bytes,
  )

  runs = {}
  for name, run_tx, state, state_sh in (
    ('data_parallel', tx, plain_state, plain_sh),
    ('zero1', zero_tx, zero_state, zero_sh),
  ):
    step = _mesh_step(run_tx, param_sh, state_sh, batch_sh)
    p = jax.device_put(host_params, param_sh)  # The step donates its inputs.
    for batch in batches:
      # One step in flight at a time: XLA:CPU's in-process collectives have
      # been seen to deadlock (7 of 8 devices at an all-reduce) when several
      # multi-device steps are queued at once.
      p, state = jax.block_until_ready(step(p, state, jax.device_put(batch, batch_sh)))
    _assert_same_shardings(state, state_sh, f'{name} state after {steps} steps')
    runs[name] = p
  chex.assert_trees_all_close(runs['zero1'], want, rtol=1e-6, atol=1e-6)
  return {
    'steps': steps,
    'state_bytes_per_device_replicated': max(plain_bytes.values()),
    'state_bytes_per_device_zero1': max(zero_bytes.values()),
    'max_abs_diff_vs_single_device': _max_abs_diff(runs['zero1'], want),
    'max_abs_diff_vs_data_parallel': _max_abs_diff(runs['zero1'], runs['data_parallel']),
  }


@CHECKS
def check_zero1_auto() -> dict[str, Any]:
  return _zero1(_auto(1), wrapper=False)


@CHECKS
def check_zero1_explicit_with_sharded_state() -> dict[str, Any]:
  return _zero1(_explicit(1), wrapper=True)


@CHECKS
def check_orbax_checkpoint_round_trip() -> dict[str, Any]:
  """Save sharded params + ZeRO state, restore on the mesh, continue: bit-identical."""
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  # slow import
  except ImportError:
    return {'skipped': 'orbax-checkpoint is not installed (pip install orbax-checkpoint)'}
  mesh = jax.make_mesh((4, 2), ('data', 'model'), axis_types=_auto(2))
  tx, batches = _optimizer(), _batches(12)
  specs = {
    'layer0': {'w': P(None, 'model'), 'b': P('model')},
    'layer1': {'w': P('model', None), 'b': P()},
  }
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  batch_sh = NamedSharding(mesh, P('data'))
  abstract_params = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), _mlp_params(), param_sh
  )
  state_sh = sharding.state_shardings(tx, abstract_params, shard_axis='data')
  step = _mesh_step(tx, param_sh, state_sh, batch_sh)

  def train(params: Any, state: Any, batches: list[Any]) -> tuple[Any, Any]:
    for batch in batches:
      params, state = jax.block_until_ready(  # See _zero1.
        step(params, state, jax.device_put(batch, batch_sh))
      )
    return params, state

  def fresh() -> tuple[Any, Any]:
    params = jax.device_put(_mlp_params(), param_sh)
    return params, sharding.init_sharded(tx, params, shard_axis='data')

  want_params, want_state = train(*fresh(), batches)
  params, state = train(*fresh(), batches[:5])
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / 'ckpt'
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, {'params': params, 'opt_state': state})
      checkpointer.wait_until_finished()
    del params, state
    target = {
      'params': abstract_params,
      'opt_state': sharding.abstract_state(tx, abstract_params, shard_axis='data'),
    }
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(path, target)
  _assert_same_shardings(restored['opt_state'], state_sh, 'restored state')
  _assert_same_shardings(restored['params'], param_sh, 'restored params')
  got_params, got_state = train(restored['params'], restored['opt_state'], batches[5:])
  chex.assert_trees_all_equal(got_params, want_params)
  chex.assert_trees_all_equal(got_state, want_state)
  zero = sharding.bytes_per_device(got_state)
  return {'steps': len(batches), 'restored_at': 5, 'state_bytes_per_device': max(zero.values())}


# ---------------------------------------------------------------------------
# Tests: run in the pytest process, one child for all checks.
# ---------------------------------------------------------------------------


def test_plan_follows_params(device_checks):
  device_checks.metrics('check_plan_follows_params')


def test_plan_zero1(device_checks):
  device_checks.metrics('check_plan_zero1')


def test_errors_name_arguments(device_checks):
  device_checks.metrics('check_errors_name_arguments')


def test_pmap_matches_single_device(device_checks):
  device_checks.metrics('check_pmap_matches_single_device')


def test_mesh_2d_auto(device_checks):
  device_checks.metrics('check_mesh_2d_auto')


def test_mesh_2d_explicit(device_checks):
  device_checks.metrics('check_mesh_2d_explicit')


def test_zero1_auto(device_checks):
  metrics = device_checks.metrics('check_zero1_auto')
  # Every device keeps its own copy of the two int32 counts (scale_by_belief's, the rounding's).
  assert metrics['state_bytes_per_device_zero1'] * N_DEVICES < (
    metrics['state_bytes_per_device_replicated'] + N_DEVICES * 8
  )


def test_zero1_explicit_with_sharded_state(device_checks):
  device_checks.metrics('check_zero1_explicit_with_sharded_state')


def test_mesh_2d_zero1_explicit_with_sharded_state(device_checks):
  device_checks.metrics('check_mesh_2d_zero1_explicit_with_sharded_state')


def test_orbax_checkpoint_round_trip(device_checks):
  metrics = device_checks.metrics('check_orbax_checkpoint_round_trip')
  if 'skipped' in metrics:
    pytest.skip(metrics['skipped'])


def _pmap_output_as(kind: str) -> Any:
  """A jax.pmap output on this process's devices, as an array or a struct carrying
  its sharding."""
  pmapped = jax.pmap(lambda x: x)(jnp.ones((jax.local_device_count(), 4)))
  if kind == 'struct':
    return jax.ShapeDtypeStruct(pmapped.shape, pmapped.dtype, sharding=pmapped.sharding)
  return pmapped


@pytest.mark.parametrize('kind', ['array', 'struct'])
@pytest.mark.parametrize(
  'function',
  [
    lambda tx, params: sharding.state_shardings(tx, params),
    lambda tx, params: sharding.describe(tx, params),
    lambda tx, params: sharding.abstract_state(tx, params),
    lambda tx, params: sharding.moment_shardings(params),
    lambda tx, params: sharding.with_sharded_state(tx, params),
  ],
  ids=['state_shardings', 'describe', 'abstract_state', 'moment_shardings', 'with_sharded_state'],
)
def test_params_from_pmap_are_refused_without_a_mesh(function, kind):
  """As the docstrings promise; with no mesh given, pmap's own mesh was taken and
  the state placed on it (issue 17), on one device as on eight."""
  params = {'b': np.zeros(3, np.float32), 'w': _pmap_output_as(kind)}
  with pytest.raises(TypeError, match=re.escape("params['w'] comes from jax.pmap")):
    function(_optimizer(), params)


def test_every_check_has_a_test():
  tests = {name[len('test_') :] for name in globals() if name.startswith('test_')}
  assert {name[len('check_') :] for name in CHECKS.functions} <= tests
