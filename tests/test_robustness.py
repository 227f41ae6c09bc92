"""Bad input gets an error that names the argument or leaf; faults never freeze training silently.

Each test is one way a user (or a checkpoint, or a data pipeline) hands the
optimizer something wrong, and what must happen instead of a silent failure.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adabelief_jax
from adabelief_jax import compat, scale_by_belief

# --- hyperparameters ------------------------------------------------------------


@pytest.mark.parametrize(
  'kwargs,name',
  [
    (dict(learning_rate=float('inf')), 'learning_rate'),
    (dict(learning_rate=float('nan')), 'learning_rate'),
    (dict(learning_rate=1e-3, weight_decay=float('inf')), 'weight_decay'),
    (dict(learning_rate=1e-3, eps=float('inf')), 'eps'),
    (dict(learning_rate=1e-3, eps_root=float('inf')), 'eps_root'),
    (dict(learning_rate=1e-3, eps_root=float('nan')), 'eps_root'),
    (dict(learning_rate=1e-3, sma_threshold=float('inf')), 'sma_threshold'),
    (dict(learning_rate=1e-3, b1=0.0), 'b1'),
    (dict(learning_rate=1e-3, b1=True), 'b1'),
  ],
)
def test_non_finite_and_degenerate_hyperparameters_are_refused(kwargs, name):
  with pytest.raises(ValueError, match=name) as info:
    adabelief_jax.adabelief(**kwargs)
  assert str(kwargs[name]) in str(info.value)


def test_b1_zero_error_says_why():
  with pytest.raises(ValueError, match='prediction error'):
    scale_by_belief(b1=0.0)


@pytest.mark.parametrize('betas', [0.9, (0.9,), (0.9, 0.999, 0.5), 'ab', (0.0, 0.999)])
def test_compat_betas_must_be_a_pair(betas):
  with pytest.raises(ValueError, match='betas'):
    compat.adabelief_pytorch(betas=betas)


# --- inputs the optimizer meets in init and update ----------------------------


def test_python_and_numpy_scalars_are_leaves_like_arrays():
  """optax accepts Python floats and NumPy arrays as leaves: so do we, with equal steps."""
  tx = adabelief_jax.adabelief(1e-2)
  mixed = {'a': 1.0, 'b': np.ones(3, np.float32)}
  arrays = {'a': jnp.asarray(1.0), 'b': jnp.ones(3)}
  u_mixed, _ = tx.update({'a': 0.5, 'b': np.full(3, 0.5, np.float32)}, tx.init(mixed), mixed)
  u_arrays, _ = tx.update({'a': jnp.asarray(0.5), 'b': jnp.full(3, 0.5)}, tx.init(arrays), arrays)
  chex.assert_trees_all_close(u_mixed, u_arrays, rtol=0, atol=0)


def test_state_shape_mismatch_names_the_leaf_and_both_shapes():
  tx = scale_by_belief()
  state = tx.init({'layer': {'w': jnp.ones(3)}})
  with pytest.raises(ValueError, match=r"\['layer'\]\['w'\].*\(3, 1\).*\(3,\)"):
    jax.jit(tx.update)({'layer': {'w': jnp.ones((3, 1))}}, state)


def test_complex_gradient_for_a_real_parameter_names_the_leaf():
  tx = scale_by_belief()
  state = tx.init({'w': jnp.ones(3)})
  with pytest.raises(TypeError, match=r"\['w'\] is complex"):
    tx.update({'w': jnp.ones(3, jnp.complex64)}, state)


@pytest.mark.parametrize('dtype', [jnp.complex64, 'complex64'])
def test_complex_mu_dtype_for_real_parameters_is_refused(dtype):
  """It would hold a zero imaginary half: twice the memory for nothing."""
  tx = scale_by_belief(mu_dtype=dtype)
  with pytest.raises(ValueError, match=r"mu_dtype=complex.*params\['w'\] is real"):
    tx.init({'w': jnp.ones(3), 'z': jnp.ones(3, jnp.complex64)})
  assert tx.init({'z': jnp.ones(3, jnp.complex64)}).mu['z'].dtype == jnp.complex64


def test_int8_mu_for_complex_parameters_is_refused():
  with pytest.raises(ValueError, match='complex'):
    scale_by_belief(mu_dtype='int8').init({'z': jnp.ones((64, 128), jnp.complex64)})


@pytest.mark.parametrize(
  'mask',
  [
    {'w': True},  # A key missing.
    {'w': True, 'b': True, 'extra': False},
    {'w': 1.0, 'b': True},  # Not a boolean.
    lambda params: {'w': True},
  ],
  ids=['missing', 'extra', 'float', 'callable'],
)
def test_weight_decay_mask_errors_name_the_mask(mask):
  params = {'w': jnp.ones(3), 'b': jnp.ones(2)}
  tx = adabelief_jax.adabelief(1e-3, weight_decay=1e-2, weight_decay_mask=mask)
  with pytest.raises(ValueError, match='weight_decay_mask'):
    tx.init(params)


# --- a state from another configuration --------------------------------------


@pytest.mark.parametrize(
  'made,used,name',
  [
    (dict(amsgrad=False), dict(amsgrad=True), 'amsgrad'),
    (dict(amsgrad=True), dict(amsgrad=False), 'amsgrad'),
    (dict(), dict(mu_dtype='bfloat16'), 'mu_dtype'),
    (dict(nu_dtype='int8'), dict(nu_dtype='float32'), 'nu_dtype'),
    (dict(), dict(mu_dtype='int8'), 'mu_dtype'),
  ],
)
def test_state_of_another_configuration_names_the_option(made, used, name):
  params = {'w': jnp.ones((64, 128))}
  state = adabelief_jax.adabelief(1e-3, **made).init(params)
  with pytest.raises(ValueError, match=name) as info:
    adabelief_jax.adabelief(1e-3, **used).update(params, state, params)
  assert 'tx.init(params)' in str(info.value)


@pytest.mark.parametrize('track_stats', [False, True])
@pytest.mark.parametrize('made,used', [('l2', 'decoupled'), ('fixed', 'l2')])
@pytest.mark.parametrize(
  'weight_decay', [0.1, optax.constant_schedule(0.1)], ids=['number', 'schedule']
)
def test_state_of_another_weight_decay_mode_names_the_mode(made, used, track_stats, weight_decay):
  """The 'l2' chain puts the decay's state first: a state of another mode puts
  the decay's state (empty, or a schedule's count) where the belief state
  belongs, with or without statistics."""
  params = {'w': jnp.ones(3)}
  make = lambda mode: adabelief_jax.adabelief(
    1e-3, weight_decay=weight_decay, weight_decay_mode=mode, track_stats=track_stats
  )
  state = make(made).init(params)
  with pytest.raises(TypeError, match=r"got optax\.\w+\. .*another weight_decay_mode \('l2'"):
    make(used).update(params, state, params)


def test_checkpoint_restored_without_a_target_says_how_to_restore():
  """An orbax restore with no target gives dicts and lists where the state had NamedTuples."""
  params = {'w': jnp.ones(3)}
  tx = scale_by_belief()
  restored = dict(tx.init(params)._asdict())
  with pytest.raises(TypeError, match='target'):
    tx.update(params, restored)


# --- hyperparameters that escape the checks: traced ones ----------------------


def test_check_hyperparams_catches_a_traced_b2_of_one():
  """Under inject_hyperparams b2 is traced: b2 = 1 freezes the parameters with a
  finite, zero update, unless check_hyperparams raises at the step."""
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.full(3, 0.1)}
  for check in (False, True):
    tx = optax.inject_hyperparams(adabelief_jax.adabelief)(1e-2, check_hyperparams=check)
    state = tx.init(params)
    state.hyperparams['b2'] = jnp.asarray(1.0)
    update = jax.jit(tx.update)
    if not check:
      u, _ = update(grads, state, params)
      assert np.all(np.asarray(u['w']) == 0), 'the silent freeze this option exists for'
      continue
    with pytest.raises(Exception, match=re.escape('b2 = 1.0')):
      jax.block_until_ready(update(grads, state, params))
    state.hyperparams['b2'] = jnp.asarray(0.999)
    state.hyperparams['learning_rate'] = jnp.asarray(-1.0)
    with pytest.raises(Exception, match=re.escape('learning_rate = -1.0')):
      jax.block_until_ready(update(grads, state, params))


# --- faults in the gradients ----------------------------------------------------


def _train(tx, grads_seq, params):
  state, update = tx.init(params), jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_without_the_recipe_one_bad_gradient_poisons_or_freezes_for_good():
  """What the README's recipe is for (optax.adam does the same): one NaN element
  makes its moments NaN forever; a burst of 1e20, whose (g - m)^2 overflows
  float32, makes s infinite, and every later step of that leaf exactly zero."""
  params = {'w': jnp.ones(4)}
  normal = [{'w': jnp.full(4, 0.1)}] * 3
  nan = {'w': jnp.array([0.1, jnp.nan, 0.1, 0.1])}
  burst = {'w': jnp.full(4, 1e20)}
  tx = adabelief_jax.adabelief(1e-2)
  poisoned, _ = _train(tx, normal + [nan] + normal * 10, params)
  assert np.isnan(np.asarray(poisoned['w'][1]))
  frozen, _ = _train(tx, normal + [burst], params)
  after, _ = _train(tx, normal + [burst] + normal * 30, params)
  np.testing.assert_array_equal(after['w'], frozen['w'])


def test_the_recipe_skips_bad_steps_and_never_freezes():
  """apply_if_finite(chain(clip_by_global_norm, adabelief)): a NaN gradient is
  skipped with the state intact, a burst is clipped, and training goes on."""
  params = {'w': jnp.ones(4)}
  normal = [{'w': jnp.full(4, 0.1)}] * 3
  nan = {'w': jnp.array([0.1, jnp.nan, 0.1, 0.1])}
  burst = {'w': jnp.full(4, 1e20)}
  recipe = optax.apply_if_finite(
    optax.chain(optax.clip_by_global_norm(1.0), adabelief_jax.adabelief(1e-2)),
    max_consecutive_errors=5,
  )
  clean, clean_state = _train(recipe, normal * 2, params)
  skipped, skipped_state = _train(recipe, normal + [nan] + normal, params)
  chex.assert_trees_all_close(skipped, clean, rtol=1e-6)
  assert int(skipped_state.total_notfinite) == 1
  chex.assert_trees_all_close(skipped_state.inner_state, clean_state.inner_state, rtol=1e-6)
  before, _ = _train(recipe, normal + [burst], params)
  after, state = _train(recipe, normal + [burst] + normal * 30, params)
  assert np.all(np.isfinite(np.asarray(after['w'])))
  assert np.max(np.abs(np.asarray(after['w']) - np.asarray(before['w']))) > 1e-3  # Not frozen.
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))


def test_check_hyperparams_keeps_the_state_of_number_hyperparameters():
  """Numbers are checked when the optimizer is built: checking them again at run
  time would change the state's structure (a schedule's count) with a debug flag."""
  params = {'w': jnp.ones(3)}
  for kwargs in (dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, weight_decay_mode='l2')):
    plain = adabelief_jax.adabelief(1e-3, **kwargs).init(params)
    checked = adabelief_jax.adabelief(1e-3, check_hyperparams=True, **kwargs).init(params)
    assert jax.tree.structure(plain) == jax.tree.structure(checked), kwargs


@pytest.mark.parametrize('name', ['learning_rate', 'weight_decay'])
def test_check_hyperparams_checks_what_a_schedule_gives(name):
  """A schedule that turns negative (or NaN) at step 2 is caught at step 2."""
  params, grads = {'w': jnp.ones(3)}, {'w': jnp.full(3, 0.1)}
  schedule = lambda count: jnp.where(count >= 2, -1.0, 1e-3)
  kwargs = {'learning_rate': 1e-3, 'weight_decay': 1e-4, name: schedule}
  tx = adabelief_jax.adabelief(**kwargs, check_hyperparams=True)
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(2):
    _, state = update(grads, state, params)
  with pytest.raises(Exception, match=re.escape(f'{name} = -1.0')):
    jax.block_until_ready(update(grads, state, params))


# --- the second hardening pass (issue 17) ----------------------------------------


def test_16bit_steps_do_not_overflow_before_the_learning_rate():
  """A predictable gradient makes the unscaled step g / sqrt(eps_root / (1 - b2)),
  about 3e7 here, past float16's 65504: the step stays float32 until the learning
  rate scales it, so float16 parameters end as float32 arithmetic rounded once."""
  grads = {'w': jnp.full(4, 0.1, jnp.float16)}
  tx = adabelief_jax.adabelief(1e-7, b2=0.9)
  p16, _ = _train(tx, [grads] * 300, {'w': jnp.ones(4, jnp.float16)})
  p32, _ = _train(
    tx, [jax.tree.map(lambda g: g.astype(jnp.float32), grads)] * 300, {'w': jnp.ones(4)}
  )
  assert np.all(np.isfinite(np.asarray(p16['w'], np.float32)))
  # Each step of 1e-7 * 3e7 = 3 changes a float16 parameter at 1 by whole units.
  np.testing.assert_allclose(np.asarray(p16['w'], np.float32), p32['w'], rtol=2e-3, atol=0.5)
  belief = scale_by_belief(b2=0.9)
  state = belief.init({'w': jnp.ones(4, jnp.float16)})
  for _ in range(300):
    u, state = belief.update(grads, state)
  assert u['w'].dtype == jnp.float32 and np.all(np.abs(np.asarray(u['w'])) > 65504)


@pytest.mark.parametrize('mu_dtype', ['int8', 'bfloat16'])
def test_state_of_another_storage_is_refused_by_default_dtypes(mu_dtype):
  """The default stores float32 or wider: an 8-bit or bfloat16 state is another
  configuration's, not read as if it were one."""
  params = {'w': jnp.ones((64, 128))}
  state = adabelief_jax.adabelief(1e-3, mu_dtype=mu_dtype).init(params)
  with pytest.raises(ValueError, match=r'mu_dtype=None .*the state holds') as info:
    adabelief_jax.adabelief(1e-3).update(params, state, params)
  assert ('8-bit' if mu_dtype == 'int8' else 'bfloat16') in str(info.value)


