"""compat.adabelief_tf against the float64 oracle (TensorFlow itself is not installed here).

adabelief-tf 0.2.1 follows the paper's form: epsilon in s and outside the
bias-corrected root, decoupled decay scaled by the learning rate, SGD steps
before the rectification threshold, and an optional warm-up/decay schedule.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adabelief_jax import compat
from tests import reference
from tests.helpers import leaves64, random_grads, relative_error, tree_of
from tests.test_alias import run_steps


@pytest.mark.parametrize(
  'options',
  [dict(), dict(rectify=False), dict(amsgrad=True), dict(amsgrad=True, sma_threshold=6.0)],
)
def test_matches_oracle(options):
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 60, seed=21)
  tx = compat.adabelief_tf(learning_rate=1e-2, epsilon=1e-10, weight_decay=0.05, **options)
  tf_defaults = dict(rectify=True, amsgrad=False, sma_threshold=5.0)
  oracle = reference.AdaBeliefOracle(
    leaves64(params),
    learning_rate=1e-2,
    eps=1e-10,
    eps_root=1e-10,
    weight_decay=0.05,
    weight_decay_mode='decoupled',
    **{**tf_defaults, **options},
  )
  for step, ((before, updates, _), grads) in enumerate(
    zip(run_steps(tx, params, grads_seq), grads_seq), start=1
  ):
    _, want = oracle.step(leaves64(before), leaves64(grads))
    assert relative_error(jax.tree.leaves(updates), want) < 1e-5, step


def test_warmup_then_linear_decay_schedule():
  # total_steps=100, warm-up 10% -> lr rises to 1e-2 at step 10, then falls to min_lr at 100.
  lr = compat._tf_learning_rate(1e-2, 100, 0.1, 1e-4)
  t = np.arange(1, 101)
  want = np.where(t <= 10, 1e-2 * t / 10, 1e-2 + (1e-4 - 1e-2) / 90 * np.minimum(t - 10, 90))
  # float32, as the reference computes it: errors of 1e-6 of the peak rate near min_lr.
  np.testing.assert_allclose([float(lr(k)) for k in range(100)], want, rtol=1e-6, atol=1e-8)
  assert compat._tf_learning_rate(1e-2, 0, 0.1, 0.0) == 1e-2


def test_defaults_are_the_reference_defaults():
  defaults = {k: v.default for k, v in inspect.signature(compat.adabelief_tf).parameters.items()}
  assert defaults == dict(
    learning_rate=1e-3,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-14,
    weight_decay=0.0,
    rectify=True,
    amsgrad=False,
    sma_threshold=5.0,
    total_steps=0,
    warmup_proportion=0.1,
    min_lr=0.0,
  )


@pytest.mark.parametrize(
  'kwargs,name',
  [
    (dict(beta_1=1.0), 'beta_1'),
    (dict(epsilon=-1.0), 'epsilon'),
    (dict(learning_rate=-1.0), 'learning_rate'),
    (dict(total_steps=10, warmup_proportion=-0.1), 'warmup_proportion'),
    (dict(total_steps=10, warmup_proportion=1.5), 'warmup_proportion'),
    # Numbers in the reference, which calls no schedule for them.
    (dict(total_steps=10, warmup_proportion=lambda k: 0.1), 'warmup_proportion'),
    (dict(total_steps=10, min_lr=lambda k: 0.0), 'min_lr'),
  ],
)
def test_invalid_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    compat.adabelief_tf(**kwargs)


def _reference_lr(
  k: int, lr: float, total_steps: int, warmup_proportion: float, min_lr: float
) -> float:
  """adabelief-tf 0.2.1's learning rate at iteration k (from 0), in float64: the
  step's lr (a schedule's value) warmed up, then decayed linearly to min_lr."""
  t, warmup = k + 1, total_steps * warmup_proportion
  decay_steps = max(total_steps - warmup, 1)
  if t <= warmup:
    return lr * t / warmup
  return lr + (min_lr - lr) / decay_steps * min(t - warmup, decay_steps)


@pytest.mark.parametrize('warmup_proportion', [0.25, 0.0], ids=['warmup', 'decay-only'])
def test_learning_rate_schedule_with_total_steps_matches_oracle(warmup_proportion):
  """A schedule's value at each step is warmed up and decayed, as the reference does
  with a Keras schedule (it was a TypeError); warmup_proportion=0 is the
  reference's decay only (it was refused)."""
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 24, seed=5)
  schedule = lambda k: 1e-2 * 0.9 ** (k // 4)  # A step decay, through optax's count.
  options = dict(total_steps=20, warmup_proportion=warmup_proportion, min_lr=1e-4)
  tx = compat.adabelief_tf(learning_rate=schedule, epsilon=1e-10, weight_decay=0.05, **options)
  oracle = reference.AdaBeliefOracle(
    leaves64(params),
    learning_rate=lambda k: _reference_lr(k, schedule(k), **options),
    eps=1e-10,
    eps_root=1e-10,
    weight_decay=0.05,
    weight_decay_mode='decoupled',
    rectify=True,
  )
  for step, ((before, updates, _), grads) in enumerate(
    zip(run_steps(tx, params, grads_seq), grads_seq), start=1
  ):
    _, want = oracle.step(leaves64(before), leaves64(grads))
    assert relative_error(jax.tree.leaves(updates), want) < 1e-5, step


@pytest.mark.parametrize('total_steps', [None, '10', 10.5, -1, True, (10,)])
def test_total_steps_that_is_no_whole_number_is_refused_by_name(total_steps):
  """(None and '10' were TypeErrors from a comparison, 10.5 and -1 passed.)"""
  with pytest.raises(ValueError) as info:
    compat.adabelief_tf(total_steps=total_steps)
  assert 'total_steps' in str(info.value) and repr(total_steps) in str(info.value)


def test_total_steps_as_any_whole_number_is_the_int():
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 1, seed=6)
  run = lambda n: [
    u for _, u, _ in run_steps(compat.adabelief_tf(1e-2, total_steps=n), params, grads_seq)
  ]
  want = run(20)  # Step 1 of a 2-step warm-up: half the rate.
  chex.assert_trees_all_close(want, jax.tree.map(lambda u: u / 2, run(0)), rtol=1e-6)
  for total_steps in (np.int64(20), jnp.asarray(20), 20.0):
    chex.assert_trees_all_equal(run(total_steps), want)


def test_under_inject_hyperparams_total_steps_is_static():
  """inject_hyperparams traces every number: a traced total_steps is refused with the
  cure (it was a TracerBoolConversionError), and with it static the optimizer,
  its warm-up traced, is the plain one."""
  params = tree_of(np.float32)
  grads_seq = random_grads(params, 4, seed=7)
  options = dict(learning_rate=1e-2, total_steps=20, warmup_proportion=0.2, min_lr=1e-3)
  injected = optax.inject_hyperparams(compat.adabelief_tf)(**options)
  with pytest.raises(TypeError, match="static_args=\\('total_steps',\\)"):
    run_steps(injected, params, grads_seq[:1])  # Traced in the jitted update.
  injected = optax.inject_hyperparams(compat.adabelief_tf, static_args=('total_steps',))(**options)
  runs = [run_steps(tx, params, grads_seq) for tx in (injected, compat.adabelief_tf(**options))]
  for (_, got, _), (_, want, _) in zip(*runs):
    chex.assert_trees_all_close(got, want, rtol=1e-6)
