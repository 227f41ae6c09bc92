"""Validation shared by the transforms and their constructors.

The limits of every numeric hyperparameter are in one table, :data:`LIMITS`,
which serves the checks at construction (concrete values), the checks at
every step of ``check_hyperparams=True`` (values traced through
``optax.inject_hyperparams``) and the compat constructors (which check the
reference packages' names against the same limits). Errors name the argument
and its value. Traced hyperparameters and schedules cannot be checked when the
optimizer is built; they are left to ``check_hyperparams``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
  """The finite real numbers a hyperparameter may take: ``low`` to ``high``.

  ``why`` explains an open bound that a user would not expect.
  """

  low: float
  high: float = math.inf
  low_open: bool = False
  high_open: bool = True
  why: str = ''

  def __contains__(self, value: float) -> bool:
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return math.isfinite(value) and above and below

  def __str__(self) -> str:
    """As the docstrings write it: ``in (0, 1)``, ``>= 0``, ``> 4``."""
    if math.isinf(self.high):
      return f'{">" if self.low_open else ">="} {self.low:g}'
    left, right = '(' if self.low_open else '[', ')' if self.high_open else ']'
    return f'in {left}{self.low:g}, {self.high:g}{right}'

  def explained(self) -> str:
    return f'{self} ({self.why})' if self.why else str(self)


# The limits of each numeric hyperparameter, by its name in scale_by_belief and adabelief.
LIMITS = {
  'b1': Interval(
    0.0,
    1.0,
    low_open=True,
    why='with b1 = 0 the momentum is the gradient, the prediction error g - m is 0, s is only '
    'eps_root and steps are about g / sqrt(eps_root)',
  ),
  'b2': Interval(0.0, 1.0),
  'eps': Interval(0.0),
  'eps_root': Interval(0.0),
  'sma_threshold': Interval(4.0, low_open=True),
  'learning_rate': Interval(0.0),
  'weight_decay': Interval(0.0),
}


def check_scalar(name: str, value: Any, limits: Interval | None = None) -> None:
  """Raises ``ValueError`` when a concrete ``value`` is not a finite real in ``limits``.

  ``limits`` defaults to ``LIMITS[name]``. Traced values and schedules pass: they
  are checked at run time, if at all. An infinite ``eps`` or learning rate would
  pass a ``>= 0`` test, but would silently stop training or turn it to NaN.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  limits = LIMITS[name] if limits is None else limits
  array = np.asarray(value)
  # jnp.issubdtype knows bfloat16 (NumPy's does not count it as a number).
  if array.ndim != 0 or not jnp.issubdtype(array.dtype, jnp.number):
    raise ValueError(f'{name} must be a real scalar, got {value!r}.')
  if np.iscomplexobj(array) or float(array) not in limits:
    raise ValueError(f'{name} must be a finite number {limits.explained()}; got {value!r}.')


