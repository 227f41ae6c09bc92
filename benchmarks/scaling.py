"""Step time against parameter count and against leaf count.

Two sweeps, each timing its candidates round-robin at every point (see
:mod:`benchmarks.step_time` for the timed step):

* parameter count (``--params-list``, default 1M..100M) on the transformer
  tree (97 leaves at every size) or the equal tree;
* leaf count (``--leaves-list``, default 10..5000) of equal 1-D leaves at a
  fixed total (``--leaves-params``, default 10M): per-leaf overhead.

Writes ``scaling.md``, ``scaling.json``, ``scaling_params.png`` and
``scaling_leaves.png`` under ``--out``. The leaf sweep's cost is mostly
compiling: about 10 ms per leaf per candidate on a 2-core CPU, so the default
5000-leaf point alone takes minutes.

    python -m benchmarks.scaling --out results/scaling
    python -m benchmarks.scaling --params-list 1M,10M --leaves-list 10,1000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ''):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _cli, _report, _timing  # pylint: disable=g-import-not-at-top
from benchmarks._candidates import CANDIDATES  # pylint: disable=g-import-not-at-top
from benchmarks._trees import (  # pylint: disable=g-import-not-at-top
  Shapes,
  count_params,
  equal_shapes,
  make_problem,
  parse_count,
  parse_counts,
  tree_shapes,
)

DEFAULT_MODES = ['adabelief', 'optax_adam', 'optax_adabelief']

COLUMNS: dict[str, _report.Column] = {
  'candidate': 'label',
  'params': 'params',
  'leaves': 'leaves',
  'median ms/step': 'median_ms',
  'min ms': 'min_ms',
  'ns/param': lambda r: r['median_ms'] * 1e6 / r['params'],
  'effective GB/s': 'effective_gb_per_s',
  'vs optax.adam': 'vs_optax_adam',
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The shared tree, timing, --modes and --out flags, plus the two sweeps' points."""
  parser = _cli.make_parser(
    'python -m benchmarks.scaling',
    __doc__,
    [_cli.TREE, _cli.TIMING, _cli.modes(DEFAULT_MODES), _cli.out('results/scaling')],
  )
  parser.add_argument(
    '--params-list',
    type=parse_counts,
    default='1M,3M,10M,30M,100M',
    help='comma-separated totals of the parameter sweep (default 1M,3M,10M,30M,100M; empty: skip)',
  )
  parser.add_argument(
    '--leaves-list',
    type=parse_counts,
    default='10,30,100,300,1000,3000,5000',
    help='comma-separated leaf counts of the leaf sweep '
    '(default 10,30,100,300,1000,3000,5000; empty: skip)',
  )
  parser.add_argument(
    '--leaves-params',
    type=parse_count,
    default='10M',
    help='fixed total params of the leaf sweep (default 10M)',
  )
  parser.add_argument('--no-plot', action='store_true', help='skip the PNGs (no matplotlib needed)')
  return parser.parse_args(argv)


def run_point(args: argparse.Namespace, shapes: Shapes, sweep: str, x: int) -> list[dict[str, Any]]:
  """The rows of one point of a sweep, tagged with the sweep, x, params and leaves."""
  problem = make_problem(shapes, args.dtype, args.state_dtype, args.seed)
  print(f'# {sweep} sweep: {problem.n_params:,} params in {problem.n_leaves} leaves')
  rows, _ = _timing.measure(problem, args.modes, args.rounds, args.warmup, args.torch_threads)
  for row in rows:
    row.update(sweep=sweep, x=x, params=problem.n_params, leaves=problem.n_leaves)
  return rows


def plot(rows: list[dict[str, Any]], sweep: str, path: str) -> None:
  """Median ms/step, and GB/s (params sweep) or ns/param (leaves sweep), against x, per mode."""
  # The object API renders with Agg and never touches pyplot's global state.
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  xlabel = {'params': 'parameters', 'leaves': 'leaves (fixed total)'}[sweep]
  fig = Figure(figsize=(11, 4.2))
  FigureCanvasAgg(fig)
  left, right = fig.subplots(1, 2)
  for mode in dict.fromkeys(r['mode'] for r in rows):
    points = sorted((r for r in rows if r['mode'] == mode), key=lambda r: r['x'])
    xs = [r['x'] for r in points]
    label = CANDIDATES[mode].label
    left.plot(xs, [r['median_ms'] for r in points], 'o-', label=label)
    if sweep == 'params':
      right.plot(xs, [r['effective_gb_per_s'] for r in points], 'o-', label=label)
    else:
      right.plot(xs, [r['median_ms'] * 1e6 / r['params'] for r in points], 'o-', label=label)
  left.set_xscale('log')
  left.set_yscale('log')
  left.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  left.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
  left.yaxis.set_minor_formatter(ticker.NullFormatter())
  left.set_xlabel(xlabel)
  left.set_ylabel('median ms/step')
  right.set_xscale('log')
  right.set_xlabel(xlabel)
  right.set_ylabel('effective GB/s' if sweep == 'params' else 'ns/param')
  for ax in (left, right):
    ax.grid(True, which='both', alpha=0.3)
  left.legend(fontsize=8)
  fig.suptitle(f'step time vs {xlabel}')
  fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.2)
  fig.savefig(path, dpi=100)


def markdown(
  args: argparse.Namespace, rows: list[dict[str, Any]], info: dict[str, Any]
) -> tuple[str, dict[str, str]]:
  """scaling.md's text, and the plots it links (written here unless --no-plot), by sweep."""
  md = [
    f'# Step-time scaling\n\nMachine: {_report.machine_line(info)}; '
    f'{args.dtype} params, state dtype {args.state_dtype or "default"}, '
    f'median of {args.rounds} interleaved rounds.'
  ]
  titles = {
    'params': f'Parameter count ({args.tree} tree)',
    'leaves': f'Leaf count ({args.leaves_params:,} params)',
  }
  pngs = {}
  for sweep, title in titles.items():
    sweep_rows = [r for r in rows if r['sweep'] == sweep]
    if not sweep_rows:
      continue
    md.append(f'## {title}\n\n{_report.rows_table(sweep_rows, COLUMNS)}')
    if not args.no_plot:
      pngs[f'{sweep}_png'] = os.path.join(args.out, f'scaling_{sweep}.png')
      plot(sweep_rows, sweep, pngs[f'{sweep}_png'])
      md.append(f'![{title}](scaling_{sweep}.png)')
  return '\n\n'.join(md) + '\n', pngs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs both sweeps; writes scaling.md, scaling.json and the plots under --out."""
  args = parse_args(argv)
  rows = []
  for n in args.params_list:
    shapes = tree_shapes(args.tree, n, min(args.leaves, n))
    rows += run_point(args, shapes, 'params', count_params(shapes))
  for leaves in args.leaves_list:
    rows += run_point(args, equal_shapes(args.leaves_params, leaves), 'leaves', leaves)
  os.makedirs(args.out, exist_ok=True)
  info = _report.machine_info()
  text, files = markdown(args, rows, info)
  files['markdown'] = os.path.join(args.out, 'scaling.md')
  files['json'] = os.path.join(args.out, 'scaling.json')
  with open(files['markdown'], 'w') as f:
    f.write(text)
  result = {
    'benchmark': 'scaling',
    'config': vars(args),
    'machine': info,
    'results': rows,
    'files': files,
    'table': text,
  }
  _report.write_json(files['json'], result)
  print()
  print(text)
  print('Wrote ' + ', '.join(files.values()))
  return result


if __name__ == '__main__':
  main()
