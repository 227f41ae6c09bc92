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
from adabelief_jax._hyperparams import default_state_dtype

Moment = Any  # One parameter's stored moment: a jax.Array, or _quantize.Blocks.


def zeros(params: Any, requested: jnp.dtype | None, kind: str, block_size: Any) -> Any:
  """The zero moment tree of ``params`` (arrays or ShapeDtypeStructs, sharded alike).

  ``requested`` int8 asks for 8-bit blocks (``kind`` 'signed' for ``m``,
  'nonnegative' for ``s``): a :class:`_quantize.QuantizedMoment`. Otherwise
  each leaf takes ``requested``, or by default float32 for 16-bit parameters
  and the parameter's dtype otherwise (real for ``s``).
  """
  if requested == jnp.int8:
    return _quantize.moment_zeros(params, kind, block_size)

  def leaf(param: Any) -> jax.Array:
    real = jnp.finfo(param.dtype).dtype  # s is real for complex parameters.
    dtype = default_state_dtype(param.dtype if kind == 'signed' else real, requested)
    return jnp.zeros_like(param, dtype)

  return jax.tree.map(leaf, params)


def leaves(moment: Any, treedef: Any) -> list[Moment]:
  """A moment tree's per-parameter stored moments, in ``treedef``'s order."""
  if isinstance(moment, _quantize.QuantizedMoment):
    return _quantize.leaves(moment, treedef)
  return list(treedef.flatten_up_to(moment))


def tree(like: Any, treedef: Any, stored: list[Moment]) -> Any:
  """The moment tree of new per-parameter ``stored`` moments, made like ``like``."""
  if isinstance(like, _quantize.QuantizedMoment):
    return _quantize.moment_of(like, treedef, stored)
  return jax.tree.unflatten(treedef, stored)


def load(moment: Moment, dtype: jnp.dtype) -> jax.Array:
  """The stored moment's values in ``dtype``."""
  if isinstance(moment, _quantize.Blocks):
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
  if isinstance(like, _quantize.Blocks):
    if scales is None:
      raise ValueError('storing an 8-bit moment needs its new block scales')
    stored = _quantize.encode(x, like, scales, bits16)
    return stored, _quantize.decode(stored).astype(x.dtype)
  stored_array = _rounding.round_to(x, like.dtype, bits16)
  return stored_array, stored_array.astype(x.dtype)


def rounds(moment: Moment, compute: jnp.dtype) -> bool:
  """Whether storing a ``compute``-dtype value into ``moment`` loses precision."""
  if isinstance(moment, _quantize.Blocks):
    return True
  return bool(_rounding.is_narrower(jnp.finfo(moment.dtype).dtype, jnp.finfo(compute).dtype))


def made_as(moment: Any, requested: jnp.dtype) -> bool:
  """Whether ``moment`` (a tree) is what ``requested`` (not None) makes."""
  if requested == jnp.int8:
    return isinstance(moment, _quantize.QuantizedMoment)
  if isinstance(moment, _quantize.QuantizedMoment):
    return False
  return all(leaf.dtype == requested for leaf in jax.tree.leaves(moment))


def describe(moment: Any) -> str:
  """What a moment tree is stored as, for error messages."""
  if isinstance(moment, _quantize.QuantizedMoment):
    return '8-bit blocks (int8)'
  dtypes = sorted({str(leaf.dtype) for leaf in jax.tree.leaves(moment)})
  return ', '.join(dtypes) or 'no leaves'
