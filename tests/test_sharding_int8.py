"""8-bit optimizer state under adabelief_jax.sharding: known by type, ZeRO-1 in whole blocks.

An 8-bit moment (a ``QuantizedMoment``) is split by ZeRO-1 only between
whole blocks, and all of its parameter's state and gradients with it: one
placement per parameter, so that the update needs no resharding (an
all-to-all) between its leaves. The checks need 8 CPU devices: they run in
one child process (see tests/devices.py), e.g. ``python -m tests.devices
tests.test_sharding_int8:check_zero1_int8_explicit``.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adabelief_jax
from adabelief_jax import sharding
from tests import devices

N_DEVICES = devices.N_DEVICES
CHECKS = devices.Checks()

BLOCK = 64
INT8 = dict(mu_dtype='int8', nu_dtype='int8', quantization_block_size=BLOCK)
BF16_INT8 = dict(mu_dtype='bfloat16', nu_dtype='int8', quantization_block_size=BLOCK)

# Each parameter's placement under ZeRO-1 over 8 devices with blocks of 64:
# a leading axis splits freely, the last one only into whole blocks.
SHAPES_AND_SPECS = {
  'one_block_rows': ((64, 64), P('data')),
  'two_block_rows': ((64, 128), P('data')),
  'many_block_rows': ((8, 1024), P(None, 'data')),  # Two blocks of each row per device.
  'short_last_block': ((64, 100), P('data')),  # Blocks of 64 and 36.
  'vector': ((16384,), P('data')),  # 32 blocks per device.
  'odd_vector': ((4160,), P()),  # 65 blocks: whole on every device.
  'cube': ((4, 8, 200), P(None, 'data')),
  'bias': ((128,), P('data')),  # Too small for blocks: float32, split freely.
}
STEPS = 4
LOOP_STEPS = 8


def _params() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
    k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in SHAPES_AND_SPECS.items()
  }


def _grads(steps: int) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(1)
  return [
    {k: (rng.normal(size=p.shape) * 10.0**-i).astype(np.float32) for k, p in _params().items()}
    for i in range(steps)
  ]


def _optimizer(storage: dict[str, Any]) -> optax.GradientTransformation:
  return adabelief_jax.adabelief(1e-2, weight_decay=1e-2, amsgrad=True, **storage)


def _step(update: Callable[..., Any], params: Any, state: Any, grads: Any) -> Any:
  """Params, updates and state after one step.

  The updates are applied in a jit of their own, here and on one device
  alike: inside the step, XLA:CPU may fuse ``p - lr * u`` into one FMA or not
  depending on how the step is partitioned (one rounding or two).
  """
  updates, state = update(grads, state, params)
  return _apply(params, updates), updates, state


_apply = jax.jit(optax.apply_updates)


def _train(update: Callable[..., Any], params: Any, state: Any, grads: list[Any]) -> Any:
  """Params, last updates and state after one step per gradient; blocks on nothing."""
  for g in grads:
    params, updates, state = _step(update, params, state, g)
  return params, updates, state


@functools.cache
def _unsharded(storage_name: str) -> list[Any]:
  """Params, updates and state after each step on one device, as NumPy."""
  tx = _optimizer({'int8': INT8, 'bf16_int8': BF16_INT8}[storage_name])
  device = jax.devices()[0]
  params = jax.device_put(_params(), device)
  state, update, trajectory = jax.jit(tx.init)(params), jax.jit(tx.update), []
  for g in _grads(LOOP_STEPS):
    params, updates, state = _step(update, params, state, jax.device_put(g, device))
    trajectory.append(jax.tree.map(np.asarray, (params, updates, state)))
  return trajectory


def _collectives(hlo: str) -> dict[str, int]:
  """How many instructions of each collective a compiled module's text has."""
  kinds = ('all-to-all', 'all-gather', 'all-reduce', 'collective-permute', 'reduce-scatter')
  return {k: len(re.findall(rf' {k}(?:-start)?\(', hlo)) for k in kinds}


