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

from benchmarks import _harness  # pylint: disable=g-import-not-at-top

DEFAULT_MODES = ['adabelief', 'optax_adam', 'optax_adabelief']


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='python -m benchmarks.scaling',
    description=__doc__.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--params-list',
    type=_harness.parse_counts,
    default='1M,3M,10M,30M,100M',
    help='comma-separated totals of the parameter sweep (default 1M,3M,10M,30M,100M; empty: skip)',
  )
  parser.add_argument(
    '--tree',
    choices=['transformer', 'equal'],
    default='transformer',
    help='tree of the parameter sweep (default transformer)',
  )
  parser.add_argument(
    '--leaves', type=int, default=100, help='leaves of the equal tree in the parameter sweep'
  )
  parser.add_argument(
    '--leaves-list',
    type=_harness.parse_counts,
    default='10,30,100,300,1000,3000,5000',
    help='comma-separated leaf counts of the leaf sweep '
    '(default 10,30,100,300,1000,3000,5000; empty: '
    'skip)',
  )
  parser.add_argument(
    '--leaves-params',
    type=_harness.parse_count,
    default='10M',
    help='fixed total params of the leaf sweep (default 10M)',
  )
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--state-dtype', choices=['float32', 'bfloat16'], default=None)
  parser.add_argument('--rounds', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument(
    '--modes',
    nargs='+',
    default=None,
    metavar='MODE',
    help='candidates (default: ' + ' '.join(DEFAULT_MODES) + '); any step_time mode works',
  )
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
    '--out', default='results/scaling', help='output folder (default results/scaling)'
  )
  parser.add_argument('--no-plot', action='store_true', help='skip the PNGs (no matplotlib needed)')
  args = parser.parse_args(argv)
  args.modes = _harness.parse_modes(args.modes, DEFAULT_MODES)
  if args.rounds < 1:
    parser.error('--rounds must be >= 1')
  return args


def run_point(args, shapes, sweep: str, x: int) -> list[dict[str, Any]]:
  problem = _harness.make_problem(shapes, args.dtype, args.state_dtype, args.seed)
  print(f'# {sweep} sweep: {problem.n_params:,} params in {problem.n_leaves} leaves')
  runners, skipped = _harness.build_runners(args.modes, problem)
  samples = _harness.time_interleaved(runners, args.rounds, args.warmup)
  rows = _harness.summarize(runners, samples, problem.n_params)
  _harness.close_all(runners)
  for row in rows:
    row.update(sweep=sweep, x=x, params=problem.n_params, leaves=problem.n_leaves)
  for name, reason in skipped.items():
    print(f'  skipped {name}: {reason}')
  return rows


HEADERS = [
  'candidate',
  'params',
  'leaves',
  'median ms/step',
  'min ms',
  'ns/param',
  'effective GB/s',
  'vs optax.adam',
]


def table(rows: list[dict[str, Any]]) -> str:
  return _harness.markdown_table(
    HEADERS,
    [
      [
        r['label'],
        r['params'],
        r['leaves'],
        r['median_ms'],
        r['min_ms'],
        r['median_ms'] * 1e6 / r['params'],
        r['effective_gb_per_s'],
        r['vs_optax_adam'],
      ]
      for r in rows
    ],
  )


def plot(rows: list[dict[str, Any]], sweep: str, path: str) -> None:
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
    label = _harness.CANDIDATES[mode].label
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  rows = []
  for n in args.params_list:
    shapes = _harness.tree_shapes(args.tree, n, min(args.leaves, n))
    rows += run_point(args, shapes, 'params', _harness.count_params(shapes))
  for leaves in args.leaves_list:
    shapes = _harness.equal_shapes(args.leaves_params, leaves)
    rows += run_point(args, shapes, 'leaves', leaves)
  os.makedirs(args.out, exist_ok=True)
  by_sweep = {s: [r for r in rows if r['sweep'] == s] for s in ('params', 'leaves')}
  files = {}
  info = _harness.machine_info()
  md = [
    f'# Step-time scaling\n\nMachine: {_harness.machine_line(info)}; '
    f'{args.dtype} params, state dtype {args.state_dtype or "default"}, '
    f'median of {args.rounds} interleaved rounds.'
  ]
  for sweep, sweep_rows in by_sweep.items():
    if not sweep_rows:
      continue
    title = {
      'params': f'Parameter count ({args.tree} tree)',
      'leaves': f'Leaf count ({args.leaves_params:,} params)',
    }[sweep]
    md.append(f'## {title}\n\n{table(sweep_rows)}')
    if not args.no_plot:
      path = os.path.join(args.out, f'scaling_{sweep}.png')
      plot(sweep_rows, sweep, path)
      files[f'{sweep}_png'] = path
      md.append(f'![{title}](scaling_{sweep}.png)')
  text = '\n\n'.join(md) + '\n'
  files['markdown'] = os.path.join(args.out, 'scaling.md')
  with open(files['markdown'], 'w') as f:
    f.write(text)
  files['json'] = os.path.join(args.out, 'scaling.json')
  result = {
    'benchmark': 'scaling',
    'config': {k: v for k, v in vars(args).items()},
    'machine': info,
    'results': rows,
    'files': files,
    'table': text,
  }
  _harness.write_json(files['json'], result)
  print()
  print(text)
  print('Wrote ' + ', '.join(files.values()))
  return result


if __name__ == '__main__':
  main()
