"""Shardings for optimizer state: follow the parameters, or partition it (ZeRO-1).

An optimizer's moments (AdaBelief's ``mu``, ``nu`` and ``nu_max``, and the
like in any Optax transformation) are pytrees shaped like the parameters. This
module finds them in the state of any ``optax.GradientTransformation``
(chains, ``optax.masked``, ``optax.multi_transform``, ``optax.MultiSteps``,
``optax.inject_hyperparams`` ...) and gives every state leaf a
``jax.sharding.NamedSharding``:

* by default each moment is sharded like its parameter, and every other leaf
  (step counts, hyperparameters) is replicated over the mesh;
* with ``shard_axis="data"`` (ZeRO stage 1, Rajbhandari et al. 2020), a moment
  whose parameter is replicated along the mesh axis ``"data"`` is partitioned
  along it, on its largest dimension that the axis size divides. Each
  data-parallel device then stores ``1/N`` of the optimizer state, updates its
  slice, and XLA all-gathers the updates.

Typical use, with ``jax.jit`` and parameters already placed on a mesh::

  tx = adabelief_jax.adabelief(1e-3, weight_decay=1e-4)
  state_sh = sharding.state_shardings(tx, params, shard_axis='data')
  param_sh = jax.tree.map(lambda p: p.sharding, params)
  state = jax.jit(tx.init, out_shardings=state_sh)(params)

  @functools.partial(jax.jit, in_shardings=(param_sh, state_sh, batch_sh),
                     out_shardings=(param_sh, state_sh), donate_argnums=(0, 1))
  def train_step(params, state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

:func:`with_sharded_state` wraps ``tx`` so that the resharding happens inside
its ``update`` (explicitly, also on meshes with ``Explicit`` axes), and
:func:`describe` shows the plan leaf by leaf.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Hashable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
  'LeafPlan',
  'ShardingPlan',
  'ShardingWarning',
  'abstract_state',
  'bytes_per_device',
  'describe',
  'init_sharded',
  'moment_shardings',
  'state_shardings',
  'with_sharded_state',
]

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
    bytes_per_device: bytes the leaf takes on each device holding a shard.
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
    """Bytes of the state on each device (the most loaded one)."""
    return sum(leaf.bytes_per_device for leaf in self.leaves)

  @property
  def not_partitioned(self) -> tuple[LeafPlan, ...]:
    """Moments that keep their parameter's sharding: no dimension divides."""
    return tuple(leaf for leaf in self.leaves if leaf.note)

  def __str__(self) -> str:
    rows = [('state leaf', 'shape', 'dtype', 'param spec', 'state spec', 'bytes/device', 'note')]
    for leaf in self.leaves:
      rows.append(
        (
          leaf.path,
          str(leaf.shape),
          str(np.dtype(leaf.dtype)),
          '-' if leaf.param_spec is None else _spec_str(leaf.param_spec),
          _spec_str(leaf.spec),
          str(leaf.bytes_per_device),
          leaf.note,
        )
      )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    axis = f'shard_axis={self.shard_axis!r}' if self.shard_axis else 'no shard_axis'
    lines.append(
      f'{self.bytes_per_device} bytes per device of {self.nbytes} '
      f'({self.bytes_per_device / max(self.nbytes, 1):.3f}); {axis}, mesh '
      f'{dict(self.mesh.shape)}'
    )
    return '\n'.join(lines)


def _spec_str(spec: PartitionSpec) -> str:
  return 'P(' + ', '.join(repr(e) for e in spec) + ')'


def _mesh_of(sharding: Any) -> Mesh | None:
  return sharding.mesh if isinstance(sharding, NamedSharding) else None


_PMAP_AXIS = '_internal_pmap_axis_name'  # The mesh of jax.pmap's outputs.


