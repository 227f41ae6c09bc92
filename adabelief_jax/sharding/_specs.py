"""PartitionSpec arithmetic: where a moment goes, and what a shard weighs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


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
  shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh, axis: str
) -> tuple[PartitionSpec, str]:
  """``spec`` plus ``axis`` on the largest dimension it divides (ZeRO-1).

  Dimensions already sharded over other axes count by their shard size. A
  spec already sharded along ``axis`` (FSDP-style params), or an axis of size
  one, leaves ``spec`` as it is. Returns the spec and, when no dimension can
  take the axis, a note saying why (else ``''``).
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
    if n % (factor * size) == 0 and (best is None or n // factor > best[0]):
      best = (n // factor, dim)
  if best is not None:
    return _with_axis(entries, best[1], axis), ''
  if not shape:
    return spec, f'replicated along {axis!r}: a scalar'
  sharded = ' times its existing sharding' if any(axes_of(e) for e in entries) else ''
  return spec, (
    f'replicated along {axis!r}: no dimension of {shape} is divisible by {size}{sharded}'
  )


def shard_bytes(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding) -> int:
  """Bytes of the shard of a ``shape`` array that each device holds."""
  return math.prod(sharding.shard_shape(tuple(shape))) * np.dtype(dtype).itemsize


def spec_str(spec: PartitionSpec) -> str:
  """``P('data', None)``: a PartitionSpec as it would be written."""
  return 'P(' + ', '.join(repr(e) for e in spec) + ')'
