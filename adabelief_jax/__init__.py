"""AdaBelief for JAX and Optax (Zhuang et al., NeurIPS 2020)."""

from adabelief_jax import compat, diagnostics, sharding
from adabelief_jax._param_rounding import ParamRoundingState, round_params_stochastically
from adabelief_jax._quantize import QuantizedMoment
from adabelief_jax.alias import adabelief
from adabelief_jax.diagnostics import BeliefStats, belief_stats
from adabelief_jax.transform import BeliefState, scale_by_belief

__version__ = '0.2.0'

__all__ = [
  'BeliefState',
  'BeliefStats',
  'ParamRoundingState',
  'QuantizedMoment',
  'adabelief',
  'belief_stats',
  'compat',
  'diagnostics',
  'round_params_stochastically',
  'scale_by_belief',
  'sharding',
]
