"""Small helpers shared by the experiment scripts: flags, seeding, results, plots.

Kept generic on purpose: nothing here knows about a particular model or data
set. Example scripts import it as ``import _common`` (Python puts a script's
own directory on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tabulate import tabulate
from tqdm.auto import tqdm

import adabelief_jax

if TYPE_CHECKING:
  from matplotlib.figure import Figure

T = TypeVar('T')

# ----------------------------------------------------------------------------
# Flags.


def make_parser(
  doc: str,
  name: str,
  optimizers: Iterable[str],
  *,
  seeds: int,
  seeds_help: str = 'runs per optimizer, with seeds 0..N-1',
  epochs: int | None = None,
  batch_size: int | None = None,
) -> argparse.ArgumentParser:
  """A script's parser, with the flags every script takes.

  The description is the first paragraph of ``doc``; --help keeps its layout.
  The flags: --seeds, then --epochs and --batch-size when given a default (the
  scripts that train on minibatches for a number of epochs share their
  meaning), --optimizers (a subset of ``optimizers``), --out (default
  results/<name>) and --no-progress.
  """
  parser = argparse.ArgumentParser(
    description=doc.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  optimizers = list(optimizers)
  counts = [
    ('--seeds', seeds, seeds_help),
    ('--epochs', epochs, 'training epochs per run'),
    ('--batch-size', batch_size, 'minibatch size'),
  ]
  add_positive_ints(parser, [count for count in counts if count[1] is not None])
  parser.add_argument(
    '--optimizers',
    type=comma_list(optimizers),
    default=list(optimizers),
    help='comma-separated subset of: ' + ','.join(optimizers) + ' (default: all)',
  )
  parser.add_argument(
    '--out',
    default=os.path.join('results', name),
    help='directory for results.md, results.json and the plots (default: %(default)s)',
  )
  parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
  return parser


def add_flags(
  parser: argparse.ArgumentParser,
  flags: Iterable[tuple[str, Any, str]],
  parse: Callable[[str], Any],
) -> None:
  """Adds a flag per (flag, default, help), read by ``parse`` (an argparse ``type``)."""
  for flag, default, help_text in flags:
    parser.add_argument(
      flag, type=parse, default=default, help=f'{help_text} (default: %(default)s)'
    )


def add_positive_ints(
  parser: argparse.ArgumentParser, flags: Iterable[tuple[str, int, str]]
) -> None:
  """Adds a whole-number flag >= 1 per (flag, default, help): counts, sizes and steps."""
  add_flags(parser, flags, positive_int)


def add_lr_grids(parser: argparse.ArgumentParser, grids: dict[str, Any]) -> None:
  """Adds ``--lrs-<optimizer>``: each optimizer's learning-rate grid (numbers > 0)."""
  flags = [
    (f'--lrs-{name}', grid, f'learning-rate grid for {name}') for name, grid in grids.items()
  ]
  add_flags(parser, flags, positive_floats)


def add_gan_flags(
  parser: argparse.ArgumentParser, *, steps: int, eval_every: int, batch_size: int, unit: str
) -> None:
  """The flags of both GAN scripts: iterations, evaluation interval, batch, beta1 values."""
  add_positive_ints(
    parser,
    [
      ('--steps', steps, 'training iterations (one D and one G step each)'),
      ('--eval-every', eval_every, 'iterations between evaluations (divides --steps)'),
      ('--batch-size', batch_size, f'real and fake {unit} per step'),
    ],
  )
  parser.add_argument(
    '--b1s',
    type=float_list(lambda b1: 0 <= b1 < 1, 'in [0, 1)'),
    default='0.5,0.9',
    help='beta1 values, each run for every optimizer (default: %(default)s)',
  )


