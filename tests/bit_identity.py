"""Checks that another revision of adabelief_jax gives bit-identical parameters and moments.

A refactoring of the core must not change a single bit of what the optimizer
computes. This script runs a grid of configurations (state storage x weight
decay mode x variant x statistics x parameter dtype, plus the compat
constructors, ``scale_by_belief`` alone, ``optax.inject_hyperparams`` and
schedules) for a few jitted steps, saves the final parameters, updates and
moments bit for bit, and compares two such runs. Usage, from the repository
root::

  python -m tests.bit_identity --against 64a9ff6       # this checkout against a revision
  python -m tests.bit_identity --dump out.npz          # the grid with the importable package
  python -m tests.bit_identity --compare a.npz b.npz   # two dumps

``--against REV`` checks REV out into a temporary git worktree and runs
``--dump`` once with that worktree's ``adabelief_jax`` and once with this
checkout's, each in a fresh interpreter (``python -P tests/bit_identity.py``
with the code's root first on ``PYTHONPATH``: under ``python -m`` the current
directory would come first and shadow the worktree), then compares. It exits
non-zero if a parameter, update or moment differs in any configuration; the
belief statistics are only reported, since some are meant to change.

Only the public API is used, and the optimizer's belief state is found by
its fields (``count``, ``mu``, ``nu``, ``nu_max``), not by its class name, so
that a redesign of the state types can be compared with the old ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

STEPS = 12
LR = 1e-2
WD = 1e-2
SEED = 0
# Leaves chosen for the 8-bit layout: a last axis that is not a multiple of
# the 256-element block, whole blocks, a long vector, a 3-D leaf whose last
# axis is shorter than a block, and leaves too small for blocks (kept float32).
SHAPES: dict[str, tuple[int, ...]] = {
  'ragged': (24, 300),
  'blocks': (16, 512),
  'vector': (5000,),
  'cube': (4, 8, 160),
  'kernel': (7, 5),
  'bias': (5,),
  'scale': (),
}
STRICT_PARTS = ('params', 'updates', 'state')
META_KEY = '__meta__'
DTYPES_KEY = '__dtypes__'


class Config(NamedTuple):
  """One optimizer to run: its name, the parameters' dtype, and how to build it.

  ``make`` takes the imported ``adabelief_jax`` module, so that the grid is
  defined once, here, and built with whichever revision is importable.
  """

  name: str
  param_dtype: str
  track_stats: bool
  make: Callable[[ModuleType], Any]


# ----------------------------------------------------------------------------- the grid

STORAGES: dict[str, dict[str, Any]] = {
  'f32': {},
  'bf16sr': {'mu_dtype': 'bfloat16', 'nu_dtype': 'bfloat16', 'stochastic_rounding': True},
  'int8': {'mu_dtype': 'int8', 'nu_dtype': 'int8'},
}
MODES = ('decoupled', 'fixed', 'l2')
VARIANTS: dict[str, dict[str, Any]] = {
  'plain': {},
  'amsgrad': {'amsgrad': True},
  'rectify': {'rectify': True},
  'rectify-nosgd': {'rectify': True, 'degenerate_to_sgd': False},
  'nesterov': {'nesterov': True},
  'all': {'amsgrad': True, 'rectify': True, 'nesterov': True},
}
PARAM_DTYPES = ('float32', 'bfloat16')
MASKS = ('nomask', 'treemask', 'fnmask')


def _mask(kind: str) -> Any:
  """A weight-decay mask: none, a tree of booleans, or a function of the params.

  Decay applies to the leaves of two or more dimensions, as is usual for
  kernels and not for biases and scales.
  """
  if kind == 'treemask':
    return {name: len(shape) >= 2 for name, shape in SHAPES.items()}
  if kind == 'fnmask':
    return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return None


def _grid_config(
  storage: str, mode: str, variant: str, stats: bool, pdtype: str, mask: str
) -> Config:
  """The ``adabelief`` configuration of one grid point.

  Defaults (b1, b2, eps, eps_root) are left to the library on purpose: a
  changed default is a changed result.
  """
  name = '.'.join(
    (storage, mode, variant, 'stats' if stats else 'nostats', pdtype.replace('float', 'f'), mask)
  )
  kwargs = {**STORAGES[storage], **VARIANTS[variant], 'track_stats': stats}

  def make(ab: ModuleType) -> Any:
    return ab.adabelief(
      LR, weight_decay=WD, weight_decay_mask=_mask(mask), weight_decay_mode=mode, **kwargs
    )

  return Config(f'grid:{name}', pdtype, stats, make)


def grid() -> list[Config]:
  """Storage x mode x variant x statistics (108 points), the other axes interleaved.

  The parameter dtype alternates with the parity of (mode, variant, stats)
  and the mask cycles with (storage, variant), so that every pair of values
  of any two axes occurs (checked by :func:`_check_pairs`).
  """
  out, axes = [], []
  for i_s, storage in enumerate(STORAGES):
    for i_m, mode in enumerate(MODES):
      for i_v, variant in enumerate(VARIANTS):
        for i_t, stats in enumerate((False, True)):
          pdtype = PARAM_DTYPES[(i_m + i_v + i_t) % 2]
          mask = MASKS[(i_s + i_v) % 3]
          out.append(_grid_config(storage, mode, variant, stats, pdtype, mask))
          axes.append((storage, mode, variant, stats, pdtype, mask))
  _check_pairs(axes)
  return out


def _check_pairs(axes: list[tuple[Any, ...]]) -> None:
  """Raises unless every pair of values of every two axes occurs in ``axes``."""
  values = [sorted({str(point[k]) for point in axes}) for k in range(len(axes[0]))]
  for a in range(len(values)):
    for b in range(a + 1, len(values)):
      seen = {(str(p[a]), str(p[b])) for p in axes}
      missing = {(x, y) for x in values[a] for y in values[b]} - seen
      if missing:
        raise AssertionError(f'grid: axes {a} and {b} miss the pairs {sorted(missing)}')


Factory = Callable[[ModuleType], Callable[..., Any]]


def _adabelief(ab: ModuleType) -> Callable[..., Any]:
  """``adabelief`` with the grid's learning rate and weight decay."""
  return functools.partial(ab.adabelief, LR, weight_decay=WD)


