"""The hyperparameters of the AdaBelief rescaling, as one validated record.

:func:`adabelief_jax.scale_by_belief`, :func:`adabelief_jax.adabelief` and the
constructors of :mod:`adabelief_jax.compat` all build a
:class:`BeliefHyperparams` and hand it whole to
:func:`adabelief_jax.transform.scale_by_belief_from`; it is checked once, here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import chex
import jax.numpy as jnp

from adabelief_jax import _checks


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeliefHyperparams:
  """Everything :func:`~adabelief_jax.scale_by_belief` is configured by.

  The fields are the arguments of :func:`~adabelief_jax.scale_by_belief`
  (see it for their meaning), plus ``torch_rectified_eps``, which
  :func:`~adabelief_jax.compat.adabelief_pytorch` sets: rectified steps then
  divide by ``sqrt(s_t) + eps``, without bias correction on ``eps``, as
  adabelief-pytorch 0.2.1 does. Numeric fields may be Python numbers or JAX
  scalars (traced under ``optax.inject_hyperparams``); concrete values are
  validated when the record is made, and the state dtypes are canonicalized.
  """

  b1: chex.Numeric = 0.9
  b2: chex.Numeric = 0.999
  eps: chex.Numeric = 1e-16
  eps_root: chex.Numeric = 1e-16
  amsgrad: bool = False
  rectify: bool = False
  sma_threshold: chex.Numeric = 5.0
  degenerate_to_sgd: bool = True
  nesterov: bool = False
  mu_dtype: Any = None
  nu_dtype: Any = None
  stochastic_rounding: bool = True
  rounding_seed: int = 0  # A traced integer under optax.inject_hyperparams.
  quantization_block_size: int = 256  # Likewise; 8-bit state then needs it static.
  check_hyperparams: bool = False
  track_stats: bool = False
  torch_rectified_eps: bool = False

  def __post_init__(self) -> None:
    _checks.check_first_decay('b1', self.b1)
    _checks.check_decay('b2', self.b2)
    _checks.check_nonnegative('eps', self.eps)
    _checks.check_nonnegative('eps_root', self.eps_root)
    _checks.check_scalar('sma_threshold', self.sma_threshold, lambda v: v > 4.0, '> 4')
    for name, real in (('mu_dtype', False), ('nu_dtype', True)):
      dtype = _checks.check_state_dtype(name, getattr(self, name), real=real)
      object.__setattr__(self, name, dtype)
    # Integers used to shape arrays or seed the hash; optax.inject_hyperparams
    # may hand them over as (traced) arrays, which are checked where used.
    for name, minimum in (('rounding_seed', 0), ('quantization_block_size', 1)):
      object.__setattr__(self, name, _checks.check_integer(name, getattr(self, name), minimum))

  def numeric(self) -> dict[str, Any]:
    """The numeric hyperparameters ``check_hyperparams`` checks at every step."""
    return {name: getattr(self, name) for name in ('b1', 'b2', 'eps', 'eps_root')}


DEFAULTS = BeliefHyperparams()


class BeliefOptions(TypedDict, total=False):
  """The keyword-only options of :func:`~adabelief_jax.scale_by_belief` and
  :func:`~adabelief_jax.adabelief`, as a type for their ``**options``.

  Their defaults are the fields of :class:`BeliefHyperparams`.
  """

  amsgrad: bool
  rectify: bool
  sma_threshold: chex.Numeric
  degenerate_to_sgd: bool
  nesterov: bool
  mu_dtype: Any
  nu_dtype: Any
  stochastic_rounding: bool
  rounding_seed: int
  quantization_block_size: int
  check_hyperparams: bool
  track_stats: bool


F = TypeVar('F', bound=Callable[..., Any])


def takes_belief_options(fn: F) -> F:
  """Gives ``fn``'s ``**options`` the signature of :class:`BeliefOptions`.

  ``inspect.signature(fn)`` (which ``optax.inject_hyperparams`` binds
  arguments with, and the docs show) then lists each option as a keyword-only
  parameter with its default, in place of ``**options``: the options are
  listed once, in :class:`BeliefOptions`, whatever the number of
  constructors that take them.
  """
  signature = inspect.signature(fn)
  own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
  options = [
    inspect.Parameter(
      name,
      inspect.Parameter.KEYWORD_ONLY,
      default=getattr(DEFAULTS, name),
      annotation=getattr(annotation, '__forward_arg__', annotation),  # As written.
    )
    for name, annotation in BeliefOptions.__annotations__.items()
  ]
  fn.__signature__ = signature.replace(parameters=own + options)  # type: ignore[attr-defined]
  return fn


def default_state_dtype(param_dtype: Any, requested: jnp.dtype | None) -> jnp.dtype:
  """``requested``, else float32 for 16-bit parameters, else the parameter's."""
  if requested is not None:
    return requested
  dtype = jnp.dtype(param_dtype)
  if jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype
