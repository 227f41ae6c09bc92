"""Validation shared by the transforms and their constructors.

Errors name the argument and its value. Hyperparameters that are traced (inside
``jax.jit`` or ``optax.inject_hyperparams``) or schedules cannot be checked when
the optimizer is built; they are left to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_scalar(
  name: str, value: Any, condition: Callable[[float], bool], requirement: str
) -> None:
  """Raises ``ValueError`` when a concrete ``value`` fails ``condition``."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  array = np.asarray(value)
  if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
    raise ValueError(f'{name} must be a real scalar, got {value!r}.')
  if not condition(float(array)):
    raise ValueError(f'{name} must be {requirement}, got {value!r}.')


def check_decay(name: str, value: Any) -> None:
  check_scalar(name, value, lambda v: 0.0 <= v < 1.0, 'in [0, 1)')


def check_nonnegative(name: str, value: Any) -> None:
  check_scalar(name, value, lambda v: v >= 0.0, '>= 0')


def check_state_dtype(name: str, dtype: Any) -> jnp.dtype | None:
  """Returns ``dtype`` as a NumPy dtype (``None`` stays ``None``)."""
  if dtype is None:
    return None
  try:
    canonical = jnp.dtype(dtype)
  except TypeError as error:
    raise ValueError(f'{name} must be a floating dtype, got {dtype!r}.') from error
  if not jnp.issubdtype(canonical, jnp.inexact):
    raise ValueError(f'{name} must be a floating dtype, got {dtype!r}.')
  return canonical


def check_inexact_leaves(tree: Any, what: str) -> None:
  """Raises ``TypeError`` naming the path of any integer or boolean leaf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = leaf.dtype if hasattr(leaf, 'dtype') else jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f'{what} leaf {jax.tree_util.keystr(path) or "<root>"} has dtype '
        f'{dtype}; AdaBelief needs floating or complex leaves. Keep integer '
        'and boolean leaves out of the optimized tree, or exclude them with '
        'optax.masked.'
      )
