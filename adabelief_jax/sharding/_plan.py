"""The placement of an optimizer state: one plan, found with ``optax.tree.map_params``."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adabelief_jax.sharding._specs import fit_spec, shard_bytes, spec_str, zero_spec

PyTree = Any


class ShardingWarning(UserWarning):
  """Some optimizer state could not be partitioned along ``shard_axis``."""


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  """Where one leaf of the optimizer state goes.

  Attributes:
    path: the leaf's path in the state, as ``jax.tree_util.keystr`` writes it.
    shape: the leaf's shape.
    dtype: the leaf's dtype.
    param: path of the parameter this leaf mirrors (a moment), or ``None`` for
      leaves that mirror no parameter (step counts, hyperparameters), which
      are replicated.
    param_spec: that parameter's ``PartitionSpec`` (``None`` if no parameter).
    spec: the leaf's ``PartitionSpec``.
    bytes_per_device: bytes of the leaf's shard, which every device holds.
    note: why the leaf is not partitioned along ``shard_axis``, or ``''``.
  """

  path: str
  shape: tuple[int, ...]
  dtype: np.dtype
  param: str | None
  param_spec: PartitionSpec | None
  spec: PartitionSpec
  bytes_per_device: int
  note: str = ''

  @property
  def nbytes(self) -> int:
    """Bytes of the whole (unsharded) leaf."""
    return math.prod(self.shape) * np.dtype(self.dtype).itemsize

  def row(self) -> tuple[str, ...]:
    param_spec = '-' if self.param_spec is None else spec_str(self.param_spec)
    return (
      self.path,
      str(self.shape),
      str(np.dtype(self.dtype)),
      param_spec,
      spec_str(self.spec),
      str(self.bytes_per_device),
      self.note,
    )


_HEADER = ('state leaf', 'shape', 'dtype', 'param spec', 'state spec', 'bytes/device', 'note')


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
  """The placement of an optimizer state, as returned by :func:`describe`.

  Attributes:
    mesh: the mesh the state lives on.
    shard_axis: the mesh axis moments are partitioned along (ZeRO-1), or
      ``None``.
    leaves: one :class:`LeafPlan` per leaf of the state, in tree order.
    shardings: the pytree of ``NamedSharding`` (what :func:`state_shardings`
      returns), structured like the state.
  """

  mesh: Mesh
  shard_axis: str | None
  leaves: tuple[LeafPlan, ...]
  shardings: PyTree = dataclasses.field(repr=False)

  @property
  def nbytes(self) -> int:
    """Bytes of the whole state, as if on one device."""
    return sum(leaf.nbytes for leaf in self.leaves)

  @property
  def bytes_per_device(self) -> int:
    """Bytes of the state on each device (each holds one shard of every leaf)."""
    return sum(leaf.bytes_per_device for leaf in self.leaves)

  @property
  def not_partitioned(self) -> tuple[LeafPlan, ...]:
    """Moments that keep their parameter's sharding (no dimension divides)."""
    return tuple(leaf for leaf in self.leaves if leaf.note)

  def __str__(self) -> str:
    rows = [_HEADER, *(leaf.row() for leaf in self.leaves)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    axis = f'shard_axis={self.shard_axis!r}' if self.shard_axis else 'no shard_axis'
    share = self.bytes_per_device / max(self.nbytes, 1)
    lines.append(
      f'{self.bytes_per_device} bytes per device of {self.nbytes} ({share:.3f}); '
      f'{axis}, mesh {dict(self.mesh.shape)}'
    )
    return '\n'.join(lines)


@functools.cache
def _pmap_axis_names() -> tuple[str, ...]:
  """The axis names of the mesh that ``jax.pmap`` puts its outputs on."""
  return jax.pmap(lambda x: x)(jnp.zeros(jax.local_device_count())).sharding.mesh.axis_names


def _leaf_mesh(leaf: Any, where: str, caller: str) -> Mesh | None:
  """The mesh of a param's NamedSharding; None if it has none or is replicated."""
  sharding = getattr(leaf, 'sharding', None)
  if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh):
    return sharding.mesh
  if sharding is not None and not sharding.is_fully_replicated:
    raise TypeError(
      f'{caller}: params{where} has a {type(sharding).__name__}, not a '
      'NamedSharding; place the params on a mesh with jax.device_put(x, '
      'NamedSharding(mesh, spec)).'
    )
  return None


