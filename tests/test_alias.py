"""Tests of adabelief_jax.adabelief: weight-decay modes, schedules, injection, convergence."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adabelief_jax
from tests import reference
from tests.helpers import leaves64, maybe_jit, random_grads, relative_error, tree_of

STEPS = 100


def run_params(tx, params, grads_seq, jit=True):
  """Parameters after each step of ``tx`` on a fixed gradient sequence."""
  return [after for _, _, after in run_steps(tx, params, grads_seq, jit)]


def run_steps(tx, params, grads_seq, jit=True):
  """(params before, update, params after) for each step of ``tx``."""
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return updates, optax.apply_updates(params, updates), state

  step = maybe_jit(step, jit)
  out = []
  for grads in grads_seq:
    updates, new_params, state = step(params, state, grads)
    out.append((params, updates, new_params))
    params = new_params
  return out


def assert_matches_oracle(tx, params, grads_seq, **kwargs):
  """Each step's update equals the float64 oracle's from the same parameters.

  The oracle is fed our parameters before every step, so the comparison is of
  the step alone (relative error < 1e-5), not of accumulated rounding.
  """
  oracle = reference.AdaBeliefOracle(leaves64(params), **kwargs)
  for step, ((before, updates, _), grads) in enumerate(
    zip(run_steps(tx, params, grads_seq), grads_seq), start=1
  ):
    _, want = oracle.step(leaves64(before), leaves64(grads))
    err = relative_error(jax.tree.leaves(updates), want)
    assert err < 1e-5, f'step {step}: relative error of the step {err:.3g}'


MODES = ['decoupled', 'fixed', 'l2']


def variants(combined_id: str, **combined) -> list:
  """pytest params of ``options``: none, amsgrad, rectify and nesterov alone, then ``combined``.

  Each has its name as id; the combination has ``combined_id``.
  """
  alone = {name: {name: True} for name in ('amsgrad', 'rectify', 'nesterov')}
  named = {'plain': {}, **alone, combined_id: combined}
  return [pytest.param(options, id=name) for name, options in named.items()]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize(
  'options', variants('rectify-nosgd-amsgrad', rectify=True, degenerate_to_sgd=False, amsgrad=True)
)
def test_weight_decay_modes_match_oracle(mode, options):
  params = tree_of(np.float32)
  grads_seq = random_grads(params, STEPS, seed=11)
  kwargs = dict(learning_rate=1e-2, weight_decay=0.1, weight_decay_mode=mode, **options)
  assert_matches_oracle(adabelief_jax.adabelief(**kwargs), params, grads_seq, **kwargs)


def test_weight_decay_mask():
  params = tree_of(np.float32)
  mask = {'dense': {'kernel': True, 'bias': False}, 'scale': False}
  grads_seq = random_grads(params, 20, seed=12)
  tx = adabelief_jax.adabelief(1e-2, weight_decay=0.5, weight_decay_mask=mask)
  assert_matches_oracle(
    tx,
    params,
    grads_seq,
    learning_rate=1e-2,
    weight_decay=0.5,
    weight_decay_mask=jax.tree.leaves(mask),
  )


def test_schedules_for_learning_rate_and_weight_decay():
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 30, seed=13)
  lr = optax.linear_schedule(1e-2, 1e-3, 30)
  wd = optax.exponential_decay(0.1, 10, 0.5)
  for mode in MODES:
    tx = adabelief_jax.adabelief(lr, weight_decay=wd, weight_decay_mode=mode)
    assert_matches_oracle(
      tx,
      params,
      grads_seq,
      learning_rate=lambda k: float(lr(k)),
      weight_decay=lambda k: float(wd(k)),
      weight_decay_mode=mode,
    )


@pytest.mark.parametrize('jit', [False, True])
def test_inject_hyperparams(jit):
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 5, seed=14)
  make = optax.inject_hyperparams(adabelief_jax.adabelief)
  tx = make(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, amsgrad=True)
  constant = adabelief_jax.adabelief(1e-2, eps=1e-8, weight_decay=0.1, amsgrad=True)
  assert (
    relative_error(
      run_params(tx, params, grads_seq, jit)[-1], run_params(constant, params, grads_seq, jit)[-1]
    )
    < 1e-6
  )
  # Changing an injected value changes the step.
  update = maybe_jit(tx.update, jit)
  state = tx.init(params)
  for grads in grads_seq[:2]:  # at step 1, b2 cancels out of the update
    _, state = update(grads, state, params)
  u1, _ = update(grads_seq[2], state, params)
  for name, value in [
    ('learning_rate', 2e-2),
    ('b1', 0.5),
    ('b2', 0.9),
    ('eps', 1.0),
    ('weight_decay', 0.0),
  ]:
    changed = state._replace(hyperparams={**state.hyperparams, name: jnp.asarray(value)})
    u2, _ = update(grads_seq[2], changed, params)
    assert not np.allclose(u1['dense']['kernel'], u2['dense']['kernel']), name
  doubled = state._replace(hyperparams={**state.hyperparams, 'learning_rate': jnp.asarray(2e-2)})
  u3, _ = update(grads_seq[2], doubled, params)
  np.testing.assert_allclose(u3['dense']['kernel'], 2 * u1['dense']['kernel'], rtol=1e-6)


@pytest.mark.parametrize('nesterov', [False, True])
def test_matches_optax_adabelief(nesterov):
  with jax.enable_x64(True):
    params = tree_of(np.float64)
    grads_seq = random_grads(params, STEPS, seed=15)
    ours = run_params(adabelief_jax.adabelief(3e-3, nesterov=nesterov), params, grads_seq)
    theirs = run_params(optax.adabelief(3e-3, nesterov=nesterov), params, grads_seq)
    for a, b in zip(ours, theirs):
      chex.assert_trees_all_close(a, b, rtol=1e-12, atol=0)


def test_decoupled_mode_matches_optax_adamw_convention():
  """decoupled decay == optax's AdamW form: decay added before the learning rate."""
  with jax.enable_x64(True):
    params = tree_of(np.float64)
    grads_seq = random_grads(params, 20, seed=16)
    ours = run_params(adabelief_jax.adabelief(1e-2, weight_decay=0.1), params, grads_seq)
    chained = optax.chain(
      optax.scale_by_belief(), optax.add_decayed_weights(0.1), optax.scale_by_learning_rate(1e-2)
    )
    theirs = run_params(chained, params, grads_seq)
    for a, b in zip(ours, theirs):
      chex.assert_trees_all_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
  'kwargs,name',
  [
    (dict(learning_rate=-1.0), 'learning_rate'),
    (dict(learning_rate=1e-3, weight_decay=-0.1), 'weight_decay'),
    (dict(learning_rate=1e-3, weight_decay_mode='adamw'), 'weight_decay_mode'),
    (dict(learning_rate=1e-3, b2=1.0), 'b2'),
    (dict(learning_rate=1e-3, sma_threshold=3), 'sma_threshold'),
  ],
)
def test_invalid_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name) as info:
    adabelief_jax.adabelief(**kwargs)
  assert repr(kwargs[name]) in str(info.value)