def _scale_by_belief(ab: ModuleType) -> Callable[..., Any]:
  """``scale_by_belief`` alone: the recorded updates are its output."""
  return ab.scale_by_belief


def _pytorch(ab: ModuleType) -> Callable[..., Any]:
  """``compat.adabelief_pytorch`` (rectified by default) with weight decay."""
  return functools.partial(ab.compat.adabelief_pytorch, lr=LR, weight_decay=WD)


def _tf(ab: ModuleType) -> Callable[..., Any]:
  """``compat.adabelief_tf`` with its built-in warm-up and decay over 20 steps."""
  return functools.partial(ab.compat.adabelief_tf, LR, weight_decay=WD, total_steps=20)


def _injected(ab: ModuleType, hyperparam_dtype: Any = None) -> Callable[..., Any]:
  """``optax.inject_hyperparams(adabelief)``, the block size static (it shapes 8-bit state).

  By default the hyperparameters take the parameters' dtype, which the
  baseline refuses for bfloat16 (``b1 must be a real scalar``): bfloat16
  parameters need ``hyperparam_dtype=jnp.float32``.
  """
  factory = optax.inject_hyperparams(
    ab.adabelief, static_args=('quantization_block_size',), hyperparam_dtype=hyperparam_dtype
  )
  return functools.partial(factory, learning_rate=LR, weight_decay=WD)


def _scheduled(ab: ModuleType) -> Callable[..., Any]:
  """``adabelief`` with a warm-up cosine learning rate and a linearly decaying weight decay."""
  lr = optax.warmup_cosine_decay_schedule(0.0, LR, 3, STEPS, end_value=1e-3)
  return functools.partial(ab.adabelief, lr, weight_decay=optax.linear_schedule(WD, 0.0, STEPS))