def _int8_tx(block_sizes: tuple[int, ...]) -> optax.GradientTransformation:
  """A transformation (not AdaBelief) whose state is one 8-bit moment per block size."""

  def moment(params: Any, block: int) -> adabelief_jax.QuantizedMoment:
    return adabelief_jax.QuantizedMoment(
      jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.uint8), params),
      jax.tree.map(lambda p: jnp.zeros((*p.shape[:-1], -(-p.shape[-1] // block))), params),
      block,
    )

  return optax.GradientTransformation(
    lambda params: tuple(moment(params, b) for b in block_sizes), lambda u, s, p=None: (u, s)
  )


def _int8_leaves_tx() -> optax.GradientTransformation:
  """A transformation whose state holds int8 arrays like the params, not in 8-bit blocks."""
  return optax.GradientTransformation(
    lambda params: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.int8), params),
    lambda u, s, p=None: (u, s),
  )


@CHECKS
def check_plan_knows_8bit_state_by_type() -> dict[str, Any]:
  """Blocks where a QuantizedMoment is; int8 arrays elsewhere are ordinary moments."""
  mesh = jax.make_mesh((N_DEVICES,), ('data',), axis_types=(AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  abstract = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=replicated)
  params = {k: abstract(shape) for k, (shape, _) in SHAPES_AND_SPECS.items()}
  floats = {k: s.spec for k, s in sharding.moment_shardings(params, shard_axis='data').items()}
  assert floats['many_block_rows'] == P(None, 'data') and floats['odd_vector'] == P('data')

  # int8 arrays outside a QuantizedMoment (optax's own, or any) go where float moments go.
  for name, tx in (('adam', optax.adam(1e-3, mu_dtype=jnp.int8)), ('int8', _int8_leaves_tx())):
    plan = sharding.describe(tx, params, shard_axis='data')
    int8 = {leaf.path: leaf.spec for leaf in plan.leaves if leaf.dtype == jnp.int8}
    assert len(int8) == len(params), (name, int8)
    for path, spec in int8.items():
      assert spec == floats[path.split("'")[1]], (name, path, spec)

  # AdaBelief's 8-bit moments, and the float mu beside them: one placement per parameter.
  for storage in (INT8, BF16_INT8):
    belief = sharding.state_shardings(_optimizer(storage), params, shard_axis='data')[0]
    for k, (shape, spec) in SHAPES_AND_SPECS.items():
      mu = belief.mu[k] if storage is BF16_INT8 else belief.mu.codes[k]
      for moment in (mu, belief.nu.codes[k], belief.nu_max.codes[k]):
        assert moment.spec == spec, (storage, k, moment.spec, spec)
      want_scales = P() if math.prod(shape) < 4096 else spec
      assert belief.nu.scales[k].spec == want_scales, (storage, k, belief.nu.scales[k].spec)

  # Why a moment stays whole, in describe() and in the warning.
  plan = sharding.describe(_optimizer(INT8), params, shard_axis='data')
  notes = {leaf.path: leaf.note for leaf in plan.leaves if leaf.param == "['odd_vector']"}
  assert all('whole blocks of 64' in note for note in notes.values()), notes
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    sharding.state_shardings(_optimizer(INT8), params, shard_axis='data')
  messages = [str(w.message) for w in caught if issubclass(w.category, sharding.ShardingWarning)]
  assert len(messages) == 1 and 'whole blocks' in messages[0], messages
  assert "['odd_vector'] (4160,)" in messages[0], messages

  # Any QuantizedMoment, from any transformation; every block size of a parameter
  # divides its shards: blocks of 64 split 1024 into 8, blocks of 96 do not.
  one = {'w': abstract((16, 1024))}
  specs = {
    blocks: [
      s.codes['w'].spec for s in sharding.state_shardings(_int8_tx(blocks), one, shard_axis='data')
    ]
    for blocks in ((64,), (96,), (64, 96))
  }
  assert specs == {(64,): [P(None, 'data')], (96,): [P('data')], (64, 96): [P('data')] * 2}, specs
  return {'moment_specs': {k: str(spec) for k, (_, spec) in SHAPES_AND_SPECS.items()}}


def _assert_whole_blocks(state: Any) -> int:
  """Each device holds whole blocks of every 8-bit moment, with their scales; returns a count."""
  checked = 0
  for moment in jax.tree.leaves(
    state, is_leaf=lambda x: isinstance(x, adabelief_jax.QuantizedMoment)
  ):
    if not isinstance(moment, adabelief_jax.QuantizedMoment):
      continue
    for codes, scales in zip(jax.tree.leaves(moment.codes), jax.tree.leaves(moment.scales)):
      if codes.dtype == jnp.float32:
        continue  # Too small for blocks.
      block = min(moment.block_size, codes.shape[-1])
      scale_shards = {s.device: s for s in scales.addressable_shards}
      for shard in codes.addressable_shards:
        start, stop, _ = shard.index[-1].indices(codes.shape[-1])
        assert start % block == 0 and (stop % block == 0 or stop == codes.shape[-1]), shard.index
        s_start, s_stop, _ = scale_shards[shard.device].index[-1].indices(scales.shape[-1])
        assert (s_start, s_stop) == (start // block, -(-stop // block)), (shard.index, s_start)
        assert scale_shards[shard.device].index[:-1] == shard.index[:-1]
        checked += 1
  return checked


@functools.cache
def _zero1_setup(axis_type: AxisType, storage_name: str) -> dict[str, Any]:
  """ZeRO-1 of ``storage_name`` over 8 devices with ``with_sharded_state``.

  Returns the plan, the params (replicated), the gradients, and jitted
  ``init`` and ``update`` (which donates the state).
  """
  mesh = jax.make_mesh((N_DEVICES,), ('data',), axis_types=(axis_type,))
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(_params(), replicated)
  tx = _optimizer({'int8': INT8, 'bf16_int8': BF16_INT8}[storage_name])
  plan = sharding.describe(tx, params, shard_axis='data')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', sharding.ShardingWarning)  # 'odd_vector' stays whole.
    sharded_tx = sharding.with_sharded_state(tx, params, shard_axis='data')
  param_sh = jax.tree.map(lambda _: replicated, params)
  return {
    'plan': plan,
    'params': params,
    'grads': [jax.device_put(g, replicated) for g in _grads(LOOP_STEPS)],
    'init': jax.jit(sharded_tx.init, in_shardings=(param_sh,), out_shardings=plan.shardings),
    'update': jax.jit(
      sharded_tx.update,
      in_shardings=(param_sh, plan.shardings, param_sh),
      out_shardings=(param_sh, plan.shardings),
      donate_argnums=(1,),
    ),
  }


def _compiled_collectives(run: dict[str, Any]) -> dict[str, int]:
  """The collectives in the compiled ``update`` of a :func:`_zero1_setup`."""
  state = run['init'](run['params'])
  return _collectives(
    run['update'].lower(run['grads'][0], state, run['params']).compile().as_text()
  )


def _assert_same_but_rounding(got: Any, want: Any) -> None:
  """float32 leaves equal to rounding (of the leaf's largest value), all others exactly.

  XLA:CPU contracts ``a * b + c`` into an FMA within a fusion, and how it
  fuses the update's block-scale bounds (``b1 * M + (1 - b1) * G``, with ``M``
  a reduction over a bf16 ``mu``) depends on how the program is partitioned:
  those differ from one device's by a rounding.
  """
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    where = jax.tree_util.keystr(path)
    if g.dtype == np.float32:
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-6 * np.max(np.abs(w)), err_msg=where)
    else:
      np.testing.assert_array_equal(g, w, err_msg=where)


def _zero1(axis_type: AxisType, storage_name: str, exact: bool = True) -> dict[str, Any]:
  """ZeRO-1 of 8-bit state: it traces, no all-to-all, whole blocks, as on one device."""
  run = _zero1_setup(axis_type, storage_name)
  collectives = _compiled_collectives(run)
  assert collectives['all-to-all'] == 0, collectives
  state = run['init'](run['params'])
  got = jax.block_until_ready(_train(run['update'], run['params'], state, run['grads'][:STEPS]))
  for leaf, want in zip(jax.tree.leaves(got[2]), jax.tree.leaves(run['plan'].shardings)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)
  shards = _assert_whole_blocks(got[2])
  want = _unsharded(storage_name)[STEPS - 1]
  got = jax.tree.map(np.asarray, got)
  if exact:
    chex.assert_trees_all_equal(got, want)
  else:
    _assert_same_but_rounding(got, want)
  return {'collectives': collectives, 'shards_checked': shards}


@CHECKS
def check_zero1_int8_auto() -> dict[str, Any]:
  return _zero1(AxisType.Auto, 'int8')


@CHECKS
def check_zero1_int8_explicit() -> dict[str, Any]:
  return _zero1(AxisType.Explicit, 'int8')


@CHECKS
def check_zero1_bf16_int8_auto() -> dict[str, Any]:
  return _zero1(AxisType.Auto, 'bf16_int8', exact=False)


@CHECKS
def check_zero1_bf16_int8_explicit() -> dict[str, Any]:
  return _zero1(AxisType.Explicit, 'bf16_int8')


@CHECKS
def check_zero1_int8_steps_queued() -> dict[str, Any]:
  """8 steps dispatched without waiting, 10 times, each as on one device.

  The case reported to abort in XLA:CPU's in-process collectives
  ("Termination timeout for all to all") while a parameter's gradients and
  its 8-bit codes were placed differently, with an all-to-all between them.
  """
  run = _zero1_setup(AxisType.Auto, 'int8')
  assert _compiled_collectives(run)['all-to-all'] == 0
  want = _unsharded('int8')[-1]
  repeats = 10
  for _ in range(repeats):
    got = _train(run['update'], run['params'], run['init'](run['params']), run['grads'])
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, jax.block_until_ready(got)), want)
  return {'repeats': repeats, 'steps': LOOP_STEPS}


def test_plan_knows_8bit_state_by_type(device_checks):
  device_checks.metrics('check_plan_knows_8bit_state_by_type')


def test_zero1_int8_auto(device_checks):
  device_checks.metrics('check_zero1_int8_auto')


def test_zero1_int8_explicit(device_checks):
  device_checks.metrics('check_zero1_int8_explicit')


def test_zero1_bf16_int8_auto(device_checks):
  device_checks.metrics('check_zero1_bf16_int8_auto')


def test_zero1_bf16_int8_explicit(device_checks):
  device_checks.metrics('check_zero1_bf16_int8_explicit')


def test_zero1_int8_steps_queued(device_checks):
  device_checks.metrics('check_zero1_int8_steps_queued')


def test_every_check_has_a_test():
  tests = {name[len('test_') :] for name in globals() if name.startswith('test_')}
  assert {name[len('check_') :] for name in CHECKS.functions} <= tests
