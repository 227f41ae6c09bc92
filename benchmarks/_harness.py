"""Shared pieces of the benchmarks: parameter trees, candidates, timing, reports.

A *candidate* is one optimizer step to time: a JAX one is
``jax.jit(step, donate_argnums=(0, 1))`` with ``step(params, state, grads) =
update + optax.apply_updates``; a PyTorch one is ``optimizer.step()`` with each
``param.grad`` set once. All candidates of one run see the same parameter
shapes and the same gradients (precomputed, never donated), and are timed
round-robin in one process, so that machine noise hits them alike: compare
ratios measured in one run, not absolute times across runs.

The byte model of a step is the least traffic it needs: read the parameters,
the gradients and every state array, write the parameters and every state
array back, ``2 * P + G + 2 * S`` bytes (28 bytes per parameter for float32
Adam or AdaBelief). The *floor* candidate is a jitted copy-like kernel with the
same traffic, so its time is what the memory bus allows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adabelief_jax

# ----------------------------------------------------------------------------
# Parameter trees.

TRANSFORMER_LAYERS = 12
# The 42M reference tree: d = 512, vocabulary 8192 = 16 d, MLP width 2048 = 4 d.
VOCAB_PER_WIDTH = 16
MLP_PER_WIDTH = 4

Shapes = Any  # A pytree whose leaves are shape tuples.


def parse_count(text: str | int | float) -> int:
  """'42M', '1.5e6', '50k', '100000' -> an int."""
  if isinstance(text, (int, float)):
    return int(text)
  match = re.fullmatch(r'\s*([0-9.eE+-]+)\s*([kKmMgG]?)\s*', text)
  if not match:
    raise ValueError(f'not a count: {text!r} (write e.g. 42M, 50k or 1e6)')
  scale = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[match.group(2).lower()]
  value = float(match.group(1)) * scale
  if value < 1:
    raise ValueError(f'a count must be >= 1, got {text!r}')
  return round(value)


def parse_counts(text: str) -> list[int]:
  """'1M,3M,10M' -> [1000000, 3000000, 10000000]."""
  return [parse_count(part) for part in text.split(',') if part.strip()]


def _transformer_count(d: int) -> int:
  layer = d * 3 * d + d * d + 2 * d * MLP_PER_WIDTH * d + 4 * d
  return TRANSFORMER_LAYERS * layer + VOCAB_PER_WIDTH * d * d


def transformer_width(n_params: int) -> int:
  """The width d whose transformer tree has closest to ``n_params`` params."""
  # n(d) = (12 * 12 + 16) d^2 + 12 * 4 d: solve the quadratic, then check the
  # neighbours because of rounding.
  a = TRANSFORMER_LAYERS * (4 + 2 * MLP_PER_WIDTH) + VOCAB_PER_WIDTH
  b = TRANSFORMER_LAYERS * 4
  d = int((-b + math.sqrt(b * b + 4 * a * n_params)) / (2 * a))
  candidates = [max(1, d + k) for k in (-1, 0, 1, 2)]
  return min(candidates, key=lambda w: abs(_transformer_count(w) - n_params))


def transformer_shapes(n_params: int) -> Shapes:
  """A 12-layer transformer-like tree of about ``n_params`` parameters.

  At the default 42M: width 512 (qkv 512x1536, attention output 512x512, MLP
  512x2048 and 2048x512, two layernorms' scales and biases per layer) and an
  8192x512 embedding; other sizes scale the width, so the leaf count (97) and
  the proportions stay the same.
  """
  d = transformer_width(n_params)
  h = MLP_PER_WIDTH * d
  layer = {
    'attn': {'qkv': (d, 3 * d), 'out': (d, d)},
    'ln1': {'scale': (d,), 'bias': (d,)},
    'mlp': {'w1': (d, h), 'w2': (h, d)},
    'ln2': {'scale': (d,), 'bias': (d,)},
  }
  return {
    'embed': (VOCAB_PER_WIDTH * d, d),
    'layers': {f'{i:02d}': layer for i in range(TRANSFORMER_LAYERS)},
  }


def equal_shapes(n_params: int, leaves: int) -> Shapes:
  """``leaves`` 1-D leaves that add up to exactly ``n_params``."""
  if leaves < 1 or leaves > n_params:
    raise ValueError(f'need 1 <= leaves <= params, got {leaves} and {n_params}')
  base, extra = divmod(n_params, leaves)
  return [(base + (i < extra),) for i in range(leaves)]


def tree_shapes(kind: str, n_params: int, leaves: int) -> Shapes:
  if kind == 'transformer':
    return transformer_shapes(n_params)
  if kind == 'equal':
    return equal_shapes(n_params, leaves)
  raise ValueError(f'unknown tree {kind!r}; use transformer or equal')


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def shape_leaves(shapes: Shapes) -> list[tuple[int, ...]]:
  return jax.tree.leaves(shapes, is_leaf=_is_shape)


def count_params(shapes: Shapes) -> int:
  return sum(math.prod(s) for s in shape_leaves(shapes))


def abstract_tree(shapes: Shapes, dtype: Any) -> Any:
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.dtype(dtype)), shapes, is_leaf=_is_shape
  )


def random_tree(shapes: Shapes, dtype: Any, seed: int, scale: float = 1.0):
  """Normal(0, scale^2) leaves, generated on the host in one go."""
  sizes = [math.prod(s) for s in shape_leaves(shapes)]
  flat = np.random.default_rng(seed).standard_normal(sum(sizes), np.float32)
  flat *= np.float32(scale)
  offsets = np.cumsum([0] + sizes)
  it = iter(range(len(sizes)))

  def leaf(shape):
    i = next(it)
    chunk = flat[offsets[i] : offsets[i + 1]].reshape(shape)
    return jnp.array(chunk, dtype=jnp.dtype(dtype))

  return jax.tree.map(leaf, shapes, is_leaf=_is_shape)


def nbytes(tree: Any, min_ndim: int = 1) -> int:
  """Bytes of the array leaves of ``tree`` with at least ``min_ndim`` dims.

  ``min_ndim=1`` leaves scalars (step counts) out of a state's size.
  """
  total = 0
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, 'shape') and len(leaf.shape) >= min_ndim:
      total += math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
  return total


_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


@dataclasses.dataclass
class Problem:
  """The shapes, dtypes, initial parameters and gradients of one benchmark."""

  shapes: Shapes
  dtype: jnp.dtype
  state_dtype: jnp.dtype | None  # None: each optimizer's default.
  params: Any  # Device arrays; candidates take copies.
  grads: Any
  n_params: int
  n_leaves: int

  @property
  def param_bytes(self) -> int:
    return self.n_params * self.dtype.itemsize

  def fresh_params(self) -> Any:
    return _copy_tree(self.params)


def make_problem(
  shapes: Shapes,
  dtype: Any = 'float32',
  state_dtype: Any = None,
  seed: int = 0,
) -> Problem:
  dtype = jnp.dtype(dtype)
  return Problem(
    shapes=shapes,
    dtype=dtype,
    state_dtype=None if state_dtype is None else jnp.dtype(state_dtype),
    params=random_tree(shapes, dtype, seed, scale=0.02),
    grads=random_tree(shapes, dtype, seed + 1, scale=1e-3),
    n_params=count_params(shapes),
    n_leaves=len(shape_leaves(shapes)),
  )


def step_bytes(param_bytes: int, grad_bytes: int, state_bytes: int) -> int:
  """Least traffic of one step: read P, G, S; write P, S."""
  return 2 * param_bytes + grad_bytes + 2 * state_bytes


# ----------------------------------------------------------------------------
# Candidates.


class Runner:
  """One set-up candidate: ``step()`` runs and finishes one optimizer step."""

  state_bytes: int = 0
  bytes_per_step: int = 0

  def step(self) -> None:
    raise NotImplementedError

  def close(self) -> None:
    pass


def make_step(tx: optax.GradientTransformation) -> Callable:
  """The timed function: update + apply_updates, params and state donated."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


class JaxRunner(Runner):
  def __init__(self, tx: optax.GradientTransformation, problem: Problem):
    self.grads = problem.grads
    self.params = problem.fresh_params()
    self.state = tx.init(self.params)
    self.fn = make_step(tx)
    self.state_bytes = nbytes(self.state)
    self.bytes_per_step = step_bytes(problem.param_bytes, nbytes(problem.grads), self.state_bytes)
    self.step()  # Compiles.

  def step(self) -> None:
    self.params, self.state = self.fn(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))

  def close(self) -> None:
    del self.params, self.state, self.fn


