"""The flags the benchmark scripts share, as argparse parent parsers.

Each function returns a fresh ``add_help=False`` parser to pass in
``parents=[...]``: fresh, because a script's ``set_defaults`` would otherwise
change the flag's default for every other script. A flag is defined here
once, whatever number of scripts take it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from benchmarks._candidates import CANDIDATES
from benchmarks._trees import parse_count

DTYPES = ['float32', 'bfloat16']


def make_parser(
  prog: str, doc: str, parents: Sequence[argparse.ArgumentParser], epilog: str | None = None
) -> argparse.ArgumentParser:
  """A script's parser: the module docstring's first paragraph as description, its own layout kept."""
  return argparse.ArgumentParser(
    prog=prog,
    description=doc.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    parents=list(parents),
    epilog=epilog,
  )


def _parent() -> argparse.ArgumentParser:
  """An empty parent parser (no -h: the script's own parser has it)."""
  return argparse.ArgumentParser(add_help=False)


def _positive_int(text: str) -> int:
  """An argparse type: an int >= 1 (a median of no rounds is no number)."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
  return value


class ModesAction(argparse.Action):
  """Mode names, space- and/or comma-separated, checked against the candidates.

  With ``jax_only=True`` a mode must be a JAX optimizer (one with ``make_tx``).
  """

  def __init__(self, *args: Any, jax_only: bool = False, **kwargs: Any) -> None:
    super().__init__(*args, **kwargs)
    self.jax_only = jax_only

  def __call__(
    self,
    parser: argparse.ArgumentParser,
    namespace: argparse.Namespace,
    values: Any,
    option_string: str | None = None,
  ) -> None:
    modes = list(dict.fromkeys(m for v in values for m in v.split(',') if m))
    unknown = [m for m in modes if m not in CANDIDATES]
    if unknown:
      parser.error(f'unknown mode(s) {unknown}; choose from {list(CANDIDATES)}')
    not_jax = [m for m in modes if self.jax_only and CANDIDATES[m].make_tx is None]
    if not_jax:
      parser.error(f'{", ".join(not_jax)}: not a JAX optimizer')
    setattr(namespace, self.dest, modes)


def add_modes(
  parser: argparse.ArgumentParser, flag: str, default: Sequence[str], jax_only: bool = False
) -> None:
  """Adds a ``flag MODE [MODE ...]`` option (see :class:`ModesAction`)."""
  shown = 'all' if list(default) == list(CANDIDATES) else ' '.join(default)
  parser.add_argument(
    flag,
    nargs='+',
    action=ModesAction,
    jax_only=jax_only,
    default=list(default),
    metavar='MODE',
    help=f'candidates, space- or comma-separated (default: {shown})',
  )


def modes_flags(default: Sequence[str], jax_only: bool = False) -> argparse.ArgumentParser:
  """--modes: the candidates to run."""
  parser = _parent()
  add_modes(parser, '--modes', default, jax_only)
  return parser


def size_flags() -> argparse.ArgumentParser:
  """--params: the size of the one tree a script measures."""
  parser = _parent()
  parser.add_argument(
    '--params',
    type=parse_count,
    default='42M',
    help='total parameter count, e.g. 42M, 1e6, 50k (default 42M)',
  )
  return parser


def tree_flags() -> argparse.ArgumentParser:
  """--tree, --leaves, --dtype: the shape and dtype of the parameters."""
  parser = _parent()
  parser.add_argument(
    '--tree',
    choices=['transformer', 'equal'],
    default='transformer',
    help='transformer: 12 layers of width ~512 plus an embedding, scaled to the parameter '
    'count; equal: --leaves equal 1-D leaves (default transformer)',
  )
  parser.add_argument(
    '--leaves', type=int, default=100, help='number of leaves of the equal tree (default 100)'
  )
  parser.add_argument(
    '--dtype', choices=DTYPES, default='float32', help='parameter and gradient dtype'
  )
  return parser


def timing_flags() -> argparse.ArgumentParser:
  """--state-dtype, --rounds, --warmup, --torch-threads, --seed: how a step is timed."""
  parser = _parent()
  parser.add_argument(
    '--state-dtype',
    choices=DTYPES,
    default=None,
    help='m and s dtype of the modes it applies to (adabelief_jax modes, optax adam/adamw mu, '
    "floor); default: each optimizer's own",
  )
  parser.add_argument(
    '--rounds',
    type=_positive_int,
    default=10,
    help='timed rounds; the median is reported (default 10)',
  )
  parser.add_argument(
    '--warmup', type=int, default=2, help='untimed rounds after compiling (default 2)'
  )
  parser.add_argument(
    '--torch-threads',
    type=int,
    default=None,
    help='torch intra-op threads (default: os.cpu_count(); use 1 on a shared, loaded machine)',
  )
  parser.add_argument('--seed', type=int, default=0, help='seed of params and grads (default 0)')
  return parser


def json_flag() -> argparse.ArgumentParser:
  """--json: where to write every number and the machine info."""
  parser = _parent()
  parser.add_argument(
    '--json', default=None, metavar='OUT', help='write every number and the machine info here'
  )
  return parser


def out_flag(default: str) -> argparse.ArgumentParser:
  """--out: the folder a script writes its reports into."""
  parser = _parent()
  parser.add_argument('--out', default=default, help=f'output folder (default {default})')
  return parser