def _mismatch(leaf_mesh: Mesh, mesh: Mesh, where: str, caller: str) -> Exception:
  if leaf_mesh.axis_names == _pmap_axis_names():
    return TypeError(
      f'{caller}: params{where} comes from jax.pmap (its leading axis indexes '
      'devices); with jax.pmap, create the state inside pmap (jax.pmap(tx.init)), '
      'or place the params on a mesh with jax.device_put(x, NamedSharding(mesh, '
      'spec)) and use jax.jit.'
    )
  return ValueError(
    f'{caller}: params{where} is sharded over {leaf_mesh}, not over `mesh`={mesh}. '
    'Pass the mesh the params live on (or mesh=None to use it), or device_put the '
    'params onto `mesh` first.'
  )


def resolve_mesh(params: PyTree, mesh: Mesh | None, caller: str) -> Mesh:
  """The mesh given, checked against the params' own, or the params' one."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if not leaves:
    raise ValueError(f'{caller}: `params` has no leaves.')
  if mesh is not None and not isinstance(mesh, Mesh):
    raise TypeError(
      f'{caller}: `mesh` must be a jax.sharding.Mesh (e.g. from jax.make_mesh), '
      f'got {type(mesh).__name__}.'
    )
  found: dict[Mesh, str] = {}
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path)
    leaf_mesh = _leaf_mesh(leaf, where, caller)
    if leaf_mesh is not None and mesh is not None and leaf_mesh != mesh:
      raise _mismatch(leaf_mesh, mesh, where, caller)
    if leaf_mesh is not None:
      found.setdefault(leaf_mesh, where)
  if mesh is not None:
    return mesh
  if len(found) != 1:
    described = '; '.join(f'params{w}: {m}' for m, w in found.items())
    raise ValueError(
      f'{caller}: `params` are sharded over more than one mesh ({described}).'
      if found
      else f'{caller}: no leaf of `params` carries a NamedSharding, so there is no '
      'mesh to place the optimizer state on; pass `mesh=`.'
    )
  return next(iter(found))


def check_shard_axis(shard_axis: Any, mesh: Mesh, caller: str) -> None:
  if shard_axis is None:
    return
  if not isinstance(shard_axis, str):
    raise TypeError(
      f'{caller}: `shard_axis` must be the name of one mesh axis (a str) or None, '
      f'got {shard_axis!r}.'
    )
  if shard_axis not in mesh.axis_names:
    raise ValueError(
      f'{caller}: `shard_axis`={shard_axis!r} is not an axis of the mesh; its axes '
      f'are {mesh.axis_names}.'
    )


@dataclasses.dataclass(frozen=True)
class _Moment:
  """Where the moments of one parameter go (a leaf of a params-like tree)."""

  param: str
  param_shape: tuple[int, ...]
  param_sharding: NamedSharding
  sharding: NamedSharding
  note: str


def _placement(
  where: str,
  sharding: NamedSharding,
  shape: tuple[int, ...],
  shard_axis: str | None,
  block: int = 1,
  param_shape: tuple[int, ...] | None = None,
) -> _Moment:
  """Where a state leaf of ``shape``, mirroring the parameter at ``where``, goes."""
  spec, note = sharding.spec, ''
  if shard_axis is not None:
    spec, note = zero_spec(shape, spec, sharding.mesh, shard_axis, block)
  moment = sharding if spec == sharding.spec else sharding.update(spec=spec)
  return _Moment(where, param_shape or shape, sharding, moment, note)


def moments(params: PyTree, mesh: Mesh, shard_axis: str | None) -> PyTree:
  """A :class:`_Moment` per parameter, structured like ``params``."""

  def one(path: Any, leaf: Any) -> _Moment:
    sharding = getattr(leaf, 'sharding', None)
    if not isinstance(sharding, NamedSharding):
      sharding = NamedSharding(mesh, PartitionSpec())  # Unsharded: replicated.
    return _placement(jax.tree_util.keystr(path), sharding, tuple(np.shape(leaf)), shard_axis)

  return jax.tree_util.tree_map_with_path(one, params)


def _place(leaf: Any, moment: _Moment, shard_axis: str | None) -> Any:
  """The placement of a state leaf that mirrors ``moment``'s parameter.

  8-bit codes (int8 and uint8 leaves of the parameter's shape) keep whole rows,
  hence whole blocks, on every device. Block scales (leaves of another shape)
  take the parameter's spec where it divides their shape.
  """
  if _is_masked(leaf):
    return leaf  # A masked-out parameter: keep the empty node.
  shape = tuple(leaf.shape)
  if shape == moment.param_shape and leaf.dtype not in (jnp.int8, jnp.uint8):
    return moment
  sharding = moment.param_sharding
  if shape == moment.param_shape:
    whole_rows = shape[-1] if len(shape) > 1 else 1
    return _placement(moment.param, sharding, shape, shard_axis, whole_rows, moment.param_shape)
  sharding = sharding.update(spec=fit_spec(sharding.spec, shape, sharding.mesh))
  return _placement(moment.param, sharding, shape, shard_axis, param_shape=moment.param_shape)


def _not_a_moment(subtree: PyTree) -> PyTree:
  return jax.tree.map(lambda _: None, subtree, is_leaf=lambda x: x is None)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _leaf_plan(path: Any, leaf: Any, moment: _Moment | None, sharding: NamedSharding) -> LeafPlan:
  """One state leaf's plan; ``moment`` is None for a leaf that mirrors no param."""
  shape = tuple(leaf.shape)
  return LeafPlan(
    path=jax.tree_util.keystr(path),
    shape=shape,
    dtype=leaf.dtype,
    param=None if moment is None else moment.param,
    param_spec=None if moment is None else moment.param_sharding.spec,
    spec=sharding.spec,
    bytes_per_device=shard_bytes(shape, leaf.dtype, sharding),
    note=moment.note if moment else '',
  )


def _warn_not_partitioned(plan: ShardingPlan) -> None:
  """Warns about moments left unpartitioned, unless all are tiny.

  Leaves with fewer elements than the axis size (scalars, short biases) could
  not give every device a piece anyway; :func:`describe` still lists them.
  """
  if plan.shard_axis is None:
    return
  size = plan.mesh.shape[plan.shard_axis]
  skipped = [leaf for leaf in plan.not_partitioned if math.prod(leaf.shape) >= size]
  if not skipped:
    return
  params = sorted({(leaf.param, leaf.shape) for leaf in skipped})
  listed = ', '.join(f'{p} {s}' for p, s in params[:8])
  more = f' and {len(params) - 8} more' if len(params) > 8 else ''
  wasted = sum(leaf.bytes_per_device for leaf in skipped)
  warnings.warn(
    f'{len(skipped)} optimizer-state leaves ({wasted} bytes per device, of '
    f"{plan.bytes_per_device}) keep their parameter's sharding: no dimension of "
    f'their parameter is divisible by the size {size} of mesh axis '
    f'{plan.shard_axis!r}: {listed}{more}. adabelief_jax.sharding.describe() shows '
    'the full plan.',
    ShardingWarning,
    stacklevel=4,  # _warn_not_partitioned <- plan <- the public function <- its caller.
  )


def plan(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None,
  shard_axis: str | None,
  caller: str,
  *,
  warn: bool = True,
) -> ShardingPlan:
  """The placement of ``tx``'s state; what every public entry point builds on.

  ``optax.tree.map_params`` finds the subtrees of the state that stand for the
  params (in chains, ``masked``, ``MultiSteps``, ``inject_hyperparams``...);
  their leaves go where :func:`moments` says, every other leaf is
  replicated. With ``warn``, moments that ``shard_axis`` cannot partition are
  named in a :class:`ShardingWarning`.
  """
  if not hasattr(tx, 'init'):
    raise TypeError(
      f'{caller}: `tx` must be an optax.GradientTransformation, got {type(tx).__name__}.'
    )
  mesh = resolve_mesh(params, mesh, caller)
  check_shard_axis(shard_axis, mesh, caller)
  abstract = jax.eval_shape(tx.init, params)
  placed = optax.tree.map_params(
    tx,
    lambda leaf, moment: _place(leaf, moment, shard_axis),
    abstract,
    moments(params, mesh, shard_axis),
    transform_non_params=_not_a_moment,
    is_leaf=_is_masked,
  )
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  flat_moments = treedef.flatten_up_to(placed)  # type: ignore[attr-defined]  # jaxlib has no stubs.
  replicated = NamedSharding(mesh, PartitionSpec())
  flat_shardings = [replicated if m is None else m.sharding for m in flat_moments]
  leaves = tuple(
    _leaf_plan(path, leaf, moment, sharding)
    for (path, leaf), moment, sharding in zip(paths_leaves, flat_moments, flat_shardings)
  )
  result = ShardingPlan(mesh, shard_axis, leaves, jax.tree.unflatten(treedef, flat_shardings))
  if warn:
    _warn_not_partitioned(result)
  return result