def parse_gan_args(
  parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
  """``parser``'s arguments, with --eval-every checked to divide --steps."""
  args = parser.parse_args(argv)
  if args.steps % args.eval_every:
    raise SystemExit('--steps must be a multiple of --eval-every')
  return args


def positive_int(text: str) -> int:
  """An argparse ``type`` for a whole number >= 1 (counts, sizes, steps)."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
  return value


def _split(text: str) -> list[str]:
  """The non-empty, stripped items of 'a, b,c,' (a trailing comma is harmless)."""
  return [item.strip() for item in text.split(',') if item.strip()]


def comma_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
  """An argparse ``type`` for 'a,b,c', each item one of ``choices``."""
  allowed = list(choices)

  def parse(text: str) -> list[str]:
    items = _split(text)
    if not items:
      raise argparse.ArgumentTypeError('expected at least one name')
    unknown = [item for item in items if item not in allowed]
    if unknown:
      raise argparse.ArgumentTypeError(f'unknown {unknown}; choose from {",".join(allowed)}')
    return list(dict.fromkeys(items))  # Drops repeats, keeps the order.

  return parse


def float_list(valid: Callable[[float], bool], requirement: str) -> Callable[[str], list[float]]:
  """An argparse ``type`` for '1e-3,0.1': numbers for which ``valid`` holds.

  ``requirement`` says what ``valid`` checks, for the error message; argparse
  prefixes that message with the flag's name. Repeats are dropped, so a grid
  never trains the same value twice.
  """

  def parse(text: str) -> list[float]:
    items = _split(text)
    if not items:
      raise argparse.ArgumentTypeError('expected at least one number')
    try:
      values = [float(item) for item in items]
    except ValueError:
      raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from None
    bad = [value for value in values if not valid(value)]
    if bad:
      raise argparse.ArgumentTypeError(f'each value must be {requirement}, got {text!r}')
    return list(dict.fromkeys(values))

  return parse


# Learning-rate grids: every value a positive number.
positive_floats = float_list(lambda value: value > 0, '> 0')


# ----------------------------------------------------------------------------
# Seeding and progress.


def seed_everything(seed: int) -> np.random.Generator:
  """Seeds Python's and NumPy's global generators; returns a fresh Generator.

  JAX has no global state: derive its keys from ``seed`` explicitly (e.g.
  ``jax.random.key(seed)`` or ``flax.nnx.Rngs(seed)``).
  """
  random.seed(seed)
  np.random.seed(seed % 2**32)
  return np.random.default_rng(seed)


def progress_bar(total: int, unit: str, args: argparse.Namespace) -> tqdm:
  """A tqdm bar over ``total`` units, hidden by --no-progress."""
  return tqdm(total=total, unit=unit, disable=args.no_progress)


def run_timed(
  total: int, unit: str, args: argparse.Namespace, work: Callable[[tqdm], T]
) -> tuple[T, float]:
  """``work(bar)`` under a :func:`progress_bar`: its result, and the wall seconds it took."""
  start = time.perf_counter()
  with progress_bar(total, unit, args) as bar:
    result = work(bar)
  return result, time.perf_counter() - start


def belief_postfix(opt_state: Any) -> dict[str, str]:
  """The global belief statistics of ``opt_state`` for a progress bar; empty without them.

  Built with ``track_stats=True``, AdaBelief keeps them in its state (see
  :func:`adabelief_jax.belief_stats`): ``eps%`` is the share of elements where
  ``eps`` dominates the denominator (momentum-SGD-like steps), ``du/p`` the RMS
  of the step over the RMS of the parameters.
  """
  try:
    stats = adabelief_jax.belief_stats(opt_state)
  except ValueError:
    return {}
  return {
    'eps%': f'{100 * float(stats["global/eps_dominated"]):.0f}',
    'du/p': f'{float(stats["global/update_to_param_rms"]):.1e}',
  }


# ----------------------------------------------------------------------------
# Text: counts, summaries and tables.


def plural(count: int, noun: str) -> str:
  """'1 seed', '3 seeds': a count with its noun in the right number."""
  return f'{count} {noun}' if count == 1 else f'{count} {noun}s'


def mean_std(values: Iterable[float]) -> tuple[float, float]:
  """Mean and population standard deviation (0 for a single value)."""
  array = np.asarray(list(values), dtype=np.float64)
  return float(array.mean()), float(array.std())


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
  """'0.9726 ± 0.0010': a table cell for a mean over seeds and its spread."""
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


def table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A GitHub-flavoured Markdown table; floats are shown with 4 significant digits.

  Cells are written as given (no number parsing, which would reformat the
  strings the scripts already rounded), with '|' escaped so that labels such
  as '|x| + |y|' stay inside their cell.
  """

  def cell(value: Any) -> str:
    if isinstance(value, float):
      return f'{value:.4g}'
    return str(value).replace('|', '\\|')

  cells = [{key: cell(value) for key, value in row.items()} for row in rows]
  return tabulate(cells, headers='keys', tablefmt='github', disable_numparse=True)


def curves(summaries: Sequence[Mapping[str, Any]], key: str) -> dict[str, list]:
  """{optimizer: [each run's ``key`` curve]}, the series :func:`plot_curves` draws."""
  return {s['optimizer']: [run[key] for run in s['runs']] for s in summaries}


# ----------------------------------------------------------------------------
# Results files.


def to_jsonable(value: Any) -> Any:
  """NumPy/JAX scalars and arrays to Python; NaN and inf to None (valid JSON)."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):
    return to_jsonable(value.tolist())  # np.ndarray, np.generic, jax.Array
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def environment() -> dict[str, str]:
  """Versions worth recording next to results."""
  info = {'python': platform.python_version(), 'platform': platform.platform()}
  for name in ('jax', 'optax', 'flax', 'adabelief_jax', 'numpy'):
    module = sys.modules.get(name)
    if module is not None:
      info[name] = getattr(module, '__version__', '?')
  if 'jax' in sys.modules:
    devices = sys.modules['jax'].devices()
    info['device'] = f'{len(devices)} x {devices[0].device_kind}'
  return info


def report(
  args: argparse.Namespace,
  *,
  title: str,
  table: str,
  notes: str,
  plots: Sequence[str],
  findings: str = '',
  **fields: Any,
) -> dict[str, Any]:
  """Prints the table and findings, and writes both to --out with the data.

  ``results.md`` holds the title, the notes, the findings, links to the
  ``plots`` and the table; ``results.json`` the flags, the versions and
  ``fields`` (through :func:`to_jsonable`). Returns that JSON's content
  before conversion, so that callers keep their arrays.
  """
  print('\n' + '\n\n'.join(part for part in (table, findings) if part))
  data = {'config': vars(args), 'environment': environment(), **fields}
  images = '\n\n'.join(
    f'![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})' for p in plots
  )
  os.makedirs(args.out, exist_ok=True)
  md_path = os.path.join(args.out, 'results.md')
  json_path = os.path.join(args.out, 'results.json')
  parts = [f'# {title}', notes.strip(), findings, images, table]
  with open(md_path, 'w', encoding='utf-8') as f:
    f.write('\n\n'.join(p for p in parts if p) + '\n')
  with open(json_path, 'w', encoding='utf-8') as f:
    json.dump(to_jsonable(data), f, indent=2, allow_nan=False)
    f.write('\n')
  print(f'\nwrote {", ".join([md_path, json_path, *plots])}')
  return data


# ----------------------------------------------------------------------------
# Plots.


def figure(width: float, height: float, title: str, title_size: float = 10) -> Figure:
  """A ``width`` x ``height`` inch figure with ``title`` wrapped to its width.

  ``height`` should hold the panels and one line of title; each further line
  that a narrow figure (a small grid) needs is added to it, so the title is
  never cut off and never squeezes the panels. Uses matplotlib's object API
  with the Agg canvas (no pyplot, no display and no global backend switch),
  so it is safe in tests and on headless machines.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  # Matplotlib's default font averages under 0.6 em per character.
  lines = textwrap.wrap(title, max(16, int(width * 72 / (0.6 * title_size))))
  fig = Figure(
    figsize=(width, height + (len(lines) - 1) * 1.3 * title_size / 72), layout='constrained'
  )
  FigureCanvasAgg(fig)
  fig.suptitle('\n'.join(lines), fontsize=title_size)
  return fig


def save_figure(fig: Figure, path: str, dpi: int) -> str:
  """Saves ``fig`` as a PNG at ``path`` (creating its directory); returns ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  return path


def plot_curves(
  path: str,
  panels: Sequence[tuple[str, Mapping[str, Any]]],
  *,
  title: str,
  xlabel: str = 'epoch',
  log_y: Sequence[bool] | None = None,
) -> str:
  """One panel per (y label, {series name: runs}) pair, saved as a PNG.

  ``runs`` is an array of shape (num_runs, num_points) or (num_points,); the
  mean over runs is drawn as a line with a ±1 std band, against x = 1, 2, ...
  """
  fig = figure(5.0 * len(panels), 4.0, title, title_size=12)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for i, (ax, (ylabel, series)) in enumerate(zip(axes, panels)):
    for name, runs in series.items():
      runs = np.atleast_2d(np.asarray(runs, dtype=np.float64))
      x = np.arange(1, runs.shape[1] + 1)
      mean, std = runs.mean(axis=0), runs.std(axis=0)
      (line,) = ax.plot(x, mean, label=name)
      if runs.shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    if log_y is not None and log_y[i]:
      ax.set_yscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
  return save_figure(fig, path, dpi=120)
