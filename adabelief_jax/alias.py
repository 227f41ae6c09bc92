"""`adabelief`: the ready-to-use optimizer, an Optax chain around scale_by_belief."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import chex
import jax
import jax.numpy as jnp
import optax

from adabelief_jax import _checks
from adabelief_jax._hyperparams import BeliefHyperparams
from adabelief_jax._param_rounding import round_params_stochastically
from adabelief_jax.transform import scale_by_belief_from

WeightDecayMode = Literal['decoupled', 'fixed', 'l2']
WEIGHT_DECAY_MODES: tuple[str, ...] = get_args(WeightDecayMode)


def _checked(name: str, value: optax.ScalarOrSchedule) -> Callable[[Any], Any]:
  """``value`` (a number, a traced value or a schedule) as a schedule whose every
  value is checked against ``_checks.LIMITS[name]`` at run time, by a host
  callback that raises."""

  def schedule(count: Any) -> Any:
    current = value(count) if callable(value) else value
    jax.debug.callback(_checks.raise_if_invalid, {name: current})
    return current

  return schedule


def _decayed_weights(weight_decay: Any, mask: Any) -> optax.GradientTransformation:
  """``optax.add_decayed_weights``, whose init checks ``mask`` against the params, and
  whose update names ``weight_decay`` when the params are missing.

  A mask of the wrong structure, or of non-booleans, would otherwise fail in
  the update with an error that names neither the mask nor the leaf.
  """
  inner = optax.add_decayed_weights(weight_decay, mask)

  def init_fn(params: optax.Params) -> optax.OptState:
    if mask is not None:
      _checks.check_mask(mask(params) if callable(mask) else mask, params)
    return inner.init(params)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    if params is None:
      raise ValueError(
        'adabelief: weight_decay is not 0, and decaying the weights needs them: pass params '
        'to update (tx.update(grads, state, params)).'
      )
    return inner.update(updates, state, params)

  return optax.GradientTransformation(init_fn, update_fn)


def chain_with_weight_decay(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  weight_decay_mask: Any,
  weight_decay_mode: str,
  belief: optax.GradientTransformation,
  check_hyperparams: bool = False,
  rounding: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``belief`` between weight decay in ``weight_decay_mode`` and the learning rate.

  The ``optax.chain`` of ``[l2 decay] -> belief -> [decoupled decay] ->
  scale_by_learning_rate -> [fixed decay] -> [rounding]``, whose updates are
  cast to the gradients' dtype at the end (the chain computes in float32 at
  least): the building block of :func:`~adabelief_jax.adabelief` and of
  :mod:`adabelief_jax.compat`. With
  ``check_hyperparams``, a learning rate or weight decay that is traced (under
  ``optax.inject_hyperparams``) or a schedule is checked each time it is
  evaluated, at every step; numbers are checked here.
  """
  _checks.check_scalar('learning_rate', learning_rate)
  _checks.check_scalar('weight_decay', weight_decay)
  _checks.check_mask_type(weight_decay_mask)
  if weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(
      f'weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}.'
    )
  # Numbers were checked above; values that change at run time are checked as
  # they are evaluated (the state of a chain with numbers stays as it is).
  runtime = lambda value: check_hyperparams and (callable(value) or isinstance(value, jax.Array))
  if runtime(learning_rate):
    learning_rate = _checked('learning_rate', learning_rate)
  if runtime(weight_decay):
    weight_decay = _checked('weight_decay', weight_decay)
  if weight_decay_mode == 'fixed':  # Subtracted after the learning rate: p -= wd * p.
    weight_decay = (
      (lambda count, wd=weight_decay: -wd(count)) if callable(weight_decay) else -weight_decay
    )
  # No decay, no transformation: update(grads, state) then needs no params, as in optax.
  decays = callable(weight_decay) or isinstance(weight_decay, jax.Array) or weight_decay != 0
  decay = [_decayed_weights(weight_decay, weight_decay_mask)] if decays else []
  transforms = [
    *(decay if weight_decay_mode == 'l2' else []),
    belief,
    *(decay if weight_decay_mode == 'decoupled' else []),
    optax.scale_by_learning_rate(learning_rate),
    *(decay if weight_decay_mode == 'fixed' else []),
  ]
  return _chain(transforms, rounding)


