"""The placement of an optimizer state: one plan, found with ``optax.tree.map_params``."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adabelief_jax._quantize import QuantizedMoment
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


# The one axis of the mesh that jax.pmap puts its outputs on, when it is given no
# axis_name (JAX's name; checked by tests/test_sharding.py). Known by name, not by
# running a pmap here, which in a multi-process run every process would have to join.
_PMAP_AXIS_NAMES = ('_internal_pmap_axis_name',)


def _leaf_mesh(leaf: Any, where: str, caller: str) -> Mesh | None:
  """The mesh of a param's NamedSharding; None if it has none or is replicated.

  Raises ``TypeError`` for a param that ``jax.pmap`` made: its mesh is pmap's
  own, whose leading axis indexes devices, so a state placed on it would not
  be the state of these parameters.
  """
  sharding = getattr(leaf, 'sharding', None)
  if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh):
    names = sharding.mesh.axis_names
    if names == _PMAP_AXIS_NAMES:
      raise TypeError(
        f'{caller}: params{where} comes from jax.pmap (its leading axis indexes '
        'devices); with jax.pmap, create the state inside pmap (jax.pmap(tx.init)), '
        'or place the params on a mesh with jax.device_put(x, NamedSharding(mesh, '
        'spec)) and use jax.jit.'
      )
    return sharding.mesh
  if sharding is not None and not sharding.is_fully_replicated:
    raise TypeError(
      f'{caller}: params{where} has a {type(sharding).__name__}, not a '
      'NamedSharding; place the params on a mesh with jax.device_put(x, '
      'NamedSharding(mesh, spec)).'
    )
  return None


def _mismatch(leaf_mesh: Mesh, mesh: Mesh, where: str, caller: str) -> ValueError:
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


def moments(
  params: PyTree, mesh: Mesh, shard_axis: str | None, blocks: dict[str, int] | None = None
) -> PyTree:
  """A :class:`_Moment` per parameter, structured like ``params``.

  ``blocks`` maps a parameter's path to the block length of its 8-bit state,
  which ZeRO-1 may split along the last axis only between whole blocks;
  parameters not in it have float state (``block=1``).
  """
  blocks = blocks or {}

  def one(path: Any, leaf: Any) -> _Moment:
    sharding = getattr(leaf, 'sharding', None)
    if not isinstance(sharding, NamedSharding):
      sharding = NamedSharding(mesh, PartitionSpec())  # Unsharded: replicated.
    where = jax.tree_util.keystr(path)
    return _placement(where, sharding, tuple(np.shape(leaf)), shard_axis, blocks.get(where, 1))

  return jax.tree_util.tree_map_with_path(one, params)


@dataclasses.dataclass(frozen=True)
class _StateLeaf:
  """A state leaf, what it stores, and the parameter it mirrors.

  Not a pytree, so that ``optax.tree.map_params`` hands it over whole.

  Attributes:
    leaf: the leaf (a ``jax.ShapeDtypeStruct``).
    kind: ``'codes'`` or ``'scales'`` inside a :class:`QuantizedMoment`,
      ``'array'`` for every other leaf.
    block: for codes in 8-bit blocks, the block length along the last axis;
      else 1.
    param: the path of the parameter it mirrors, or ``None``.
  """

  leaf: Any
  kind: str = 'array'
  block: int = 1
  param: str | None = None


def _mark(abstract: PyTree) -> PyTree:
  """``abstract`` with each leaf a :class:`_StateLeaf` saying what it stores.

  8-bit state is known by its type: the codes and scales of a
  :class:`QuantizedMoment` (a leaf small enough to stay float32 has a scalar
  scale, and no blocks).
  """

  def codes(leaf: Any, scales: Any, block_size: int) -> _StateLeaf:
    block = min(block_size, leaf.shape[-1]) if scales.shape else 1
    return _StateLeaf(leaf, 'codes', block)

  def one(node: Any) -> Any:
    if not isinstance(node, QuantizedMoment):
      return _StateLeaf(node)
    return dataclasses.replace(
      node,
      codes=jax.tree.map(lambda c, s: codes(c, s, node.block_size), node.codes, node.scales),
      scales=jax.tree.map(lambda s: _StateLeaf(s, 'scales'), node.scales),
    )

  return jax.tree.map(one, abstract, is_leaf=lambda x: isinstance(x, QuantizedMoment))


def _owned(tx: optax.GradientTransformation, abstract: PyTree, params: PyTree) -> list[_StateLeaf]:
  """Each leaf of ``abstract`` (``tx``'s state), in order, with its parameter's path.

  ``optax.tree.map_params`` finds the subtrees of the state that stand for the
  params (in chains, ``masked``, ``MultiSteps``, ``inject_hyperparams``...);
  every other leaf mirrors no parameter.
  """
  paths = jax.tree_util.tree_map_with_path(lambda path, _: jax.tree_util.keystr(path), params)
  owned = optax.tree.map_params(
    tx,
    lambda s, where: s if _is_masked(s) else dataclasses.replace(s, param=where),
    _mark(abstract),
    paths,
    is_leaf=_is_masked,
  )
  treedef = jax.tree.structure(abstract)
  return list(treedef.flatten_up_to(owned))  # type: ignore[attr-defined]  # jaxlib has no stubs.


def _blocks(leaves: list[_StateLeaf]) -> dict[str, int]:
  """Each parameter with 8-bit state: a block length that all its state's blocks divide."""
  blocks: dict[str, int] = {}
  for s in leaves:
    if s.param is not None and s.block > 1:
      blocks[s.param] = math.lcm(blocks.get(s.param, 1), s.block)
  return blocks


def _place(s: _StateLeaf, moment: _Moment | None, shard_axis: str | None) -> _Moment | None:
  """The placement of state leaf ``s``; ``moment`` is its parameter's (or ``None``).

  Leaves of the parameter's shape (moments, 8-bit codes) take the
  parameter's one placement, so that the update needs no resharding between
  them; block scales follow it where it divides their shape. Other leaves
  (statistics, factored moments) take the parameter's spec where it divides
  theirs, then their own ZeRO-1 dimension.
  """
  if moment is None:
    return None  # Mirrors no parameter: replicated.
  shape, mesh = tuple(s.leaf.shape), moment.sharding.mesh
  if s.kind == 'scales' and shape:
    spec = fit_spec(moment.sharding.spec, shape, mesh)
    return dataclasses.replace(moment, sharding=moment.sharding.update(spec=spec))
  if s.kind != 'scales' and shape == moment.param_shape:
    return moment
  # A float leaf's scalar scale, or a leaf of another shape (statistics, factored
  # moments): small, so one that stays replicated along shard_axis is not worth a note.
  sharding = moment.param_sharding.update(spec=fit_spec(moment.param_sharding.spec, shape, mesh))
  placed = _placement(moment.param, sharding, shape, shard_axis, param_shape=moment.param_shape)
  return dataclasses.replace(placed, note='')


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


def _warn_not_partitioned(plan: ShardingPlan, blocked: set[str]) -> None:
  """Warns about moments left unpartitioned, unless all are tiny.

  Leaves with fewer elements than the axis size (scalars, short biases) could
  not give every device a piece anyway; :func:`describe` still lists them.
  ``blocked`` names the parameters with 8-bit state, whose last dimension
  counts only in whole blocks.
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
  blocks = (
    " (8-bit state's last dimension only in whole blocks)"
    if any(leaf.param in blocked for leaf in skipped)
    else ''
  )
  warnings.warn(
    f'{len(skipped)} optimizer-state leaves ({wasted} bytes per device, of '
    f"{plan.bytes_per_device}) keep their parameter's sharding: no dimension of "
    f'their parameter is divisible by the size {size} of mesh axis '
    f'{plan.shard_axis!r}{blocks}: {listed}{more}. adabelief_jax.sharding.describe() '
    'shows the full plan.',
    ShardingWarning,
    stacklevel=4,  # _warn_not_partitioned <- placement <- the public function <- its caller.
  )


def placement(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None,
  shard_axis: str | None,
  caller: str,
  *,
  warn: bool = True,
) -> tuple[ShardingPlan, PyTree]:
  """The placement of ``tx``'s state, and the one of each parameter's moments.

  Every state leaf that mirrors a parameter goes where that parameter's one
  placement says (:func:`_place`), every other leaf is replicated. A
  parameter with 8-bit state (a :class:`QuantizedMoment` covers it) is
  partitioned by ``shard_axis`` only between whole blocks, and then so are
  all its other moments, so that its update needs no resharding. Returns
  the plan and that placement as a tree of :class:`_Moment` like ``params``
  (where ``with_sharded_state`` puts the gradients). With ``warn``, moments
  that ``shard_axis`` cannot partition are named in a
  :class:`ShardingWarning`.
  """
  if not hasattr(tx, 'init'):
    raise TypeError(
      f'{caller}: `tx` must be an optax.GradientTransformation, got {type(tx).__name__}.'
    )
  mesh = resolve_mesh(params, mesh, caller)
  check_shard_axis(shard_axis, mesh, caller)
  abstract = jax.eval_shape(tx.init, params)
  state_leaves = _owned(tx, abstract, params)
  blocks = _blocks(state_leaves)
  per_param = moments(params, mesh, shard_axis, blocks)
  by_path = {m.param: m for m in jax.tree.leaves(per_param)}
  placed = [
    _place(s, None if s.param is None else by_path[s.param], shard_axis) for s in state_leaves
  ]
  replicated = NamedSharding(mesh, PartitionSpec())
  flat_shardings = [replicated if m is None else m.sharding for m in placed]
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  leaves = tuple(
    _leaf_plan(path, leaf, moment, sharding)
    for (path, leaf), moment, sharding in zip(paths_leaves, placed, flat_shardings)
  )
  result = ShardingPlan(mesh, shard_axis, leaves, jax.tree.unflatten(treedef, flat_shardings))
  if warn:
    _warn_not_partitioned(result, set(blocks))
  return result, per_param
