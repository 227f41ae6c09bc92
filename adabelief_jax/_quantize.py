"""8-bit block-wise storage of an array: tiny floats relative to a scale per block.

A quantized moment keeps, for an array of shape ``(..., n)``, 8-bit codes of
the same shape and one float32 scale per block of ``block_size`` consecutive
elements along the last axis (``shape[:-1] + (ceil(n / block_size),)``; the
last block of a row may be shorter). Blocks never cross rows, so an array
sharded on its other axes keeps whole blocks on every device.

A code stands for a magnitude ``v`` in [0, 1], times its block's scale, in a
float format with few mantissa bits whose largest value is 1: a fixed share
of codes per power of two, so resolution is relative and the same at every
size. Encoding and decoding are integer operations on float32 bit patterns,
which XLA fuses into the update. Two formats:

* :data:`SIGNED` (int8 codes -127..127: a sign and 7 bits): 3 mantissa bits,
  magnitudes from 1.9e-5 to 1 in steps of 1/16 to 1/8, and 0; for values of
  either sign; code -128 marks a non-finite value;
* :data:`POSITIVE` (uint8 codes 1..255): 2 mantissa bits, from 8e-20 to 1, in
  steps of 1/8 to 1/4, for non-negative values that span many decades within
  a block and must never be stored as zero: values below the smallest code
  take it (code 0 is only the initial zero state).

Rounding is in the value domain: between the two codes whose values bracket
``v``, the upper one with probability ``(v - lo) / (hi - lo)`` (stochastic,
unbiased: random bits added below the kept mantissa bits, then cut) or the
nearer one (ties up).

Storing takes the new block scales from the caller: any bound of the blocks'
largest magnitudes will do (a bound that the caller can compute without a
reduction over the array being stored saves a pass over it).

This module knows nothing of the optimizer that stores its moments so.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Leaves with fewer elements stay float32: their scales would cost more than
# their codes save, and they are a negligible share of a large model's state.
MIN_ELEMENTS = 4096
# So do leaves whose last axis is shorter: with one float32 scale per block of
# fewer elements, a (4096, 1) leaf would take 5 bytes per element. From 8, a
# leaf takes at most 1.5 bytes per element.
MIN_BLOCK = 8


class Format(NamedTuple):
  """A code format: its dtype, largest code, mantissa bits and lowest code of a value > 0."""

  dtype: Any
  top: int
  mantissa_bits: int
  lowest: int


SIGNED = Format(jnp.dtype(jnp.int8), 127, 3, 0)
POSITIVE = Format(jnp.dtype(jnp.uint8), 255, 2, 1)
# The SIGNED code that no value takes: a non-finite value, decoded as NaN, so that
# a NaN or infinite first moment stays visible in the step, as in float32. A
# POSITIVE moment (``s``) has no spare code: a non-finite one takes the top
# code, and the step shows the non-finite first moment that caused it.
NOT_FINITE = -128


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=['codes', 'scales'], meta_fields=['block_size']
)
@dataclasses.dataclass(frozen=True)
class QuantizedMoment:
  """A moment in 8-bit blocks: a tree of codes and a tree of block scales.

  Both trees are structured like the parameters, with an array at each
  parameter's place, as frameworks that wrap each parameter's state (Flax
  NNX's ``nnx.Optimizer``) expect.

  Attributes:
    codes: int8 (``m``) or uint8 (``s``) codes shaped like each parameter;
      float32 values for leaves too small for blocks.
    scales: float32 block scales, ``shape[:-1] + (blocks,)``; a float32
      scalar (0, unused) for float32 leaves: an array at every place, which
      checkpointers and sharding tools handle (orbax refuses empty arrays).
    block_size: the requested elements per block (static); a leaf's block is
      that or its last axis, if shorter.
  """

  codes: Any
  scales: Any
  block_size: int


class Blocks(NamedTuple):
  """One leaf of a :class:`QuantizedMoment` in 8-bit blocks, while the update runs."""

  codes: jax.Array
  scales: jax.Array
  block: int

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype the leaf decodes to."""
    return jnp.dtype(jnp.float32)

  @property
  def format(self) -> Format:
    return SIGNED if self.codes.dtype == SIGNED.dtype else POSITIVE


def is_quantized(shape: tuple[int, ...]) -> bool:
  """Whether a leaf of ``shape`` is stored in 8 bits: large enough, and with rows long
  enough for blocks of :data:`MIN_BLOCK` elements."""
  return len(shape) >= 1 and math.prod(shape) >= MIN_ELEMENTS and shape[-1] >= MIN_BLOCK


def codes_intact(moment: QuantizedMoment) -> bool:
  """Whether each leaf of ``moment`` holds 8-bit codes (or float32, if too small for blocks).

  A tree map that casts the state (``jax.tree.map(lambda x: x.astype(...))``) turns
  codes into numbers that would be read as moment values.
  """
  return all(
    codes.dtype in (SIGNED.dtype, POSITIVE.dtype)
    if is_quantized(codes.shape)
    else codes.dtype == jnp.float32
    for codes in jax.tree.leaves(moment.codes)
  )


def static_block_size(block_size: Any) -> int:
  """``block_size`` as an int; it sets array shapes, so it cannot be traced."""
  if isinstance(block_size, jax.core.Tracer):
    raise ValueError(
      'quantization_block_size is traced, but it sets the shape of 8-bit state: with '
      "optax.inject_hyperparams, pass static_args=('quantization_block_size',)."
    )
  return int(block_size)


def zeros(params: Any, fmt: Format, block_size: Any) -> QuantizedMoment:
  """A zero 8-bit moment for ``params`` (arrays or ShapeDtypeStructs; sharded alike)."""
  block_size = static_block_size(block_size)

  def codes(param: Any) -> jax.Array:
    return jnp.zeros_like(param, fmt.dtype if is_quantized(param.shape) else jnp.float32)

  def scales(param: Any) -> jax.Array:
    if not is_quantized(param.shape):
      return jnp.zeros((), jnp.float32)
    blocks = -(-param.shape[-1] // min(block_size, param.shape[-1]))
    return jnp.zeros((*param.shape[:-1], blocks), jnp.float32)

  return QuantizedMoment(jax.tree.map(codes, params), jax.tree.map(scales, params), block_size)


def leaves(moment: QuantizedMoment, treedef: Any) -> list[Any]:
  """Each parameter's stored moment: :class:`Blocks`, or a float32 array."""
  pairs = zip(treedef.flatten_up_to(moment.codes), treedef.flatten_up_to(moment.scales))
  block = static_block_size(moment.block_size)
  return [Blocks(c, s, min(block, c.shape[-1])) if c.dtype != jnp.float32 else c for c, s in pairs]


def moment_of(like: QuantizedMoment, treedef: Any, stored: list[Any]) -> QuantizedMoment:
  """The :class:`QuantizedMoment` of new per-leaf ``stored`` values (as :func:`leaves` gives)."""
  unused = jnp.zeros((), jnp.float32)
  codes = [x.codes if isinstance(x, Blocks) else x for x in stored]
  scales = [x.scales if isinstance(x, Blocks) else unused for x in stored]
  return QuantizedMoment(
    jax.tree.unflatten(treedef, codes), jax.tree.unflatten(treedef, scales), like.block_size
  )


def block_max(x: jax.Array, block: int) -> jax.Array:
  """The maximum of ``x`` (non-negative) over each block of its last axis.

  On CPU a reduce-window, which XLA:CPU runs in one read of ``x`` where a
  reshape and a maximum keep a temporary copy; elsewhere a reshape and a
  maximum, which XLA:GPU emits as a reduction kernel where it loops over each
  window of a reduce-window (both measured: benchmarks/RESULTS.md). A block
  with a non-finite element may have a non-finite maximum (a reduce-window on
  CPU may drop a NaN): :func:`encode` keeps such blocks as they were.
  """
  n = x.shape[-1]
  pad = [(0, 0)] * (x.ndim - 1) + [(0, -n % block)]
  return jax.lax.platform_dependent(
    x, cpu=lambda x: _windows(x, block, pad), default=lambda x: _rows(x, block, pad)
  )


def _windows(x: jax.Array, block: int, pad: list[tuple[int, int]]) -> jax.Array:
  """:func:`block_max` on CPU: a reduce-window."""
  window = (1,) * (x.ndim - 1) + (block,)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, pad)


def _rows(x: jax.Array, block: int, pad: list[tuple[int, int]]) -> jax.Array:
  """:func:`block_max` elsewhere: a reshape into blocks and a maximum."""
  padded = jnp.pad(x, pad)
  return jnp.max(padded.reshape(*x.shape[:-1], padded.shape[-1] // block, block), axis=-1)


def _per_element(scales: jax.Array, block: int, n: int) -> jax.Array:
  """Each element's block scale, broadcast to the moment's shape.

  A broadcast and a reshape (XLA fuses them into the consumer), not
  ``jnp.repeat``, which lowers to a gather.
  """
  spread = jnp.broadcast_to(scales[..., None], (*scales.shape, block))
  return spread.reshape(*scales.shape[:-1], scales.shape[-1] * block)[..., :n]


def _offset(fmt: Format) -> int:
  """What a code adds to a float32 bit pattern's top bits: code ``top`` is 1.0."""
  return (127 << fmt.mantissa_bits) - fmt.top


def _magnitude(codes: jax.Array, fmt: Format) -> jax.Array:
  """The magnitude in [0, 1] that each (non-negative, int32) code stands for."""
  pattern = (codes + _offset(fmt)) << (23 - fmt.mantissa_bits)
  return jnp.where(codes == 0, 0.0, jax.lax.bitcast_convert_type(pattern, jnp.float32))


def _code(v: jax.Array, fmt: Format, bits16: jax.Array | None) -> jax.Array:
  """The code of each magnitude ``v`` in [0, 1], in ``fmt.dtype``: to nearest, or stochastically.

  The codes are narrowed before the last select, whose operands are all
  arrays: XLA then stores them once, and whatever reads them (the step) reads
  them back, where a narrowing as the last operation lets it recompute the
  codes in each reader from the old codes, which must then be copied to
  survive their update in place (benchmarks/RESULTS.md).
  """
  shift = 23 - fmt.mantissa_bits
  pattern = jax.lax.bitcast_convert_type(v, jnp.int32)
  if bits16 is None:
    pattern = pattern + (1 << (shift - 1))  # Half of the cut bits: to nearest, ties up.
  else:
    pattern = pattern + (bits16.astype(jnp.int32) << (shift - 16))
  code = jnp.clip((pattern >> shift) - _offset(fmt), 0, fmt.top).astype(fmt.dtype)
  # Below the smallest positive value, v1: rounding picks 0 or v1, unless a
  # value must not be zero, which takes v1.
  v1 = float(np.int32((1 + _offset(fmt)) << shift).view(np.float32))
  if fmt.lowest:
    below = jnp.asarray(fmt.lowest, fmt.dtype)
  elif bits16 is None:
    below = (v >= v1 / 2).astype(fmt.dtype)
  else:
    below = ((bits16.astype(jnp.float32) + 0.5) * np.float32(v1 / 2**16) < v).astype(fmt.dtype)
  return jnp.where(v < v1, below, code)


def decode(q: Blocks) -> jax.Array:
  """The leaf's values, float32 (NaN where :func:`encode` stored a non-finite value)."""
  fmt = q.format
  codes = q.codes.astype(jnp.int32)
  magnitude = _magnitude(jnp.abs(codes), fmt)
  scale = _per_element(q.scales, q.block, q.shape[-1])
  if fmt is SIGNED:
    magnitude = jnp.where(codes < 0, -magnitude, magnitude)
    magnitude = jnp.where(codes == NOT_FINITE, jnp.nan, magnitude)
  return magnitude * scale


def encode(
  x: jax.Array,
  like: Blocks,
  scales: jax.Array,
  bits16: jax.Array | None,
  kept: jax.Array | None = None,
) -> Blocks:
  """``x`` (float32, ``|x|`` at most its block's entry of ``scales``) stored like ``like``.

  A non-finite element of ``x`` is stored alone: its code is :data:`NOT_FINITE`
  (the top code for POSITIVE). The blocks where ``kept`` is true (their scale
  was bounded from a non-finite input) keep their scale and the codes of
  their other elements from ``like``, unchanged for this step, rather than
  lose them all.
  """
  fmt = like.format
  # A reciprocal per block, multiplied by: an elementwise division would make
  # XLA keep intermediate arrays rather than recompute them.
  inverse = 1.0 / jnp.where(scales > 0, scales, 1.0)
  v = jnp.abs(x) * _per_element(inverse, like.block, x.shape[-1])
  code = _code(v, fmt, bits16)
  if fmt is SIGNED:
    code = jnp.where(x < 0, -code, code)
  if kept is not None:
    code = jnp.where(_per_element(kept, like.block, x.shape[-1]), like.codes, code)
    scales = jnp.where(kept, like.scales, scales)
  if fmt is SIGNED:
    code = jnp.where(jnp.isfinite(x), code, jnp.asarray(NOT_FINITE, fmt.dtype))
  return Blocks(code, scales, like.block)
