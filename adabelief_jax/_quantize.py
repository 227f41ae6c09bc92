"""8-bit block-wise storage of a moment: codes through a power map, a scale per block.

A quantized moment keeps, for an array of shape ``(..., n)``, 8-bit codes of
the same shape and one float32 scale per block of ``block_size`` consecutive
elements along the last axis (``shape[:-1] + (ceil(n / block_size),)``; the
last block of a row may be shorter). Blocks never cross rows, so an array
sharded on its other axes keeps whole blocks on every device.

Each block's scale is its largest magnitude, and a scaled value ``v`` in
[0, 1] is stored as the code ``c`` of the power map ``v = (c / L)^p``, whose
codes are dense near zero, where most of a moment's values are:

* ``m`` ('signed', int8 codes -127..127): ``L = 127``, ``p = 2``, the sign
  apart;
* ``s`` ('nonnegative', uint8 codes 1..255): ``L = 255``, ``p = 8``. ``s``
  spans many decades within a block, and a small ``s`` stored as zero would
  turn its step ``m / (sqrt(s) + eps)`` into a blow-up: ``p = 8`` reaches
  ``255^-8 = 6e-20`` of the block's largest ``s``, and anything smaller is
  stored as that (code 0 is only the initial zero state).

Encoding is ``v^(1/p)`` by repeated square roots and decoding ``c^p`` by
repeated squaring: a few multiplies per element, fused with the update.
Rounding is in the value domain: of the two codes whose values bracket ``v``,
the upper with probability ``(v - f(lo)) / (f(hi) - f(lo))`` (stochastic,
unbiased) or the nearer one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from adabelief_jax import _rounding

# Leaves with fewer elements stay float32: their scales would cost more than
# their codes save, and they are a negligible share of a large model's state.
MIN_ELEMENTS = 4096

# (lowest code for a value, largest code L, power p) of each kind's map
# v = (c / L)^p, p a power of 2. A positive s is never stored as zero: values
# below code 1's take code 1, so a step m / (sqrt(s) + eps) cannot blow up.
_MAPS = {'signed': (0, 127, 2), 'nonnegative': (1, 255, 8)}
_CODE_DTYPES = {'signed': jnp.int8, 'nonnegative': jnp.uint8}


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=['codes', 'scales'], meta_fields=['block_size']
)
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """A moment stored as 8-bit codes and float32 block scales (a pytree node).

  Attributes:
    codes: int8 (``m``) or uint8 (``s``) codes, shaped like the parameter.
    scales: the float32 scale of each block: ``shape[:-1] + (blocks,)``.
    block_size: elements per block along the last axis (static).
  """

  codes: Any
  scales: Any
  block_size: int

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype the moment decodes to."""
    return jnp.dtype(jnp.float32)

  @property
  def kind(self) -> str:
    return 'signed' if self.codes.dtype == jnp.int8 else 'nonnegative'


def is_quantized(shape: tuple[int, ...]) -> bool:
  """Whether a leaf of ``shape`` is large enough to be stored in 8 bits."""
  return len(shape) >= 1 and math.prod(shape) >= MIN_ELEMENTS


def _block(block_size: Any, n: int) -> int:
  """The block length along a last axis of ``n``: ``block_size``, or ``n`` if shorter."""
  if isinstance(block_size, jax.core.Tracer):
    raise ValueError(
      'quantization_block_size is traced, but it sets the shape of 8-bit state: with '
      "optax.inject_hyperparams, pass static_args=('quantization_block_size',)."
    )
  return min(int(block_size), n)


def zeros(param: Any, kind: str, block_size: Any) -> QuantizedArray:
  """A zero moment shaped (and, for arrays and structs, sharded) like ``param``."""
  block = _block(block_size, param.shape[-1])
  blocks = -(-param.shape[-1] // block)
  scales_shape = (*param.shape[:-1], blocks)
  return QuantizedArray(
    codes=jnp.zeros_like(param, _CODE_DTYPES[kind]),
    scales=jnp.zeros(scales_shape, jnp.float32),
    block_size=block,
  )


def _blockwise_max(x: jax.Array, block: int) -> jax.Array:
  """The maximum of ``x`` (non-negative) over each block of its last axis."""
  n = x.shape[-1]
  blocks = -(-n // block)
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, blocks * block - n)])
  return jnp.max(padded.reshape(*x.shape[:-1], blocks, block), axis=-1)


def _per_element(scales: jax.Array, block: int, n: int) -> jax.Array:
  """Each element's block scale, broadcast to the moment's shape."""
  return jnp.repeat(scales, block, axis=-1, total_repeat_length=scales.shape[-1] * block)[..., :n]


def _power(x: jax.Array, p: int) -> jax.Array:
  """``x^p`` for ``p`` a power of 2, by repeated squaring."""
  while p > 1:
    x, p = x * x, p // 2
  return x


def _root(x: jax.Array, p: int) -> jax.Array:
  """``x^(1/p)`` for ``p`` a power of 2, by repeated square roots."""
  while p > 1:
    x, p = jnp.sqrt(x), p // 2
  return x


def decode(q: QuantizedArray) -> jax.Array:
  """The moment's values, float32."""
  _, levels, p = _MAPS[q.kind]
  codes = q.codes.astype(jnp.float32)
  v = _power(jnp.abs(codes) / levels, p)
  magnitude = v * _per_element(q.scales, q.block_size, q.shape[-1])
  return jnp.sign(codes) * magnitude if q.kind == 'signed' else magnitude


def encode(x: jax.Array, like: QuantizedArray, bits16: jax.Array | None) -> QuantizedArray:
  """``x`` (float32) in the storage of ``like``: to nearest, or stochastically with ``bits16``."""
  kind, block = like.kind, like.block_size
  lowest, levels, p = _MAPS[kind]
  magnitude = jnp.abs(x)
  scales = _blockwise_max(magnitude, block)
  scale = _per_element(scales, block, x.shape[-1])
  v = magnitude / jnp.where(scale > 0, scale, 1.0)
  low = jnp.clip(jnp.floor(_root(v, p) * levels), lowest, levels - 1)
  low_v, high_v = _power(low / levels, p), _power((low + 1) / levels, p)
  if bits16 is None:
    up = v - low_v > high_v - v
  else:
    up = _rounding.uniform(bits16) * (high_v - low_v) < v - low_v
  code = low + up
  if kind == 'signed':
    code = jnp.sign(x) * code
  return QuantizedArray(code.astype(_CODE_DTYPES[kind]), scales, block)
