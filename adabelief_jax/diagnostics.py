r"""Belief diagnostics: per-layer statistics that say whether ``eps`` and the learning rate fit.

With ``track_stats=True``, :func:`~adabelief_jax.scale_by_belief` (and so
:func:`~adabelief_jax.adabelief`) computes, inside the update, for every
parameter and over all of them:

* ``eps_dominated``: the fraction of elements whose step is momentum SGD
  rather than adaptive, because the epsilons make up at least half of its
  denominator: ``sqrt(s_hat) + eps <= 2 * (sqrt(s_floor) + eps)``, where
  ``s_floor = eps_root / (1 - b2)`` is the ``s_hat`` of an element whose
  gradient never deviated from its momentum (``eps_root`` is added to ``s``
  every step). With ``eps_root = 0`` this is ``eps >= sqrt(s_hat)``; with
  ``eps = eps_root = 1e-8`` (the reference's image-classification setting)
  the floor ``sqrt(s_floor)``, about 3e-3, is what competes with the belief
  (exact: every element is counted);
* ``sqrt_s_hat_median`` and ``sqrt_s_hat_p99``: the median and 99th
  percentile of ``sqrt(s_hat)`` (the scale ``eps`` competes with);
* ``param_rms``: the RMS of the parameters the update was given;
* ``update_rms``: the RMS of the last step as it was applied: the change of
  the parameters between the update before and this one, so the learning
  rate, weight decay, clipping and the rounding of ``optax.apply_updates``
  are included, whatever the chain around
  :func:`~adabelief_jax.scale_by_belief`. It is one update behind the other
  statistics, and NaN until two updates have been given ``params``;
* ``update_to_param_rms``: their ratio (in :func:`~adabelief_jax.belief_stats`);
* ``global/adaptive``, with ``rectify``: 1 on adaptive steps, 0 on the
  momentum-SGD steps before the threshold.

Percentiles and root mean squares come from a strided sample of at most
1024 elements of each parameter (``SAMPLE``; the whole parameter when
smaller; one element per shard of a parameter split in more shards), the same
elements at every step: what a dashboard needs. The
state keeps the last update's sample of each parameter, for ``update_rms``.
The global statistics weight each parameter by its number of elements.
:func:`~adabelief_jax.belief_stats` reads them from any optimizer state, as a flat dict
ready for a logger.

Cost: the exact ``eps_dominated`` reads every ``s`` once more after the step
has written it, and the samples add a few small kernels (the step time with
and without them: benchmarks/RESULTS.md). Off (the default), the state, the
numbers and the step are those of an optimizer without statistics.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from adabelief_jax.sharding._specs import axes_of

# Elements sampled per parameter for the percentiles and root mean squares.
SAMPLE = 1024
PER_PARAM = ('eps_dominated', 'sqrt_s_hat_median', 'sqrt_s_hat_p99', 'update_rms', 'param_rms')


class GlobalStats(NamedTuple):
  """The statistics over all the parameters, each a float32 scalar."""

  eps_dominated: jax.Array
  sqrt_s_hat_median: jax.Array
  sqrt_s_hat_p99: jax.Array
  update_rms: jax.Array
  param_rms: jax.Array
  adaptive: jax.Array


class BeliefStats(NamedTuple):
  """The belief statistics of the last update, as kept in the optimizer state.

  Read them with :func:`~adabelief_jax.belief_stats`; the module docstring says what each
  means.

  Each per-parameter field is a tree structured like the parameters, with a
  float32 scalar at each parameter's place.

  Attributes:
    eps_dominated: the share of each parameter's elements whose step is
      momentum SGD because the epsilons dominate its denominator.
    sqrt_s_hat_median: the median of ``sqrt(s_hat)`` over each
      parameter's sample.
    sqrt_s_hat_p99: its 99th percentile.
    update_rms: the RMS of the step last applied to each parameter, measured
      on the parameter between the last update and this one: one update
      behind the other fields (NaN until two updates had ``params``).
    param_rms: the RMS of each parameter as this update was given it.
    overall: the same over all the parameters, weighted by their sizes, and
      ``adaptive`` (1 on adaptive steps, 0 before rectification's threshold).
    last_params: the sampled elements of the parameters as the last update
      with ``params`` was given them, from which the next update measures
      ``update_rms`` (NaN before any).
  """

  eps_dominated: Any
  sqrt_s_hat_median: Any
  sqrt_s_hat_p99: Any
  update_rms: Any
  param_rms: Any
  overall: GlobalStats
  last_params: Any


class LeafSample(NamedTuple):
  """What one parameter contributes to the statistics."""

  eps_dominated: jax.Array  # Exact fraction, a scalar.
  sqrt_s_hat: jax.Array  # Sample, float32.
  param: jax.Array  # Sample of the parameter, float32 (NaN without params).
  step: jax.Array  # The same elements' change since the last update, float32.
  size: int


def _root(budget: int, k: int) -> int:
  """The largest integer ``r`` with ``r ** k <= budget`` (``budget >= 1``)."""
  r = max(round(budget ** (1 / k)), 1)
  while r**k > budget:  # The float root is off by at most one either way.
    r -= 1
  while (r + 1) ** k <= budget:
    r += 1
  return r


def _sample_strides(lengths: Sequence[int], budget: int) -> list[int]:
  """A stride for each axis of these (positive) lengths, so that the strided slice has
  at most ``budget`` (>= 1) elements, spread over the axes as evenly as their
  lengths allow.

  An axis of length ``n`` allowed ``c`` elements has stride ``ceil(n / c)``,
  so ``ceil(n / stride) <= c`` elements. Axes are taken shortest first, each
  allowed the ``r``-th root of what is left of the budget (``r`` axes left):
  short axes are taken whole and long ones share the rest. Those roots are
  rounded down, which can leave most of the budget unused (seven axes of 3:
  ``2**7 = 128`` of 1024), so each axis, longest first, then takes as many
  elements as the others leave room for. No stride needs to divide its
  length: the work is a few operations per axis whatever the lengths, where a
  search over divisors is linear in them (and a prime length offers none).
  An array of at most ``budget`` elements gets strides of 1: all of it.
  """
  strides, counts, left = [1] * len(lengths), list(lengths), budget
  order = sorted(range(len(lengths)), key=lambda d: lengths[d])
  for i, d in enumerate(order):
    strides[d] = -(-lengths[d] // min(lengths[d], _root(left, len(order) - i)))
    counts[d] = -(-lengths[d] // strides[d])
    left //= counts[d]
  total = math.prod(counts)
  for d in reversed(order):
    others = total // counts[d]
    strides[d] = -(-lengths[d] // min(lengths[d], budget // others))
    counts[d] = -(-lengths[d] // strides[d])
    total = others * counts[d]
  return strides


class _Axes(NamedTuple):
  """How an array's axes are split, as its type says: only ``Explicit`` mesh axes."""

  mesh: Any  # The mesh of the array's sharding; None without one.
  entries: list[Any]  # Each axis's PartitionSpec entry.
  shards: list[int]  # Each axis's number of shards.


def _axes(x: jax.Array) -> _Axes:
  sharding = getattr(jax.typeof(x), 'sharding', None)
  entries = (list(getattr(sharding, 'spec', ()) or ()) + [None] * x.ndim)[: x.ndim]
  mesh = getattr(sharding, 'mesh', None)
  sizes = dict(getattr(mesh, 'shape', {}) or {})
  return _Axes(mesh, entries, [math.prod(sizes.get(a, 1) for a in axes_of(e)) for e in entries])


def _within_shards(x: jax.Array, axes: _Axes, strides: list[int]) -> jax.Array:
  """``x`` strided within each shard: every axis split in ``n > 1`` shards viewed as
  ``(n, local length)`` (a reshape that follows the sharding: no data moves) and
  strided along its local length, so that every shard gives the same local
  indices and the slice runs where the shards are."""
  shape, spec, index = [], [], []
  for n, length, stride, entry in zip(axes.shards, x.shape, strides, axes.entries):
    if n > 1:
      shape.append(n)
      spec.append(entry)
      index.append(slice(None))
    shape.append(length // n)
    spec.append(None if n > 1 else entry)
    index.append(slice(None, None, stride))
  split = x.reshape(shape, out_sharding=NamedSharding(axes.mesh, PartitionSpec(*spec)))
  return split[tuple(index)]


def strided(x: jax.Array) -> jax.Array:
  """At most ``SAMPLE`` elements of ``x`` (all when it has no more): every k-th index
  along each axis (:func:`_sample_strides`), flattened, the same at every step.

  Shard-aligned: under ``Explicit`` mesh axes, an axis split in ``n`` shards
  is strided within each shard (:func:`_within_shards`), so that the slice
  needs no communication; the small sample is then replicated before it is
  flattened, which a sharded axis would not allow. Where the strides of the
  unsharded ``x`` divide the shards' lengths, these are the elements of the
  unsharded ``x``, so that statistics do not change with the placement (with
  ZeRO-1, say); elsewhere, each shard's strides come from its own length
  and a share of ``SAMPLE`` (one element per shard for a leaf of more shards).
  The strides cost a few operations per axis, whatever the shape. An empty
  ``x`` has no statistics: its sample is one NaN.
  """
  if x.size == 0:
    return jnp.full((1,), jnp.nan, x.dtype)
  axes = _axes(x)
  strides = _sample_strides(x.shape, SAMPLE)
  if all(n == 1 for n in axes.shards):
    return x[tuple(slice(None, None, k) for k in strides)].reshape(-1)
  local = [length // n for length, n in zip(x.shape, axes.shards)]
  if any(m % k for m, k, n in zip(local, strides, axes.shards) if n > 1):
    strides = _sample_strides(local, max(SAMPLE // math.prod(axes.shards), 1))
  sample = _within_shards(x, axes, strides)
  return jax.sharding.reshard(sample, NamedSharding(axes.mesh, PartitionSpec())).reshape(-1)


def no_sample(param: Any) -> jax.Array:
  """NaNs shaped and typed as :func:`strided`'s sample of ``param`` (an array or a
  struct, sharded as the update will see it): the sample before any update."""
  struct = jax.eval_shape(strided, param)
  return jnp.full(struct.shape, jnp.nan, struct.dtype)


def leaf_sample(
  s: jax.Array,
  s_sample: jax.Array,
  bound: jax.Array,
  sqrt_bias_correction: jax.Array,
  param_sample: jax.Array | None,
  last_param: jax.Array,
) -> LeafSample:
  """One parameter's contribution.

  ``s`` is the whole second moment its step divides by, and an element is
  eps-dominated where ``sqrt(s) <= bound``; ``s_sample`` its sample, and
  ``sqrt_bias_correction`` turns ``sqrt(s)`` into ``sqrt(s_hat)``.
  ``param_sample`` is the sample of the parameter this update was given
  (``None`` without params), ``last_param`` the one the last update that had
  params was given (NaN before any: no step is measured then).
  """
  above = _count_above(s, jnp.square(bound).astype(s.dtype), s_sample[0])
  # The mean's float32 rounding could carry the fraction just outside [0, 1].
  dominated = jnp.clip(1 - above / s.size, 0, 1)
  sqrt_s_hat = (jnp.sqrt(s_sample) / sqrt_bias_correction).astype(jnp.float32)
  if param_sample is None:
    nan = jnp.full(sqrt_s_hat.shape, jnp.nan, jnp.float32)
    return LeafSample(dominated, sqrt_s_hat, nan, nan, s.size)
  wide = jnp.promote_types(param_sample.dtype, jnp.float32)
  step = param_sample.astype(wide) - _resharded_like(last_param, param_sample).astype(wide)
  return LeafSample(dominated, sqrt_s_hat, param_sample, step, s.size)


def param_sample(param: jax.Array, last_param: jax.Array, where: str) -> jax.Array:
  """:func:`strided`'s sample of ``param``, computed once for every statistic that uses it.

  A select with ``last_param`` (the sample of the last update, taken only
  where both are NaN, so never a different value) makes XLA compute the
  sample once and let each statistic read it, where a plain slice is
  recomputed in each of them: every such read of the parameter then has to
  come before the parameter's update in place, or XLA:CPU copies the
  parameter (benchmarks/RESULTS.md).

  Raises ``ValueError`` naming ``params<where>`` if ``param`` is sampled
  otherwise than ``last_param`` was: the sample follows the sharding where
  the strides do not divide the shards, and the state was made for another.
  """
  sample = strided(param)
  if sample.shape != last_param.shape:
    raise ValueError(
      f'scale_by_belief(track_stats=True): params{where} is sampled as {sample.shape} here '
      f'but as {last_param.shape} in the state: it is sharded otherwise than when the state '
      'was made (the sample is shard-aligned under Explicit mesh axes). Initialize the state '
      'with the parameters sharded as the update sees them (e.g. '
      'adabelief_jax.sharding.init_sharded(tx, params)).'
    )
  last = _resharded_like(last_param, sample).astype(sample.dtype)
  return jnp.where(jnp.isnan(sample) & jnp.isnan(last), last, sample)


def _resharded_like(x: jax.Array, like: jax.Array) -> jax.Array:
  """``x`` sharded as ``like`` (under ``Explicit`` mesh axes, arrays of two shardings
  do not mix; the state may keep a sample sharded otherwise than it is computed)."""
  sharding = getattr(jax.typeof(like), 'sharding', None)
  if sharding is None or getattr(jax.typeof(x), 'sharding', None) == sharding:
    return x
  return jax.sharding.reshard(x, sharding)


def _count_above(x: jax.Array, bound: jax.Array, probe: jax.Array) -> jax.Array:
  """The number of elements of ``x`` above ``bound``, float32; NaN if one is NaN.

  Written as a sum of clamps, ``min(ceil(max(x - bound, 0)), 1)``, which
  XLA:CPU fuses into its vectorized reduction, where it first writes a
  compare-and-convert to memory as an array of the size of ``x``. The
  clamp's scalars are made this array's own by a select on a condition that
  is always false but computed from ``probe`` (an element of ``x``'s sample:
  a sharded ``x`` cannot be indexed), which XLA cannot fold: a scalar shared
  by arrays of one shape is otherwise broadcast into an array that each of
  them reads (both measured: benchmarks/RESULTS.md).
  """
  never = jnp.isnan(probe) & ~jnp.isnan(probe)
  zero = jnp.where(never, 1, 0).astype(x.dtype)
  above = jnp.ceil(jnp.maximum(x - jnp.where(never, 0, bound), zero))
  return jnp.sum(jnp.minimum(above, 1 - zero), dtype=jnp.float32)


class _Rows(NamedTuple):
  """The parameters' samples as the rows of matrices, padded to one width, so that
  each statistic is one operation for all parameters (one per parameter would be
  hundreds of small kernels a step on a large model)."""

  sqrt_s_hat: jax.Array  # +inf where padded: sorts last.
  param_square: jax.Array  # 0 where padded (NaN rows without params).
  step_square: jax.Array  # Likewise.
  length: np.ndarray  # Each row's sample length.
  size: np.ndarray  # Each row's number of parameter elements.


def _rows(samples: list[LeafSample]) -> _Rows:
  width = max(s.sqrt_s_hat.size for s in samples)

  def stack(rows: list[jax.Array], fill: float) -> jax.Array:
    return jnp.stack([jnp.pad(r, (0, width - r.size), constant_values=fill) for r in rows])

  square = lambda x: jnp.square((jnp.abs(x) if jnp.iscomplexobj(x) else x).astype(jnp.float32))
  return _Rows(
    stack([s.sqrt_s_hat for s in samples], np.inf),
    stack([square(s.param) for s in samples], 0.0),
    stack([square(s.step) for s in samples], 0.0),
    np.array([s.sqrt_s_hat.size for s in samples]),
    np.array([s.size for s in samples], np.float64),
  )


def _sort(values: jax.Array) -> jax.Array:
  """``values`` (non-negative floats, inf or NaN) sorted along the last axis, NaN last.

  Sorted as their int32 bit patterns, which order non-negative floats as the
  floats are ordered, and which XLA:CPU sorts several times faster
  (benchmarks/RESULTS.md).
  """
  bits = jax.lax.bitcast_convert_type(values, jnp.int32)
  # One NaN (all bits but the sign set) for every NaN, negative ones included.
  keys = jnp.where(jnp.isnan(values), jnp.iinfo(jnp.int32).max, bits)
  return jax.lax.bitcast_convert_type(jnp.sort(keys, axis=-1), values.dtype)


def _weigh(sizes: np.ndarray) -> Callable[[jax.Array], jax.Array]:
  """The mean of per-parameter values weighted by their numbers of elements
  (an empty parameter's NaN left out)."""
  share = jnp.asarray(sizes / max(sizes.sum(), 1), jnp.float32)
  return lambda values: share @ jnp.where(sizes > 0, values, 0)


def _row_percentiles(rows: _Rows, qs: tuple[float, ...]) -> list[jax.Array]:
  """Each row's percentiles of its own samples, interpolated as ``jnp.percentile``
  does (NaN for a row with a NaN)."""
  ordered = _sort(rows.sqrt_s_hat)
  has_nan = jnp.any(jnp.isnan(rows.sqrt_s_hat), axis=1)
  out = []
  for q in qs:
    position = q * (rows.length - 1)
    low = np.floor(position).astype(np.int32)
    high = np.minimum(low + 1, rows.length - 1)
    weight = jnp.asarray(position - low, jnp.float32)
    at = lambda i: jnp.take_along_axis(ordered, jnp.asarray(i)[:, None], axis=1)[:, 0]
    value = at(low) * (1 - weight) + at(high) * weight
    out.append(jnp.where(has_nan, jnp.nan, value))
  return out


def _weighted_percentiles(rows: _Rows, qs: tuple[float, ...]) -> list[jax.Array]:
  """Percentiles of all samples, each standing for ``size / length`` elements.

  The smallest sample value ``v`` whose weighted share of samples ``<= v``
  reaches ``q``, found by bisection over the bit patterns of non-negative
  floats (ordered as their values): 31 weighted counts over the samples,
  where a sort of all samples with their weights costs several times more on
  XLA:CPU (benchmarks/RESULTS.md). NaN if a sample of a non-empty parameter is NaN.
  """
  valid = np.arange(rows.sqrt_s_hat.shape[1])[None, :] < rows.length[:, None]
  weights = jnp.asarray(np.where(valid, (rows.size / rows.length)[:, None], 0), jnp.float32)
  targets = jnp.asarray(qs, jnp.float32) * jnp.sum(weights)
  values = rows.sqrt_s_hat

  def bisect(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    low, high = bounds
    middle = low + (high - low) // 2
    at = jax.lax.bitcast_convert_type(middle, jnp.float32)
    below = jnp.sum(jnp.where(values[None] <= at[:, None, None], weights[None], 0), axis=(1, 2))
    reached = below >= targets
    return jnp.where(reached, low, middle + 1), jnp.where(reached, middle, high)

  start = (jnp.zeros(len(qs), jnp.int32), jnp.full(len(qs), 0x7F800000, jnp.int32))
  _, high = jax.lax.fori_loop(0, 31, bisect, start)
  result = jax.lax.bitcast_convert_type(high, jnp.float32)
  result = jnp.where(jnp.any(jnp.isnan(values) & (weights > 0)), jnp.nan, result)
  return list(result)


def stats_of(
  treedef: Any, samples: list[LeafSample], last_params: Any, adaptive: jax.Array
) -> BeliefStats:
  """The state's statistics from every parameter's sample (``last_params``: the
  parameter samples to keep for the next update)."""
  adaptive = adaptive.astype(jnp.float32)
  if not samples:
    empty = zeros(jax.tree.unflatten(treedef, []))
    return empty._replace(overall=empty.overall._replace(adaptive=adaptive))
  rows = _rows(samples)
  mean = lambda x: jnp.sum(x, axis=1) / rows.length
  eps_dominated = jnp.stack([s.eps_dominated for s in samples])
  param_rms, update_rms = jnp.sqrt(mean(rows.param_square)), jnp.sqrt(mean(rows.step_square))
  median, p99 = _row_percentiles(rows, (0.5, 0.99))
  overall_median, overall_p99 = _weighted_percentiles(rows, (0.5, 0.99))
  weigh = _weigh(rows.size)
  per_param = lambda values: jax.tree.unflatten(treedef, list(values))
  return BeliefStats(
    eps_dominated=per_param(eps_dominated),
    sqrt_s_hat_median=per_param(median),
    sqrt_s_hat_p99=per_param(p99),
    update_rms=per_param(update_rms),
    param_rms=per_param(param_rms),
    overall=GlobalStats(
      # The shares' float32 rounding could carry a sum of fractions past 1.
      eps_dominated=jnp.minimum(weigh(eps_dominated), 1.0),
      sqrt_s_hat_median=overall_median,
      sqrt_s_hat_p99=overall_p99,
      update_rms=jnp.sqrt(weigh(jnp.square(update_rms))),
      param_rms=jnp.sqrt(weigh(jnp.square(param_rms))),
      adaptive=adaptive,
    ),
    last_params=last_params,
  )


def zeros(params: Any) -> BeliefStats:
  """The statistics before any update: zeros, with the structure they will have."""
  scalar = lambda _: jnp.zeros((), jnp.float32)
  per_param = {name: jax.tree.map(scalar, params) for name in PER_PARAM}
  overall = GlobalStats(*(jnp.zeros((), jnp.float32) for _ in GlobalStats._fields))
  return BeliefStats(**per_param, overall=overall, last_params=jax.tree.map(no_sample, params))


def _readable(path: Any) -> str:
  """A parameter's path as 'layer/0/kernel' (a Flax NNX Variable's final '.value' left out).

  Dict keys, attribute names and indices, the flat index of a child of a node
  registered without keys (``jax.tree_util.register_pytree_node``), and any
  other key as ``str`` writes it.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == 'value':
    path = path[:-1]
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey | jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return '/'.join(parts)


# The name of the statistics over all the parameters, in the keys of belief_stats.
GLOBAL = 'global'


def _spelled(path: Any, index: int, level: int) -> str:
  """Parameter number ``index``'s name: readable, its key path, or that and its index."""
  if level == 0:
    return _readable(path)
  return jax.tree_util.keystr(path) + (f'#{index}' if level == 2 else '')


def _names(paths: list[Any]) -> list[str]:
  """The parameters' names in :func:`belief_stats`' keys, one per path, all different
  and none :data:`GLOBAL`.

  A parameter is named by its readable path (``'dense/kernel'``), unless that
  name is also another parameter's (``{'a/b': x, 'a': {'b': y}}``) or
  ``'global'``: then by ``jax.tree_util.keystr`` (``"['global']"``), which
  differs for different paths of one tree (a key type whose ``str`` makes two
  alike: the leaf's index is added). A name that one so spelled collides with
  is spelled so in turn, until none collides.
  """
  levels = [0] * len(paths)
  out = [_readable(path) for path in paths]
  while True:
    counts = collections.Counter([*out, GLOBAL])
    clashing = [i for i, name in enumerate(out) if counts[name] > 1 and levels[i] < 2]
    if not clashing:
      return out
    for i in clashing:
      levels[i] += 1
      out[i] = _spelled(paths[i], i, levels[i])


def _flat(stats: BeliefStats, prefix: str) -> dict[str, jax.Array]:
  """One transformation's statistics as ``{'<prefix><name>/<statistic>': scalar}``,
  ``<name>`` a parameter's (:func:`_names`) or :data:`GLOBAL`."""
  columns = {
    stat: jax.tree_util.tree_flatten_with_path(getattr(stats, stat))[0] for stat in PER_PARAM
  }
  where = [f'{prefix}{name}/' for name in _names([path for path, _ in columns[PER_PARAM[0]]])]
  out = {}
  for stat in PER_PARAM:
    out.update({f'{w}{stat}': value for w, (_, value) in zip(where, columns[stat])})
  for w in where:
    out[f'{w}update_to_param_rms'] = out[f'{w}update_rms'] / out[f'{w}param_rms']
  for stat, value in stats.overall._asdict().items():
    out[f'{prefix}{GLOBAL}/{stat}'] = value
  ratio = stats.overall.update_rms / stats.overall.param_rms
  out[f'{prefix}{GLOBAL}/update_to_param_rms'] = ratio
  return out


def belief_stats(opt_state: Any) -> dict[str, jax.Array]:
  """The belief statistics in ``opt_state``, as a flat dict of scalars for a logger.

  Finds the :class:`~adabelief_jax.diagnostics.BeliefStats` of every
  :func:`~adabelief_jax.scale_by_belief` made with ``track_stats=True``
  anywhere in the state (chains, ``masked``, ``MultiSteps``,
  ``inject_hyperparams``, ``apply_if_finite``, ``nnx.Optimizer``'s
  ``opt_state``...). Keys are ``'<parameter path>/<statistic>'`` (e.g.
  ``'dense/kernel/eps_dominated'``) and ``'global/<statistic>'``; a parameter
  whose path would give another's keys or the global ones (one named
  ``'global'``, a dict key holding a ``/``) is named by its
  ``jax.tree_util.keystr`` instead (``"['global']/eps_dominated"``). With
  several such transformations, each key starts with its index (``'0/'``,
  ``'1/'``...).
  The statistics are those of the last update (zeros before the first). See
  :mod:`adabelief_jax.diagnostics` for what each means.

  Raises:
    ValueError: the state has no statistics.

  Example:
    >>> import jax.numpy as jnp, adabelief_jax
    >>> tx = adabelief_jax.adabelief(1e-3, track_stats=True)
    >>> params = {'w': jnp.ones(3)}
    >>> _, state = tx.update({'w': jnp.ones(3)}, tx.init(params), params)
    >>> float(adabelief_jax.belief_stats(state)['w/eps_dominated'])
    0.0
  """
  is_stats = lambda x: isinstance(x, BeliefStats)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_stats) if is_stats(x)]
  if not found:
    raise ValueError(
      'belief_stats: the optimizer state holds no belief statistics. Build the optimizer with '
      'track_stats=True: adabelief_jax.adabelief(..., track_stats=True) or '
      'adabelief_jax.scale_by_belief(track_stats=True).'
    )
  out: dict[str, jax.Array] = {}
  for i, stats in enumerate(found):
    out.update(_flat(stats, '' if len(found) == 1 else f'{i}/'))
  return out
