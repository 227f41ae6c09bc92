"""Reports of the benchmarks: Markdown tables, what was measured on, JSON files."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tabulate

# A column of a row table: the row's key, or a function of the row.
Column = str | Callable[[dict[str, Any]], Any]


def _three_digits(value: Any) -> Any:
  """Floats rounded to 3 significant digits (38.9, 0.0123, 1600, 1.08e+09), the rest as is."""
  if isinstance(value, (float, np.floating)) and math.isfinite(value):
    return float(f'{value:.3g}')
  return value


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A GitHub-Markdown table: floats to 3 significant digits, None as '-'."""
  body = [[_three_digits(v) for v in row] for row in rows]
  return tabulate.tabulate(body, list(headers), tablefmt='github', missingval='-')


def rows_table(rows: Iterable[dict[str, Any]], columns: Mapping[str, Column]) -> str:
  """A table of dict rows, one column per ``header: key or function of the row``."""
  get = lambda row, column: column(row) if callable(column) else row[column]
  return table(list(columns), [[get(row, c) for c in columns.values()] for row in rows])


def _jax_report() -> dict[str, Any]:
  """``jax.print_environment_info``: the report itself, and its ``key: value`` lines as fields.

  The fields (jax, jaxlib, numpy, python, device info, process_count,
  platform) keep the report searchable; the text keeps what follows them
  (nvidia-smi on a GPU).
  """
  text = jax.print_environment_info(return_string=True)
  fields = {}
  for line in text.splitlines():
    match = re.fullmatch(r'(\w[\w ]*):\s+(.*)', line)
    if not match:
      break
    fields[match.group(1).replace(' ', '_')] = match.group(2).strip().strip('"')
  return {**fields, 'jax_environment': text}


def _version(dist: str) -> str | None:
  """The installed version of ``dist``, None if absent; importing it would cost seconds."""
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _cpu_model() -> str | None:
  """The CPU's model name (Linux), else what ``platform`` knows."""
  try:
    with open('/proc/cpuinfo') as f:
      models = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
  except OSError:
    models = []
  return models[0] if models else platform.processor() or None


def machine_info() -> dict[str, Any]:
  """What the numbers were measured on: jax's report, plus what it leaves out.

  Jax reports its versions, devices and platform; the CPU, its cores and
  load, the memory, the other packages compared and torch's threads are
  added here.
  """
  torch = sys.modules.get('torch')
  return {
    **_jax_report(),
    'cpu_model': _cpu_model(),
    'nproc': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
    'cpu_count': os.cpu_count(),
    'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
    'mem_total_gb': os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30,
    'optax': _version('optax'),
    'adabelief_jax': _version('adabelief-jax'),
    'torch': _version('torch'),
    'adabelief_pytorch': _version('adabelief-pytorch'),
    'torch_threads': torch.get_num_threads() if torch else None,
    'xla_flags': os.environ.get('XLA_FLAGS'),
  }


def machine_line(info: dict[str, Any]) -> str:
  """The one-line summary of :func:`machine_info` printed under the tables."""
  load = info.get('load_average')
  return (
    f'{info["cpu_model"]}, {info["nproc"]} cores, {info.get("device_info")}, '
    f'jax {info["jax"]}, optax {info["optax"]}'
    + (f', torch {info["torch"]}' if info.get('torch') else '')
    + (f', load {load[0]:.2f}' if load else '')
  )


def write_json(path: str | os.PathLike[str], data: Any) -> None:
  """``data`` as indented JSON, making the folder; what JSON lacks is written as str."""
  directory = os.path.dirname(os.fspath(path))
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(data, f, indent=1, default=str)
    f.write('\n')


def emit(result: dict[str, Any], json_path: str | None) -> None:
  """Prints ``result['table']``, the machine line and the skipped candidates; writes the JSON."""
  print()
  print(result['table'])
  print()
  print(f'Machine: {machine_line(result["machine"])}.')
  for name, reason in result.get('skipped', {}).items():
    print(f'Skipped {name}: {reason}')
  if json_path:
    write_json(json_path, result)
    print(f'Wrote {json_path}')
