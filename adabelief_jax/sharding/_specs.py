"""PartitionSpec arithmetic: where a moment goes, and what a shard weighs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec


def axes_of(entry: Any) -> tuple[str, ...]:
  """The mesh axes one PartitionSpec entry names (``None``: none)."""
  if entry is None or entry is PartitionSpec.UNCONSTRAINED:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _entries(spec: PartitionSpec, ndim: int) -> list[Any]:
  """``spec``'s entries, padded with ``None`` to one per dimension."""
  return list(spec) + [None] * (ndim - len(spec))


def _with_axis(entries: list[Any], dim: int, axis: str) -> PartitionSpec:
  """``entries`` with ``axis`` added to dimension ``dim``, trailing Nones dropped."""
  entries = list(entries)
  axes = axes_of(entries[dim]) + (axis,)
  entries[dim] = axes[0] if len(axes) == 1 else axes
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries)


def zero_spec(
  shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh | AbstractMesh, axis: str, block: int = 1
) -> tuple[PartitionSpec, str]:
  """``spec`` plus ``axis`` on the largest dimension it divides (ZeRO-1).

  Dimensions already sharded over other axes count by their shard size. A
  spec already sharded along ``axis`` (FSDP-style params), or an axis of size
  one, leaves ``spec`` as it is. The last dimension counts only if every
  shard of it holds whole ``block``s (8-bit state's blocks). Returns the spec
  and, when no dimension can take the axis, a note saying why (else ``''``).
  """
  entries = _entries(spec, len(shape))
  size = mesh.shape[axis]
  if size == 1 or any(axis in axes_of(e) for e in entries):
    return spec, ''
  best: tuple[int, int] | None = None  # (shard length, dimension)
  for dim, (n, entry) in enumerate(zip(shape, entries)):
    if entry is PartitionSpec.UNCONSTRAINED:
      continue
    factor = math.prod(mesh.shape[a] for a in axes_of(entry))
    unit = block if dim == len(shape) - 1 else 1
    if n % (factor * size * unit) == 0 and (best is None or n // factor > best[0]):
      best = (n // factor, dim)
  if best is not None:
    return _with_axis(entries, best[1], axis), ''
  if not shape:
    return spec, f'replicated along {axis!r}: a scalar'
  sharded = ' times its existing sharding' if any(axes_of(e) for e in entries) else ''
  blocks = f' (the last counted in whole blocks of {block})' if block > 1 else ''
  return spec, (
    f'replicated along {axis!r}: no dimension of {shape} is divisible by {size}{sharded}{blocks}'
  )


def fit_spec(
  spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh | AbstractMesh
) -> PartitionSpec:
  """``spec`` for an array of ``shape``, without the entries that do not divide it.

  The scales of 8-bit state follow their codes' spec, except on the last
  dimension (blocks), where the codes' sharding may not divide their count.
  """
  entries = [
    e if n % math.prod(mesh.shape[a] for a in axes_of(e)) == 0 else None
    for n, e in zip(shape, _entries(spec, len(shape)))
  ]
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries)


def shard_bytes(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding) -> int:
  """Bytes of the shard of a ``shape`` array that each device holds."""
  return math.prod(sharding.shard_shape(tuple(shape))) * np.dtype(dtype).itemsize


def spec_str(spec: PartitionSpec) -> str:
  """``P('data', None)``: a PartitionSpec as it would be written."""
  return 'P(' + ', '.join(repr(e) for e in spec) + ')'
