"""Stochastic rounding of the parameter update: 16-bit parameters without float32 master weights.

A bfloat16 parameter updated by ``optax.apply_updates`` is rounded to
nearest: an update smaller than half a bfloat16 step (2^-9 of the weight) is
lost, every step, and training stalls. Rounding ``p + u`` stochastically
instead keeps every update in expectation, which is what float32 master
weights are kept for.

``optax.apply_updates`` computes ``(p + u').astype(p.dtype)`` and cannot be
told to round otherwise, so the transformation returns the update ``u'`` that
makes that expression land exactly on the stochastically rounded value.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from adabelief_jax import _checks, _rounding

# The stream of the hash that draws the parameters' rounding bits: the state's
# rounding of each leaf draws streams 0 and 1 (see transform._leaf_bits).
STREAM = 0x5041524D

# The parameter dtypes that are rounded stochastically; wider ones are left alone.
ROUNDED = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class ParamRoundingState(NamedTuple):
  """State of :func:`round_params_stochastically`.

  Attributes:
    count: number of updates taken (int32 scalar); the step in the hash of
      the rounding bits.
  """

  count: chex.Array  # type: ignore[assignment]  # optax's name; shadows tuple.count.


def rounded_update(param: jax.Array, update: jax.Array, bits16: jax.Array) -> jax.Array:
  """The update ``u'`` for which ``(param + u').astype(param.dtype)`` is ``x = param + update``
  rounded stochastically to ``param.dtype`` with ``bits16`` (16 random bits per element).

  ``x`` is computed in float32 (wider if ``update`` is), ``r = round_to(x)``
  and ``u' = r - param`` in the same dtype. ``param + u'`` is then ``r``
  exactly unless ``r - param`` overflows (see
  :func:`round_params_stochastically`). A non-finite ``x`` is passed on as it
  is: the bit arithmetic of the bfloat16 rounding could carry a NaN whose
  payload has its high mantissa bits set into the sign bit, a zero.
  """
  compute = jnp.result_type(update.dtype, jnp.float32)
  p = param.astype(compute)
  x = p + update.astype(compute)
  r = _rounding.round_to(x, param.dtype, bits16).astype(compute)
  return jnp.where(jnp.isfinite(x), r, x) - p


def _is_rounded(path: Any, param: Any) -> bool:
  """Whether ``param`` is rounded; raises for a float narrower than 16 bits."""
  dtype = jnp.asarray(param).dtype
  if dtype in ROUNDED:
    return True
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 16:
    raise ValueError(
      f'round_params_stochastically: params{jax.tree_util.keystr(path)} is {dtype}; only '
      'bfloat16 and float16 parameters are rounded (float32 and wider are left as they are). '
      'Keep 8-bit parameters out of the optimized tree, or exclude them with optax.masked.'
    )
  return False


def _leaves(updates: Any, params: Any) -> tuple[list[Any], list[Any], Any]:
  """The updates' leaves with their paths, the parameters' leaves in the same order, and the
  treedef."""
  leaves, structure = jax.tree_util.tree_flatten_with_path(updates)
  treedef: Any = structure  # jaxlib ships no stubs for PyTreeDef's methods.
  try:
    param_leaves = treedef.flatten_up_to(params)
  except (ValueError, TypeError) as error:
    raise ValueError(
      'round_params_stochastically: the params do not have the structure of the updates.\n'
      f'  updates: {treedef}\n  params:  {jax.tree.structure(params)}'
    ) from error
  return leaves, param_leaves, treedef


def round_params_stochastically(seed: Any = 0) -> optax.GradientTransformation:
  r"""Rounds ``p + u`` stochastically to each 16-bit parameter's dtype (Gupta et al., 2015).

  For every bfloat16 or float16 parameter ``p`` with update ``u``, the
  returned update ``u'`` makes ``optax.apply_updates(p, u')`` equal ``r``::

    x = float32(p + u)
    r = hi with probability (x - lo) / (hi - lo), else lo

  where ``lo <= x <= hi`` are the neighbours of ``x`` in ``p``'s dtype. It is
  unbiased, ``E[r] = x``: the parameter follows, in expectation, the float32
  master weight that it replaces (``x`` is ``p + u`` rounded once to float32,
  as a master weight would hold it), where rounding to nearest would lose
  every update below half a step of ``p``'s dtype. For float16 values below
  2^-14 (its subnormals) the probability is a multiple of 2^-16, within 2^-17
  of the exact one.

  ``optax.apply_updates`` (and ``nnx.Optimizer``) compute
  ``(p + u').astype(p.dtype)``; this transformation returns ``u' = r - p``,
  computed in float32, so that ``p + u' = r`` exactly. The update is float32
  for 16-bit parameters: no bfloat16 ``u'`` reaches every ``r`` (from
  ``p = -1``, the bfloat16 updates around 2.0078125 give 1 or 1.015625, never
  ``r = 1.0078125``).

  The result is ``r`` exactly for every finite ``p`` and ``u`` but one case:
  bfloat16 ``r`` and ``p`` of opposite signs whose difference overflows
  float32 (``|r - p| >= 2^128 - 2^103``, which needs
  ``|u| > 2^128 - 2^120 - 2^104``, about 3.39e38); there ``u'`` and the new
  parameter are infinite. Where ``r - p`` is not exact in float32
  (``|r| >> |p|``), its error is far below half a step of ``r`` and the cast
  still gives ``r``; a ``p + u`` that cancels ``p`` is exact in float32 and
  has too few bits to lose any (docs/_snippets/param_rounding.md has the
  argument). float16 ``x`` beyond 65504 give 65504 (the probability of
  infinity is 0); bfloat16 ``x`` beyond its largest value round up to
  infinity with the probability of the step above it. Where float32
  arithmetic flushes subnormals to zero (XLA:CPU), bfloat16 values below
  2^-126 act as zero, here as in ``apply_updates``.

  A zero update gives ``u' = 0`` exactly (the mini-steps of
  ``optax.MultiSteps`` leave the parameters alone); a non-finite update, a
  non-finite ``u'``, whatever its NaN payload. Leaves whose parameter is
  float32 or wider (or not a float) get their update back unchanged, the
  same array. Wrappers that choose in a ``lax.cond`` between the inner update
  and zeros like the gradients (``optax.apply_if_finite``,
  ``optax.conditionally_mask``, ``optax.conditionally_transform``) cannot wrap
  the rounding of 16-bit gradients, whose update is float32: give them float32
  gradients, or wrap only what comes before the rounding.

  The random bits are a hash of (``seed``, the step count, the leaf's
  position in the tree, the element's index in the whole array), computed
  in the update's elementwise loop: no key in the state, bit-reproducible
  runs, and the same bits on one device, under ZeRO-1 and across hosts.

  Use it last in a chain, after the learning rate and the weight decay, and
  pass the parameters to ``update``.

  Args:
    seed: the seed of the rounding bits, an integer in [0, 2^32) (or a traced
      integer under ``optax.inject_hyperparams``).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ParamRoundingState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from adabelief_jax import round_params_stochastically
    >>> tx = optax.chain(optax.sgd(1e-3), round_params_stochastically(seed=0))
    >>> params = {'w': jnp.ones(4096, jnp.bfloat16)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones(4096, jnp.bfloat16)}, state, params)
    >>> new = optax.apply_updates(params, updates)['w']
    >>> bool(jnp.all((new == 1) | (new == 1 - 2.0**-8)))  # 1 - 1e-3 to a neighbour.
    True
    >>> round(float(jnp.mean(new.astype(jnp.float32))), 3)  # Rounding to nearest gives 1.
    0.999

  References:
    Gupta et al., `Deep Learning with Limited Numerical Precision
    <https://arxiv.org/abs/1502.02551>`_, ICML 2015.
    torchao's low-bit optimizers with ``bf16_stochastic_round=True``
    (`torchao.optim <https://github.com/pytorch/ao/tree/main/torchao/optim>`_),
    which round bfloat16 weights so.
  """
  seed = _checks.check_integer('seed', seed, 0, _checks.SEED_MAX)

  def init_fn(params: optax.Params) -> ParamRoundingState:
    del params
    return ParamRoundingState(count=jnp.zeros([], jnp.int32))

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ParamRoundingState]:
    if not isinstance(state, ParamRoundingState):
      raise TypeError(
        'round_params_stochastically: the state must be the ParamRoundingState its init made, '
        f'got {_checks.describe_state(state)}. Build it with tx.init(params); restore '
        "checkpoints into tx.init's structure as target."
      )
    if params is None:
      raise ValueError(
        'round_params_stochastically needs the parameters: pass params to update '
        '(tx.update(grads, state, params)); the update it returns depends on them.'
      )
    count = jnp.asarray(optax.safe_increment(state.count))
    leaves, param_leaves, treedef = _leaves(updates, _checks.as_arrays(params))
    out = []
    for index, ((path, u), p) in enumerate(zip(leaves, param_leaves)):
      if not _is_rounded(path, p):
        out.append(u)
        continue
      u = jnp.asarray(u)
      if u.shape != p.shape:
        raise ValueError(
          f'round_params_stochastically: updates{jax.tree_util.keystr(path)} has shape '
          f'{u.shape} but its parameter has shape {p.shape}: pass the parameters the updates '
          'are for.'
        )
      bits16 = _rounding.random_bits(p.shape, seed, count, index, STREAM) & np.uint32(0xFFFF)
      out.append(rounded_update(p, u, bits16))
    return jax.tree.unflatten(treedef, out), ParamRoundingState(count)

  return optax.GradientTransformation(init_fn, update_fn)
