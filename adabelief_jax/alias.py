"""`adabelief`: the ready-to-use optimizer, an Optax chain around scale_by_belief."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Unpack, get_args

import chex
import jax
import optax

from adabelief_jax import _checks, diagnostics
from adabelief_jax._hyperparams import (
  DEFAULTS,
  BeliefHyperparams,
  BeliefOptions,
  takes_belief_options,
)
from adabelief_jax.transform import ScaleByBeliefState, scale_by_belief_from

WeightDecayMode = Literal['decoupled', 'fixed', 'l2']
WEIGHT_DECAY_MODES: tuple[str, ...] = get_args(WeightDecayMode)


def _negated(value: Any) -> Any:
  """``-value`` for a number, ``lambda count: -value(count)`` for a schedule."""
  if callable(value):
    return lambda count: -value(count)
  return -value


def _decayed_weights(weight_decay: Any, mask: Any) -> optax.GradientTransformation:
  """``optax.add_decayed_weights``, whose init checks ``mask`` against the params.

  A mask of the wrong structure, or of non-booleans, would otherwise fail in
  the update with an error that names neither the mask nor the leaf.
  """
  inner = optax.add_decayed_weights(weight_decay, mask)

  def init_fn(params: optax.Params) -> optax.OptState:
    if mask is not None:
      _checks.check_mask(mask(params) if callable(mask) else mask, params)
    return inner.init(params)

  return optax.GradientTransformation(init_fn, inner.update)


def _checked(
  chain: optax.GradientTransformationExtraArgs,
  weight_decay_mode: str,
  runtime_values: dict[str, Any] | None,
  stats_tail: optax.GradientTransformation | None,
) -> optax.GradientTransformationExtraArgs:
  """``chain``, whose update first checks that the state has this mode's layout.

  The 'l2' chain starts with the decay, the others with the belief state: a
  state of the other layout is named as such, not left to fail as an
  EmptyState where a ScaleByBeliefState was expected. With
  ``runtime_values``, a host callback checks them at every step; with
  ``stats_tail`` (the transformations after the belief, which track its
  statistics), the statistics' update sizes are those of the whole step.
  """
  belief_at = 1 if weight_decay_mode == 'l2' else 0

  def update_fn(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
    found = [
      i
      for i, s in enumerate(state if isinstance(state, tuple | list) else ())
      if isinstance(s, ScaleByBeliefState)
    ]
    if found and found != [belief_at]:
      made = "'l2'" if found == [1] else "'decoupled' or 'fixed'"
      raise ValueError(
        f'adabelief: weight_decay_mode={weight_decay_mode!r}, but the state was made with '
        f'weight_decay_mode={made}. Build the state with this optimizer (tx.init(params)), '
        'or construct the optimizer with the mode the state was made with.'
      )
    if runtime_values is not None:
      jax.debug.callback(_checks.raise_if_invalid, runtime_values)
    tail_state = tuple(state[belief_at + 1 :])
    grads = updates
    updates, state = chain.update(updates, state, params, **extra)
    if stats_tail is not None:
      belief = state[belief_at]
      stats = diagnostics.with_final_step(belief.stats, grads, stats_tail, tail_state)
      state = (*state[:belief_at], belief._replace(stats=stats), *state[belief_at + 1 :])
    return updates, state

  return optax.GradientTransformationExtraArgs(chain.init, update_fn)


def chain_with_weight_decay(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  weight_decay_mask: Any,
  weight_decay_mode: str,
  belief: optax.GradientTransformation,
  check_hyperparams: bool = False,
  track_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """``belief`` between weight decay in ``weight_decay_mode`` and the learning rate.

  The chain is ``[l2 decay] -> belief -> [decoupled decay] ->
  scale_by_learning_rate -> [fixed decay]``: the building block of
  :func:`~adabelief_jax.adabelief` and of :mod:`adabelief_jax.compat`. With
  ``check_hyperparams``, numeric (not scheduled) learning rate and weight
  decay are checked at every step as well; with ``track_stats`` (``belief``
  made so), the statistics measure the chain's whole step.
  """
  _checks.check_nonnegative('learning_rate', learning_rate)
  _checks.check_nonnegative('weight_decay', weight_decay)
  if weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(
      f'weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}.'
    )
  # A fixed decay is subtracted after the learning rate: p -= wd * p.
  decay = _decayed_weights(
    _negated(weight_decay) if weight_decay_mode == 'fixed' else weight_decay,
    weight_decay_mask,
  )
  tail = [
    *([decay] if weight_decay_mode == 'decoupled' else []),
    optax.scale_by_learning_rate(learning_rate),
    *([decay] if weight_decay_mode == 'fixed' else []),
  ]
  chain = optax.chain(*([decay] if weight_decay_mode == 'l2' else []), belief, *tail)
  values = {'learning_rate': learning_rate, 'weight_decay': weight_decay}
  numeric = {k: v for k, v in values.items() if not callable(v)}
  runtime = numeric if check_hyperparams else None
  stats_tail = optax.chain(*tail) if track_stats else None
  return _checked(chain, weight_decay_mode, runtime, stats_tail)


@takes_belief_options
def adabelief(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = DEFAULTS.b1,
  b2: chex.Numeric = DEFAULTS.b2,
  eps: chex.Numeric = DEFAULTS.eps,
  eps_root: chex.Numeric = DEFAULTS.eps_root,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  weight_decay_mode: WeightDecayMode = 'decoupled',
  **options: Unpack[BeliefOptions],
) -> optax.GradientTransformationExtraArgs:
  r"""The AdaBelief optimizer (Zhuang et al., 2020) with weight decay.

  The step is :math:`-\eta_t u_t` with :math:`u_t` from
  :func:`adabelief_jax.scale_by_belief` (see it for the update rule), plus
  weight decay :math:`\lambda` in one of three modes:

  * ``"decoupled"`` (default; AdamW's convention and adabelief-pytorch's
    ``weight_decouple=True``): :math:`p \leftarrow p - \eta_t (u_t + \lambda p)`.
  * ``"fixed"`` (adabelief-pytorch's ``fixed_decay=True``): the decay ignores
    the learning rate, :math:`p \leftarrow p - \eta_t u_t - \lambda p`.
  * ``"l2"``: classic L2 regularization, :math:`g \leftarrow g + \lambda p`
    before the moments.

  Args:
    learning_rate: :math:`\eta`, a non-negative number or an optax schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment of the prediction error, in [0, 1).
    eps: added to :math:`\sqrt{\hat s_t}`, >= 0 (1e-16 ~ Adam's 1e-8 squared).
    eps_root: added to :math:`s_t` every step, >= 0 (the paper's epsilon).
    weight_decay: :math:`\lambda`, a non-negative number or a schedule.
    weight_decay_mask: booleans shaped like the params (or a function of them
      returning those), ``True`` where decay applies, as optax's.
    weight_decay_mode: ``"decoupled"``, ``"fixed"`` or ``"l2"``.

  Returns:
    An ``optax.chain``: ``[l2 decay] -> scale_by_belief -> [decoupled decay] ->
    scale_by_learning_rate -> [fixed decay]``.

  Example:
    >>> import jax.numpy as jnp, optax, adabelief_jax
    >>> tx = adabelief_jax.adabelief(1e-3, weight_decay=1e-4)
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones(3)}, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  belief = scale_by_belief_from(
    BeliefHyperparams(b1=b1, b2=b2, eps=eps, eps_root=eps_root, **options)
  )
  return chain_with_weight_decay(
    learning_rate,
    weight_decay,
    weight_decay_mask,
    weight_decay_mode,
    belief,
    options.get('check_hyperparams', False),
    options.get('track_stats', False),
  )