def _chain(
  transforms: list[optax.GradientTransformation], rounding: optax.GradientTransformation | None
) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*transforms, rounding)``, whose update first checks that the state is
  its own, and returns the updates in the gradients' dtype.

  Another optimizer's state (``optax.adabelief``'s, or one of another weight
  decay mode) would otherwise meet optax.chain's generic message. The dtype is
  the gradients' for optax's wrappers that choose between the updates and
  zeros like the gradients (``optax.apply_if_finite``); the chain computes in
  float32 at least, so a 16-bit step is rounded once, after the learning rate.
  Without params (optax's ``tx.update(grads, state)``), the rounding of
  16-bit parameters is skipped where the gradients are float32 or wider, and
  refused where they are 16-bit (their parameters most likely are too).
  """
  chain = optax.chain(*transforms)
  full = optax.chain(*transforms, *([rounding] if rounding else []))
  length = len(transforms) + (1 if rounding else 0)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None, **extra: Any
  ) -> tuple[optax.Updates, optax.OptState]:
    if not isinstance(state, tuple) or len(state) != length:
      raise TypeError(
        f'adabelief: the state must be the tuple of {length} states that its init '
        f'made, got {_checks.describe_state(state)}. Build it with tx.init(params), with the '
        'weight_decay, weight_decay_mode and stochastic_rounding it was made with (they '
        "decide the chain), and restore checkpoints into tx.init's structure as target."
      )
    if rounding and params is None:
      if any(jnp.finfo(jnp.asarray(g).dtype).bits < 32 for g in jax.tree.leaves(updates)):
        raise ValueError(
          'adabelief rounds 16-bit parameters stochastically (stochastic_rounding=True) and '
          'needs them: pass params to update (tx.update(grads, state, params)), or '
          'stochastic_rounding=False.'
        )
      out, inner = chain.update(updates, state[:-1], None, **extra)
      state = (*inner, state[-1])  # type: ignore[misc]  # optax.chain's state is a tuple.
    else:
      out, state = full.update(updates, state, params, **extra)
    return jax.tree.map(lambda u, g: u.astype(jnp.asarray(g).dtype), out, updates), state

  return optax.GradientTransformationExtraArgs(full.init, update_fn)


def adabelief(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-16,
  eps_root: chex.Numeric = 1e-16,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  weight_decay_mode: WeightDecayMode = 'decoupled',
  amsgrad: bool = False,
  rectify: bool = False,
  sma_threshold: chex.Numeric = 5.0,
  degenerate_to_sgd: bool = True,
  nesterov: bool = False,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  stochastic_rounding: bool = True,
  rounding_seed: int = 0,
  quantization_block_size: int = 256,
  check_hyperparams: bool = False,
  track_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The AdaBelief optimizer (Zhuang et al., 2020) with weight decay.

  The step is ``-lr * u_t``, with ``u_t`` from
  :func:`adabelief_jax.scale_by_belief` (see it for the update rule), plus
  weight decay ``wd`` (``weight_decay``) in one of three modes:

  * ``"decoupled"`` (default; AdamW's convention and adabelief-pytorch's
    ``weight_decouple=True``): ``p -= lr * (u_t + wd * p)``.
  * ``"fixed"`` (adabelief-pytorch's ``fixed_decay=True``): the decay ignores
    the learning rate, ``p -= lr * u_t + wd * p``.
  * ``"l2"``: classic L2 regularization, ``g += wd * p`` before the moments.

  Args:
    learning_rate: the learning rate ``lr``, a number >= 0 or an optax
      schedule.
    b1: the decay of the first moment, in (0, 1).
    b2: the decay of the second moment of the prediction error, in [0, 1).
    eps: added to ``sqrt(s_hat)``, >= 0 (1e-16 plays the role of
      Adam's 1e-8).
    eps_root: added to ``s_t`` at every step, >= 0 (the paper's epsilon).
    weight_decay: the weight decay ``wd``, a number >= 0 or an optax
      schedule.
    weight_decay_mask: booleans structured like the params (or a prefix of
      them), or a function of the params returning them, ``True`` where the
      decay applies, as in ``optax.add_decayed_weights``.
    weight_decay_mode: ``"decoupled"``, ``"fixed"`` or ``"l2"``, as above.
    amsgrad: if true, the running maximum of ``s`` (AMSGrad).
    rectify: if true, RAdam's variance rectification (the reference packages'
      default; optax has none).
    sma_threshold: the ``rho_t`` from which rectified steps are adaptive,
      a number > 4.
    degenerate_to_sgd: with ``rectify``, the steps before the threshold are
      momentum-SGD steps if true, no steps if false.
    nesterov: if true, Nesterov momentum.
    mu_dtype: how ``m`` is stored: a float dtype (float16 is refused: it
      underflows), or ``'int8'`` for 8-bit blocks; by default float32 for
      16-bit parameters and the parameter's dtype otherwise.
    nu_dtype: how ``s`` is stored, likewise.
    stochastic_rounding: if true, every store into a narrower format rounds
      stochastically (exact in expectation), else to nearest: the moments'
      (``mu_dtype``, ``nu_dtype``), and the parameters' where they are 16-bit,
      by :func:`~adabelief_jax.round_params_stochastically` at the end of the
      chain, so that bfloat16 parameters train without float32 master weights.
      Its updates are exact for float32 gradients; for 16-bit gradients, whose
      dtype the updates take, exact where the rounded parameter minus the old
      one is a 16-bit number (every update below half the parameter), else
      within one 16-bit step of the update.
    rounding_seed: the seed of the rounding bits, an integer in [0, 2^32).
    quantization_block_size: elements per scale of 8-bit moments, along the
      last axis.
    check_hyperparams: if true, the hyperparameters that construction cannot
      check (traced by ``optax.inject_hyperparams``, or schedules of the
      learning rate and the weight decay) are checked at every step by a host
      callback that raises.
    track_stats: if true, the belief statistics of every update are kept in the
      state; read them with :func:`~adabelief_jax.belief_stats`.

  The docstring of :func:`adabelief_jax.scale_by_belief` says more of each
  option from ``amsgrad`` on.

  Returns:
    An ``optax.chain``: ``[l2 decay] -> scale_by_belief -> [decoupled decay] ->
    scale_by_learning_rate -> [fixed decay] -> [round_params_stochastically]``
    (the decay where ``weight_decay`` is not 0, the rounding with
    ``stochastic_rounding``), computed in float32 at least and returning its
    updates in the gradients' dtype. ``update`` needs the params for weight
    decay and for 16-bit gradients with ``stochastic_rounding``.

  Example:
    >>> import jax.numpy as jnp, optax, adabelief_jax
    >>> tx = adabelief_jax.adabelief(1e-3, weight_decay=1e-4)
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones(3)}, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  belief = scale_by_belief_from(
    BeliefHyperparams(
      b1=b1,
      b2=b2,
      eps=eps,
      eps_root=eps_root,
      amsgrad=amsgrad,
      rectify=rectify,
      sma_threshold=sma_threshold,
      degenerate_to_sgd=degenerate_to_sgd,
      nesterov=nesterov,
      mu_dtype=mu_dtype,
      nu_dtype=nu_dtype,
      stochastic_rounding=stochastic_rounding,
      rounding_seed=rounding_seed,
      quantization_block_size=quantization_block_size,
      check_hyperparams=check_hyperparams,
      track_stats=track_stats,
      compute_dtype_updates=True,
    )
  )
  rounding = round_params_stochastically(rounding_seed) if stochastic_rounding else None
  return chain_with_weight_decay(
    learning_rate,
    weight_decay,
    weight_decay_mask,
    weight_decay_mode,
    belief,
    check_hyperparams,
    rounding,
  )
