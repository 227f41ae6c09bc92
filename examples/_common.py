"""Small helpers shared by the example scripts: flags, seeding, results, plots.

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------
# Flags.


def add_common_args(
  parser: argparse.ArgumentParser,
  *,
  epochs: int,
  seeds: int = 3,
  batch_size: int = 32,
  out: str,
  optimizers: Sequence[str] = (),
) -> argparse.ArgumentParser:
  """Adds --epochs, --seeds, --batch-size, --out, --no-progress [--optimizers]."""
  parser.add_argument(
    '--epochs', type=int, default=epochs, help='training epochs per run (default: %(default)s)'
  )
  parser.add_argument(
    '--seeds',
    type=int,
    default=seeds,
    help='runs per optimizer, with seeds 0..N-1 (default: %(default)s)',
  )
  parser.add_argument(
    '--batch-size', type=int, default=batch_size, help='minibatch size (default: %(default)s)'
  )
  parser.add_argument(
    '--out',
    default=out,
    help='directory for results.md, results.json and the plot (default: %(default)s)',
  )
  parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
  if optimizers:
    parser.add_argument(
      '--optimizers',
      type=comma_list(optimizers),
      default=list(optimizers),
      help='comma-separated subset of: ' + ','.join(optimizers) + ' (default: all)',
    )
  return parser


def comma_list(choices: Iterable[str] | None = None):
  """An argparse ``type`` for 'a,b,c'; checks the items against ``choices``."""
  allowed = list(choices) if choices is not None else None

  def parse(text: str) -> list[str]:
    items = [item.strip() for item in text.split(',') if item.strip()]
    if not items:
      raise argparse.ArgumentTypeError('expected at least one name')
    if allowed is not None:
      unknown = [item for item in items if item not in allowed]
      if unknown:
        raise argparse.ArgumentTypeError(f'unknown {unknown}; choose from {",".join(allowed)}')
    return list(dict.fromkeys(items))  # Drops repeats, keeps the order.

  return parse


def check_positive(args: argparse.Namespace, *names: str) -> None:
  for name in names:
    if getattr(args, name) < 1:
      raise SystemExit(f'--{name.replace("_", "-")} must be >= 1')


# ----------------------------------------------------------------------------
# Seeding.


def seed_everything(seed: int) -> np.random.Generator:
  """Seeds Python's and NumPy's global generators; returns a fresh Generator.

  JAX has no global state: derive its keys from ``seed`` explicitly (e.g.
  ``jax.random.key(seed)`` or ``flax.nnx.Rngs(seed)``).
  """
  random.seed(seed)
  np.random.seed(seed % 2**32)
  return np.random.default_rng(seed)


# ----------------------------------------------------------------------------
# Summaries and results files.


def mean_std(values: Iterable[float]) -> tuple[float, float]:
  """Mean and population standard deviation (0 for a single value)."""
  array = np.asarray(list(values), dtype=np.float64)
  return float(array.mean()), float(array.std())


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
  """A GitHub-flavoured Markdown table; floats are shown with 4 significant digits."""
  if columns is None:
    columns = list(dict.fromkeys(key for row in rows for key in row))

  def cell(value: Any) -> str:
    if isinstance(value, float):
      return f'{value:.4g}'
    return str(value).replace('|', '\\|')

  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
  lines += ['| ' + ' | '.join(cell(row.get(c, '')) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines)


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


def write_results(
  out_dir: str, *, title: str, table: str, data: Mapping[str, Any], notes: str = ''
) -> tuple[str, str]:
  """Writes ``results.md`` (title, notes, table) and ``results.json`` (data).

  Returns the two paths. ``data`` goes through :func:`to_jsonable`.
  """
  os.makedirs(out_dir, exist_ok=True)
  md_path = os.path.join(out_dir, 'results.md')
  json_path = os.path.join(out_dir, 'results.json')
  parts = [f'# {title}', notes.strip(), table]
  with open(md_path, 'w', encoding='utf-8') as f:
    f.write('\n\n'.join(p for p in parts if p) + '\n')
  with open(json_path, 'w', encoding='utf-8') as f:
    json.dump(to_jsonable(data), f, indent=2, allow_nan=False)
    f.write('\n')
  return md_path, json_path


# ----------------------------------------------------------------------------
# Plots.


def plot_curves(
  path: str,
  panels: Sequence[tuple[str, Mapping[str, np.ndarray]]],
  *,
  xlabel: str = 'epoch',
  log_y: Sequence[bool] | None = None,
  title: str | None = None,
) -> str:
  """One panel per (y label, {series name: runs}) pair, saved as a PNG.

  ``runs`` is an array of shape (num_runs, num_points) or (num_points,); the
  mean over runs is drawn as a line with a ±1 std band, against x = 1, 2, ...

  Uses matplotlib's object API with the Agg canvas (no pyplot, no display and
  no global backend switch), so it is safe in tests and on headless machines.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5.0 * len(panels), 4.0), layout='constrained')
  FigureCanvasAgg(fig)
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
  if title:
    fig.suptitle(title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  return path
