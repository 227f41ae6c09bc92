"""How a moment is stored: a float array of its state dtype, or 8-bit blocks.

Three operations, each elementwise, so that a leaf's whole update stays one
fused pass: :func:`zeros` makes the initial moment, :func:`load` reads it in
the compute dtype, and :func:`store` rounds a new value to the storage and
returns it both as stored and as the value the step goes on with (the step
uses the rounded moment, so that it depends on the new state only and XLA
can update the state in place).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adabelief_jax import _quantize, _rounding

Moment = Any  # A jax.Array, or a _quantize.QuantizedArray.


def zeros(param: Any, dtype: jnp.dtype, kind: str, block_size: Any) -> Moment:
  """The zero moment of ``param`` (an array or ShapeDtypeStruct) in ``dtype``.

  ``dtype`` int8 asks for 8-bit blocks (``kind`` 'signed' for ``m``,
  'nonnegative' for ``s``); leaves too small for them stay float32.
  """
  if dtype == jnp.int8:
    if _quantize.is_quantized(param.shape):
      return _quantize.zeros(param, kind, block_size)
    dtype = jnp.dtype(jnp.float32)
  return jnp.zeros_like(param, dtype)


def load(moment: Moment, dtype: jnp.dtype) -> jax.Array:
  """The stored moment's values in ``dtype``."""
  if isinstance(moment, _quantize.QuantizedArray):
    return _quantize.decode(moment).astype(dtype)
  return moment.astype(dtype)


def store(
  x: jax.Array, like: Moment, bits16: jax.Array | None, scales: jax.Array | None = None
) -> tuple[Moment, jax.Array]:
  """``x`` rounded to the storage of ``like``: (as stored, as used, in x's dtype).

  ``bits16`` (16 random bits per element) rounds stochastically; ``None``
  rounds to nearest. An 8-bit moment takes its new block ``scales`` (bounds of
  ``|x|``, see :func:`_quantize.scale_bounds`).
  """
  if isinstance(like, _quantize.QuantizedArray):
    if scales is None:
      raise ValueError('storing an 8-bit moment needs its new block scales')
    stored = _quantize.encode(x, like, scales, bits16)
    return stored, _quantize.decode(stored).astype(x.dtype)
  stored_array = _rounding.round_to(x, like.dtype, bits16)
  return stored_array, stored_array.astype(x.dtype)


def rounds(moment: Moment, compute: jnp.dtype) -> bool:
  """Whether storing a ``compute``-dtype value into ``moment`` loses precision."""
  if isinstance(moment, _quantize.QuantizedArray):
    return True
  return bool(_rounding.is_narrower(jnp.finfo(moment.dtype).dtype, jnp.finfo(compute).dtype))
