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
needs, at a cost in the noise of the step time. The global statistics weight
each parameter by its number of elements. :func:`~adabelief_jax.belief_stats` reads them
from any optimizer state, as a flat dict ready for a logger.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from adabelief_jax._scalars import StepScalars

# Sorting the sample for the percentiles is the statistics' main cost (4096
# elements: ~2 ms a step on a small model on CPU; 1024: ~0.6 ms).
SAMPLE = 1024
PER_LEAF = ('eps_dominated', 'sqrt_s_hat_median', 'sqrt_s_hat_p99', 'update_rms', 'param_rms')


class LeafSample(NamedTuple):
  """What one parameter's step contributes to the statistics."""

  eps_dominated: jax.Array  # Exact fraction, a scalar.
  sqrt_s_hat: jax.Array  # Strided sample.
  update: jax.Array  # Strided sample of |u|.
  param: jax.Array  # Strided sample of |p| (NaN without params).
  size: int


def _divisors(n: int) -> list[int]:
  return [k for k in range(1, n + 1) if n % k == 0]


def _strided(x: jax.Array) -> jax.Array:
  """At most about SAMPLE elements of ``x``: every k-th index along its largest axes, flattened.

  Strides divide each axis (a sharded axis: its shard), so that under
  ``Explicit`` mesh axes the slice is shard-aligned; the small sample is then
  replicated before it is flattened, which a sharded axis would not allow.
  """
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


def leaf_sample(s_used: jax.Array, u: jax.Array, param: Any, c: StepScalars) -> LeafSample:
  """One leaf's contribution, from the ``s`` its step used and its output ``u``.

  The step divides by ``sqrt(s) + eps_scaled`` with ``eps_scaled = eps *
  sqrt(1 - b2^t)``, and ``eps_root`` has added ``eps_root (1 - b2^t) / (1 -
  b2)`` to ``s`` by step t, so in ``s``'s own units the module's criterion
  is ``sqrt(s) <= 2 sqrt(that) + eps_scaled``, compared squared.
  """
  floor = c.eps_root * jnp.square(c.sqrt_bias_correction2) / c.one_minus_b2
  bound = 2 * jnp.sqrt(floor) + c.eps_scaled
  dominated = jnp.mean((s_used <= jnp.square(bound)).astype(jnp.float32))
  sqrt_s_hat = jnp.sqrt(_strided(s_used)) / c.sqrt_bias_correction2
  param_sample = jnp.full((1,), jnp.nan) if param is None else jnp.abs(_strided(jnp.asarray(param)))
  return LeafSample(
    dominated,
    sqrt_s_hat.astype(jnp.float32),
    jnp.abs(_strided(u)).astype(jnp.float32),
    param_sample.astype(jnp.float32),
    u.size,
  )


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def _weighted_percentiles(
  values: jax.Array, weights: jax.Array, qs: tuple[float, ...]
) -> list[jax.Array]:
  """Percentiles of ``values`` where each value stands for ``weight`` elements."""
  order = jnp.argsort(values)
  cumulative = jnp.cumsum(weights[order]) / jnp.sum(weights)
  return [values[order][jnp.searchsorted(cumulative, q)] for q in qs]


def _global(samples: list[LeafSample], adaptive: jax.Array) -> dict[str, jax.Array]:
  """The statistics over all parameters, each weighted by its number of elements."""
  if not samples:
    return {name: jnp.zeros((), jnp.float32) for name in (*PER_LEAF, 'adaptive')}
  sizes = np.array([s.size for s in samples], np.float64)
  share = jnp.asarray(sizes / sizes.sum(), jnp.float32)
  values = jnp.concatenate([s.sqrt_s_hat for s in samples])
  weights = jnp.concatenate(
    [jnp.full(s.sqrt_s_hat.shape, s.size / s.sqrt_s_hat.size, jnp.float32) for s in samples]
  )
  median, p99 = _weighted_percentiles(values, weights, (0.5, 0.99))
  mean_square = lambda field: sum(
    w * jnp.mean(jnp.square(getattr(s, field))) for w, s in zip(share, samples)
  )
  return {
    # The shares' float32 rounding could carry a sum of fractions past 1.
    'eps_dominated': jnp.minimum(sum(w * s.eps_dominated for w, s in zip(share, samples)), 1.0),
    'sqrt_s_hat_median': median,
    'sqrt_s_hat_p99': p99,
    'update_rms': jnp.sqrt(mean_square('update')),
    'param_rms': jnp.sqrt(mean_square('param')),
    'adaptive': adaptive.astype(jnp.float32),
  }


def stats_of(treedef: Any, samples: list[LeafSample], adaptive: jax.Array) -> dict[str, Any]:
  """The state's statistics: per-parameter trees (structured like the params) and a global dict."""
  per_leaf = {
    'eps_dominated': [s.eps_dominated for s in samples],
    'sqrt_s_hat_median': [jnp.median(s.sqrt_s_hat) for s in samples],
    'sqrt_s_hat_p99': [jnp.percentile(s.sqrt_s_hat, 99.0) for s in samples],
    'update_rms': [_rms(s.update) for s in samples],
    'param_rms': [_rms(s.param) for s in samples],
  }
  stats: dict[str, Any] = {k: jax.tree.unflatten(treedef, v) for k, v in per_leaf.items()}
  stats['global'] = _global(samples, adaptive)
  return stats


def zeros(params: Any) -> dict[str, Any]:
  """The statistics before any step: zeros, with the structure they will have."""
  scalar = lambda _: jnp.zeros((), jnp.float32)
  stats: dict[str, Any] = {name: jax.tree.map(scalar, params) for name in PER_LEAF}
  stats['global'] = {name: jnp.zeros((), jnp.float32) for name in (*PER_LEAF, 'adaptive')}
  return stats


def with_final_updates(stats: dict[str, Any], updates: Any) -> dict[str, Any]:
  """``stats`` with ``update_rms`` measured on the optimizer's final ``updates``.

  :func:`~adabelief_jax.adabelief` applies the learning rate and weight decay
  after :func:`~adabelief_jax.scale_by_belief`: its step is what a user
  compares with the parameters.
  """
  leaves = [jnp.asarray(u) for u in jax.tree.leaves(updates)]
  if not leaves:
    return stats
  rms = [_rms(jnp.abs(_strided(u)).astype(jnp.float32)) for u in leaves]
  sizes = np.array([u.size for u in leaves], np.float64)
  share = sizes / sizes.sum()
  total = jnp.sqrt(sum(w * jnp.square(r) for w, r in zip(share, rms)))
  treedef = jax.tree.structure(stats['update_rms'])
  return {
    **stats,
    'update_rms': jax.tree.unflatten(treedef, rms),
    'global': {**stats['global'], 'update_rms': total},
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