def _floor_state_dtype(problem: Problem) -> jnp.dtype:
  return problem.state_dtype or jnp.promote_types(problem.dtype, jnp.float32)


class FloorRunner(JaxRunner):
  """A jitted copy-like kernel with the traffic of one AdaBelief step.

  ``(p, m, s, g) -> (p + g, m + g, s + g)`` with p, m, s donated: 28 bytes per
  float32 parameter by the byte model (20 with bfloat16 m and s). XLA:CPU has
  no multi-output fusion, so it runs three loops that each read g (36 bytes
  of real traffic per float32 parameter); :class:`CopyRunner` is the
  one-stream bound.
  """

  def __init__(self, problem: Problem):
    state_dtype = _floor_state_dtype(problem)
    self.grads = problem.grads
    self.params = problem.fresh_params()
    zeros = lambda p: jnp.zeros(p.shape, state_dtype)
    self.state = (jax.tree.map(zeros, self.params), jax.tree.map(zeros, self.params))

    def touch(params, state, grads):
      add = lambda x, g: (x + g).astype(x.dtype)
      m, s = state
      return (
        jax.tree.map(add, params, grads),
        (jax.tree.map(add, m, grads), jax.tree.map(add, s, grads)),
      )

    self.fn = jax.jit(touch, donate_argnums=(0, 1))
    self.state_bytes = nbytes(self.state)
    self.bytes_per_step = step_bytes(problem.param_bytes, nbytes(problem.grads), self.state_bytes)
    self.step()


