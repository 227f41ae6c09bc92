"""The XLA:CPU idioms the library relies on, each against its plain form.

adabelief_jax writes a few expressions in a way that XLA:CPU turns into an
in-place, one-pass update, where the plain way of writing them costs a
parameter-sized temporary buffer or time. Each case below compiles a small
jitted, donated kernel written both ways (the library's form and the plain
one) and reports XLA's temporary bytes and the median time, so that each
idiom keeps its place only while it measures better:

* ``order``: statistics that read the parameters before a step updates them
  in place: plain, with ``jax.lax.optimization_barrier``, or with the step's
  scale made to depend on the reads (``transform._after``);
* ``sample``: a parameter sample both stored and reduced: a plain slice, or a
  select with the last sample that never picks it (``diagnostics.param_sample``);
* ``count``: counting the elements above a bound in 8 arrays of one shape
  that share it: ``sum(x > b)``, a sum of clamps, or a sum of clamps whose
  scalars are made each array's own (``diagnostics._count_above``);
* ``percentiles``: a weighted median of 97 x 1024 samples by bisection over
  their bit patterns (``diagnostics._weighted_percentiles``) or by a sort of
  the samples with their weights;
* ``codes``: 8-bit codes stored and read back by the step: narrowed last, or
  narrowed before a last select (``_quantize._code``);
* ``s_update``: ``b2*s + (1-b2)*d*d + eps_root`` against the library's
  association ``b2*s + ((1-b2)*d*d + eps_root)``;
* ``block_max``: a maximum over blocks of the last axis by reduce-window (the
  library on CPU) or by reshape and max (elsewhere);
* ``sort``: the statistics' sort of 97 x 1024 floats, as their int32 bit
  patterns (the library) or as floats;
* ``rounding``: a stochastically rounded bfloat16 store with hashed bits (the
  library) against ``jax.random.bits``, and a plain cast.

    python -m benchmarks.xla_cpu
    python -m benchmarks.xla_cpu --elements 1M --rounds 5 --cases order count --kernels-only
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

if __package__ in (None, ''):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import adabelief_jax  # pylint: disable=g-import-not-at-top
from adabelief_jax import _quantize, _rounding, diagnostics, transform  # pylint: disable=g-import-not-at-top
from benchmarks import _cli, _report, _timing  # pylint: disable=g-import-not-at-top
from benchmarks._candidates import jax_runner, make_step  # pylint: disable=g-import-not-at-top
from benchmarks._trees import make_problem, parse_count, tree_shapes  # pylint: disable=g-import-not-at-top

Kernel = Callable[..., Any]


def _never(x: jax.Array) -> jax.Array:
  total = jnp.sum(x)
  return jnp.isnan(total) & ~jnp.isnan(total)


def _step(p: jax.Array, m: jax.Array, scale: jax.Array) -> jax.Array:
  return p - scale * m / (jnp.abs(m) + 1e-8)


def _order(how: str) -> Kernel:
  """A donated update of ``p`` whose statistics read ``p`` (a strided sample's RMS)."""

  def kernel(p: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
    scale = jnp.sqrt(jnp.sum(m[:1, :1]) ** 2 + 1e-3)
    rms = jnp.sqrt(jnp.mean(jnp.square(p[::64, ::64])))
    if how == 'barrier':
      scale, rms = jax.lax.optimization_barrier((scale, rms))
    if how == 'depend':
      scale = jnp.where(_never(rms), 0.0, scale)
    return _step(p, m, scale), rms

  return kernel


def _sample(how: str) -> Kernel:
  """A donated update of ``p`` after a sample of ``p`` is both kept and reduced."""

  def kernel(p: jax.Array, m: jax.Array, last: jax.Array) -> tuple[jax.Array, ...]:
    sample = p[::64, ::64].reshape(-1)
    if how == 'select':
      sample = jnp.where(jnp.isnan(sample) & jnp.isnan(last), last, sample)
    rms = jnp.sqrt(jnp.mean(jnp.square(sample - last)))
    scale = jnp.where(_never(rms) | _never(sample), 0.0, 1e-3)
    return _step(p, m, scale), sample, rms

  return kernel


def _count(how: str) -> Kernel:
  """The number of elements above a bound, in 8 arrays of one shape sharing the bound."""

  def kernel(*arrays: jax.Array) -> jax.Array:
    *parts, m = arrays
    bound = jnp.abs(m[0, 0]) * 1e-3
    counts = []
    for part in parts:
      if how == 'compare':
        counts.append(jnp.sum(part > bound, dtype=jnp.float32))
        continue
      never = _never(part[0, 0]) if how == 'clamp_own_scalars' else jnp.zeros((), bool)
      zero = jnp.where(never, 1, 0).astype(part.dtype)
      above = jnp.ceil(jnp.maximum(part - jnp.where(never, 0, bound), zero))
      counts.append(jnp.sum(jnp.minimum(above, 1 - zero), dtype=jnp.float32))
    return jnp.stack(counts)

  return kernel


def _percentiles(how: str) -> Kernel:
  """The weighted median of 97 rows of 1024 samples, each row with its own weight."""

  def kernel(x: jax.Array) -> jax.Array:
    weights = jnp.broadcast_to(jnp.arange(1.0, 98.0)[:, None], x.shape)
    if how == 'sort_with_weights':
      ordered, w = jax.lax.sort((x.reshape(-1), weights.reshape(-1)), num_keys=1)
      return ordered[jnp.searchsorted(jnp.cumsum(w) / jnp.sum(w), 0.5)]
    rows = diagnostics._Rows(x, x, x, np.full(97, 1024), np.arange(1.0, 98.0) * 1024)
    return diagnostics._weighted_percentiles(rows, (0.5,))[0]

  return kernel


def _codes(how: str) -> Kernel:
  """8-bit codes of ``m`` stored in place of the old ones, and read back by ``p``'s update."""

  def kernel(p: jax.Array, codes: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    m = 0.9 * codes.astype(jnp.float32) / 127 + 0.1 * g
    code = jnp.clip(jnp.round(jnp.abs(m) * 127), 0, 127)
    if how == 'narrow_last':
      new = jnp.where(m < 0, -code, code).astype(jnp.int8)
    else:
      magnitude = code.astype(jnp.int8)
      new = jnp.where(m < 0, -magnitude, magnitude)
    return _step(p, new.astype(jnp.float32) / 127, jnp.float32(1e-3)), new

  return kernel


def _s_update(how: str) -> Kernel:
  """The new ``s`` from the new ``m``, and a step that reads both."""

  def kernel(p: jax.Array, m: jax.Array, s: jax.Array, g: jax.Array) -> tuple[jax.Array, ...]:
    m = 0.9 * m + 0.1 * g
    d = g - m
    if how == 'plain':
      s = 0.999 * s + 0.001 * d * d + 1e-16
    else:
      s = 0.999 * s + (0.001 * d * d + 1e-16)
    return p - 1e-3 * m / (jnp.sqrt(s) + 1e-16), m, s

  return kernel


def _block_max(how: str) -> Kernel:
  """The maximum of ``|x|`` over blocks of 256 along the last axis."""

  def kernel(x: jax.Array) -> jax.Array:
    x = jnp.abs(x)
    if how == 'reduce_window':
      window = (1, 256)
      return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, 'VALID')
    return jnp.max(x.reshape(x.shape[0], -1, 256), axis=-1)

  return kernel


def _sort(how: str) -> Kernel:
  """97 rows of 1024 non-negative floats, sorted along the rows."""

  def kernel(x: jax.Array) -> jax.Array:
    if how == 'float':
      return jnp.sort(x, axis=1)
    keys = jax.lax.sort(jax.lax.bitcast_convert_type(x, jnp.int32), dimension=1)
    return jax.lax.bitcast_convert_type(keys, jnp.float32)

  return kernel


def _rounding_kernel(how: str) -> Kernel:
  """A float32 value stored as bfloat16: cast, or stochastically rounded."""

  def kernel(x: jax.Array, count: jax.Array) -> jax.Array:
    if how == 'cast':
      return x.astype(jnp.bfloat16)
    if how == 'hash':
      bits = _rounding.random_bits16(x.shape, 0, count, 0, 1)[0]
    else:
      key = jax.random.fold_in(jax.random.key(0), count)
      bits = jax.random.bits(key, x.shape, jnp.uint32) & np.uint32(0xFFFF)
    return _rounding.round_to(x, jnp.dtype(jnp.bfloat16), bits)

  return kernel


# Each case: its kernel maker, its forms (the library's first), and its
# arguments (shapes and dtypes from the element count) with the donated ones.
CASES: dict[str, tuple[Callable[[str], Kernel], tuple[str, ...], str, tuple[int, ...]]] = {
  'order': (_order, ('depend', 'plain', 'barrier'), 'pm', (0,)),
  'sample': (_sample, ('select', 'plain'), 'pml', (0,)),
  'count': (_count, ('clamp_own_scalars', 'clamp_shared_scalar', 'compare'), 'eeeeeeeep', ()),
  'percentiles': (_percentiles, ('bisection', 'sort_with_weights'), 'r', ()),
  'codes': (_codes, ('select_last', 'narrow_last'), 'pcg', (0, 1)),
  's_update': (_s_update, ('associated', 'plain'), 'pmsg', (0, 1, 2)),
  'block_max': (_block_max, ('reduce_window', 'reshape'), 'p', ()),
  'sort': (_sort, ('int32_keys', 'float'), 'r', ()),
  'rounding': (_rounding_kernel, ('hash', 'jax_random', 'cast'), 'pn', ()),
}


def _argument(kind: str, n: int, rng: np.random.Generator) -> jax.Array:
  """An argument of a kernel: a (rows, 1024) matrix of about ``n`` elements, or another kind."""
  rows = max(1, n // 1024)
  if kind == 'e':  # An eighth of the elements.
    return jnp.asarray(rng.normal(size=(max(1, rows // 8), 1024)), jnp.float32)
  if kind == 'c':
    return jnp.asarray(rng.integers(-127, 128, size=(rows, 1024)), jnp.int8)
  if kind == 'l':
    return jnp.asarray(rng.normal(size=-(-rows // 64) * 16), jnp.float32)
  if kind == 'r':
    return jnp.asarray(np.abs(rng.normal(size=(97, 1024))), jnp.float32)
  if kind == 'n':
    return jnp.asarray(3, jnp.int32)
  return jnp.asarray(rng.normal(size=(rows, 1024)), jnp.float32)


def measure(case: str, n: int, rounds: int) -> list[dict[str, Any]]:
  """Temp bytes and median ms of each form of ``case`` on arrays of about ``n`` elements."""
  make, forms, kinds, donated = CASES[case]
  rng = np.random.default_rng(0)
  rows = []
  for form in forms:
    fn = jax.jit(make(form), donate_argnums=donated)
    args = [_argument(kind, n, rng) for kind in kinds]
    compiled = fn.lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    times = []
    for _ in range(rounds + 1):  # The first call is a warm-up.
      args = [_argument(kind, n, rng) for kind in kinds]
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
    rows.append(
      {
        'case': case,
        'form': form + (' (library)' if form == forms[0] else ''),
        'temp MB': temp / 2**20,
        'median ms': 1e3 * statistics.median(times[1:]),
      }
    )
  return rows


# The same idioms in the library's own step, each swapped for its plain form
# while the step is traced: a real 42M-parameter tree, not a kernel alone.


def _plain_param_sample(param: jax.Array, last_param: jax.Array) -> jax.Array:
  return diagnostics.strided(param)


def _plain_count(x: jax.Array, bound: jax.Array, probe: jax.Array) -> jax.Array:
  return jnp.sum(x > bound, dtype=jnp.float32)


def _plain_after(x: Any, reads: list[jax.Array]) -> Any:
  return x


def _sorted_percentiles(rows: Any, qs: tuple[float, ...]) -> list[jax.Array]:
  valid = np.arange(rows.sqrt_s_hat.shape[1])[None, :] < rows.length[:, None]
  weights = jnp.asarray(np.where(valid, (rows.size / rows.length)[:, None], 0).reshape(-1))
  ordered, ordered_weights = jax.lax.sort((rows.sqrt_s_hat.reshape(-1), weights), num_keys=1)
  cumulative = jnp.cumsum(ordered_weights) / jnp.sum(weights)
  return [ordered[jnp.searchsorted(cumulative, q)] for q in qs]


def _float_sort(values: jax.Array) -> jax.Array:
  return jnp.sort(values, axis=-1)


def _encode_narrowed_last(
  x: jax.Array, like: Any, scales: jax.Array, bits16: jax.Array | None
) -> Any:
  """``_quantize.encode`` computing the codes in int32 and narrowing them last."""
  fmt = like.format
  shift = 23 - fmt.mantissa_bits
  offset = (127 << fmt.mantissa_bits) - fmt.top
  inverse = 1.0 / jnp.where(scales > 0, scales, 1.0)
  v = jnp.abs(x) * _quantize._per_element(inverse, like.block, x.shape[-1])
  pattern = jax.lax.bitcast_convert_type(v, jnp.int32)
  if bits16 is None:
    pattern = pattern + (1 << (shift - 1))
  else:
    pattern = pattern + (bits16.astype(jnp.int32) << (shift - 16))
  code = jnp.clip((pattern >> shift) - offset, 0, fmt.top)
  v1 = float(np.int32((1 + offset) << shift).view(np.float32))
  if fmt.lowest:
    code = jnp.maximum(code, fmt.lowest)
  else:
    up = (v >= v1 / 2) if bits16 is None else (bits16 + 0.5) * np.float32(v1 / 2**16) < v
    code = jnp.where(v < v1, up.astype(jnp.int32), code)
  if fmt is _quantize.SIGNED:
    code = jnp.where(x < 0, -code, code)
  return _quantize.Blocks(code.astype(fmt.dtype), scales, like.block)


# Each in-context variant: the library's step of a mode, with these functions replaced.
VARIANTS: dict[str, tuple[str, dict[tuple[Any, str], Callable[..., Any]]]] = {
  'stats: library': ('stats', {}),
  'stats: plain parameter sample': ('stats', {(diagnostics, 'param_sample'): _plain_param_sample}),
  'stats: reads not ordered': ('stats', {(transform, '_after'): _plain_after}),
  'stats: plain count': ('stats', {(diagnostics, '_count_above'): _plain_count}),
  'stats: sort with weights': (
    'stats',
    {(diagnostics, '_weighted_percentiles'): _sorted_percentiles},
  ),
  'stats: float sort': ('stats', {(diagnostics, '_sort'): _float_sort}),
  'int8: library': ('int8', {}),
  'int8: codes narrowed last': ('int8', {(_quantize, 'encode'): _encode_narrowed_last}),
}
MODES = {
  'stats': dict(track_stats=True),
  'int8': dict(mu_dtype='int8', nu_dtype='int8'),
}


@contextlib.contextmanager
def _replaced(functions: dict[tuple[Any, str], Callable[..., Any]]) -> Iterator[None]:
  with contextlib.ExitStack() as stack:
    for (module, name), function in functions.items():
      stack.enter_context(mock.patch.object(module, name, function))
    yield


def in_context(n_params: int, rounds: int) -> list[dict[str, Any]]:
  """Each variant's donated step (update + apply) on a transformer tree of ``n_params``."""
  problem = make_problem(tree_shapes('transformer', n_params, 97), jnp.dtype('float32'), None, 0)
  runners, temps = {}, {}
  for name, (mode, functions) in VARIANTS.items():
    tx = adabelief_jax.adabelief(1e-3, **MODES[mode])
    with _replaced(functions):  # The step is traced and compiled here.
      runners[name] = jax_runner(tx, problem)
      state = jax.eval_shape(tx.init, problem.params)
      lowered = make_step(tx).lower(problem.params, state, problem.grads)
      temps[name] = lowered.compile().memory_analysis().temp_size_in_bytes
  samples = _timing.time_interleaved(runners, rounds)
  return [
    {
      'case': f'{problem.n_params / 1e6:.0f}M step',
      'form': name,
      'temp MB': temps[name] / 2**20,
      'median ms': 1e3 * statistics.median(secs),
    }
    for name, secs in samples.items()
  ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the cases; prints one table and returns every number."""
  parser = argparse.ArgumentParser(
    prog='python -m benchmarks.xla_cpu',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--elements',
    type=parse_count,
    default='8M',
    help='elements of the parameter-sized arrays (default 8M: 32 MB float32)',
  )
  parser.add_argument('--rounds', type=int, default=10, help='timed calls per form (default 10)')
  parser.add_argument('--cases', nargs='+', choices=list(CASES), default=list(CASES))
  parser.add_argument(
    '--params', type=parse_count, default='42M', help='parameters of the steps (default 42M)'
  )
  parser.add_argument('--kernels-only', action='store_true', help='skip the steps')
  _cli.add_flags(parser, _cli.JSON)
  args = parser.parse_args(argv)
  print(f'# xla_cpu: {args.elements:,} elements, {args.rounds} rounds, {jax.default_backend()}')
  rows = [row for case in args.cases for row in measure(case, args.elements, args.rounds)]
  if not args.kernels_only:
    rows += in_context(args.params, args.rounds)
  result = {
    'benchmark': 'xla_cpu',
    'config': vars(args),
    'machine': _report.machine_info(),
    'results': rows,
    'table': _report.rows_table(rows, {k: k for k in rows[0]}),
  }
  _report.emit(result, args.json)
  return result


if __name__ == '__main__':
  main()