def check_wide(name: str, value: Any) -> None:
  """Raises ``ValueError`` if ``value`` is an array of a float type narrower than float32.

  ``optax.inject_hyperparams`` casts the hyperparameters to the parameters'
  dtype: in float16, an ``eps`` of 1e-16 is 0 (a zero gradient then gives NaN);
  in bfloat16, ``b2 = 0.999`` is 1.0 and ``b1 = 0.9`` 0.898.
  """
  dtype = getattr(value, 'dtype', None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits >= 32:
    return
  if np.ndim(value) != 0:
    return  # check_scalar says it is not a scalar.
  shown = 'traced' if isinstance(value, jax.core.Tracer) else repr(float(value))
  raise ValueError(
    f'{name} is a {dtype} array ({shown}): b1, b2, eps, eps_root and sma_threshold need '
    'float32 at least '
    '(eps = 1e-16 is 0 in float16, b2 = 0.999 is 1.0 in bfloat16). optax.inject_hyperparams '
    "casts hyperparameters to the parameters' dtype: pass hyperparam_dtype=jnp.float32 to it; "
    'otherwise pass a Python float.'
  )


def raise_if_invalid(values: dict[str, Any]) -> None:
  """Host callback of ``check_hyperparams``: the traced hyperparameters' values, checked."""
  for name, value in values.items():
    v = float(np.asarray(value))
    if v not in LIMITS[name]:
      raise ValueError(
        f'{name} = {v!r} at this step, not a finite number {LIMITS[name].explained()}. '
        'check_hyperparams '
        'caught a hyperparameter that was traced (optax.inject_hyperparams or a schedule) and '
        'so escaped the checks at construction.'
      )


# Rounding bits hash the seed as a uint32.
SEED_MAX = 2**32 - 1

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
  wide = canonical.itemsize > 4 * (2 if jnp.issubdtype(canonical, jnp.complexfloating) else 1)
  if wide and not jax.config.read('jax_enable_x64'):
    raise ValueError(
      f'{name}={dtype!r} needs 64-bit JAX, which is off: JAX would store float32. Turn it '
      "on first (jax.config.update('jax_enable_x64', True)), or use "
      f'{"complex64" if jnp.issubdtype(canonical, jnp.complexfloating) else "float32"}.'
    )
  if canonical == jnp.float16:
    # float16 stores nothing below 6e-8 and few bits below 6e-5, where bfloat16, of
    # the same size, has float32's range (tests/test_low_memory.py measures both).
    why = (
      's values below 6e-8 (eps_root too) round to 0 in float16, and the step m / sqrt(s) blows up'
      if real
      else "m = (1 - b1) g of gradients below 6e-4 falls below float16's normal range (6e-5) "
      'and loses bits, and below 6e-8 (gradients of 6e-7) it is stored as 0 or 6e-8'
    )
    raise ValueError(
      f'{name}=float16 would underflow: {why}. Use bfloat16 (the same size, stochastically '
      "rounded, with float32's range), int8 or float32."
    )
  return canonical


def check_integer(name: str, value: Any, minimum: int, maximum: int | None = None) -> Any:
  """A concrete ``value`` as a Python int in [``minimum``, ``maximum``]; traced values as they are."""
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
    or (maximum is not None and array > maximum)
  ):
    limits = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
    raise ValueError(f'{name} must be an integer {limits}, got {value!r}.')
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


def as_arrays(tree: Any) -> Any:
  """Python and NumPy numbers and arrays in ``tree`` as JAX arrays, as optax accepts them.

  Arrays, ShapeDtypeStructs and other leaves are left as they are.
  """
  numeric = (int, float, complex, np.ndarray, np.generic)
  return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, numeric) else x, tree)


def check_mask_type(mask: Any) -> None:
  """Raises ``ValueError`` for a ``weight_decay_mask`` that is a single boolean.

  One boolean for every parameter says nothing that ``None`` (decay everywhere)
  or ``weight_decay=0`` does not, and it is what ``optax.inject_hyperparams``
  makes of a mask function: it calls every callable argument with the step
  count, as a schedule, and a mask of the count is one boolean.
  """
  if isinstance(mask, bool | np.bool_) or (
    isinstance(mask, jax.Array | np.ndarray) and np.ndim(mask) == 0
  ):
    raise ValueError(
      f'weight_decay_mask is a single boolean ({mask!r}): use None to decay every parameter, '
      'or weight_decay=0 for none. With optax.inject_hyperparams, a mask function is called '
      "with the step count as if it were a schedule: pass static_args=('weight_decay_mask',)."
    )


def describe_state(state: Any) -> str:
  """A state's type as an error shows it: ``optax.ScaleByBeliefState``, ``tuple of (...)``."""

  def name(x: Any) -> str:
    package = type(x).__module__.split('.')[0]
    return type(x).__name__ if package == 'builtins' else f'{package}.{type(x).__name__}'

  if type(state) is tuple:
    return f'a tuple of {len(state)}: ({", ".join(name(x) for x in state)})'
  return name(state)


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
