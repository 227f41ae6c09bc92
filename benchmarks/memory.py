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
import optax  # pylint: disable=g-import-not-at-top

from benchmarks import _cli, _report, _trees  # pylint: disable=g-import-not-at-top
from benchmarks._candidates import CANDIDATES, make_step  # pylint: disable=g-import-not-at-top

DEFAULT_MODES = [
  'adabelief',
  'adabelief_wd',
  'adabelief_amsgrad',
  'adabelief_rectify',
  'adabelief_stats',
  'adabelief_int8',
  'adabelief_bf16_int8',
  'optax_adam',
  'optax_adabelief',
]
DEFAULT_COMPILE_MODES = ['adabelief', 'optax_adam']
MB = 2**20


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The shared problem, --modes and --json flags, plus the state dtypes and compile sweep."""
  parser = _cli.make_parser(
    'python -m benchmarks.memory',
    __doc__,
    [_cli.SIZE, _cli.TREE, _cli.modes(DEFAULT_MODES, jax_only=True), _cli.JSON],
  )
  parser.add_argument(
    '--state-dtypes',
    nargs='+',
    choices=['default', *_cli.DTYPES],
    default=['float32', 'bfloat16'],
    help='state dtypes for the modes that take one (default: float32 bfloat16)',
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
    type=_trees.parse_count,
    default='1M',
    help='total params of the compile-time trees (default 1M)',
  )
  _cli.add_flags(parser, _cli.modes(DEFAULT_COMPILE_MODES, jax_only=True, flag='--compile-modes'))
  return parser.parse_args(argv)


def compile_step(
  tx: optax.GradientTransformation, params_abs: _trees.PyTree
) -> tuple[Any, _trees.PyTree, float, float]:
  """(compiled step, abstract state, seconds to trace and lower, seconds to compile).

  Everything is abstract (``jax.ShapeDtypeStruct``): nothing of the
  parameters' size is allocated, so a 42M tree compiles in little memory.
  """
  state_abs = jax.eval_shape(tx.init, params_abs)
  start = time.perf_counter()
  lowered = make_step(tx).lower(params_abs, state_abs, params_abs)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, state_abs, lowered_at - start, time.perf_counter() - lowered_at


def memory_row(mode: str, state_dtype: str, params_abs: _trees.PyTree) -> dict[str, Any]:
  """XLA's memory analysis of one donated step of ``mode`` with state in ``state_dtype``."""
  tx = CANDIDATES[mode].make_tx(None if state_dtype == 'default' else jnp.dtype(state_dtype))
  compiled, state_abs, lower_s, compile_s = compile_step(tx, params_abs)
  ma = compiled.memory_analysis()
  n = sum(x.size for x in jax.tree.leaves(params_abs))
  param_bytes = _trees.nbytes(params_abs)
  state_bytes = _trees.nbytes(state_abs)
  donated = param_bytes + _trees.nbytes(state_abs, min_ndim=0)
  return {
    'mode': mode,
    'label': CANDIDATES[mode].label,
    'state_dtype': state_dtype,
    'state_leaf_dtypes': sorted({str(x.dtype) for x in jax.tree.leaves(state_abs) if x.ndim}),
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
    'extra_bytes': ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes,
    'lower_s': lower_s,
    'compile_s': compile_s,
  }


def memory_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
  """One :func:`memory_row` per mode and state dtype (the default alone where none applies)."""
  params_abs = _trees.abstract_tree(
    _trees.tree_shapes(args.tree, args.params, args.leaves), args.dtype
  )
  rows = []
  for mode in args.modes:
    applies = CANDIDATES[mode].state_dtype_applies
    for state_dtype in args.state_dtypes if applies else ['default']:
      row = memory_row(mode, state_dtype, params_abs)
      rows.append(row)
      print(
        f'  {mode} [{state_dtype}]: {row["state_bytes_per_param"]:g} B/param state, '
        f'temp {row["temp_bytes"] / MB:.2f} MB, compiled in {row["compile_s"]:.2f} s'
      )
      gc.collect()
  return rows


def compile_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Trace+lower and compile seconds of each compile mode at each leaf count."""
  rows = []
  for leaves in args.compile_leaves:
    params_abs = _trees.abstract_tree(_trees.equal_shapes(args.compile_params, leaves), args.dtype)
    for mode in args.compile_modes:
      _, _, lower_s, compile_s = compile_step(CANDIDATES[mode].make_tx(None), params_abs)
      total = lower_s + compile_s
      rows.append(
        {
          'mode': mode,
          'label': CANDIDATES[mode].label,
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


MEMORY_COLUMNS: dict[str, _report.Column] = {
  'mode': 'label',
  'state dtype': 'state_dtype',
  'state B/param': 'state_bytes_per_param',
  'args MB': lambda r: r['argument_bytes'] / MB,
  'outputs MB': lambda r: r['output_bytes'] / MB,
  'alias MB': lambda r: r['alias_bytes'] / MB,
  'temp MB': lambda r: r['temp_bytes'] / MB,
  'temp B/param': 'temp_bytes_per_param',
  'aliased %': lambda r: 100 * r['aliased_fraction'],
  'compile s': 'compile_s',
}
COMPILE_COLUMNS: dict[str, _report.Column] = {
  'mode': 'label',
  'leaves': 'leaves',
  'trace+lower s': 'lower_s',
  'compile s': 'compile_s',
  'total s': 'total_s',
  'ms/leaf': 'ms_per_leaf',
}


def tables(result: dict[str, Any]) -> str:
  """The memory table, then the compile-time table and its linear fits if the sweep ran."""
  parts = [_report.rows_table(result['memory'], MEMORY_COLUMNS)]
  if result['compile']:
    parts.append(_report.rows_table(result['compile'], COMPILE_COLUMNS))
  fits = [
    f'Linear fit, {CANDIDATES[m].label}: total ≈ {f["intercept_s"]:.2f} s + '
    f'{f["ms_per_leaf"]:.2f} ms × leaves (R² = {f["r2"]:.3f})'
    for m, f in result['compile_fits'].items()
  ]
  if fits:
    parts.append('\n'.join(fits))
  return '\n\n'.join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs both parts; prints the tables and returns (and writes) every number."""
  args = parse_args(argv)
  print(
    f'# memory: {args.params:,} requested {args.dtype} params '
    f'({args.tree} tree); compile sweep over {args.compile_leaves} leaves '
    f'of a {args.compile_params:,}-param tree'
  )
  memory = memory_rows(args)
  compile_ = compile_rows(args)
  result = {
    'benchmark': 'memory',
    'config': {
      'requested_params': args.params,
      **vars(args),
      'params': memory[0]['params'] if memory else None,
    },
    'machine': _report.machine_info(),
    'memory': memory,
    'compile': compile_,
    'compile_fits': linear_fits(compile_),
  }
  result['table'] = tables(result)
  _report.emit(result, args.json)
  return result


if __name__ == '__main__':
  main()
