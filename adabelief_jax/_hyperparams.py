"""The hyperparameters of the AdaBelief rescaling, as one validated record.

:func:`adabelief_jax.scale_by_belief`, :func:`adabelief_jax.adabelief` and the
constructors of :mod:`adabelief_jax.compat` all build a
:class:`BeliefHyperparams` and hand it whole to
:func:`adabelief_jax.transform.scale_by_belief_from`; it is checked once, here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

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
  torch_rectified_eps: bool = False

  def __post_init__(self) -> None:
    _checks.check_decay('b1', self.b1)
    _checks.check_decay('b2', self.b2)
    _checks.check_nonnegative('eps', self.eps)
    _checks.check_nonnegative('eps_root', self.eps_root)
    _checks.check_scalar('sma_threshold', self.sma_threshold, lambda v: v > 4.0, '> 4')
    for name in ('mu_dtype', 'nu_dtype'):
      object.__setattr__(self, name, _checks.check_state_dtype(name, getattr(self, name)))

  @classmethod
  def from_arguments(cls, arguments: Mapping[str, Any]) -> BeliefHyperparams:
    """The record from a constructor's arguments (its ``locals()``).

    Arguments that are not fields (``learning_rate``, ``weight_decay``...)
    are left out, so a constructor whose signature lists the fields can pass
    its arguments on without naming each one again.
    """
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in arguments.items() if name in names})


DEFAULTS = BeliefHyperparams()


def default_state_dtype(param_dtype: Any, requested: jnp.dtype | None) -> jnp.dtype:
  """``requested``, else float32 for 16-bit parameters, else the parameter's."""
  if requested is not None:
    return requested
  dtype = jnp.dtype(param_dtype)
  if jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype
