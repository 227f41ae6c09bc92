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
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ''):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _cli, _report, _timing  # pylint: disable=g-import-not-at-top
from benchmarks._candidates import CANDIDATES, LR, WEIGHT_DECAY  # pylint: disable=g-import-not-at-top
from benchmarks._trees import make_problem, tree_shapes  # pylint: disable=g-import-not-at-top

DEFAULT_MODES = list(CANDIDATES)

COLUMNS: dict[str, _report.Column] = {
  'candidate': 'label',
  'median ms/step': 'median_ms',
  'min ms': 'min_ms',
  'params/s': 'params_per_s',
  'bytes/param': 'bytes_per_param',
  'effective GB/s': 'effective_gb_per_s',
  'vs optax.adam': 'vs_optax_adam',
  'vs floor': 'vs_floor',
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The flags: problem (size, tree, dtype), timing, modes and --json, all shared."""
  groups = [_cli.SIZE, _cli.TREE, _cli.TIMING, _cli.modes(DEFAULT_MODES), _cli.JSON]
  epilog = 'modes:\n' + '\n'.join(f'  {c.name:24} {c.label}' for c in CANDIDATES.values())
  parser = _cli.make_parser('python -m benchmarks.step_time', __doc__, groups, epilog)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Times the modes on one problem; prints the table and returns (and writes) every number."""
  args = parse_args(argv)
  problem = make_problem(
    tree_shapes(args.tree, args.params, args.leaves), args.dtype, args.state_dtype, args.seed
  )
  print(
    f'# step_time: {problem.n_params:,} {args.dtype} params in '
    f'{problem.n_leaves} leaves ({args.tree} tree), state dtype '
    f'{args.state_dtype or "default"}, {args.rounds} rounds'
  )
  rows, skipped = _timing.measure(problem, args.modes, args.rounds, args.warmup, args.torch_threads)
  config = {'requested_params': args.params, **vars(args), 'params': problem.n_params}
  result = {
    'benchmark': 'step_time',
    'config': {**config, 'leaves': problem.n_leaves, 'lr': LR, 'weight_decay': WEIGHT_DECAY},
    'machine': _report.machine_info(),
    'results': rows,
    'skipped': skipped,
    'table': _report.rows_table(rows, COLUMNS),
  }
  _report.emit(result, args.json)
  return result


if __name__ == '__main__':
  main()