def test_8bit_codes_cast_by_a_tree_map_are_refused():
  """jax.tree.map(astype) keeps the QuantizedMoment but turns its codes into floats,
  which would be read as moment values."""
  params = {'w': jnp.ones((64, 128))}
  tx = adabelief_jax.adabelief(1e-3, mu_dtype='int8', nu_dtype='int8')
  state = jax.tree.map(lambda x: x.astype(jnp.float32), tx.init(params))
  with pytest.raises(ValueError, match='codes are float32'):
    tx.update(params, state, params)


def test_a_mask_function_under_inject_hyperparams_is_refused():
  """inject_hyperparams calls a callable weight_decay_mask with the step count:
  the 'mask' is one boolean, and weight decay would silently stop."""
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  params = {'w': jnp.ones((4, 3))}
  injected = optax.inject_hyperparams(adabelief_jax.adabelief)
  tx = injected(learning_rate=0.1, weight_decay=0.5, weight_decay_mask=mask)
  with pytest.raises(ValueError, match="static_args=\\('weight_decay_mask',\\)"):
    tx.init(params)
  tx = optax.inject_hyperparams(adabelief_jax.adabelief, static_args=('weight_decay_mask',))(
    learning_rate=0.1, weight_decay=0.5, weight_decay_mask=mask
  )
  updates, _ = tx.update(params, tx.init(params), params)
  plain = adabelief_jax.adabelief(0.1, weight_decay=0.5, weight_decay_mask=mask)
  chex.assert_trees_all_close(updates, plain.update(params, plain.init(params), params)[0])


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_16bit_hyperparameters_of_inject_hyperparams_are_refused(dtype):
  """inject_hyperparams casts hyperparameters to the parameters' dtype: eps = 1e-16
  is 0 in float16 (a zero gradient then gives NaN), b2 = 0.999 is 1.0 in bfloat16."""
  params = {'w': jnp.ones(3, dtype)}
  tx = optax.inject_hyperparams(adabelief_jax.adabelief)(learning_rate=0.1)
  with pytest.raises(ValueError, match=r'hyperparam_dtype=jnp\.float32'):
    tx.init(params)
  tx = optax.inject_hyperparams(adabelief_jax.adabelief, hyperparam_dtype=jnp.float32)(0.1)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert np.all(np.asarray(updates['w']) == 0)


