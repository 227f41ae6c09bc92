"""Smoke tests of the paper-claim experiments (experiments/): quickstart_tuned, toy_2d, gan_2d,
lstm_lm, and the helpers they share, experiments/_common.py.

Each script's ``main`` runs in-process with tiny settings into ``tmp_path``;
the tests check the files it writes and that they hold finite numbers.
"""

from __future__ import annotations

import argparse
import math
import re

import pytest

from tests.helpers import check_example_outputs, markdown_tables, mean_std, run_example


def test_toy_2d(load_experiment, tmp_path, capsys):
  out = tmp_path / 'toy'
  flags = '--steps 300 --seeds 1 --lrs 1e-2,0.1 --problems quadratic,rosenbrock'
  data = run_example(load_experiment('toy_2d'), out, flags)
  saved = check_example_outputs(out, ['trajectories.png', 'distance.png'])
  assert saved['config']['lrs'] == [1e-3, 1e-2, 0.1]  # --lr joins the grid.
  assert set(saved['results']) == {'quadratic', 'rosenbrock'}
  for problem in saved['results'].values():
    assert set(problem['optimizers']) == {'sgd', 'adam', 'adabelief'}
    for entry in problem['optimizers'].values():
      assert len(entry['grid']) == 3
      assert entry['tuned']['lr'] in (1e-3, 1e-2, 0.1)
      # Steps are None (never reached) or an index within the run.
      assert all(s is None or 0 <= s <= 300 for s in entry['shared']['steps'])
  # The quadratic is easy: someone reaches 1e-3 within 300 steps at lr 0.1.
  quad = saved['results']['quadratic']['optimizers']
  assert any(o['tuned']['reached'] == 1 for o in quad.values())
  assert data['results'].keys() == saved['results'].keys()
  # The printed table: a row per (function, optimizer) with the numbers of results.json.
  (table,) = markdown_tables(capsys.readouterr().out)
  entries = [
    (problem['function'], name, entry)
    for problem in saved['results'].values()
    for name, entry in problem['optimizers'].items()
  ]
  assert [tuple(row[:2]) for row in table[1:]] == [entry[:2] for entry in entries]
  for row, (_, _, entry) in zip(table[1:], entries):
    shared, tuned = entry['shared'], entry['tuned']
    assert len(shared['steps']) == len(tuned['final_distance']) == 1  # One start.
    assert float(row[4]) == pytest.approx(tuned['lr'])
    for steps, final, stats in ((row[2], row[3], shared), (row[5], row[6], tuned)):
      median = stats['median_steps']  # None: not reached (an infinite median).
      assert (steps == 'not reached') if median is None else float(steps) == median
      assert float(final) == float(f'{stats["median_final_distance"]:.2g}')


def test_toy_2d_rejects_bad_flags(load_experiment, tmp_path):
  toy = load_experiment('toy_2d')
  with pytest.raises(SystemExit):
    toy.main(['--problems', 'himmelblau', '--out', str(tmp_path)])
  with pytest.raises(SystemExit):
    toy.main(['--lrs', '1e-3,-1', '--out', str(tmp_path)])


def test_gan_2d(load_experiment, tmp_path, capsys):
  out = tmp_path / 'gan'
  flags = '--steps 20 --eval-every 10 --seeds 1 --b1s 0.5 --lrs 2e-4,1e-3 --hidden 16'
  run_example(load_experiment('gan_2d'), out, flags)
  saved = check_example_outputs(out, ['samples.png', 'curves.png'])
  results = saved['results']
  assert [(r['optimizer'], r['b1'], r['lr']) for r in results] == [
    ('adabelief', 0.5, 2e-4),
    ('adabelief', 0.5, 1e-3),
    ('adam', 0.5, 2e-4),
    ('adam', 0.5, 1e-3),
  ]
  assert len(saved['summary']) == 2
  for r in results:
    assert r['eval_steps'] == [10, 20]
    assert len(r['modes']) == 1 and len(r['modes'][0]) == 2  # seeds x evals
    assert all(0 <= m <= 8 for m in r['modes'][0])
    assert all(0.0 <= q <= 1.0 for q in r['quality'][0])
    assert r['collapsed_fraction'] in (0.0, 1.0)
  # The printed table: a row per (optimizer, b1, lr) with the numbers of results.json.
  (table,) = markdown_tables(capsys.readouterr().out)
  assert [(row[0], float(row[1]), float(row[2])) for row in table[1:]] == [
    (r['optimizer'], r['b1'], r['lr']) for r in results
  ]
  for row, r in zip(table[1:], results):
    assert len(r['seeds']) == 1
    modes, quality = mean_std(row[3]), mean_std(row[4])
    assert modes == pytest.approx((r['modes_end_mean'], r['modes_end_std']), abs=0.051)
    assert quality == pytest.approx((r['quality_end_mean'], r['quality_end_std']), abs=0.0051)
    collapsed, seeds = map(int, re.match(r'(\d+)/(\d+) ', row[5]).groups())
    assert seeds == 1 and collapsed / seeds == r['collapsed_fraction']


