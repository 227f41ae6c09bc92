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
  """Raises ``ValueError`` when a concrete ``value`` is not finite or fails ``condition``.

  An infinite ``eps`` or learning rate would not fail a ``>= 0`` test, but
  would silently stop training or turn it to NaN.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  array = np.asarray(value)
  if array.ndim != 0 or not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
    raise ValueError(f'{name} must be a real scalar, got {value!r}.')
  if np.iscomplexobj(array) or not np.isfinite(array):
    raise ValueError(f'{name} must be a finite real number, got {value!r}.')
  if not condition(float(array)):
    raise ValueError(f'{name} must be {requirement}, got {value!r}.')


def check_decay(name: str, value: Any) -> None:
  check_scalar(name, value, lambda v: 0.0 <= v < 1.0, 'in [0, 1)')


def check_first_decay(name: str, value: Any) -> None:
  """``b1`` in (0, 1): with ``b1 = 0``, ``m = g``, so ``s`` is only ``eps_root``."""
  check_scalar(
    name,
    value,
    lambda v: 0.0 < v < 1.0,
    'in (0, 1): with b1 = 0 the momentum is the gradient, the prediction error '
    'g - m is 0, s is only eps_root and steps are about g / sqrt(eps_root)',
  )


def check_nonnegative(name: str, value: Any) -> None:
  check_scalar(name, value, lambda v: v >= 0.0, '>= 0')


_STATE_DTYPES = 'float32, bfloat16, float64, int8 (8-bit blocks)'


def check_state_dtype(name: str, dtype: Any, *, real: bool) -> jnp.dtype | None:
  """``dtype`` as a NumPy dtype (``None`` stays ``None``), if a moment can be stored so.

  Floats of 16 bits or more (complex too, unless ``real``: ``s`` is real),
  and int8 for 8-bit blocks. An 8-bit float would hold no moment well (the
  tested 8-bit format is int8's), and a float16 ``s`` underflows: its smallest
  value, 6e-8, is far above a typical ``(1 - b2) (g - m)^2``, and ``eps_root``
  of 1e-16 is zero in it, the known cause of AdaBelief's fp16 blow-ups.
  """
  if dtype is None:
    return None
  if isinstance(dtype, jax.Array | np.ndarray):
    raise ValueError(
      f'{name} must be a dtype, got an array ({dtype!r}). optax.inject_hyperparams calls '
      'a dtype class such as jnp.bfloat16 as if it were a schedule: pass the dtype as a '
      f"string ({name}='bfloat16') or a jnp.dtype, or list {name!r} in static_args."
    )
  try:
    canonical = jnp.dtype(dtype)
  except TypeError as error:
    raise ValueError(f'{name} must be one of {_STATE_DTYPES}; got {dtype!r}.') from error
  if canonical == jnp.int8:
    return canonical
  if not jnp.issubdtype(canonical, jnp.inexact) or jnp.finfo(canonical).bits < 16:
    raise ValueError(f'{name} must be one of {_STATE_DTYPES}; got {dtype!r}.')
  if real and jnp.issubdtype(canonical, jnp.complexfloating):
    raise ValueError(
      f'{name} must be a real dtype (s is real for complex parameters); got {dtype!r}.'
    )
  if real and canonical == jnp.float16:
    raise ValueError(
      f'{name}=float16 would underflow: s values below 6e-8 (and eps_root) round to 0 in '
      'float16, and the step m / sqrt(s) blows up. Use bfloat16 (stochastically rounded), '
      'int8 or float32 for nu_dtype; float16 mu_dtype is fine.'
    )
  return canonical


def check_integer(name: str, value: Any, minimum: int) -> Any:
  """A concrete ``value`` as a Python int >= ``minimum``; traced values as they are."""
  if isinstance(value, jax.core.Tracer):
    return value
  array = np.asarray(value)
  if (
    array.ndim != 0
    or array.dtype == np.bool_
    or not np.issubdtype(array.dtype, np.number)
    or not np.isfinite(array)
    or array != np.round(array)
    or array < minimum
  ):
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')
  return int(array)


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


def check_same_shapes(where: str, update: Any, moments: tuple[Any, ...]) -> None:
  """Raises ``ValueError`` naming the leaf if a moment's shape is not the update's."""
  for name, moment in zip(('mu', 'nu', 'nu_max'), moments):
    if moment is not None and tuple(moment.shape) != tuple(update.shape):
      raise ValueError(
        f'scale_by_belief: updates{where or "<root>"} has shape {tuple(update.shape)} but '
        f'state.{name}{where} has shape {tuple(moment.shape)}: the state was made for other '
        'parameters. Build it with tx.init(params) for the parameters you update.'
      )


def as_arrays(tree: Any) -> Any:
  """Python and NumPy numbers and arrays in ``tree`` as JAX arrays, as optax accepts them.

  Arrays, ShapeDtypeStructs and other leaves are left as they are.
  """
  numeric = (int, float, complex, np.ndarray, np.generic)
  return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, numeric) else x, tree)


def check_mask(mask: Any, params: Any) -> None:
  """Raises ``ValueError`` unless ``mask`` is a tree of booleans with a prefix of ``params``' structure."""
  try:
    jax.tree.map(lambda m, p: None, mask, params)
  except (ValueError, TypeError) as error:
    raise ValueError(
      'weight_decay_mask must have the structure of the params (or a prefix of it), with '
      f'True where weight decay applies.\n  weight_decay_mask: {jax.tree.structure(mask)}\n'
      f'  params:            {jax.tree.structure(params)}'
    ) from error
  for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
    if np.asarray(leaf).dtype != np.bool_:
      raise ValueError(
        f'weight_decay_mask{jax.tree_util.keystr(path)} must be a boolean (True where weight '
        f'decay applies), got {leaf!r}.'
      )


def raise_if_invalid(values: dict[str, Any]) -> None:
  """Host callback of ``check_hyperparams``: the traced hyperparameters' values, checked."""
  limits = {
    'b1': (0.0, 1.0, False),
    'b2': (0.0, 1.0, True),
    'eps': (0.0, np.inf, True),
    'eps_root': (0.0, np.inf, True),
    'learning_rate': (0.0, np.inf, True),
    'weight_decay': (0.0, np.inf, True),
  }
  for name, value in values.items():
    low, high, low_ok = limits[name]
    v = float(np.asarray(value))
    if not (np.isfinite(v) and (v >= low if low_ok else v > low) and (v < high or high == np.inf)):
      bound = '[' if low_ok else '('
      raise ValueError(
        f'{name} = {v!r} at this step, outside {bound}{low}, {high}): check_hyperparams '
        'caught a hyperparameter that was traced (optax.inject_hyperparams or a '
        'schedule) and so escaped the checks at construction.'
      )