def test_16bit_learning_rate_and_decay_are_accepted():
  lr = jnp.asarray(1e-3, jnp.bfloat16)
  params = {'w': jnp.ones(3)}
  tx = adabelief_jax.adabelief(lr, weight_decay=jnp.asarray(1e-2, jnp.float16))
  updates, _ = tx.update(params, tx.init(params), params)
  plain = adabelief_jax.adabelief(float(lr), weight_decay=float(jnp.float16(1e-2)))
  chex.assert_trees_all_close(updates, plain.update(params, plain.init(params), params)[0])


def test_update_without_params_when_nothing_needs_them():
  """optax's quick-start idiom, tx.update(grads, state): no weight decay, nothing
  chained that reads the parameters; with decay, the error says to pass them."""
  params = {'w': jnp.ones(3)}
  tx = adabelief_jax.adabelief(1e-3)
  without, _ = tx.update(params, tx.init(params))
  chex.assert_trees_all_equal(without, tx.update(params, tx.init(params), params)[0])
  tx = adabelief_jax.adabelief(1e-3, weight_decay=0.1)
  with pytest.raises(ValueError, match=r'weight_decay is not 0.*pass params'):
    tx.update(params, tx.init(params))


def test_optax_states_are_named():
  params = {'w': jnp.ones(3)}
  with pytest.raises(TypeError, match=r'got optax\.ScaleByBeliefState\. It was made by optax'):
    scale_by_belief().update(params, optax.scale_by_belief().init(params))
  tx = adabelief_jax.adabelief(1e-3, weight_decay=0.1)
  with pytest.raises(TypeError, match=r'a tuple of 2: \(optax\.ScaleByBeliefState'):
    tx.update(params, optax.adabelief(1e-3).init(params), params)