def _resolve_mesh(params: PyTree, mesh: Mesh | None, caller: str) -> Mesh:
  """The mesh given, checked against the params' own, or the params' one."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if not leaves:
    raise ValueError(f'{caller}: `params` has no leaves.')
  found: dict[Hashable, tuple[Mesh, str]] = {}
  for path, leaf in leaves:
    _check_sharding(leaf, jax.tree_util.keystr(path), caller)
    leaf_mesh = _mesh_of(getattr(leaf, 'sharding', None))
    if leaf_mesh is not None:
      found.setdefault(leaf_mesh, (leaf_mesh, jax.tree_util.keystr(path)))
  if mesh is not None:
    if not isinstance(mesh, Mesh):
      raise TypeError(
        f'{caller}: `mesh` must be a jax.sharding.Mesh (e.g. from '
        f'jax.make_mesh), got {type(mesh).__name__}.'
      )
    for leaf_mesh, where in found.values():
      if leaf_mesh != mesh:
        raise ValueError(
          f'{caller}: params{where} is sharded over {leaf_mesh}, not over '
          f'`mesh`={mesh}. Pass the mesh the params live on (or mesh=None '
          'to use it), or device_put the params onto `mesh` first.'
        )
    return mesh
  if not found:
    raise ValueError(
      f'{caller}: no leaf of `params` carries a NamedSharding, so there is '
      'no mesh to place the optimizer state on; pass `mesh=`.'
    )
  if len(found) > 1:
    described = '; '.join(f'params{w}: {m}' for m, w in found.values())
    raise ValueError(f'{caller}: `params` are sharded over more than one mesh ({described}).')
  return next(iter(found.values()))[0]


def _check_sharding(leaf: Any, path: str, caller: str) -> None:
  """Raises unless the leaf's sharding is a mesh's, fully replicated or absent."""
  sharding = getattr(leaf, 'sharding', None)
  if isinstance(sharding, NamedSharding):
    if _PMAP_AXIS in sharding.mesh.axis_names:
      raise TypeError(
        f'{caller}: params{path} comes from jax.pmap (its leading axis '
        'indexes devices); with jax.pmap, create the state inside pmap '
        '(jax.pmap(tx.init)), or place the params on a mesh with '
        'jax.device_put(x, NamedSharding(mesh, spec)) and use jax.jit.'
      )
  elif sharding is not None and not sharding.is_fully_replicated:
    raise TypeError(
      f'{caller}: params{path} has a {type(sharding).__name__}, not a '
      'NamedSharding; place the params on a mesh with jax.device_put(x, '
      'NamedSharding(mesh, spec)).'
    )


def _param_sharding(leaf: Any, mesh: Mesh) -> NamedSharding:
  """A parameter's sharding as a NamedSharding over ``mesh``.

  Leaves with no sharding (NumPy arrays, ShapeDtypeStructs without one) and
  fully replicated ones (e.g. single-device arrays) count as replicated. The
  leaf has passed :func:`_check_sharding`.
  """
  sharding = getattr(leaf, 'sharding', None)
  if isinstance(sharding, NamedSharding):
    return sharding
  return NamedSharding(mesh, PartitionSpec())


def _normalized(spec: PartitionSpec, ndim: int) -> list[Any]:
  entries = list(spec)
  if len(entries) > ndim:
    raise ValueError(f'PartitionSpec {spec} has more entries than {ndim} dims.')
  return entries + [None] * (ndim - len(entries))


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _zero_spec(
  shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh, axis: str
) -> tuple[PartitionSpec, str]:
  """``spec`` plus ``axis`` on the largest dimension it divides; or a note."""
  entries = _normalized(spec, len(shape))
  if any(axis in _axes(e) for e in entries if e is not PartitionSpec.UNCONSTRAINED):
    return spec, ''  # Already partitioned along the axis (FSDP-style params).
  size = mesh.shape[axis]
  if size == 1:
    return spec, ''
  best = None
  for dim, (n, entry) in enumerate(zip(shape, entries)):
    if entry is PartitionSpec.UNCONSTRAINED:
      continue
    factor = math.prod(mesh.shape[a] for a in _axes(entry))
    if n % (factor * size) == 0 and (best is None or n // factor > best[0]):
      best = (n // factor, dim)
  if best is None:
    if not shape:
      return spec, f'replicated along {axis!r}: a scalar'
    sharded = ' times its existing sharding' if any(entries) else ''
    return spec, (
      f'replicated along {axis!r}: no dimension of {shape} is divisible by {size}{sharded}'
    )
  dim = best[1]
  entries[dim] = _axes(entries[dim]) + (axis,)
  if len(entries[dim]) == 1:
    entries[dim] = axis
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries), ''


def _bytes_per_device(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec, mesh: Mesh) -> int:
  entries = _normalized(spec, len(shape))
  local = [
    -(-n // math.prod(mesh.shape[a] for a in _axes(e)))
    if e is not PartitionSpec.UNCONSTRAINED
    else n
    for n, e in zip(shape, entries)
  ]
  return math.prod(local) * np.dtype(dtype).itemsize


def _check_shard_axis(shard_axis: Any, mesh: Mesh, caller: str) -> None:
  if shard_axis is None:
    return
  if not isinstance(shard_axis, str):
    raise TypeError(
      f'{caller}: `shard_axis` must be the name of one mesh axis (a str) or '
      f'None, got {shard_axis!r}.'
    )
  if shard_axis not in mesh.axis_names:
    raise ValueError(
      f'{caller}: `shard_axis`={shard_axis!r} is not an axis of the mesh; '
      f'its axes are {mesh.axis_names}.'
    )


def _moment_plan(
  params: PyTree, mesh: Mesh, shard_axis: str | None
) -> tuple[PyTree, PyTree, list[tuple[str, PartitionSpec, str]]]:
  """(param shardings, moment shardings, [(path, param spec, note)]), like params."""
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  param_sh, moment_sh, info = [], [], []
  for path, leaf in paths_leaves:
    where = jax.tree_util.keystr(path)
    sharding = _param_sharding(leaf, mesh)
    spec, note = sharding.spec, ''
    if shard_axis is not None:
      spec, note = _zero_spec(tuple(np.shape(leaf)), spec, mesh, shard_axis)
    param_sh.append(sharding)
    moment_sh.append(sharding if spec == sharding.spec else sharding.update(spec=spec))
    info.append((where, sharding.spec, note))
  return treedef.unflatten(param_sh), treedef.unflatten(moment_sh), info


def _plan(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None,
  shard_axis: str | None,
  caller: str,
) -> ShardingPlan:
  if not hasattr(tx, 'init'):
    raise TypeError(
      f'{caller}: `tx` must be an optax.GradientTransformation, got {type(tx).__name__}.'
    )
  mesh = _resolve_mesh(params, mesh, caller)
  _check_shard_axis(shard_axis, mesh, caller)
  _, moment_sh, info = _moment_plan(params, mesh, shard_axis)
  params_def = jax.tree.structure(params)
  param_shapes = [tuple(np.shape(p)) for p in jax.tree.leaves(params)]
  moment_leaves = params_def.flatten_up_to(moment_sh)
  abstract = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, PartitionSpec())

  def mirrors_params(node: Any) -> bool:
    """True for a subtree structured like params, with the params' shapes.

    Parameters can be masked out (``optax.MaskedNode``, an empty subtree).
    """
    try:
      parts = params_def.flatten_up_to(node)
    except (ValueError, TypeError):
      return False
    found = False
    for part, shape in zip(parts, param_shapes):
      if isinstance(part, jax.ShapeDtypeStruct) and part.shape == shape:
        found = True
      elif jax.tree.leaves(part):
        return False
    return found

  leaves: list[LeafPlan] = []

  def place(path: tuple[Any, ...], node: Any) -> Any:
    prefix = jax.tree_util.keystr(path)
    if not mirrors_params(node):  # A leaf that mirrors no parameter.
      leaves.append(
        LeafPlan(
          prefix,
          tuple(node.shape),
          node.dtype,
          None,
          None,
          PartitionSpec(),
          _bytes_per_device(node.shape, node.dtype, PartitionSpec(), mesh),
        )
      )
      return replicated
    out = []
    for part, sharding, (where, param_spec, note) in zip(
      params_def.flatten_up_to(node), moment_leaves, info
    ):
      if not isinstance(part, jax.ShapeDtypeStruct):
        out.append(part)  # A masked-out parameter: keep the empty node.
        continue
      leaves.append(
        LeafPlan(
          prefix + where,
          tuple(part.shape),
          part.dtype,
          where,
          param_spec,
          sharding.spec,
          _bytes_per_device(part.shape, part.dtype, sharding.spec, mesh),
          note,
        )
      )
      out.append(sharding)
    return params_def.unflatten(out)

  shardings = jax.tree_util.tree_map_with_path(place, abstract, is_leaf=mirrors_params)
  return ShardingPlan(mesh, shard_axis, tuple(leaves), shardings)


def describe(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None = None,
  *,
  shard_axis: str | None = None,
) -> ShardingPlan:
  """The placement :func:`state_shardings` chooses, leaf by leaf.

  ``print(describe(tx, params, shard_axis='data'))`` prints a table of the
  state's leaves with their parameter's and their own ``PartitionSpec``, the
  bytes each takes per device, and why a moment stays replicated along
  ``shard_axis``; the last line compares bytes per device with the unsharded
  state. Arguments are those of :func:`state_shardings`; nothing is computed on
  devices.
  """
  return _plan(tx, params, mesh, shard_axis, 'describe')


def state_shardings(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None = None,
  *,
  shard_axis: str | None = None,
) -> PyTree:
  """The ``NamedSharding`` of every leaf of ``tx``'s state, as a pytree.

  Leaves of the state that mirror a parameter (moments: subtrees structured
  like ``params`` whose leaves have the parameters' shapes) are sharded like
  that parameter; all other leaves (step counts, hyperparameters) are
  replicated over the mesh. With ``shard_axis``, a moment whose parameter is
  replicated along that mesh axis is instead partitioned along it (ZeRO stage
  1) on its largest dimension that the axis size divides (dimensions already
  sharded over other axes count by their shard size). A moment with no such
  dimension keeps its parameter's sharding, and a :class:`ShardingWarning`
  names it unless it has fewer elements than the axis size (scalars, short
  biases); :func:`describe` gives the full plan.

  The result is structured like ``tx.init(params)``, so it serves as
  ``jax.jit(tx.init, out_shardings=...)`` and as the state's in/out shardings
  of a jitted train step. It depends on shapes and shardings only.

  Args:
    tx: any Optax gradient transformation (chains, masked and multi_transform
      states, ``MultiSteps``, ``inject_hyperparams``...).
    params: the parameters: ``jax.Array``s or ``jax.ShapeDtypeStruct``s. A
      leaf's ``NamedSharding`` says how it is sharded; leaves without one
      (NumPy arrays, structs with no sharding) and fully replicated ones count
      as replicated over ``mesh``.
    mesh: the device mesh; by default the one the params' ``NamedSharding``s
      use. If given, sharded params must live on it.
    shard_axis: a mesh axis name (typically the data-parallel one) to
      partition the moments along, or ``None`` to shard them like the params.

  Returns:
    A pytree of ``jax.sharding.NamedSharding``, structured like the state.

  Raises:
    ValueError: no mesh can be found, meshes disagree, or ``shard_axis`` is
      not an axis of the mesh.
    TypeError: a param has a sharding other than a NamedSharding (pmap).
  """
  plan = _plan(tx, params, mesh, shard_axis, 'state_shardings')
  _warn_not_partitioned(plan, stacklevel=2)
  return plan.shardings


def _warn_not_partitioned(plan: ShardingPlan, stacklevel: int) -> None:
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
    f"{plan.bytes_per_device}) keep their parameter's sharding: no "
    f'dimension of their parameter is divisible by the size {size} of mesh '
    f'axis {plan.shard_axis!r}: {listed}{more}. '
    'adabelief_jax.sharding.describe() shows the full plan.',
    ShardingWarning,
    stacklevel=stacklevel + 1,
  )


def moment_shardings(
  params: PyTree, mesh: Mesh | None = None, *, shard_axis: str | None = None
) -> PyTree:
  """The sharding of each parameter's moments, as a pytree like ``params``.

  The same placement :func:`state_shardings` gives the moments, useful to
  reshard gradients (or ``jax.lax.with_sharding_constraint`` them) to where
  the optimizer state lives. Arguments as in :func:`state_shardings`.
  """
  mesh = _resolve_mesh(params, mesh, 'moment_shardings')
  _check_shard_axis(shard_axis, mesh, 'moment_shardings')
  return _moment_plan(params, mesh, shard_axis)[1]


def abstract_state(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None = None,
  *,
  shard_axis: str | None = None,
) -> PyTree:
  """``tx``'s state as ``jax.ShapeDtypeStruct``s carrying their shardings.

  What a checkpointer needs to restore a sharded state without building it
  first, e.g. ``orbax.checkpoint.StandardCheckpointer().restore(path,
  abstract_state(tx, params, shard_axis='data'))``. Arguments as in
  :func:`state_shardings`.
  """
  plan = _plan(tx, params, mesh, shard_axis, 'abstract_state')
  _warn_not_partitioned(plan, stacklevel=2)
  return jax.tree.map(
    lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    jax.eval_shape(tx.init, params),
    plan.shardings,
  )


def init_sharded(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None = None,
  *,
  shard_axis: str | None = None,
) -> optax.OptState:
  """``tx.init(params)`` computed under ``jax.jit`` with the state's shardings.

  Each device materializes only its own shards: the state never exists
  unsharded. Arguments as in :func:`state_shardings`; ``params`` must be
  arrays here (their values reach ``tx.init``).
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if isinstance(leaf, jax.ShapeDtypeStruct):
      raise TypeError(
        f'init_sharded: params{jax.tree_util.keystr(path)} is a '
        'ShapeDtypeStruct; pass arrays, or use abstract_state() for a '
        'state without values.'
      )
  plan = _plan(tx, params, mesh, shard_axis, 'init_sharded')
  _warn_not_partitioned(plan, stacklevel=2)
  return jax.jit(tx.init, out_shardings=plan.shardings)(params)


def _constrain(tree: PyTree, shardings: PyTree) -> PyTree:
  """Places ``tree`` as ``shardings`` say, inside or outside ``jax.jit``.

  ``jax.sharding.reshard`` for meshes with Explicit axes (where
  ``with_sharding_constraint`` must not name them), a sharding constraint for
  Auto ones.
  """

  def one(x: Any, sharding: NamedSharding) -> Any:
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
    if all(t == AxisType.Explicit for t in types.values()):
      return jax.sharding.reshard(x, sharding)
    if all(t == AxisType.Auto for t in types.values()):
      return jax.lax.with_sharding_constraint(x, sharding)
    # Mixed mesh: reshard the Explicit axes; Auto ones are left to XLA.
    spec = PartitionSpec(
      *(
        None if e is None else tuple(a for a in _axes(e) if types[a] == AxisType.Explicit) or None
        for e in sharding.spec
      )
    )
    return jax.sharding.reshard(x, sharding.update(spec=spec))

  return jax.tree.map(one, tree, shardings)


def with_sharded_state(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None = None,
  *,
  shard_axis: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``tx``, with its state placed by :func:`state_shardings` inside ``update``.

  ``init`` returns the state with the shardings of
  ``state_shardings(tx, params, mesh, shard_axis=shard_axis)``. ``update``
  first moves the gradients (and params) to where the moments live (under
  ZeRO-1 each device keeps its slice of the reduced gradients), runs
  ``tx.update`` there, keeps the new state in place and moves the updates
  back to the params' sharding (an all-gather). Under ``jax.jit`` with in/out
  shardings XLA usually finds this placement itself; the wrapper makes it
  explicit, which meshes with ``Explicit`` axes require when moments and
  params are sharded differently (JAX refuses to add arrays sharded
  ``P(None, ('model', 'data'))`` and ``P(None, 'model')``). The state has the
  same structure and values as ``tx``'s, so checkpoints are interchangeable,
  and the arithmetic is the same elementwise.

  Arguments as in :func:`state_shardings`; the params only give shapes and
  shardings, the wrapper works for any params placed the same way.
  """
  plan = _plan(tx, params, mesh, shard_axis, 'with_sharded_state')
  _warn_not_partitioned(plan, stacklevel=2)
  state_sh = plan.shardings
  param_sh, moment_sh, _ = _moment_plan(params, plan.mesh, shard_axis)
  inner = optax.with_extra_args_support(tx)

  def init_fn(params: optax.Params) -> optax.OptState:
    return _constrain(inner.init(params), state_sh)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    updates = _constrain(updates, moment_sh)
    if params is not None:
      params = _constrain(params, moment_sh)
    updates, state = inner.update(updates, state, params, **extra_args)
    return _constrain(updates, param_sh), _constrain(state, state_sh)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def bytes_per_device(tree: PyTree) -> dict[jax.Device, int]:
  """Bytes the ``jax.Array`` leaves of ``tree`` occupy on each local device.

  Measured from the arrays' ``addressable_shards`` (so replicated leaves count
  on every device, partitioned ones by their shard); other leaves are ignored.
  ``max(bytes_per_device(state).values())`` is the most loaded device.
  """
  totals: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      for shard in leaf.addressable_shards:
        totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return totals
