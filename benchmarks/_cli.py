"""The flags the benchmark scripts share, each defined once.

A group of flags is a table, ``{flag: keywords of add_argument}``: a script
passes the groups it takes to :func:`make_parser`, in the order its --help
lists them, then adds its own flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from benchmarks._candidates import CANDIDATES
from benchmarks._trees import parse_count

DTYPES = ['float32', 'bfloat16']


def _positive_int(text: str) -> int:
  """An argparse type: an int >= 1 (a median of no rounds is no number)."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
  return value


# A group of flags: the keywords of ``add_argument`` by flag.
Flags = dict[str, dict[str, Any]]

# --params: the size of the one tree a script measures.
SIZE: Flags = {
  '--params': dict(
    type=parse_count, default='42M', help='total parameter count, e.g. 42M, 1e6, 50k (default 42M)'
  ),
}

# --tree, --leaves, --dtype: the shape and dtype of the parameters.
TREE: Flags = {
  '--tree': dict(
    choices=['transformer', 'equal'],
    default='transformer',
    help='transformer: 12 layers of width ~512 plus an embedding, scaled to the parameter '
    'count; equal: --leaves equal 1-D leaves (default transformer)',
  ),
  '--leaves': dict(type=int, default=100, help='number of leaves of the equal tree (default 100)'),
  '--dtype': dict(choices=DTYPES, default='float32', help='parameter and gradient dtype'),
}

# --state-dtype, --rounds, --warmup, --torch-threads, --seed: how a step is timed.
TIMING: Flags = {
  '--state-dtype': dict(
    choices=DTYPES,
    default=None,
    help='m and s dtype of the modes it applies to (adabelief_jax modes, optax adam/adamw mu, '
    "floor); default: each optimizer's own",
  ),
  '--rounds': dict(
    type=_positive_int, default=10, help='timed rounds; the median is reported (default 10)'
  ),
  '--warmup': dict(type=int, default=2, help='untimed rounds after compiling (default 2)'),
  '--torch-threads': dict(
    type=int,
    default=None,
    help='torch intra-op threads (default: os.cpu_count(); use 1 on a shared, loaded machine)',
  ),
  '--seed': dict(type=int, default=0, help='seed of params and grads (default 0)'),
}


# --json: where to write every number and the machine info.
JSON: Flags = {
  '--json': dict(default=None, metavar='OUT', help='write every number and the machine info here')
}


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


def modes(default: Sequence[str], jax_only: bool = False, flag: str = '--modes') -> Flags:
  """``flag MODE [MODE ...]``: the candidates to run (see :class:`ModesAction`)."""
  shown = 'all' if list(default) == list(CANDIDATES) else ' '.join(default)
  return {
    flag: dict(
      nargs='+',
      action=ModesAction,
      jax_only=jax_only,
      default=list(default),
      metavar='MODE',
      help=f'candidates, space- or comma-separated (default: {shown})',
    )
  }


def out(default: str) -> Flags:
  """--out: the folder a script writes its reports into."""
  return {'--out': dict(default=default, help=f'output folder (default {default})')}


def add_flags(parser: argparse.ArgumentParser, *groups: Flags) -> None:
  """Adds the flags of each group to ``parser``, in order."""
  for group in groups:
    for flag, keywords in group.items():
      parser.add_argument(flag, **keywords)


def make_parser(
  prog: str, doc: str, groups: Sequence[Flags], epilog: str | None = None
) -> argparse.ArgumentParser:
  """A script's parser with the shared ``groups`` of flags.

  Its description is the first paragraph of the module docstring ``doc``, its
  layout kept.
  """
  parser = argparse.ArgumentParser(
    prog=prog,
    description=doc.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=epilog,
  )
  add_flags(parser, *groups)
  return parser
