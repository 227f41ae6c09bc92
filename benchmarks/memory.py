"""Memory of one donated optimizer step, and compile time against leaf count.

For each mode and state dtype, lowers and compiles
``jax.jit(step, donate_argnums=(0, 1))`` (``step = update + apply_updates``)
and reports XLA's ``memory_analysis()``: argument, output, alias (outputs
written in place of donated arguments) and temp bytes. A fully in-place step
aliases all of params and state, so its extra footprint is ``temp`` alone.
State bytes per parameter come from the state ``init`` actually returns
(8 for float32 m and s, 4 for bfloat16, plus 4 or 2 with AMSGrad).

Then it times tracing+lowering and compiling the step for trees of
``--compile-leaves`` equal leaves, to show that compile time grows about
linearly with the leaf count.

    python -m benchmarks.memory
    python -m benchmarks.memory --params 1M --compile-leaves 100 300 1000 3000 --json mem.json
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ''):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import _harness  # pylint: disable=g-import-not-at-top

DEFAULT_MODES = [
  'adabelief',
  'adabelief_wd',
  'adabelief_amsgrad',
  'adabelief_rectify',
  'optax_adam',
  'optax_adabelief',
]
DEFAULT_COMPILE_MODES = ['adabelief', 'optax_adam']
MB = 2**20


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='python -m benchmarks.memory',
    description=__doc__.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--params', type=_harness.parse_count, default='42M', help='total parameter count (default 42M)'
  )
  parser.add_argument('--tree', choices=['transformer', 'equal'], default='transformer')
  parser.add_argument(
    '--leaves', type=int, default=100, help='leaves of the equal tree (default 100)'
  )
  parser.add_argument(
    '--dtype',
    choices=['float32', 'bfloat16'],
    default='float32',
    help='parameter and gradient dtype',
  )
  parser.add_argument(
    '--state-dtypes',
    nargs='+',
    choices=['default', 'float32', 'bfloat16'],
    default=['float32', 'bfloat16'],
    help='state dtypes for the modes that take one (default: float32 bfloat16)',
  )
  parser.add_argument(
    '--modes',
    nargs='+',
    default=None,
    metavar='MODE',
    help='JAX modes (default: ' + ' '.join(DEFAULT_MODES) + ')',
  )
  parser.add_argument(
    '--compile-leaves',
    nargs='*',
    type=int,
    default=[100, 300, 1000, 3000],
    help='leaf counts of the compile-time sweep (default 100 300 1000 3000; give none to skip)',
  )
  parser.add_argument(
    '--compile-params',
    type=_harness.parse_count,
    default='1M',
    help='total params of the compile-time trees (default 1M)',
  )
  parser.add_argument(
    '--compile-modes',
    nargs='+',
    default=None,
    metavar='MODE',
    help='modes of the compile-time sweep (default: ' + ' '.join(DEFAULT_COMPILE_MODES) + ')',
  )
  parser.add_argument('--json', default=None, metavar='OUT')
  args = parser.parse_args(argv)
  args.modes = _harness.parse_modes(args.modes, DEFAULT_MODES)
  args.compile_modes = _harness.parse_modes(args.compile_modes, DEFAULT_COMPILE_MODES)
  for mode in set(args.modes) | set(args.compile_modes):
    if _harness.CANDIDATES[mode].make_tx is None:
      parser.error(f'{mode} is not a JAX optimizer')
  return args


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def compile_step(tx, params_abs, state_abs, grads_abs):
  """(compiled, seconds to trace and lower, seconds to compile)."""
  start = time.perf_counter()
  lowered = _harness.make_step(tx).lower(params_abs, state_abs, grads_abs)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def memory_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
  shapes = _harness.tree_shapes(args.tree, args.params, args.leaves)
  n = _harness.count_params(shapes)
  dtype = jnp.dtype(args.dtype)
  params_abs = _harness.abstract_tree(shapes, dtype)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params_abs)
  param_bytes = n * dtype.itemsize
  rows = []
  for mode in args.modes:
    candidate = _harness.CANDIDATES[mode]
    state_dtypes = args.state_dtypes if candidate.state_dtype_applies else ['default']
    for sd in state_dtypes:
      tx = candidate.make_tx(None if sd == 'default' else jnp.dtype(sd))
      state = tx.init(params)  # The real state, for its real dtypes.
      state_bytes = _harness.nbytes(state)
      state_abs = _abstract(state)
      state_dtypes_seen = sorted({str(x.dtype) for x in jax.tree.leaves(state) if x.ndim})
      del state
      compiled, lower_s, compile_s = compile_step(tx, params_abs, state_abs, params_abs)
      ma = compiled.memory_analysis()
      donated = param_bytes + _harness.nbytes(state_abs, min_ndim=0)
      row = {
        'mode': mode,
        'label': candidate.label,
        'state_dtype': sd,
        'state_leaf_dtypes': state_dtypes_seen,
        'params': n,
        'param_bytes': param_bytes,
        'state_bytes': state_bytes,
        'state_bytes_per_param': state_bytes / n,
        'argument_bytes': ma.argument_size_in_bytes,
        'output_bytes': ma.output_size_in_bytes,
        'alias_bytes': ma.alias_size_in_bytes,
        'temp_bytes': ma.temp_size_in_bytes,
        'temp_bytes_per_param': ma.temp_size_in_bytes / n,
        'peak_bytes': getattr(ma, 'peak_memory_in_bytes', None),
        'generated_code_bytes': ma.generated_code_size_in_bytes,
        'donated_bytes': donated,
        'aliased_fraction': ma.alias_size_in_bytes / donated,
        # What the step needs beyond its (donated) inputs and the grads.
        'extra_bytes': (ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes),
        'lower_s': lower_s,
        'compile_s': compile_s,
      }
      rows.append(row)
      print(
        f'  {mode} [{sd}]: {row["state_bytes_per_param"]:g} B/param '
        f'state, temp {ma.temp_size_in_bytes / MB:.2f} MB, compiled in '
        f'{compile_s:.2f} s'
      )
      del compiled
      gc.collect()
  return rows


def compile_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
  rows = []
  for leaves in args.compile_leaves:
    shapes = _harness.equal_shapes(args.compile_params, leaves)
    params_abs = _harness.abstract_tree(shapes, args.dtype)
    for mode in args.compile_modes:
      tx = _harness.CANDIDATES[mode].make_tx(None)
      state_abs = jax.eval_shape(tx.init, params_abs)
      _, lower_s, compile_s = compile_step(tx, params_abs, state_abs, params_abs)
      total = lower_s + compile_s
      rows.append(
        {
          'mode': mode,
          'label': _harness.CANDIDATES[mode].label,
          'leaves': leaves,
          'lower_s': lower_s,
          'compile_s': compile_s,
          'total_s': total,
          'ms_per_leaf': total / leaves * 1e3,
        }
      )
      print(f'  {mode} with {leaves} leaves: lower {lower_s:.2f} s, compile {compile_s:.2f} s')
      gc.collect()
  return rows


def linear_fits(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """total_s = a + b * leaves per mode (least squares), with R^2."""
  fits = {}
  for mode in dict.fromkeys(r['mode'] for r in rows):
    x = np.array([r['leaves'] for r in rows if r['mode'] == mode], float)
    y = np.array([r['total_s'] for r in rows if r['mode'] == mode], float)
    if len(set(x)) < 2:
      continue
    b, a = np.polyfit(x, y, 1)
    residual = y - (a + b * x)
    ss = float(((y - y.mean()) ** 2).sum())
    fits[mode] = {
      'intercept_s': float(a),
      'ms_per_leaf': float(b * 1e3),
      'r2': 1.0 - float((residual**2).sum()) / ss if ss else 1.0,
    }
  return fits


MEMORY_HEADERS = [
  'mode',
  'state dtype',
  'state B/param',
  'args MB',
  'outputs MB',
  'alias MB',
  'temp MB',
  'temp B/param',
  'aliased %',
  'compile s',
]
COMPILE_HEADERS = ['mode', 'leaves', 'trace+lower s', 'compile s', 'total s', 'ms/leaf']


def tables(result: dict[str, Any]) -> str:
  parts = [
    _harness.markdown_table(
      MEMORY_HEADERS,
      [
        [
          r['label'],
          r['state_dtype'],
          r['state_bytes_per_param'],
          r['argument_bytes'] / MB,
          r['output_bytes'] / MB,
          r['alias_bytes'] / MB,
          r['temp_bytes'] / MB,
          r['temp_bytes_per_param'],
          100 * r['aliased_fraction'],
          r['compile_s'],
        ]
        for r in result['memory']
      ],
    )
  ]
  if result['compile']:
    parts.append(
      _harness.markdown_table(
        COMPILE_HEADERS,
        [
          [r['label'], r['leaves'], r['lower_s'], r['compile_s'], r['total_s'], r['ms_per_leaf']]
          for r in result['compile']
        ],
      )
    )
  fits = result['compile_fits']
  if fits:
    parts.append(
      '\n'.join(
        f'Linear fit, {_harness.CANDIDATES[m].label}: total ≈ '
        f'{f["intercept_s"]:.2f} s + {f["ms_per_leaf"]:.2f} ms × leaves '
        f'(R² = {f["r2"]:.3f})'
        for m, f in fits.items()
      )
    )
  return '\n\n'.join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  print(
    f'# memory: {args.params:,} requested {args.dtype} params '
    f'({args.tree} tree); compile sweep over {args.compile_leaves} leaves '
    f'of a {args.compile_params:,}-param tree'
  )
  memory = memory_rows(args)
  compile_ = compile_rows(args) if args.compile_leaves else []
  result = {
    'benchmark': 'memory',
    'config': {
      'params': memory[0]['params'] if memory else None,
      'requested_params': args.params,
      'tree': args.tree,
      'leaves': args.leaves,
      'dtype': args.dtype,
      'state_dtypes': args.state_dtypes,
      'modes': args.modes,
      'compile_leaves': args.compile_leaves,
      'compile_params': args.compile_params,
      'compile_modes': args.compile_modes,
    },
    'machine': _harness.machine_info(),
    'memory': memory,
    'compile': compile_,
    'compile_fits': linear_fits(compile_),
  }
  result['table'] = tables(result)
  print()
  print(result['table'])
  print()
  print(f'Machine: {_harness.machine_line(result["machine"])}.')
  if args.json:
    _harness.write_json(args.json, result)
    print(f'Wrote {args.json}')
  return result


if __name__ == '__main__':
  main()
