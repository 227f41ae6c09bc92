"""Smoke tests of the example scripts and of their shared helpers, examples/_common.py.

Each script runs in-process with tiny settings.
"""

from __future__ import annotations

import argparse

import pytest

from tests.helpers import check_example_outputs, markdown_tables, mean_std


def test_quickstart_smoke(load_example, tmp_path, capsys):
  out = tmp_path / 'qs'
  flags = '--epochs 1 --seeds 1 --optimizers adabelief,sgd'
  # With the progress bar, which shows AdaBelief's belief statistics.
  quickstart = load_example('quickstart')
  summaries = quickstart.main([*flags.split(), '--out', str(out)])

  assert [s['optimizer'] for s in summaries] == ['adabelief', 'sgd']
  data = check_example_outputs(out, ['curves.png'])  # Every number finite, too.
  assert data['config']['epochs'] == 1
  assert data['config']['optimizers'] == ['adabelief', 'sgd']
  results = data['results']
  assert [r['optimizer'] for r in results] == ['adabelief', 'sgd']
  for result in results:
    assert 0.0 <= result['test_acc_mean'] <= 1.0
    assert result['test_acc_std'] == 0.0  # One seed.
    assert result['best_epoch'] == 1
    assert result['final_train_loss_mean'] > 0.0
    (run,) = result['runs']
    assert len(run['train_loss']) == len(run['test_acc']) == 1
    assert all(0.0 <= acc <= 1.0 for acc in run['test_acc'])
    # One epoch of training beats chance (0.1) on digits by a wide margin.
    assert result['test_acc_mean'] > 0.5

  # Fair learning rates: each optimizer's grid swept at seed 0, the best on validation chosen.
  grids = {'adabelief': [3e-3, 1e-2, 3e-2], 'sgd': [3e-2, 1e-1, 3e-1]}
  for result in results:
    sweep = result['sweep']
    assert [p['lr'] for p in sweep] == grids[result['optimizer']]
    best = max(sweep, key=lambda p: p['valid_acc'])
    assert result['learning_rate'] == best['lr'] == result['runs'][0]['lr']
    assert result['runs'][0]['valid_acc'] == best['valid_acc']
  # Accuracies are counts of images: k / 450 on the test set, k / 270 on validation.
  split = quickstart.load_data()
  for result in results:
    counted = [(acc, len(split.test[1])) for acc in result['runs'][0]['test_acc']]
    counted += [(p['valid_acc'], len(split.valid[1])) for p in result['sweep']]
    for acc, size in counted:
      assert abs(acc * size - round(acc * size)) < 1e-3, (acc, size)

  # The table, printed and written: one row per optimizer asked for, in order,
  # with the chosen lr and the test accuracy's mean and std of results.json.
  for text in ((out / 'results.md').read_text(), capsys.readouterr().out):
    (table,) = markdown_tables(text)
    rows = table[1:]
    assert [row[0] for row in rows] == ['adabelief', 'sgd']
    for row, result in zip(rows, results):
      assert float(row[2]) == pytest.approx(result['learning_rate'])
      (accuracy,) = [cell for cell in row if '±' in cell]
      mean, std = mean_std(accuracy)
      assert mean == pytest.approx(result['test_acc_mean'], abs=5.1e-5)
      assert std == pytest.approx(result['test_acc_std'], abs=5.1e-5) and std >= 0.0


def test_quickstart_rejects_unknown_optimizer(load_example, tmp_path):
  quickstart = load_example('quickstart')
  with pytest.raises(SystemExit):
    quickstart.main(['--optimizers', 'adabelief,lion', '--out', str(tmp_path)])


def test_float_list_parses_and_names_the_flag(load_example, capsys):
  common = load_example('_common')
  parser = argparse.ArgumentParser()
  parser.add_argument('--lrs', type=common.positive_floats, default='1e-3,1')
  parser.add_argument('--b1s', type=common.float_list(lambda b1: 0 <= b1 < 1, 'in [0, 1)'))
  assert parser.parse_args([]).lrs == [1e-3, 1.0]  # A string default is parsed too.
  args = parser.parse_args(['--lrs', ' 3e-3, 1e-2,3e-3 ', '--b1s', '0,0.9'])
  assert args.lrs == [3e-3, 1e-2] and args.b1s == [0.0, 0.9]
  for flag, bad, reason in (
    ('--lrs', '1e-3,-1', 'each value must be > 0'),
    ('--lrs', '1e-3,fast', 'expected comma-separated numbers'),
    ('--lrs', ',', 'expected at least one number'),
    ('--b1s', '0.5,1', 'each value must be in [0, 1)'),
  ):
    with pytest.raises(SystemExit):
      parser.parse_args([flag, bad])
    assert f'argument {flag}: {reason}' in capsys.readouterr().err


def test_belief_postfix_shows_the_state_statistics(load_example):
  """The progress bar's eps% and du/p: AdaBelief's tracked statistics, nothing for Adam."""
  import jax
  import jax.numpy as jnp
  import optax

  import adabelief_jax

  common = load_example('_common')
  params = {'w': jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), 'b': jnp.ones(4)}
  grads = {'w': jnp.cos(7 * params['w']), 'b': jnp.full(4, 1e-12)}
  tx = adabelief_jax.adabelief(1e-2, track_stats=True)
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(2):  # The update's size is known once one has been applied.
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  stats = adabelief_jax.belief_stats(state)
  postfix = common.belief_postfix(state)
  assert sorted(postfix) == ['du/p', 'eps%']
  eps_percent, ratio = float(postfix['eps%']), float(postfix['du/p'])
  # eps dominates where the gradient is 1e-12: the 4 bias elements of 16.
  assert eps_percent == 25 and ratio > 0
  assert ratio == pytest.approx(float(stats['global/update_to_param_rms']), rel=0.05)
  adam = optax.adam(1e-2)
  assert common.belief_postfix(adam.init(params)) == {}
