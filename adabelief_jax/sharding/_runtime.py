"""Placing the state on devices: sharded init, resharding inside ``update``, bytes."""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from adabelief_jax.sharding._specs import axes_of, shard_bytes

PyTree = Any


def _explicit_part(sharding: NamedSharding) -> NamedSharding:
  """``sharding`` restricted to the mesh's Explicit axes (Auto ones dropped)."""
  types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
  spec = PartitionSpec(
    *(tuple(a for a in axes_of(e) if types[a] == AxisType.Explicit) or None for e in sharding.spec)
  )
  return sharding.update(spec=spec)


def constrain(tree: PyTree, shardings: PyTree) -> PyTree:
  """Places ``tree`` as ``shardings`` say, inside or outside ``jax.jit``.

  ``jax.sharding.reshard`` for Explicit mesh axes (where
  ``with_sharding_constraint`` must not name them), a sharding constraint for
  Auto ones; on a mixed mesh the Explicit axes are resharded and the Auto ones
  left to XLA.
  """

  def one(x: Any, sharding: NamedSharding) -> Any:
    types = set(sharding.mesh.axis_types)
    if types == {AxisType.Auto}:
      return jax.lax.with_sharding_constraint(x, sharding)
    return jax.sharding.reshard(
      x, sharding if types == {AxisType.Explicit} else _explicit_part(sharding)
    )

  return jax.tree.map(one, tree, shardings)


def sharded_update(
  tx: optax.GradientTransformation,
  state_shardings: PyTree,
  param_shardings: PyTree,
  moment_shardings: PyTree,
) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose ``update`` runs where the moments live (see ``with_sharded_state``)."""
  inner = optax.with_extra_args_support(tx)

  def init_fn(params: optax.Params) -> optax.OptState:
    # As update sees them: state sampled from the params (statistics) keeps its shape.
    return constrain(inner.init(constrain(params, moment_shardings)), state_shardings)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    updates = constrain(updates, moment_shardings)
    if params is not None:
      params = constrain(params, moment_shardings)
    updates, state = inner.update(updates, state, params, **extra_args)
    return constrain(updates, param_shardings), constrain(state, state_shardings)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _device_bytes(leaf: Any) -> dict[jax.Device, int]:
  """Bytes of ``leaf`` on each local device: an array's shards, or a struct's plan."""
  if isinstance(leaf, jax.Array):
    return {shard.device: shard.data.nbytes for shard in leaf.addressable_shards}
  sharding = getattr(leaf, 'sharding', None)
  if not isinstance(sharding, NamedSharding):
    return {}
  n = shard_bytes(leaf.shape, leaf.dtype, sharding)
  return dict.fromkeys(sharding.addressable_devices, n)


def bytes_per_device(tree: PyTree) -> dict[jax.Device, int]:
  """Bytes the leaves of ``tree`` occupy on each local device.

  A ``jax.Array`` counts by its ``addressable_shards`` (replicated leaves on
  every device, partitioned ones by their shard); a ``jax.ShapeDtypeStruct``
  with a ``NamedSharding`` (e.g. from :func:`abstract_state`) counts by the
  shard it would have. Other leaves are ignored.
  ``max(bytes_per_device(state).values())`` is the most loaded device, the
  figure :attr:`ShardingPlan.bytes_per_device` gives for a plan.
  """
  totals: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    for device, n in _device_bytes(leaf).items():
      totals[device] = totals.get(device, 0) + n
  return totals
