"""AdaBelief for JAX and Optax (Zhuang et al., NeurIPS 2020)."""

from adabelief_jax import compat, sharding
from adabelief_jax.alias import adabelief
from adabelief_jax.transform import ScaleByBeliefState, scale_by_belief

__version__ = '0.1.0'

__all__ = ['ScaleByBeliefState', 'adabelief', 'compat', 'scale_by_belief', 'sharding']