def test_complex_parameters_with_a_real_mu_dtype_name_the_cure():
  with pytest.raises(ValueError, match=r"params\['z'\] is complex .*complex mu_dtype"):
    scale_by_belief(mu_dtype='float32').init({'z': jnp.ones(3, jnp.complex64)})


def test_64bit_state_without_x64_is_refused_at_construction():
  assert not jax.config.read('jax_enable_x64')
  with pytest.raises(ValueError, match='jax_enable_x64'):
    scale_by_belief(mu_dtype='float64')


@pytest.mark.parametrize('seed', [2**31, 2**32 - 1])
def test_rounding_seeds_up_to_2_32_work(seed):
  params = {'w': jnp.ones(5)}
  tx = adabelief_jax.adabelief(1e-3, mu_dtype='bfloat16', rounding_seed=seed)
  other = adabelief_jax.adabelief(1e-3, mu_dtype='bfloat16', rounding_seed=seed - 1)
  grads = {'w': jnp.linspace(0.1, 1.0, 5)}
  state, other_state = tx.init(params), other.init(params)
  for _ in range(3):
    _, state = jax.jit(tx.update)(grads, state, params)
    _, other_state = jax.jit(other.update)(grads, other_state, params)
  assert not np.array_equal(state[0].mu['w'], other_state[0].mu['w'])
  with pytest.raises(ValueError, match='rounding_seed'):
    adabelief_jax.adabelief(1e-3, rounding_seed=2**32)


def test_8bit_state_of_another_block_size_is_refused():
  params = {'w': jnp.ones((64, 128))}
  state = adabelief_jax.adabelief(1e-3, mu_dtype='int8', quantization_block_size=64).init(params)
  with pytest.raises(
    ValueError, match='quantization_block_size=256, but the state was made with 64'
  ):
    adabelief_jax.adabelief(1e-3, mu_dtype='int8').update(params, state, params)


def test_bfloat16_gradients_keep_their_dtype_through_scale_by_belief():
  """bfloat16 has float32's range: its steps cannot overflow, and optax's wrappers
  that compare the update with zeros like the gradients keep working."""
  params = {'w': jnp.ones(8, jnp.bfloat16)}
  tx = optax.apply_if_finite(optax.chain(scale_by_belief(), optax.scale(-1e-3)), 3)
  updates, _ = tx.update(params, tx.init(params))
  assert updates['w'].dtype == jnp.bfloat16