def test_gan_2d_metrics(load_experiment):
  """Samples on the modes cover all 8; samples at the origin cover none."""
  import jax
  import jax.numpy as jnp

  gan = load_experiment('gan_2d')
  on_modes = gan.sample_data(jax.random.key(0), 2000, 0.02)
  covered, quality = gan.mode_metrics(on_modes, 0.02)
  assert int(covered) == 8 and float(quality) > 0.98
  covered, quality = gan.mode_metrics(jnp.zeros((2000, 2)), 0.02)
  assert int(covered) == 0 and float(quality) == 0.0
  # All samples on one mode: 1 mode covered, all high quality.
  one = jnp.tile(gan.centers()[3], (2000, 1))
  covered, quality = gan.mode_metrics(one, 0.02)
  assert int(covered) == 1 and float(quality) == 1.0


def test_lstm_lm(load_experiment, tmp_path, capsys):
  out = tmp_path / 'lstm'
  flags = (
    '--epochs 1 --seeds 1 --train-kb 8 --eval-kb 2 --hidden 16 --embed 8 --seq-len 32 '
    '--batch-size 16 --lrs-adabelief 3e-3 --lrs-adam 3e-3 --lrs-sgd 0.3,1'
  )
  run_example(load_experiment('lstm_lm'), out, flags)
  saved = check_example_outputs(out, ['curves.png'])
  results = saved['results']
  assert [r['optimizer'] for r in results] == ['adabelief', 'adam', 'sgd']
  assert len(results[2]['sweep']) == 2
  vocab = saved['data']['vocab']
  for r in results:
    # Untrained-ish, but a proper model: within a few bits of uniform.
    assert 0.0 < r['test_bpc_mean'] < math.log2(vocab) + 3
    assert r['valid_bpc_std'] == 0.0  # One seed.
  assert saved['data']['train']['bytes'] == 8 * 1024
  # The printed table: a row per optimizer with the numbers of results.json.
  (table,) = markdown_tables(capsys.readouterr().out)
  assert [row[0] for row in table[1:]] == [r['optimizer'] for r in results]
  for row, r in zip(table[1:], results):
    (run,) = r['runs']  # One seed, one epoch.
    assert len(run['train_bpc']) == len(run['valid_bpc']) == saved['config']['evals_per_epoch']
    assert float(row[2]) == pytest.approx(r['lr'])
    valid, test = mean_std(row[3]), mean_std(row[4])
    assert valid == pytest.approx((r['valid_bpc_mean'], r['valid_bpc_std']), abs=5.1e-4)
    assert test == pytest.approx((r['test_bpc_mean'], r['test_bpc_std']), abs=5.1e-4)


def test_lstm_lm_split_is_fixed_and_disjoint(load_experiment):
  lstm = load_experiment('lstm_lm')
  text_a, files_a = lstm.stdlib_splits(8, 2)
  text_b, files_b = lstm.stdlib_splits(8, 2)
  assert text_a == text_b and files_a == files_b
  assert not set(files_a['train']) & (set(files_a['valid']) | set(files_a['test']))
  assert not set(files_a['valid']) & set(files_a['test'])
  assert len(text_a['valid']) == len(text_a['test']) == 2 * 1024


def test_quickstart_tuned_smoke(load_experiment, tmp_path, capsys):
  out = tmp_path / 'qs'
  flags = '--epochs 1 --seeds 1 --optimizers adabelief,sgd'
  # With the progress bar, which shows AdaBelief's belief statistics.
  tuned = load_experiment('quickstart_tuned')
  summaries = tuned.main([*flags.split(), '--out', str(out)])

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
  split = tuned.load_data()
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


def test_quickstart_tuned_rejects_unknown_optimizer(load_experiment, tmp_path):
  tuned = load_experiment('quickstart_tuned')
  with pytest.raises(SystemExit):
    tuned.main(['--optimizers', 'adabelief,lion', '--out', str(tmp_path)])


def test_float_list_parses_and_names_the_flag(load_experiment, capsys):
  common = load_experiment('_common')
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


def test_belief_postfix_shows_the_state_statistics(load_experiment):
  """The progress bar's eps% and du/p: AdaBelief's tracked statistics, nothing for Adam."""
  import jax
  import jax.numpy as jnp
  import optax

  import adabelief_jax

  common = load_experiment('_common')
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
