"""Shardings for optimizer state: follow the parameters, or partition it (ZeRO-1).

An optimizer's moments (AdaBelief's ``mu``, ``nu`` and ``nu_max``, and the
like in any Optax transformation) are pytrees shaped like the parameters. This
module finds them in the state of any ``optax.GradientTransformation`` (chains,
``optax.masked``, ``optax.multi_transform``, ``optax.MultiSteps``,
``optax.inject_hyperparams`` ...) with ``optax.tree.map_params`` and gives
every state leaf a ``jax.sharding.NamedSharding``:

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

Every function takes ``(tx, params, mesh=None, *, shard_axis=None)``:

* ``tx``: any Optax gradient transformation.
* ``params``: ``jax.Array`` or ``jax.ShapeDtypeStruct`` leaves. A leaf's
  ``NamedSharding`` says how it is sharded; leaves without one (NumPy arrays,
  structs with no sharding) and fully replicated ones count as replicated.
* ``mesh``: by default the one the params' ``NamedSharding`` objects use; if given,
  sharded params must live on it.
* ``shard_axis``: a mesh axis name (typically the data-parallel one) to
  partition the moments along, or ``None`` to shard them like the params.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh

from adabelief_jax.sharding import _plan, _runtime
from adabelief_jax.sharding._plan import LeafPlan, ShardingPlan, ShardingWarning
from adabelief_jax.sharding._runtime import bytes_per_device

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
  state. Nothing is computed on devices, and nothing is warned about.
  """
  return _plan.placement(tx, params, mesh, shard_axis, 'describe', warn=False)[0]


def state_shardings(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None = None,
  *,
  shard_axis: str | None = None,
) -> PyTree:
  """The ``NamedSharding`` of every leaf of ``tx``'s state, as a pytree.

  Leaves of the state that mirror a parameter (moments) are sharded like that
  parameter; all other leaves (step counts, hyperparameters) are replicated
  over the mesh. With ``shard_axis``, a moment whose parameter is replicated
  along that mesh axis is instead partitioned along it (ZeRO stage 1) on its
  largest dimension that the axis size divides (dimensions already sharded
  over other axes count by their shard size). A moment with no such dimension
  keeps its parameter's sharding, and a :class:`ShardingWarning` names it
  unless it has fewer elements than the axis size (scalars, short biases);
  :func:`describe` gives the full plan.

  The result is structured like ``tx.init(params)``, so it serves as
  ``jax.jit(tx.init, out_shardings=...)`` and as the state's in/out shardings
  of a jitted train step. It depends on shapes and shardings only.

  Raises:
    ValueError: no mesh can be found, meshes disagree, or ``shard_axis`` is
      not an axis of the mesh.
    TypeError: a param has a sharding other than a NamedSharding, or comes
      from ``jax.pmap``.
  """
  return _plan.placement(tx, params, mesh, shard_axis, 'state_shardings')[0].shardings


def moment_shardings(
  params: PyTree, mesh: Mesh | None = None, *, shard_axis: str | None = None
) -> PyTree:
  """The sharding of each parameter's float moments, as a pytree like ``params``.

  The placement :func:`state_shardings` gives moments stored as float arrays
  (of any dtype), useful to reshard gradients (or
  ``jax.lax.with_sharding_constraint`` them) to where the optimizer state
  lives. It knows no ``tx``, so not 8-bit state: with ``shard_axis``, a
  parameter with 8-bit moments is partitioned only between whole blocks, and
  all its moments with it. For such state, :func:`with_sharded_state` puts
  the gradients where the moments are, and :func:`describe` shows the plan.
  """
  mesh = _plan.resolve_mesh(params, mesh, 'moment_shardings')
  _plan.check_shard_axis(shard_axis, mesh, 'moment_shardings')
  return jax.tree.map(lambda m: m.sharding, _plan.moments(params, mesh, shard_axis))


def abstract_state(
  tx: optax.GradientTransformation,
  params: PyTree,
  mesh: Mesh | None = None,
  *,
  shard_axis: str | None = None,
) -> PyTree:
  """``tx``'s state as ``jax.ShapeDtypeStruct`` leaves carrying their shardings.

  What a checkpointer needs to restore a sharded state without building it
  first, e.g. ``orbax.checkpoint.StandardCheckpointer().restore(path,
  abstract_state(tx, params, shard_axis='data'))``.
  """
  shardings = _plan.placement(tx, params, mesh, shard_axis, 'abstract_state')[0].shardings
  return jax.tree.map(
    lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    jax.eval_shape(tx.init, params),
    shardings,
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
  unsharded. ``params`` must be arrays here (their values reach ``tx.init``).
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if isinstance(leaf, jax.ShapeDtypeStruct):
      raise TypeError(
        f'init_sharded: params{jax.tree_util.keystr(path)} is a ShapeDtypeStruct; '
        'pass arrays, or use abstract_state() for a state without values.'
      )
  shardings = _plan.placement(tx, params, mesh, shard_axis, 'init_sharded')[0].shardings
  return jax.jit(tx.init, out_shardings=shardings)(params)


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

  The params only give shapes and shardings: the wrapper works for any params
  placed the same way.
  """
  plan, moments = _plan.placement(tx, params, mesh, shard_axis, 'with_sharded_state')
  return _runtime.sharded_update(
    tx,
    plan.shardings,
    param_shardings=jax.tree.map(lambda m: m.param_sharding, moments),
    moment_shardings=jax.tree.map(lambda m: m.sharding, moments),
  )
