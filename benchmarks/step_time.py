"""Median time of one optimizer step: adabelief_jax against optax, PyTorch and
the memory-bandwidth floor.

Each JAX candidate is ``jax.jit(step, donate_argnums=(0, 1))`` with
``step(params, state, grads) = update + optax.apply_updates`` on the same tree
and the same precomputed gradients; PyTorch candidates call
``optimizer.step()`` with ``param.grad`` set once. Candidates are timed
round-robin in one process (``--rounds`` rounds, the start rotated each
round), so compare the ratio columns; absolute times drift with the machine.

    python -m benchmarks.step_time                       # 42M transformer tree
    python -m benchmarks.step_time --params 1M --rounds 5 --modes adabelief optax_adam floor
    python -m benchmarks.step_time --tree equal --leaves 1000 --json out.json

Columns: bytes/param is the least traffic of the step (read params, grads and
state; write params and state), from the state each candidate actually
allocated; GB/s is that traffic divided by the median time; "vs floor" divides
by the time of ``floor``, a jitted ``(p + g, m + g, s + g)`` with the byte
model of an AdaBelief step (28 bytes per float32 parameter). ``copy`` streams
the same bytes through one ``x + 1`` loop: the step time the machine's copy
rate allows (XLA:CPU runs ``floor`` as three loops that each read g).

On a machine shared with other jobs, multi-threaded PyTorch can be a thousand
times slower than single-threaded (OpenMP barriers wait for descheduled
threads): pass ``--torch-threads 1`` there, and say so with the numbers.
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

DEFAULT_MODES = list(_harness.CANDIDATES)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='python -m benchmarks.step_time',
    description=__doc__.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog='modes: ' + ', '.join(f'{c.name} ({c.label})' for c in _harness.CANDIDATES.values()),
  )
  parser.add_argument(
    '--params',
    type=_harness.parse_count,
    default='42M',
    help='total parameter count, e.g. 42M, 1e6, 50k (default 42M)',
  )
  parser.add_argument(
    '--tree',
    choices=['transformer', 'equal'],
    default='transformer',
    help='transformer: 12 layers of width ~512 plus an '
    'embedding, scaled to --params; equal: --leaves '
    'equal 1-D leaves (default transformer)',
  )
  parser.add_argument(
    '--leaves', type=int, default=100, help='number of leaves of the equal tree (default 100)'
  )
  parser.add_argument(
    '--dtype',
    choices=['float32', 'bfloat16'],
    default='float32',
    help='parameter and gradient dtype',
  )
  parser.add_argument(
    '--state-dtype',
    choices=['float32', 'bfloat16'],
    default=None,
    help='m and s dtype of the modes it applies to '
    '(adabelief_jax modes, optax adam/adamw mu, floor); '
    "default: each optimizer's own",
  )
  parser.add_argument(
    '--rounds', type=int, default=10, help='timed rounds; the median is reported (default 10)'
  )
  parser.add_argument(
    '--warmup', type=int, default=2, help='untimed rounds after compiling (default 2)'
  )
  parser.add_argument(
    '--modes',
    nargs='+',
    default=None,
    metavar='MODE',
    help='candidates to run (space or comma separated; default: all)',
  )
  parser.add_argument(
    '--torch-threads',
    type=int,
    default=None,
    help='torch intra-op threads (default: os.cpu_count(); use 1 on a shared, loaded machine)',
  )
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
    '--json', default=None, metavar='OUT', help='write every number and the machine info here'
  )
  args = parser.parse_args(argv)
  args.modes = _harness.parse_modes(args.modes, DEFAULT_MODES)
  if args.rounds < 1:
    parser.error('--rounds must be >= 1')
  return args


HEADERS = [
  'candidate',
  'median ms/step',
  'min ms',
  'params/s',
  'bytes/param',
  'effective GB/s',
  'vs optax.adam',
  'vs floor',
]


def table(rows: list[dict[str, Any]]) -> str:
  return _harness.markdown_table(
    HEADERS,
    [
      [
        r['label'],
        r['median_ms'],
        r['min_ms'],
        r['params_per_s'],
        r['bytes_per_param'],
        r['effective_gb_per_s'],
        r['vs_optax_adam'],
        r['vs_floor'],
      ]
      for r in rows
    ],
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  shapes = _harness.tree_shapes(args.tree, args.params, args.leaves)
  problem = _harness.make_problem(shapes, args.dtype, args.state_dtype, args.seed)
  print(
    f'# step_time: {problem.n_params:,} {args.dtype} params in '
    f'{problem.n_leaves} leaves ({args.tree} tree), state dtype '
    f'{args.state_dtype or "default"}, {args.rounds} rounds'
  )
  if any(_harness.CANDIDATES[m].family == 'torch' for m in args.modes):
    _harness.import_torch(args.torch_threads or os.cpu_count() or 1)
  runners, skipped = _harness.build_runners(args.modes, problem)
  samples = _harness.time_interleaved(runners, args.rounds, args.warmup)
  rows = _harness.summarize(runners, samples, problem.n_params)
  _harness.close_all(runners)
  info = _harness.machine_info()
  print()
  print(table(rows))
  print()
  print(f'Machine: {_harness.machine_line(info)}.')
  for name, reason in skipped.items():
    print(f'Skipped {name}: {reason}')
  result = {
    'benchmark': 'step_time',
    'config': {
      'params': problem.n_params,
      'requested_params': args.params,
      'leaves': problem.n_leaves,
      'tree': args.tree,
      'dtype': args.dtype,
      'state_dtype': args.state_dtype,
      'rounds': args.rounds,
      'warmup': args.warmup,
      'modes': args.modes,
      'seed': args.seed,
      'torch_threads': args.torch_threads,
      'lr': _harness.LR,
      'weight_decay': _harness.WEIGHT_DECAY,
    },
    'machine': info,
    'results': rows,
    'skipped': skipped,
    'table': table(rows),
  }
  if args.json:
    _harness.write_json(args.json, result)
    print(f'Wrote {args.json}')
  return result


if __name__ == '__main__':
  main()