@pytest.mark.parametrize(
  'options', variants('rectify-amsgrad-nesterov', rectify=True, amsgrad=True, nesterov=True)
)
def test_converges_on_quadratic(options):
  target = jnp.array([1.0, -2.0, 3.0, 0.5])
  scales = jnp.array([1.0, 10.0, 0.1, 3.0])
  loss = lambda p: jnp.sum(scales * (p['x'] - target) ** 2)
  tx = adabelief_jax.adabelief(optax.cosine_decay_schedule(0.1, 2000), **options)
  params = {'x': jnp.zeros(4)}

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=2000)
  np.testing.assert_allclose(params['x'], target, atol=1e-3)


def test_converges_on_rosenbrock():
  rosenbrock = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
  tx = adabelief_jax.adabelief(optax.exponential_decay(3e-2, 2000, 0.3), b1=0.9, b2=0.999)
  x = jnp.array([-1.5, 2.0])

  def step(carry, _):
    x, state = carry
    updates, state = tx.update(jax.grad(rosenbrock)(x), state, x)
    return (optax.apply_updates(x, updates), state), None

  (x, _), _ = jax.lax.scan(step, (x, tx.init(x)), length=8000)
  assert float(rosenbrock(x)) < 1e-6
  np.testing.assert_allclose(x, [1.0, 1.0], atol=2e-3)


def test_version_is_exported():
  assert isinstance(adabelief_jax.__version__, str) and adabelief_jax.__version__
