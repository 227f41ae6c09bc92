"""Random bits from a counter-based hash, and stochastic rounding to narrow floats.

A moment stored in fewer bits than it is computed in is rounded every step.
Rounding to nearest is biased where it matters most: ``b2 * s`` with
``b2 = 0.999`` rounds back to ``s`` in bfloat16, so a stored ``s`` stops
decaying. Stochastic rounding picks the representable neighbour above or
below with the probabilities that make it exact in expectation, so the decay
goes on, on average, at any precision.

Its bits are a pure function of (seed, step, leaf, stream, global element
index): runs are bit-reproducible, no PRNG key is threaded through the
optimizer state, and an array partitioned over devices (ZeRO, multi-host)
draws the same bits as on one device, because the index is the element's
position in the whole array. The hash is computed inside the update's fused
loop (its cost against ``jax.random.bits``: benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # Odd: multiplying by it permutes the 32-bit integers.


def _mix(x: jax.Array) -> jax.Array:
  """A 32-bit integer finalizer (xor-shift-multiply, 'lowbias32' constants).

  A bijection of the uint32s in which every input bit flips each output bit
  with probability about 1/2.
  """
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _mix_int(x: int) -> int:
  """:func:`_mix` on a Python int (for keys known when tracing)."""
  x &= _MASK32
  x ^= x >> 16
  x = (x * 0x7FEB352D) & _MASK32
  x ^= x >> 15
  x = (x * 0x846CA68B) & _MASK32
  return x ^ (x >> 16)


def element_index(shape: tuple[int, ...]) -> jax.Array:
  """Each element's row-major position in an array of ``shape``, as uint32.

  Built from per-dimension iotas, so that under SPMD partitioning every
  device computes the global positions of its own shard (wrapping modulo
  2^32 beyond 4G elements).
  """
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(len(shape))):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, dim)
    index = index + iota * np.uint32(stride & _MASK32)
    stride *= shape[dim]
  return index


def random_bits(
  shape: tuple[int, ...], seed: Any, count: jax.Array, leaf: int, stream: int
) -> jax.Array:
  """32 pseudo-random bits per element of ``shape``, as uint32.

  A pure function of ``seed`` (an int, or a traced integer under
  ``optax.inject_hyperparams``), the step ``count``, the leaf's position in
  the tree, a ``stream`` number (one per rounded array of the leaf) and the
  element's global index. The key is mixed from scalars once per leaf; each
  element costs one multiply-add and one finalizer.
  """
  where = np.uint32(_mix_int(_mix_int(leaf) + stream * _GOLDEN))
  # A Python int up to 2^32 - 1 is a uint32 (jnp.asarray would make it an int32 and overflow).
  seed = jnp.asarray(np.uint32(seed) if isinstance(seed, int) else seed).astype(jnp.uint32)
  key = _mix(_mix(seed) + where)
  key = _mix(key ^ count.astype(jnp.uint32) * np.uint32(0xC2B2AE35))
  return _mix(element_index(shape) * np.uint32(_GOLDEN) + key)


def random_bits16(
  shape: tuple[int, ...], seed: Any, count: jax.Array, leaf: int, streams: int
) -> list[jax.Array]:
  """``2 * streams`` arrays of 16 random bits per element of ``shape``.

  Each 32-bit draw of :func:`random_bits` serves two rounded arrays: its low
  and its high 16 bits, in that order, stream after stream.
  """
  out = []
  for stream in range(streams):
    bits = random_bits(shape, seed, count, leaf, stream)
    out += [bits & np.uint32(0xFFFF), bits >> 16]
  return out


def uniform(bits16: jax.Array) -> jax.Array:
  """A float32 in (0, 1) from 16 random bits: the midpoints of 2^16 equal steps."""
  return (bits16.astype(jnp.float32) + 0.5) * np.float32(2.0**-16)


def _round_bfloat16(x: jax.Array, bits16: jax.Array) -> jax.Array:
  """float32 -> bfloat16, up with probability (x - lo) / (hi - lo).

  bfloat16 is float32 with the low 16 bits cut: adding 16 random bits below
  the cut and truncating carries into the kept bits with exactly that
  probability (on the magnitude; the sign bit is untouched).
  """
  pattern = jax.lax.bitcast_convert_type(x, jnp.uint32)
  pattern = (pattern + bits16) & np.uint32(0xFFFF0000)
  return jax.lax.bitcast_convert_type(pattern, jnp.float32).astype(jnp.bfloat16)


def _round_narrow(x: jax.Array, dtype: jnp.dtype, bits16: jax.Array) -> jax.Array:
  """``x`` to a narrower float ``dtype``, stochastically: any format, subnormals too."""
  nearest = x.astype(dtype)
  wide = nearest.astype(x.dtype)
  # The neighbour toward zero, then the one away from zero.
  low = jnp.where(
    jnp.abs(wide) > jnp.abs(x), jnp.nextafter(nearest, jnp.zeros_like(nearest)), nearest
  )
  high = jnp.nextafter(low, jnp.where(x < 0, -jnp.inf, jnp.inf).astype(dtype))
  low_wide, high_wide = low.astype(x.dtype), high.astype(x.dtype)
  up = uniform(bits16) * jnp.abs(high_wide - low_wide) < jnp.abs(x - low_wide)
  exact = wide == x
  return jnp.where(exact | ~jnp.isfinite(x), nearest, jnp.where(up, high, low))


def round_to(x: jax.Array, dtype: jnp.dtype, bits16: jax.Array | None) -> jax.Array:
  """``x`` as ``dtype``: to nearest without ``bits16``, stochastically with them."""
  dtype = jnp.dtype(dtype)
  if bits16 is None or not is_narrower(dtype, x.dtype):
    return x.astype(dtype)
  if dtype == jnp.bfloat16 and x.dtype == jnp.float32:
    return _round_bfloat16(x, bits16)
  return _round_narrow(x, dtype, bits16)


def is_narrower(dtype: jnp.dtype, than: jnp.dtype) -> bool:
  """Whether ``dtype`` has fewer mantissa bits than ``than`` (so storing rounds)."""
  return bool(jnp.finfo(dtype).nmant < jnp.finfo(than).nmant)
