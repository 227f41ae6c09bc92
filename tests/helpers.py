"""Shared test utilities: small pytrees, gradient sequences, jit switching, example runs."""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def maybe_jit(fn: Callable[..., Any], jit: bool) -> Callable[..., Any]:
  return jax.jit(fn) if jit else fn


def tree_of(dtype: Any, seed: int = 0) -> dict[str, Any]:
  """A small parameter tree with a matrix, a vector and a scalar leaf."""
  rng = np.random.default_rng(seed)
  return {
    'dense': {
      'kernel': jnp.asarray(rng.normal(size=(7, 5)), dtype),
      'bias': jnp.asarray(rng.normal(size=(5,)), dtype),
    },
    'scale': jnp.asarray(rng.normal(), dtype),
  }


def random_grads(params: Any, steps: int, seed: int, scale: float = 1.0) -> list[Any]:
  """``steps`` gradient trees like ``params``, with a drifting mean and noise."""
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(params)
  drift = [rng.normal(size=np.shape(p)) for p in leaves]
  out = []
  for step in range(steps):
    out.append(
      treedef.unflatten(
        [
          jnp.asarray(
            scale * (d * np.cos(step / 10) + rng.normal(size=np.shape(p))), jnp.asarray(p).dtype
          )
          for p, d in zip(leaves, drift)
        ]
      )
    )
  return out


def relative_error(got: Any, want: Any) -> float:
  """max |got - want| / max |want| over all leaves of two trees (or arrays).

  The scale is the whole update's: a leaf whose momentum happens to cross zero
  has a tiny update whose float32 rounding error is set by the gradients' size,
  not its own.
  """

  def flat(tree: Any, complex_: bool) -> np.ndarray:
    leaves = [np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)]
    return np.concatenate(leaves).astype(np.complex128 if complex_ else np.float64)

  want_flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(want)])
  is_complex = np.iscomplexobj(want_flat)
  got_flat = flat(got, is_complex)
  return float(np.max(np.abs(got_flat - want_flat)) / max(np.max(np.abs(want_flat)), 1e-300))


def leaves64(tree: Any) -> list[np.ndarray]:
  """The leaves of ``tree`` as float64 (complex128) NumPy arrays, for the oracle."""
  return [
    np.asarray(x).astype(np.complex128 if np.iscomplexobj(x) else np.float64)
    for x in jax.tree.leaves(tree)
  ]


def json_numbers(tree: Any):
  """Every number in a JSON tree (bools excluded)."""
  if isinstance(tree, dict):
    for value in tree.values():
      yield from json_numbers(value)
  elif isinstance(tree, list):
    for value in tree:
      yield from json_numbers(value)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


def markdown_tables(text: str) -> list[list[list[str]]]:
  """The GitHub-flavoured Markdown tables in ``text``, in order.

  Each table is a list of rows, the header first, each row a list of its
  stripped cells ('\\|' inside a cell is a '|'). Every row must have as many
  cells as the header, and the line under the header must be its separator.
  """
  tables: list[list[list[str]]] = []
  lines = [line.strip() for line in text.splitlines()]
  i = 0
  while i < len(lines):
    if not lines[i].startswith('|'):
      i += 1
      continue
    block = []
    while i < len(lines) and lines[i].startswith('|'):
      block.append(lines[i])
      i += 1
    header, separator, *body = [_row_cells(line) for line in block]
    assert len(separator) == len(header), block
    assert all(re.fullmatch(r':?-+:?', cell) for cell in separator), block
    assert body and all(len(row) == len(header) for row in body), block
    tables.append([header, *body])
  return tables


def _row_cells(line: str) -> list[str]:
  cells = re.split(r'(?<!\\)\|', line.strip()[1:-1])
  return [cell.strip().replace('\\|', '|') for cell in cells]


def mean_std(cell: str) -> tuple[float, float]:
  """The two numbers of a '0.9726 ± 0.0010' table cell."""
  mean, std = cell.split('±')
  return float(mean), float(std)


PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def run_example(module: Any, out: pathlib.Path, flags: str) -> Any:
  """``module.main`` of an example with ``flags`` (split on white space), into ``out``, quietly."""
  return module.main([*flags.split(), '--out', str(out), '--no-progress'])


def check_example_outputs(out: pathlib.Path, pngs: list[str]) -> dict:
  """Checks the files an example wrote into ``out``; returns the content of results.json.

  results.md, results.json and each of ``pngs`` must be there and not empty,
  the ``pngs`` real PNGs, and results.json's results finite numbers.
  """
  for name in ['results.md', 'results.json', *pngs]:
    path = out / name
    assert path.is_file() and path.stat().st_size > 0, name
  for name in pngs:
    assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
  data = json.loads((out / 'results.json').read_text())
  numbers = list(json_numbers(data['results']))
  assert numbers and all(math.isfinite(x) for x in numbers)
  return data