def _extra(name: str, factory: Factory, pdtype: str = 'float32', **kwargs: Any) -> Config:
  """An extra configuration: ``factory(adabelief_jax)(**kwargs)`` on ``pdtype`` parameters."""
  make = lambda ab: factory(ab)(**kwargs)
  return Config(f'extra:{name}', pdtype, bool(kwargs.get('track_stats', False)), make)


INT8 = {'mu_dtype': 'int8', 'nu_dtype': 'int8'}
BF16 = {'mu_dtype': 'bfloat16', 'nu_dtype': 'bfloat16'}
ALL = {'amsgrad': True, 'rectify': True, 'nesterov': True}


def extras() -> list[Config]:
  """Configurations outside the grid: other constructors, options and wrappers."""
  bf = 'bfloat16'
  inject_f32 = functools.partial(_injected, hyperparam_dtype=jnp.float32)
  return [
    _extra('scale_by_belief', _scale_by_belief),
    _extra('scale_by_belief.int8.amsgrad.stats', _scale_by_belief, bf, amsgrad=True, track_stats=True, **INT8),
    _extra('scale_by_belief.bf16sr.rectify.nesterov', _scale_by_belief, rectify=True, nesterov=True, **BF16),
    _extra('pytorch.rectify', _pytorch),
    _extra('pytorch.rectify.amsgrad.l2', _pytorch, amsgrad=True, weight_decouple=False),
    _extra('pytorch.rectify.nosgd.fixed', _pytorch, bf, degenerated_to_sgd=False, fixed_decay=True),
    _extra('pytorch.amsgrad.norectify', _pytorch, amsgrad=True, rectify=False),
    _extra('tf.rectify', _tf),
    _extra('tf.amsgrad.norectify', _tf, amsgrad=True, rectify=False),
    _extra('tf.rectify.amsgrad.threshold6', _tf, bf, amsgrad=True, sma_threshold=6.0),
    _extra('bf16.nearest', _adabelief, stochastic_rounding=False, **BF16),
    _extra('bf16.nearest.amsgrad.stats', _adabelief, bf, stochastic_rounding=False, amsgrad=True, track_stats=True, **BF16),
    _extra('bf16sr.seed7', _adabelief, bf, rounding_seed=7, **BF16),
    _extra('int8.block64', _adabelief, quantization_block_size=64, **INT8),
    _extra('int8.block64.all.stats', _adabelief, bf, quantization_block_size=64, track_stats=True, **ALL, **INT8),
    _extra('int8.nearest.amsgrad', _adabelief, stochastic_rounding=False, amsgrad=True, **INT8),
    _extra('mixed.mu-int8.nu-bf16', _adabelief, mu_dtype='int8', nu_dtype='bfloat16'),
    _extra('mixed.mu-f16.nu-f32.amsgrad', _adabelief, bf, mu_dtype='float16', nu_dtype='float32', amsgrad=True),
    _extra('hparams.rectify.stats', _adabelief, b1=0.8, b2=0.99, eps=1e-8, eps_root=0.0, rectify=True, sma_threshold=6.0, track_stats=True),
    _extra('hparams.eps-root-only.nesterov', _adabelief, b1=0.5, b2=0.9, eps=0.0, eps_root=1e-12, nesterov=True),
    _extra('check_hyperparams.amsgrad', _adabelief, check_hyperparams=True, amsgrad=True),
    _extra('inject.int8.block64.amsgrad', _injected, quantization_block_size=64, amsgrad=True, **INT8),
    _extra('inject.f32.rectify.stats', _injected, rectify=True, track_stats=True),
    _extra('inject.hp-f32.nesterov.stats', inject_f32, bf, nesterov=True, track_stats=True),
    _extra('inject.bf16sr.l2', _injected, weight_decay_mode='l2', **BF16),
    _extra('schedule.fixed', _scheduled, weight_decay_mode='fixed'),
    _extra('schedule.int8.l2.stats', _scheduled, bf, weight_decay_mode='l2', track_stats=True, **INT8),
    _extra('schedule.bf16sr.decoupled.all', _scheduled, **ALL, **BF16),
  ]  # fmt: skip


def configurations() -> list[Config]:
  """The grid and the extras, with unique names."""
  configs = grid() + extras()
  names = [c.name for c in configs]
  if len(set(names)) != len(names):
    raise AssertionError('bit_identity: configuration names are not unique')
  return configs


# ----------------------------------------------------------------------------- inputs


def initial_params(seed: int = SEED) -> dict[str, np.ndarray]:
  """The initial parameters, float32 NumPy arrays from a fixed seed."""
  rng = np.random.default_rng(seed)
  return {k: (0.5 * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def _leaf_scale(name: str, shape: tuple[int, ...]) -> np.ndarray:
  """Per-element gradient magnitudes that exercise the 8-bit block scales.

  The vector spans six decades across its blocks, ``blocks`` (1e-3) and
  ``kernel`` (0.1) are smaller than the rest, ``ragged`` has outliers 1000
  times its other elements, and one row of ``blocks`` is always zero (blocks
  whose scale is zero).
  """
  scale = np.ones(shape, np.float64)
  if name == 'vector':
    scale = 10.0 ** np.linspace(-4.0, 2.0, shape[0])
  elif name == 'blocks':
    scale = np.full(shape, 1e-3)
    scale[3] = 0.0
  elif name == 'ragged':
    scale.reshape(-1)[::997] = 1e3
  elif name == 'kernel':
    scale = np.full(shape, 0.1)
  return scale


def gradients(steps: int = STEPS, seed: int = SEED + 1) -> list[dict[str, np.ndarray]]:
  """``steps`` float32 gradient trees: a persistent drift plus noise, from a fixed seed.

  The scalar's gradient is exactly zero on even steps.
  """
  rng = np.random.default_rng(seed)
  scales = {k: _leaf_scale(k, s) for k, s in SHAPES.items()}
  drift = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  out = []
  for t in range(steps):
    tree = {}
    for k, s in SHAPES.items():
      g = scales[k] * (drift[k] + rng.normal(size=s))
      tree[k] = (g * (t % 2) if k == 'scale' else g).astype(np.float32)
    out.append(tree)
  return out


def _as_dtype(tree: dict[str, np.ndarray], dtype: str) -> dict[str, jax.Array]:
  """``tree``'s leaves as JAX arrays of ``dtype`` (rounded to nearest from float32)."""
  return {k: jnp.asarray(v, jnp.dtype(dtype)) for k, v in tree.items()}


# ----------------------------------------------------------------------------- one run


def _is_belief_state(node: Any) -> bool:
  """Whether ``node`` is a belief state, of whatever class: it has ``count``, ``mu`` and ``nu``.

  ``nu_max`` is read if present; a redesign may drop it without AMSGrad.
  """
  return all(hasattr(node, field) for field in ('count', 'mu', 'nu'))


def belief_states(state: Any) -> list[Any]:
  """The belief states anywhere in an optimizer state (chains, inject_hyperparams...)."""
  nodes = jax.tree.leaves(state, is_leaf=_is_belief_state)
  return [n for n in nodes if _is_belief_state(n)]


def _moments(state: Any) -> Iterator[tuple[str, Any]]:
  """``('state/<b>/<field>[/<i>]', array)`` for the count and every leaf of each moment.

  8-bit moments are pytrees of codes and scales: their leaves are all recorded.
  A missing ``nu_max`` (or an empty one) gives no leaves.
  """
  found = belief_states(state)
  if not found:
    raise ValueError('no belief state (a node with count, mu and nu) in the optimizer state')
  for b, node in enumerate(found):
    yield f'state/{b}/count', node.count
    for field in ('mu', 'nu', 'nu_max'):
      for i, leaf in enumerate(jax.tree.leaves(getattr(node, field, None))):
        yield f'state/{b}/{field}/{i}', leaf


def _step_fn(tx: Any) -> Callable[..., Any]:
  """One jitted optimizer step: ``(params, state, grads) -> (params, state, updates)``."""

  def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any, Any]:
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  return jax.jit(step)


def run_config(
  config: Config, ab: ModuleType, grads: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
  """Runs ``config`` for ``len(grads)`` steps; its final arrays, keyed by part.

  Keys: ``params/<i>`` and ``updates/<i>`` in the tree's leaf order, the
  moments (see :func:`_moments`), and ``stats/<key>`` from
  ``adabelief_jax.belief_stats`` when the configuration tracks statistics.
  """
  params = _as_dtype(initial_params(), config.param_dtype)
  tx = config.make(ab)
  state = tx.init(params)
  step = _step_fn(tx)
  updates = None
  for g in grads:
    params, state, updates = step(params, state, _as_dtype(g, config.param_dtype))
  out = {f'params/{i}': x for i, x in enumerate(jax.tree.leaves(params))}
  out.update({f'updates/{i}': x for i, x in enumerate(jax.tree.leaves(updates))})
  out.update(_moments(state))
  if config.track_stats:
    out.update({f'stats/{k}': v for k, v in ab.belief_stats(state).items()})
  return out


def _raw(x: Any) -> tuple[np.ndarray, str]:
  """``x`` as unsigned integers of its bit patterns (npz holds no bfloat16), and its dtype name."""
  a = np.array(x, order='C')  # Not ascontiguousarray, which makes scalars 1-D.
  return a.view(np.dtype(f'u{a.dtype.itemsize}')), a.dtype.name


def _warn_if_shadowed(imported: pathlib.Path) -> None:
  """Warns when ``PYTHONPATH`` names an ``adabelief_jax`` other than the one imported.

  ``python -m`` puts the current directory before ``PYTHONPATH``: from a
  checkout's root, ``PYTHONPATH=<other checkout> python -m tests.bit_identity``
  silently runs the checkout's own package.
  """
  for entry in filter(None, os.environ.get('PYTHONPATH', '').split(os.pathsep)):
    named = pathlib.Path(entry, 'adabelief_jax').resolve()
    if named.is_dir() and named != imported:
      print(
        f'WARNING: PYTHONPATH names {named}, but {imported} was imported (python -m puts the '
        'current directory first): run python -P tests/bit_identity.py, or use --expect-code.',
        file=sys.stderr,
      )
    if named.is_dir():
      return


def _import_adabelief(expect: str | None) -> ModuleType:
  """Imports ``adabelief_jax`` and says where from; with ``expect``, checks it is that package."""
  import adabelief_jax  # Imported here: the comparing process needs no version of it.

  where = pathlib.Path(adabelief_jax.__file__).resolve().parent
  print(f'adabelief_jax imported from {adabelief_jax.__file__}', flush=True)
  _warn_if_shadowed(where)
  if expect is not None and where != pathlib.Path(expect).resolve():
    raise SystemExit(f'bit_identity: expected adabelief_jax from {expect}, got {where}')
  return adabelief_jax


def dump(path: str, expect: str | None = None, only: str | None = None) -> int:
  """Runs every configuration (or those whose name contains ``only``) and saves ``path``.

  A configuration that raises is saved as ``<name>/error`` (and fails any
  comparison); the run goes on. Returns the number of such errors.
  """
  ab = _import_adabelief(expect)
  configs = [c for c in configurations() if only is None or only in c.name]
  grads = gradients()
  arrays: dict[str, np.ndarray] = {}
  dtypes: dict[str, str] = {}
  errors = 0
  start = time.perf_counter()
  for k, config in enumerate(configs, 1):
    t0 = time.perf_counter()
    try:
      result = run_config(config, ab, grads)
    except Exception as error:  # Recorded; the comparison reports it.
      errors += 1
      result = {}
      arrays[f'{config.name}/error'] = np.asarray(f'{type(error).__name__}: {error}')
      print(f'  ERROR in {config.name}: {type(error).__name__}: {error}', file=sys.stderr)
    for key, value in result.items():
      arrays[f'{config.name}/{key}'], dtypes[f'{config.name}/{key}'] = _raw(value)
    took = time.perf_counter() - t0
    print(f'[{k}/{len(configs)}] {config.name} ({took:.1f} s)', file=sys.stderr, flush=True)
  meta = {
    'adabelief_jax': ab.__file__,
    'versions': {m.__name__: m.__version__ for m in (jax, optax, np)},
    'configs': [c.name for c in configs],
    'steps': STEPS,
    'seconds': round(time.perf_counter() - start, 1),
  }
  arrays[META_KEY] = np.asarray(json.dumps(meta))
  arrays[DTYPES_KEY] = np.asarray(json.dumps(dtypes))
  np.savez(path, **arrays)
  print(f'{len(configs)} configurations, {errors} errors, {meta["seconds"]} s -> {path}')
  return errors


# ----------------------------------------------------------------------------- comparison


class Dump(NamedTuple):
  """A loaded dump: raw arrays by key, their dtype names, and the run's metadata."""

  arrays: dict[str, np.ndarray]
  dtypes: dict[str, str]
  meta: dict[str, Any]


def load(path: str) -> Dump:
  """Reads a file written by :func:`dump`."""
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  meta = json.loads(arrays.pop(META_KEY).item())
  dtypes = json.loads(arrays.pop(DTYPES_KEY).item())
  return Dump(arrays, dtypes, meta)


def _values(raw: np.ndarray, dtype: str) -> np.ndarray:
  """The raw bit patterns as float64 values of their dtype."""
  return raw.view(jnp.dtype(dtype)).astype(np.float64)


def _by_config(d: Dump) -> dict[str, dict[str, str]]:
  """``{config: {key within the config: full key}}``, for every config in ``d``'s metadata."""
  out: dict[str, dict[str, str]] = {name: {} for name in d.meta['configs']}
  for key in d.arrays:
    name, _, rest = key.partition('/')
    out.setdefault(name, {})[rest] = key
  return out


def _array_difference(a: Dump, b: Dump, key_a: str, key_b: str) -> str | None:
  """``None`` if the two arrays are bit-identical with the same dtype and shape, else why not."""
  ra, rb = a.arrays[key_a], b.arrays[key_b]
  da, db = a.dtypes.get(key_a, '?'), b.dtypes.get(key_b, '?')
  if da == db and ra.shape == rb.shape and np.array_equal(ra, rb):
    return None
  if ra.shape != rb.shape:
    return f'shape {ra.shape} vs {rb.shape}' + ('' if da == db else f', dtype {da} vs {db}')
  va, vb = _values(ra, da), _values(rb, db)
  nan_a, nan_b = np.isnan(va), np.isnan(vb)
  note = '' if da == db else f'dtype {da} vs {db}, '
  if (nan_a != nan_b).any():
    note += f'NaN in {int((nan_a != nan_b).sum())} places on one side only, '
  both = ~(nan_a | nan_b)
  diff = np.abs(va[both] - vb[both]).max(initial=0.0)
  count = int((ra != rb).sum()) if ra.dtype == rb.dtype else ra.size
  return f'{note}max |diff| {diff:.3g} ({count}/{ra.size} elements differ)'


def compare_config(a: Dump, b: Dump, keys_a: dict[str, str], keys_b: dict[str, str]) -> list[str]:
  """The strict differences of one configuration: params, updates and moments, and errors."""
  sides = (('base', a, keys_a), ('new', b, keys_b))
  problems = [
    f'error on {side}: {d.arrays[k["error"]].item()}' for side, d, k in sides if 'error' in k
  ]
  strict = lambda keys: {k for k in keys if k.split('/')[0] in STRICT_PARTS}
  sa, sb = strict(keys_a), strict(keys_b)
  for key in sorted(sa ^ sb):
    problems.append(f'{key} only in {"base" if key in sa else "new"}')
  for key in sorted(sa & sb):
    why = _array_difference(a, b, keys_a[key], keys_b[key])
    if why is not None:
      problems.append(f'{key}: {why}')
  return problems


def _relative(x: float, y: float) -> float:
  """``|x - y| / max(|x|, |y|)`` (0 for equal values, inf for a NaN against a number)."""
  if x == y or (np.isnan(x) and np.isnan(y)):
    return 0.0
  if np.isnan(x) or np.isnan(y):
    return float('inf')
  return abs(x - y) / max(abs(x), abs(y))


class StatSummary(NamedTuple):
  """One statistic name across configurations."""

  configs: int
  identical: int
  max_relative: float


def _stat_names(keys: dict[str, str]) -> dict[str, list[str]]:
  """The ``stats/...`` keys of a configuration, grouped by statistic name (after the last '/')."""
  out: dict[str, list[str]] = {}
  for key in keys:
    if key.startswith('stats/'):
      out.setdefault(key.rsplit('/', 1)[-1], []).append(key)
  return out


def compare_stats(a: Dump, b: Dump, pairs: list[tuple[dict[str, str], dict[str, str]]]) -> None:
  """Prints, per statistic name, in how many configurations it is bit-identical.

  Only reported: the redesign may change some statistics' meaning. Keys
  present on one side only are counted per name and side.
  """
  summary: dict[str, StatSummary] = {}
  only: dict[tuple[str, str], int] = {}
  for keys_a, keys_b in pairs:
    names_a, names_b = _stat_names(keys_a), _stat_names(keys_b)
    for name in sorted(set(names_a) | set(names_b)):
      ka, kb = set(names_a.get(name, ())), set(names_b.get(name, ()))
      for key in ka ^ kb:
        side = 'base' if key in ka else 'new'
        only[(name, side)] = only.get((name, side), 0) + 1
      if not ka & kb:
        continue
      worst = max(
        _relative(
          float(_values(a.arrays[keys_a[k]], a.dtypes[keys_a[k]])),
          float(_values(b.arrays[keys_b[k]], b.dtypes[keys_b[k]])),
        )
        if _array_difference(a, b, keys_a[k], keys_b[k])
        else 0.0
        for k in ka & kb
      )
      old = summary.get(name, StatSummary(0, 0, 0.0))
      summary[name] = StatSummary(
        old.configs + 1, old.identical + (worst == 0.0), max(old.max_relative, worst)
      )
  print('statistics (reported, not checked):')
  for name, s in sorted(summary.items()):
    print(
      f'  {name}: bit-identical in {s.identical}/{s.configs}, max relative diff {s.max_relative:.3g}'
    )
  for (name, side), count in sorted(only.items()):
    print(f'  {name}: {count} keys only in {side}')


def compare(path_a: str, path_b: str) -> int:
  """Compares two dumps (``a`` the base); prints one line per configuration. 0 if all match."""
  a, b = load(path_a), load(path_b)
  print(f'base: {a.meta["adabelief_jax"]}\nnew:  {b.meta["adabelief_jax"]}')
  if a.meta['versions'] != b.meta['versions']:
    print(f'note: library versions differ: {a.meta["versions"]} vs {b.meta["versions"]}')
  ca, cb = _by_config(a), _by_config(b)
  names = list(ca) + [n for n in cb if n not in ca]
  identical, pairs = 0, []
  for name in names:
    if name not in ca or name not in cb:
      print(f'DIFFERS {name}: only in {"base" if name in ca else "new"}')
      continue
    pairs.append((ca[name], cb[name]))
    problems = compare_config(a, b, ca[name], cb[name])
    if problems:
      shown = '; '.join(problems[:4]) + (
        f'; +{len(problems) - 4} more' if len(problems) > 4 else ''
      )
      print(f'DIFFERS {name}: {shown}')
    else:
      identical += 1
      print(f'OK      {name}')
  compare_stats(a, b, pairs)
  print(f'{len(names)} configurations: params and moments bit-identical in {identical}')
  return 0 if identical == len(names) else 1


# ----------------------------------------------------------------------------- against a revision


def _git(root: pathlib.Path, *args: str) -> str:
  """Runs ``git -C root args``; its stripped stdout."""
  done = subprocess.run(['git', '-C', str(root), *args], check=True, capture_output=True, text=True)
  return done.stdout.strip()


def _dump_with(
  code_root: pathlib.Path, out: pathlib.Path, root: pathlib.Path, only: str | None
) -> None:
  """Runs ``--dump out`` in a fresh interpreter whose ``adabelief_jax`` is ``code_root``'s.

  ``-P`` and a script path (not ``-m``) keep the current directory and this
  script's directory off ``sys.path``, so that ``PYTHONPATH`` decides; the
  child checks that it imported ``code_root/adabelief_jax``.
  """
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(code_root), env.get('PYTHONPATH')]))
  script = root / 'tests' / 'bit_identity.py'
  cmd = [sys.executable, '-P', str(script), '--dump', str(out)]
  cmd += ['--expect-code', str(code_root / 'adabelief_jax')] + (['--only', only] if only else [])
  print(f'$ PYTHONPATH={code_root} {" ".join(cmd)}', file=sys.stderr, flush=True)
  subprocess.run(cmd, check=True, cwd=root, env=env)