class CopyRunner(Runner):
  """``x -> x + 1`` (donated) on one float32 array of the floor's bytes.

  One read and one write stream of exactly the floor's byte model (28 bytes
  per float32 parameter): the step time the measured copy rate allows.
  """

  def __init__(self, problem: Problem):
    itemsize = _floor_state_dtype(problem).itemsize
    model = step_bytes(problem.param_bytes, nbytes(problem.grads), 2 * problem.n_params * itemsize)
    self.x = jnp.zeros(-(-model // 8), jnp.float32)
    self.fn = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    self.bytes_per_step = 8 * self.x.size
    self.step()

  def step(self) -> None:
    self.x = self.fn(self.x)
    self.x.block_until_ready()

  def close(self) -> None:
    del self.x, self.fn


_torch_module = None


def import_torch(threads: int | None = None):
  """torch, or None if absent; sets its intra-op threads when given.

  The benchmarks pass ``os.cpu_count()`` by default. On a machine that other
  jobs share, OpenMP barriers wait for descheduled threads, and a multi-thread
  ``optimizer.step()`` can take a thousand times its single-thread time;
  ``--torch-threads 1`` is the fair setting there.
  """
  global _torch_module
  if _torch_module is None:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      return None
    _torch_module = torch
  if threads is not None:
    _torch_module.set_num_threads(max(1, threads))
  return _torch_module


class TorchRunner(Runner):
  def __init__(self, make_optimizer: Callable[[list], Any], problem: Problem):
    torch = import_torch()
    if torch is None:
      raise RuntimeError('torch is not installed')
    tdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[
      problem.dtype.name
    ]

    def tensor(x):
      return torch.from_numpy(np.array(x, np.float32)).to(tdtype)

    self.params = []
    for p, g in zip(jax.tree.leaves(problem.params), jax.tree.leaves(problem.grads)):
      param = torch.nn.Parameter(tensor(p))
      param.grad = tensor(g)  # Its own copy: some optimizers write into it.
      self.params.append(param)
    self.optimizer = make_optimizer(self.params)
    self.step()  # Creates the state.
    self.state_bytes = sum(
      v.numel() * v.element_size()
      for p in self.params
      for v in self.optimizer.state[p].values()
      if torch.is_tensor(v) and v.shape == p.shape
    )
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in self.params)
    self.bytes_per_step = step_bytes(problem.param_bytes, grad_bytes, self.state_bytes)

  def step(self) -> None:
    self.optimizer.step()  # Synchronous on CPU.

  def close(self) -> None:
    del self.optimizer, self.params


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A named optimizer step to benchmark.

  ``make_tx(state_dtype)`` (JAX candidates only) returns the optax
  transformation; ``state_dtype`` is None for each optimizer's default and is
  ignored unless ``state_dtype_applies``.
  """

  name: str
  label: str
  family: str  # 'adabelief_jax', 'optax', 'torch' or 'floor'.
  build: Callable[[Problem], Runner]
  state_dtype_applies: bool = False
  make_tx: Callable[[Any], optax.GradientTransformation] | None = None


LR = 1e-3
WEIGHT_DECAY = 1e-4


def _jax_candidate(name, label, family, make_tx, state_dtype_applies=True):
  return Candidate(
    name,
    label,
    family,
    lambda problem: JaxRunner(make_tx(problem.state_dtype), problem),
    state_dtype_applies,
    make_tx,
  )


def _ab(**kwargs):
  def make_tx(state_dtype):
    kw = dict(mu_dtype=state_dtype, nu_dtype=state_dtype)
    kw.update(kwargs)
    return adabelief_jax.adabelief(LR, **kw)

  return make_tx


def _torch_adabelief(**kwargs):
  def build(problem: Problem):
    from adabelief_pytorch import AdaBelief  # pylint: disable=g-import-not-at-top

    def make(ps):
      # It prints its settings even with print_change_log=False.
      with contextlib.redirect_stdout(io.StringIO()):
        return AdaBelief(ps, lr=LR, print_change_log=False, **kwargs)

    return TorchRunner(make, problem)

  return build


def _torch_adam(problem: Problem):
  torch = import_torch()
  if torch is None:
    raise RuntimeError('torch is not installed')
  return TorchRunner(lambda ps: torch.optim.Adam(ps, lr=LR, fused=True), problem)


BF16 = jnp.dtype(jnp.bfloat16)

CANDIDATES: dict[str, Candidate] = {
  c.name: c
  for c in [
    _jax_candidate('adabelief', 'adabelief_jax', 'adabelief_jax', _ab()),
    _jax_candidate(
      'adabelief_wd',
      'adabelief_jax wd=1e-4 decoupled',
      'adabelief_jax',
      _ab(weight_decay=WEIGHT_DECAY),
    ),
    _jax_candidate(
      'adabelief_amsgrad', 'adabelief_jax amsgrad', 'adabelief_jax', _ab(amsgrad=True)
    ),
    _jax_candidate(
      'adabelief_rectify', 'adabelief_jax rectify', 'adabelief_jax', _ab(rectify=True)
    ),
    _jax_candidate(
      'adabelief_bf16_state',
      'adabelief_jax bf16 m,s',
      'adabelief_jax',
      _ab(mu_dtype=BF16, nu_dtype=BF16),
      state_dtype_applies=False,
    ),
    _jax_candidate('optax_adam', 'optax.adam', 'optax', lambda sd: optax.adam(LR, mu_dtype=sd)),
    _jax_candidate(
      'optax_adamw',
      'optax.adamw wd=1e-4',
      'optax',
      lambda sd: optax.adamw(LR, mu_dtype=sd, weight_decay=WEIGHT_DECAY),
    ),
    _jax_candidate(
      'optax_adabelief',
      'optax.adabelief',
      'optax',
      lambda sd: optax.adabelief(LR),
      state_dtype_applies=False,
    ),
    Candidate(
      'torch_adabelief', 'adabelief-pytorch rectify=False', 'torch', _torch_adabelief(rectify=False)
    ),
    Candidate('torch_adabelief_default', 'adabelief-pytorch defaults', 'torch', _torch_adabelief()),
    Candidate('torch_adam_fused', 'torch.optim.Adam(fused=True)', 'torch', _torch_adam),
    Candidate('floor', 'bandwidth floor (p+g, m+g, s+g)', 'floor', FloorRunner, True),
    Candidate('copy', 'one-stream copy of the same bytes', 'floor', CopyRunner, True),
  ]
}


def parse_modes(values: Sequence[str] | None, default: Sequence[str]):
  """Mode names from argparse (space- and/or comma-separated), validated."""
  if not values:
    return list(default)
  modes = [m for v in values for m in v.split(',') if m]
  unknown = [m for m in modes if m not in CANDIDATES]
  if unknown:
    raise SystemExit(f'unknown mode(s) {unknown}; choose from {list(CANDIDATES)}')
  return list(dict.fromkeys(modes))


# ----------------------------------------------------------------------------
# Timing.


def build_runners(
  names: Iterable[str],
  problem: Problem,
  log: Callable[[str], None] = print,
) -> tuple[dict[str, Runner], dict[str, str]]:
  """Sets up (and compiles) each candidate; failures are skipped, with why."""
  runners, skipped = {}, {}
  for name in names:
    candidate = CANDIDATES[name]
    if candidate.family == 'torch' and import_torch() is None:
      skipped[name] = 'torch is not installed'
      continue
    start = time.perf_counter()
    try:
      runners[name] = candidate.build(problem)
    except Exception as e:  # pylint: disable=broad-except
      skipped[name] = f'{type(e).__name__}: {e}'
      log(f'  skipped {name}: {skipped[name]}')
      continue
    log(f'  set up {name} in {time.perf_counter() - start:.2f} s')
  return runners, skipped


def time_interleaved(
  runners: dict[str, Runner],
  rounds: int,
  warmup: int = 1,
) -> dict[str, list[float]]:
  """Seconds per step of each runner, round-robin, start rotated each round."""
  names = list(runners)
  for _ in range(warmup):
    for name in names:
      runners[name].step()
  samples = {name: [] for name in names}
  gc.collect()
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    for r in range(rounds):
      k = r % len(names) if names else 0
      for name in names[k:] + names[:k]:
        start = time.perf_counter()
        runners[name].step()
        samples[name].append(time.perf_counter() - start)
  finally:
    if gc_was_enabled:
      gc.enable()
  return samples


def close_all(runners: dict[str, Runner]) -> None:
  for runner in runners.values():
    runner.close()
  runners.clear()
  gc.collect()


def summarize(
  runners: dict[str, Runner],
  samples: dict[str, list[float]],
  n_params: int,
) -> list[dict[str, Any]]:
  """One row per candidate: times, throughput, bytes and ratios."""
  rows = []
  for name, secs in samples.items():
    runner = runners[name]
    median = statistics.median(secs)
    rows.append(
      {
        'mode': name,
        'label': CANDIDATES[name].label,
        'median_ms': median * 1e3,
        'min_ms': min(secs) * 1e3,
        'max_ms': max(secs) * 1e3,
        'samples_ms': [s * 1e3 for s in secs],
        'params_per_s': n_params / median,
        'state_bytes': runner.state_bytes,
        'state_bytes_per_param': runner.state_bytes / n_params,
        'bytes_per_step': runner.bytes_per_step,
        'bytes_per_param': runner.bytes_per_step / n_params,
        'effective_gb_per_s': runner.bytes_per_step / median / 1e9,
      }
    )
  by_name = {row['mode']: row for row in rows}
  for ref, key in (('optax_adam', 'vs_optax_adam'), ('floor', 'vs_floor')):
    base = by_name.get(ref)
    for row in rows:
      row[key] = row['median_ms'] / base['median_ms'] if base else None
  return rows


# ----------------------------------------------------------------------------
# Reports.


def fmt(x: Any, digits: int = 3) -> str:
  """A short human number: 38.9, 0.0123, 1.08e9, 4200."""
  if x is None:
    return '-'
  if isinstance(x, str):
    return x
  if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    return str(x)
  x = float(x)
  if not math.isfinite(x):
    return str(x)
  if x != 0 and (abs(x) >= 10 ** (digits + 3) or abs(x) < 1e-3):
    return f'{x:.{digits - 1}e}'.replace('e+0', 'e').replace('e+', 'e')
  if abs(x) >= 10**digits:
    return f'{x:.0f}'
  return f'{x:.{digits}g}'


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]):
  lines = ['| ' + ' | '.join(headers) + ' |', '| ' + ' | '.join('---' for _ in headers) + ' |']
  for row in rows:
    lines.append('| ' + ' | '.join(fmt(v) for v in row) + ' |')
  return '\n'.join(lines)


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def machine_info() -> dict[str, Any]:
  """What the numbers were measured on."""
  cpu_model = None
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu_model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  mem_total_gb = None
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemTotal:'):
          mem_total_gb = int(line.split()[1]) / 2**20
          break
  except OSError:
    pass
  try:
    affinity = len(os.sched_getaffinity(0))
  except AttributeError:
    affinity = None
  return {
    'nproc': affinity or os.cpu_count(),
    'cpu_count': os.cpu_count(),
    'cpu_model': cpu_model or platform.processor() or None,
    'mem_total_gb': mem_total_gb,
    'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
    'platform': platform.platform(),
    'python': sys.version.split()[0],
    'jax': jax.__version__,
    'jaxlib': _version('jaxlib'),
    'optax': optax.__version__,
    'adabelief_jax': adabelief_jax.__version__,
    'numpy': np.__version__,
    'torch': _version('torch'),
    'adabelief_pytorch': _version('adabelief-pytorch'),
    'torch_threads': (_torch_module.get_num_threads() if _torch_module is not None else None),
    'backend': jax.default_backend(),
    'devices': [str(d) for d in jax.local_devices()[:1]],
    'xla_flags': os.environ.get('XLA_FLAGS'),
  }


def machine_line(info: dict[str, Any]) -> str:
  load = info.get('load_average')
  return (
    f'{info["cpu_model"]}, {info["nproc"]} cores, backend '
    f'{info["backend"]}, jax {info["jax"]}, optax {info["optax"]}'
    + (f', torch {info["torch"]}' if info.get('torch') else '')
    + (f', load {load[0]:.2f}' if load else '')
  )


def write_json(path: str | os.PathLike, data: Any) -> None:
  directory = os.path.dirname(os.fspath(path))
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(data, f, indent=1, default=str)
    f.write('\n')
