"""Smoke tests of the paper-claim examples: toy_2d, gan_2d and lstm_lm.

Each script's ``main`` runs in-process with tiny settings into ``tmp_path``;
the tests check the files it writes and that they hold finite numbers.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.helpers import check_example_outputs, markdown_tables, mean_std, run_example


def test_toy_2d(load_example, tmp_path, capsys):
  out = tmp_path / 'toy'
  flags = '--steps 300 --seeds 1 --lrs 1e-2,0.1 --problems quadratic,rosenbrock'
  data = run_example(load_example('toy_2d'), out, flags)
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


def test_toy_2d_rejects_bad_flags(load_example, tmp_path):
  toy = load_example('toy_2d')
  with pytest.raises(SystemExit):
    toy.main(['--problems', 'himmelblau', '--out', str(tmp_path)])
  with pytest.raises(SystemExit):
    toy.main(['--lrs', '1e-3,-1', '--out', str(tmp_path)])


def test_gan_2d(load_example, tmp_path, capsys):
  out = tmp_path / 'gan'
  flags = '--steps 20 --eval-every 10 --seeds 1 --b1s 0.5 --lrs 2e-4,1e-3 --hidden 16'
  run_example(load_example('gan_2d'), out, flags)
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


def test_gan_2d_metrics(load_example):
  """Samples on the modes cover all 8; samples at the origin cover none."""
  import jax
  import jax.numpy as jnp

  gan = load_example('gan_2d')
  on_modes = gan.sample_data(jax.random.key(0), 2000, 0.02)
  covered, quality = gan.mode_metrics(on_modes, 0.02)
  assert int(covered) == 8 and float(quality) > 0.98
  covered, quality = gan.mode_metrics(jnp.zeros((2000, 2)), 0.02)
  assert int(covered) == 0 and float(quality) == 0.0
  # All samples on one mode: 1 mode covered, all high quality.
  one = jnp.tile(gan.centers()[3], (2000, 1))
  covered, quality = gan.mode_metrics(one, 0.02)
  assert int(covered) == 1 and float(quality) == 1.0


def test_lstm_lm(load_example, tmp_path, capsys):
  out = tmp_path / 'lstm'
  flags = (
    '--epochs 1 --seeds 1 --train-kb 8 --eval-kb 2 --hidden 16 --embed 8 --seq-len 32 '
    '--batch-size 16 --lrs-adabelief 3e-3 --lrs-adam 3e-3 --lrs-sgd 0.3,1'
  )
  run_example(load_example('lstm_lm'), out, flags)
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


def test_lstm_lm_split_is_fixed_and_disjoint(load_example):
  lstm = load_example('lstm_lm')
  text_a, files_a = lstm.stdlib_splits(8, 2)
  text_b, files_b = lstm.stdlib_splits(8, 2)
  assert text_a == text_b and files_a == files_b
  assert not set(files_a['train']) & (set(files_a['valid']) | set(files_a['test']))
  assert not set(files_a['valid']) & set(files_a['test'])
  assert len(text_a['valid']) == len(text_a['test']) == 2 * 1024
