"""How a moment is stored: a float array of its state dtype, or 8-bit blocks.

The one interface between the optimizer's arithmetic and its storage. A tree
of moments is turned into one stored moment per parameter (:func:`leaves`)
and back (:func:`tree`); a stored moment is read in the compute dtype
(:func:`load`) and written (:func:`store`), each elementwise, so that a leaf's
whole update stays one fused pass. :func:`store` returns the value both as
stored and as the value to go on with: an optimizer whose step uses the
stored value depends on the new state only, which lets XLA update the state
in place.

Storing into a narrower format than the compute dtype rounds, stochastically
when given random bits (:func:`random_bits16`); storing 8-bit blocks also
takes a bound of each block's largest magnitude (:func:`block_max` and
:func:`block_bound` help to compute one). Nothing here knows which optimizer
stores its moments so.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adabelief_jax import _quantize, _rounding
from adabelief_jax._quantize import POSITIVE, SIGNED, QuantizedMoment, block_max
from adabelief_jax._quantize import zeros as quantized_zeros
from adabelief_jax._rounding import random_bits16

Moment = Any  # One parameter's stored moment: a jax.Array, or _quantize.Blocks.

__all__ = [
  'POSITIVE',
  'SIGNED',
  'Moment',
  'QuantizedMoment',
  'block_bound',
  'block_length',
  'block_max',
  'describe',
  'leaves',
  'load',
  'made_as',
  'quantized_zeros',
  'random_bits16',
  'rounds',
  'store',
  'tree',
]


def leaves(moment: Any, treedef: Any) -> list[Moment]:
  """A moment tree's per-parameter stored moments, in ``treedef``'s order."""
  if isinstance(moment, QuantizedMoment):
    return _quantize.leaves(moment, treedef)
  return list(treedef.flatten_up_to(moment))


def tree(like: Any, treedef: Any, stored: list[Moment]) -> Any:
  """The moment tree of new per-parameter ``stored`` moments, made like ``like``."""
  if isinstance(like, QuantizedMoment):
    return _quantize.moment_of(like, treedef, stored)
  return jax.tree.unflatten(treedef, stored)


def load(moment: Moment, dtype: jnp.dtype) -> jax.Array:
  """The stored moment's values in ``dtype``."""
  if isinstance(moment, _quantize.Blocks):
    return _quantize.decode(moment).astype(dtype)
  return moment.astype(dtype)


def store(
  x: jax.Array,
  like: Moment,
  bits16: jax.Array | None,
  bound: jax.Array | None,
  kept: jax.Array | None = None,
) -> tuple[Moment, jax.Array]:
  """``x`` rounded to the storage of ``like``: (as stored, as used, in x's dtype).

  ``bits16`` (16 random bits per element) rounds stochastically; ``None``
  rounds to nearest. 8-bit blocks take ``bound``, a bound of each block's
  largest ``|x|`` (shaped like their scales), as their new scales, except
  the blocks where ``kept`` is true, which keep their stored values but for
  non-finite elements of ``x``; float storage ignores both.
  """
  if isinstance(like, _quantize.Blocks):
    if bound is None:
      raise ValueError('storing 8-bit blocks needs a bound of their magnitudes')
    # Codes are float32 bit patterns: a float64 value is encoded from float32.
    f32 = jnp.float32
    stored = _quantize.encode(x.astype(f32), like, bound.astype(f32), bits16, kept)
    return stored, _quantize.decode(stored).astype(x.dtype)
  stored_array = _rounding.round_to(x, like.dtype, bits16)
  return stored_array, stored_array.astype(x.dtype)


def rounds(moment: Moment, compute: jnp.dtype) -> bool:
  """Whether storing a ``compute``-dtype value into ``moment`` loses precision."""
  if isinstance(moment, _quantize.Blocks):
    return True
  return _rounding.is_narrower(jnp.finfo(moment.dtype).dtype, jnp.finfo(compute).dtype)


def block_length(moment: Moment) -> int | None:
  """The block length of a moment in 8-bit blocks; ``None`` for a float one."""
  return moment.block if isinstance(moment, _quantize.Blocks) else None


def block_bound(moment: Moment, block: int) -> jax.Array:
  """A bound of ``|values|`` over each ``block`` of the last axis: 8-bit blocks' scales, or
  the block maxima of a float moment (the scales bound their values by construction)."""
  if isinstance(moment, _quantize.Blocks):
    return moment.scales
  return block_max(jnp.abs(moment), block)


def made_as(moment: Any, requested: jnp.dtype | None) -> bool:
  """Whether ``moment`` (a tree) is stored as ``requested`` makes it: int8, 8-bit blocks
  whose codes are 8-bit integers; a float dtype, arrays of it; ``None`` (the default),
  float arrays of 32 bits or more (the default stores 16-bit parameters' moments in
  float32)."""
  if requested == jnp.int8:
    return isinstance(moment, QuantizedMoment) and _quantize.codes_intact(moment)
  if isinstance(moment, QuantizedMoment):
    return False
  if requested is None:
    return all(jnp.finfo(leaf.dtype).bits >= 32 for leaf in jax.tree.leaves(moment))
  return all(leaf.dtype == requested for leaf in jax.tree.leaves(moment))


def describe(moment: Any) -> str:
  """What a moment tree is stored as, for error messages."""
  if isinstance(moment, QuantizedMoment):
    if not _quantize.codes_intact(moment):
      codes = sorted({str(leaf.dtype) for leaf in jax.tree.leaves(moment.codes)})
      return (
        f'8-bit blocks whose codes are {", ".join(codes)} (cast by a tree map, or made by a '
        'version that stored leaves of rows shorter than 8 in 8 bits: build it anew)'
      )
    return '8-bit blocks (int8)'
  dtypes = sorted({str(leaf.dtype) for leaf in jax.tree.leaves(moment)})
  return ', '.join(dtypes) or 'no leaves'
