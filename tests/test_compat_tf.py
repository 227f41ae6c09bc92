"""compat.adabelief_tf against the float64 oracle (TensorFlow itself is not installed here).

adabelief-tf 0.2.1 follows the paper's form: epsilon in s and outside the
bias-corrected root, decoupled decay scaled by the learning rate, SGD steps
before the rectification threshold, and an optional warm-up/decay schedule.
"""

import inspect

import jax
import numpy as np
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
    (dict(total_steps=10, warmup_proportion=0.0), 'warmup_proportion'),
  ],
)
def test_invalid_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    compat.adabelief_tf(**kwargs)
