"""The configuration of the AdaBelief rescaling, as one validated record."""

from __future__ import annotations

import dataclasses
from typing import Any

import chex

from adabelief_jax import _checks
from adabelief_jax._quantize import MIN_BLOCK


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeliefHyperparams:
  """What :func:`~adabelief_jax.scale_by_belief` is configured by, validated.

  The fields are the arguments of :func:`~adabelief_jax.scale_by_belief`, with
  its defaults (a test checks that they agree), plus ``torch_rectified_eps``,
  which :func:`~adabelief_jax.compat.adabelief_pytorch` sets: rectified steps
  then divide by ``sqrt(s_t) + eps``, without bias correction on ``eps``, as
  adabelief-pytorch 0.2.1 does, and ``compute_dtype_updates``, which the
  chains of :mod:`adabelief_jax.alias` set: updates then stay in the compute
  dtype (float32 for 16-bit gradients) until the chain's end. Numeric fields may be Python numbers or JAX
  scalars (traced under ``optax.inject_hyperparams``); concrete values are
  checked against :data:`adabelief_jax._checks.LIMITS` when the record is
  made, and the state dtypes are canonicalized.
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
  rounding_seed: Any = 0  # An int, or a traced integer under optax.inject_hyperparams.
  quantization_block_size: Any = 256  # Likewise; 8-bit state then needs it static.
  check_hyperparams: bool = False
  track_stats: bool = False
  torch_rectified_eps: bool = False
  # Set by adabelief and the compat constructors, which scale by the learning rate in
  # float32 and cast to the gradients' dtype at the end: updates in the compute dtype.
  compute_dtype_updates: bool = False

  def __post_init__(self) -> None:
    for name in ('b1', 'b2', 'eps', 'eps_root', 'sma_threshold'):
      _checks.check_wide(name, getattr(self, name))
      _checks.check_scalar(name, getattr(self, name))
    for name, real in (('mu_dtype', False), ('nu_dtype', True)):
      dtype = _checks.check_state_dtype(name, getattr(self, name), real=real)
      object.__setattr__(self, name, dtype)
    seed = _checks.check_integer('rounding_seed', self.rounding_seed, 0, _checks.SEED_MAX)
    object.__setattr__(self, 'rounding_seed', seed)
    block = _checks.check_integer(
      'quantization_block_size', self.quantization_block_size, MIN_BLOCK
    )
    object.__setattr__(self, 'quantization_block_size', block)

  def numeric(self) -> dict[str, Any]:
    """The numeric hyperparameters ``check_hyperparams`` checks at every step."""
    names = ('b1', 'b2', 'eps', 'eps_root') + (('sma_threshold',) if self.rectify else ())
    return {name: getattr(self, name) for name in names}
