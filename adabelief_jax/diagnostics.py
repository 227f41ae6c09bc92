r"""Belief diagnostics: per-layer statistics that say whether ``eps`` and the learning rate fit.

With ``track_stats=True``, :func:`~adabelief_jax.scale_by_belief` (and
:func:`~adabelief_jax.adabelief`) compute, inside the update, for every
parameter and over all of them:

* ``eps_dominated``: the fraction of elements whose step is momentum SGD
  rather than adaptive, because the epsilons make up at least half of its
  denominator: :math:`\sqrt{\hat s_t} + \epsilon \le 2 (\sqrt{\hat s_\epsilon} +
  \epsilon)`, where :math:`\hat s_\epsilon = \epsilon_{root} / (1 - \beta_2)` is
  the :math:`\hat s_t` of an element whose gradient never deviated from its
  momentum (``eps_root`` is added to ``s`` every step). With ``eps_root = 0``
  this is :math:`\epsilon \ge \sqrt{\hat s_t}`; with ``eps = eps_root = 1e-8``
  (the reference's image-classification setting) the floor
  :math:`\sqrt{\hat s_\epsilon} \approx 3 \cdot 10^{-3}` is what competes with the
  belief (exact: every element is counted);
* ``sqrt_s_hat_median`` and ``sqrt_s_hat_p99``: the median and 99th
  percentile of :math:`\sqrt{\hat s_t}` (the scale ``eps`` competes with);
* ``update_rms``, ``param_rms`` and their ratio ``update_to_param_rms``: the
  size of a step against the size of the parameter (for ``adabelief``, the
  whole step, learning rate and weight decay included; for
  ``scale_by_belief`` alone, its output, before the learning rate);
* ``global/adaptive``, with ``rectify``: 1 on adaptive steps, 0 on the
  momentum-SGD steps before the threshold.

Percentiles and root mean squares come from a strided sample of at most 1024
elements of each parameter (the whole parameter when smaller): what a dashboard
needs. The global statistics weight each parameter by its number of elements.
:func:`~adabelief_jax.belief_stats` reads them from any optimizer state, as a
flat dict ready for a logger.

Cost: the exact ``eps_dominated`` reads every ``s`` once more, after the step
has written it (one more memory stream of the step's seven), and the samples
add a few small kernels: 1.5x the untracked step on a 42M-parameter,
97-leaf tree on a 2-core CPU (``python -m benchmarks.step_time --modes
adabelief adabelief_stats``; benchmarks/RESULTS.md). Off (the default), the
state, the numbers and the step are those of an optimizer without statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from adabelief_jax._scalars import StepScalars

# Elements sampled per parameter for the percentiles and root mean squares:
# sorting the samples is a few ms a step on CPU for a hundred parameters.
SAMPLE = 1024
PER_LEAF = ('eps_dominated', 'sqrt_s_hat_median', 'sqrt_s_hat_p99', 'update_rms', 'param_rms')
# Kept beside them, not shown: what with_final_step needs to measure a step
# that adds a multiple of the parameter (weight decay) to this one.
UPDATE_PARAM = 'update_param_mean'


class LeafSample(NamedTuple):
  """What one parameter's step contributes to the statistics."""

  eps_dominated: jax.Array  # Exact fraction, a scalar.
  sqrt_s_hat: jax.Array  # Strided sample.
  update: jax.Array  # Strided sample of the step.
  param: jax.Array  # The same elements of the parameter (NaN without params).
  size: int


def _divisors(n: int) -> list[int]:
  return [k for k in range(1, n + 1) if n % k == 0]


def strided(x: jax.Array) -> jax.Array:
  """At most about SAMPLE elements of ``x``: every k-th index along its largest axes, flattened.

  Strides divide each axis (a sharded axis: its shard), so that under
  ``Explicit`` mesh axes the slice is shard-aligned; the small sample is then
  replicated before it is flattened, which a sharded axis would not allow.
  An empty ``x`` has no statistics: its sample is one NaN.
  """
  if x.size == 0:
    return jnp.full((1,), jnp.nan, x.dtype)
  sharding = getattr(jax.typeof(x), 'sharding', None)
  spec = list(getattr(sharding, 'spec', ()) or ()) + [None] * x.ndim
  mesh_shape = dict(getattr(getattr(sharding, 'mesh', None), 'shape', {}) or {})
  shards = [int(np.prod([mesh_shape.get(a, 1) for a in _axes(e)])) for e in spec[: x.ndim]]
  strides, factor = [1] * x.ndim, -(-x.size // SAMPLE)
  for dim in sorted(range(x.ndim), key=lambda d: -x.shape[d]):
    k = max(d for d in _divisors(x.shape[dim] // shards[dim]) if d <= factor)
    strides[dim], factor = k, -(-factor // k)
  sample = x[tuple(slice(None, None, k) for k in strides)]
  if any(shards[d] > 1 for d in range(x.ndim)) and sharding is not None:
    sample = jax.sharding.reshard(sample, NamedSharding(sharding.mesh, PartitionSpec()))
  return sample.reshape(-1)


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None or entry is PartitionSpec.UNCONSTRAINED:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _never(x: jax.Array) -> jax.Array:
  """False, computed from ``x``: XLA can neither fold it nor share what is
  computed from it with another leaf, and must compute it after ``x``."""
  return jnp.isnan(x) & ~jnp.isnan(x)


def _count_above(x: jax.Array, bound: jax.Array, probe: jax.Array) -> jax.Array:
  """The number of elements of ``x`` above ``bound`` (NaN if one is NaN), in
  one vectorized pass of XLA:CPU over ``x``; ``probe`` is a scalar computed
  from ``x`` (an element of its sample: a sharded ``x`` cannot be indexed).

  XLA:CPU reduces a compare-and-convert in a scalar loop (42M elements: 76 ms,
  more than a whole step); it fuses this clamp into its vectorized reduction
  instead (14 ms), but only if the clamp's scalars are this leaf's own:
  scalars shared by leaves of one shape become full arrays that every leaf
  then reads (8 leaves of 4M elements: 35 ms against 8 ms).
  """
  never = _never(probe)
  zero = jnp.where(never, 1, 0).astype(x.dtype)
  above = jnp.ceil(jnp.maximum(x - jnp.where(never, 0, bound), zero))
  return jnp.sum(jnp.minimum(above, 1 - zero), dtype=jnp.float32)


def leaf_sample(
  s_used: jax.Array,
  s_sample: jax.Array,
  u_sample: jax.Array,
  param_sample: jax.Array | None,
  c: StepScalars,
) -> LeafSample:
  """One leaf's contribution: from the whole ``s`` its step divided by, the
  fraction of eps-dominated elements; the rest from samples (:func:`strided`)
  of ``s``, of the step and of the parameter (``None`` without params).

  The step divides by ``sqrt(s) + eps_scaled`` with ``eps_scaled = eps *
  sqrt(1 - b2^t)``, and ``eps_root`` has added ``eps_root (1 - b2^t) / (1 -
  b2)`` to ``s`` by step t, so in ``s``'s own units the module's criterion
  is ``sqrt(s) <= 2 sqrt(that) + eps_scaled``, compared squared.
  """
  floor = c.eps_root * jnp.square(c.sqrt_bias_correction2) / c.one_minus_b2
  bound = 2 * jnp.sqrt(floor) + c.eps_scaled
  above = _count_above(s_used, jnp.square(bound).astype(s_used.dtype), s_sample[0])
  # The mean's float32 rounding could carry the fraction just outside [0, 1].
  dominated = jnp.clip(1 - above / s_used.size, 0, 1)
  param = jnp.full(u_sample.shape, jnp.nan) if param_sample is None else param_sample
  return LeafSample(
    dominated,
    (jnp.sqrt(s_sample) / c.sqrt_bias_correction2).astype(jnp.float32),
    u_sample.astype(jnp.float32),
    param.astype(jnp.float32),
    s_used.size,
  )


class _Rows(NamedTuple):
  """The leaves' samples as the rows of matrices, padded to one width, so that
  each statistic is one operation for all leaves (one per leaf would be
  hundreds of small kernels a step on a large model)."""

  sqrt_s_hat: jax.Array  # +inf where padded: sorts last.
  update: jax.Array  # 0 where padded.
  param: jax.Array  # 0 where padded (NaN rows without params).
  length: np.ndarray  # Each row's sample length.
  size: np.ndarray  # Each row's number of parameter elements.


def _rows(samples: list[LeafSample]) -> _Rows:
  width = max(s.sqrt_s_hat.size for s in samples)

  def stack(field: str, fill: float) -> jax.Array:
    rows = [getattr(s, field) for s in samples]
    return jnp.stack([jnp.pad(r, (0, width - r.size), constant_values=fill) for r in rows])

  return _Rows(
    stack('sqrt_s_hat', np.inf),
    stack('update', 0.0),
    stack('param', 0.0),
    np.array([s.sqrt_s_hat.size for s in samples]),
    np.array([s.size for s in samples], np.float64),
  )


def _sort(values: jax.Array, *payload: jax.Array) -> tuple[jax.Array, ...]:
  """``values`` (non-negative floats, inf or NaN) sorted along the last axis,
  NaN last, and ``payload`` in the same order.

  Sorted as their bit patterns: int32 orders non-negative floats as they are
  ordered, and XLA:CPU sorts int32 5x faster than floats (97 x 1024: 2.6 ms
  against 14.5 ms).
  """
  bits = jax.lax.bitcast_convert_type(values, jnp.int32)
  # One NaN (all bits but the sign set) for every NaN, negative ones included.
  keys = jnp.where(jnp.isnan(values), jnp.iinfo(jnp.int32).max, bits)
  ordered, *rest = jax.lax.sort((keys, *payload), dimension=values.ndim - 1, num_keys=1)
  return (jax.lax.bitcast_convert_type(ordered, values.dtype), *rest)


def _weigh(sizes: np.ndarray) -> Callable[[jax.Array], jax.Array]:
  """The mean of per-leaf values weighted by the leaves' numbers of elements
  (an empty leaf's NaN left out)."""
  share = jnp.asarray(sizes / max(sizes.sum(), 1), jnp.float32)
  return lambda values: share @ jnp.where(sizes > 0, values, 0)


def _row_percentiles(rows: _Rows, qs: tuple[float, ...]) -> list[jax.Array]:
  """Each row's percentiles of its own samples, interpolated as ``jnp.percentile``
  does (NaN for a row with a NaN)."""
  (ordered,) = _sort(rows.sqrt_s_hat)
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
  """Percentiles of all samples, each standing for ``size / length`` elements."""
  values = rows.sqrt_s_hat.reshape(-1)
  valid = np.arange(rows.sqrt_s_hat.shape[1])[None, :] < rows.length[:, None]
  weights = jnp.asarray(np.where(valid, (rows.size / rows.length)[:, None], 0).reshape(-1))
  ordered, ordered_weights = _sort(values, weights)
  cumulative = jnp.cumsum(ordered_weights) / jnp.sum(weights)
  return [ordered[jnp.searchsorted(cumulative, q)] for q in qs]


def stats_of(treedef: Any, samples: list[LeafSample], adaptive: jax.Array) -> dict[str, Any]:
  """The state's statistics: per-parameter trees (structured like the params) and a global dict."""
  if not samples:
    empty = zeros(jax.tree.unflatten(treedef, []))
    return {**empty, 'global': {**empty['global'], 'adaptive': adaptive.astype(jnp.float32)}}
  rows = _rows(samples)
  mean = lambda x: jnp.sum(x, axis=1) / rows.length
  per_leaf = {
    'eps_dominated': jnp.stack([s.eps_dominated for s in samples]),
    'update_rms': jnp.sqrt(mean(jnp.square(rows.update))),
    'param_rms': jnp.sqrt(mean(jnp.square(rows.param))),
    UPDATE_PARAM: mean(rows.update * rows.param),
  }
  per_leaf['sqrt_s_hat_median'], per_leaf['sqrt_s_hat_p99'] = _row_percentiles(rows, (0.5, 0.99))
  weigh = _weigh(rows.size)
  median, p99 = _weighted_percentiles(rows, (0.5, 0.99))
  stats: dict[str, Any] = {k: jax.tree.unflatten(treedef, list(v)) for k, v in per_leaf.items()}
  stats['global'] = {
    # The shares' float32 rounding could carry a sum of fractions past 1.
    'eps_dominated': jnp.minimum(weigh(per_leaf['eps_dominated']), 1.0),
    'sqrt_s_hat_median': median,
    'sqrt_s_hat_p99': p99,
    'update_rms': jnp.sqrt(weigh(jnp.square(per_leaf['update_rms']))),
    'param_rms': jnp.sqrt(weigh(jnp.square(per_leaf['param_rms']))),
    'adaptive': adaptive.astype(jnp.float32),
  }
  return stats


def after(stats: dict[str, Any], c: StepScalars) -> StepScalars:
  """``c``, unchanged, but computed after ``stats`` have read the parameters.

  The step that uses ``c`` then follows every read of the old parameters, and
  XLA updates them in place; otherwise it copies every parameter first
  (measured on XLA:CPU, 42M parameters: +60 ms on a 50 ms step).
  """
  read = jnp.sum(
    jnp.stack([x for k in ('param_rms', UPDATE_PARAM) for x in jax.tree.leaves(stats[k])])
  )
  return c._replace(step_scale=jnp.where(_never(read), 0, c.step_scale))


def zeros(params: Any) -> dict[str, Any]:
  """The statistics before any step: zeros, with the structure they will have."""
  scalar = lambda _: jnp.zeros((), jnp.float32)
  stats: dict[str, Any] = {name: jax.tree.map(scalar, params) for name in (*PER_LEAF, UPDATE_PARAM)}
  stats['global'] = {name: jnp.zeros((), jnp.float32) for name in (*PER_LEAF, 'adaptive')}
  return stats


def with_final_step(
  stats: dict[str, Any], updates: Any, tail: Any, tail_state: Any
) -> dict[str, Any]:
  """``stats`` with ``update_rms`` measured on the step of ``tail`` applied after them.

  :func:`~adabelief_jax.adabelief` applies the learning rate and weight decay
  after :func:`~adabelief_jax.scale_by_belief`: its step is what a user
  compares with the parameters. ``tail`` (those transformations, with their
  state before this step) is elementwise and linear, ``a u + b p`` per leaf;
  its coefficients are found by applying it to ones, and the step's mean
  square is ``a^2 E[u^2] + 2 a b E[u p] + b^2 E[p^2]`` on the statistics'
  samples. Slicing the chain's output instead would make XLA write the whole
  step to memory (measured on XLA:CPU: +1x the step). ``updates`` are the
  gradients (their shapes).
  """
  treedef: Any = jax.tree.structure(stats['update_rms'])  # jaxlib has no stubs for it.
  if treedef.num_leaves == 0:
    return stats
  shapes = [jnp.shape(x) for x in treedef.flatten_up_to(updates)]
  # Ones of each leaf's rank, for masks that look at it.
  ranks = [len(shape) for shape in shapes]
  unit = lambda value: jax.tree.unflatten(
    treedef, [jnp.full((1,) * r, value, jnp.float32) for r in ranks]
  )
  coefficient = lambda u, p: jnp.stack(
    [x.reshape(()) for x in jax.tree.leaves(tail.update(unit(u), tail_state, unit(p))[0])]
  )
  a, b = coefficient(1, 0), coefficient(0, 1)
  vector = lambda name: jnp.stack(jax.tree.leaves(stats[name]))
  decay = 2 * a * b * vector(UPDATE_PARAM) + jnp.square(b * vector('param_rms'))
  # A leaf without decay has no decay term, even without params (NaN).
  mean_square = jnp.square(a * vector('update_rms')) + jnp.where(b == 0, 0, decay)
  sizes = np.array([np.prod(shape) for shape in shapes], np.float64)
  return {
    **stats,
    'update_rms': jax.tree.unflatten(treedef, list(jnp.sqrt(mean_square))),
    'global': {**stats['global'], 'update_rms': jnp.sqrt(_weigh(sizes)(mean_square))},
  }


def _path(path: Any) -> str:
  """A parameter's path as 'layer/0/kernel' (a Flax NNX Variable's final '.value' left out)."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == 'value':
    path = path[:-1]
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
  return '/'.join(parts)


def _flat(stats: dict[str, Any], prefix: str) -> dict[str, jax.Array]:
  """One transformation's statistics as ``{'<prefix><path>/<name>': scalar}``."""
  out = {}
  for name in PER_LEAF:
    for path, value in jax.tree_util.tree_flatten_with_path(stats[name])[0]:
      out[f'{prefix}{_path(path)}/{name}'] = value
  for key in [k for k in out if k.endswith('/update_rms')]:
    where = key[: -len('update_rms')]
    out[f'{where}update_to_param_rms'] = out[key] / out[f'{where}param_rms']
  for name, value in stats['global'].items():
    out[f'{prefix}global/{name}'] = value
  ratio = stats['global']['update_rms'] / stats['global']['param_rms']
  out[f'{prefix}global/update_to_param_rms'] = ratio
  return out


def belief_stats(opt_state: Any) -> dict[str, jax.Array]:
  """The belief statistics in ``opt_state``, as a flat dict of scalars for a logger.

  Finds the statistics of every :func:`~adabelief_jax.scale_by_belief` made
  with ``track_stats=True`` anywhere in the state (chains, ``masked``,
  ``MultiSteps``, ``inject_hyperparams``, ``apply_if_finite``...). Keys are
  ``'<parameter path>/<statistic>'`` (e.g. ``'dense/kernel/eps_dominated'``)
  and ``'global/<statistic>'``; with several such transformations, each key
  starts with its index (``'0/'``, ``'1/'``...). The statistics are those of
  the last step (zeros before the first). See :mod:`adabelief_jax.diagnostics`
  for what each means.

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
  from adabelief_jax.transform import ScaleByBeliefStatsState  # The transform imports this module.

  is_stats = lambda x: isinstance(x, ScaleByBeliefStatsState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_stats) if is_stats(x)]
  if not found:
    raise ValueError(
      'belief_stats: the optimizer state holds no belief statistics. Build the optimizer with '
      'track_stats=True: adabelief_jax.adabelief(..., track_stats=True) or '
      'adabelief_jax.scale_by_belief(track_stats=True).'
    )
  out: dict[str, jax.Array] = {}
  for i, state in enumerate(found):
    out.update(_flat(state.stats, '' if len(found) == 1 else f'{i}/'))
  return out