def _describe_checkout(root: pathlib.Path) -> None:
  """Prints the checkout's HEAD and its uncommitted changes under adabelief_jax, now."""
  head = _git(root, 'rev-parse', '--short', 'HEAD')
  dirty = _git(root, 'status', '--porcelain', '--', 'adabelief_jax').splitlines()
  print(f'new:  {root} (HEAD {head}, {len(dirty)} changed paths under adabelief_jax)', flush=True)


def against(rev: str, keep: str | None = None, only: str | None = None) -> int:
  """Compares this checkout (working tree included) with revision ``rev``.

  ``rev`` is checked out into a temporary detached worktree, removed at the
  end whatever happens (a SIGTERM, as from a CI timeout, exits through the
  clean-up too). With ``keep``, the two dumps are saved in that folder.
  """
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  root = pathlib.Path(_git(pathlib.Path(__file__).resolve().parent, 'rev-parse', '--show-toplevel'))
  with tempfile.TemporaryDirectory(prefix='bit_identity.') as tmp:
    out = pathlib.Path(keep or tmp)
    out.mkdir(parents=True, exist_ok=True)
    worktree = pathlib.Path(tmp) / 'base'
    _git(root, 'worktree', 'add', '--detach', str(worktree), rev)
    try:
      print(f'base: {rev} = {_git(worktree, "rev-parse", "HEAD")} in {worktree}', flush=True)
      _dump_with(worktree, out / 'base.npz', root, only)
    finally:
      _git(root, 'worktree', 'remove', '--force', str(worktree))
    _describe_checkout(root)
    _dump_with(root, out / 'new.npz', root, only)
    return compare(str(out / 'base.npz'), str(out / 'new.npz'))


def main(argv: list[str] | None = None) -> int:
  """Command line: one of ``--against REV``, ``--dump FILE``, ``--compare A B``."""
  parser = argparse.ArgumentParser(
    prog='python -m tests.bit_identity', description=__doc__.split('\n')[0]
  )
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument('--against', metavar='REV', help='compare this checkout with a git revision')
  mode.add_argument(
    '--dump', metavar='FILE', help='run the grid with the importable package, save it'
  )
  mode.add_argument('--compare', nargs=2, metavar=('BASE', 'NEW'), help='compare two dumps')
  parser.add_argument(
    '--expect-code', help='with --dump: the adabelief_jax folder that must be imported'
  )
  parser.add_argument('--only', help='run only the configurations whose name contains this')
  parser.add_argument('--keep', metavar='DIR', help='with --against: save both dumps in DIR')
  args = parser.parse_args(argv)
  if args.dump:
    dump(args.dump, args.expect_code, args.only)  # Errors are saved; comparisons fail them.
    return 0
  if args.compare:
    return compare(*args.compare)
  try:
    return against(args.against, args.keep, args.only)
  except subprocess.CalledProcessError as error:
    print(f'bit_identity: {error}\n{error.stderr or ""}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  raise SystemExit(main())
