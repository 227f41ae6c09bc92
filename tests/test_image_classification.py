"""Tests of experiments/image_classification.py: a smoke run, the bootstrap helper, the conv.

The smoke run uses tiny settings (one grid point per optimizer, one epoch, two
seeds) on both data sets; most of its time is the eight compilations.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import check_example_outputs, markdown_tables, mean_std, run_example

OPTIMIZERS = ['adabelief', 'sgd', 'adam', 'adamw']
# One (lr, wd) per optimizer: equal grids of size 1.
TINY = (
  '--epochs 1 --seeds 2 --lrs-adabelief 3e-3 --wds-adabelief 1e-2 --lrs-sgd 0.1 --wds-sgd 5e-4 '
  '--lrs-adam 3e-3 --wds-adam 1e-4 --lrs-adamw 3e-3 --wds-adamw 1e-2'
)


def test_image_classification_smoke(load_experiment, tmp_path, capsys):
  out = tmp_path / 'ic'
  example = load_experiment('image_classification')
  run_example(example, out, TINY)

  data = check_example_outputs(out, ['curves.png'])  # Every number finite, too.
  assert data['config']['seeds'] == 2 and data['config']['datasets'] == ['mnist1d', 'mnist']
  assert data['wall_time_s'] > 0 and data['cpu_time_s'] > 0
  assert set(data['results']) == {'mnist1d', 'mnist'}
  for dataset, summaries in data['results'].items():
    assert [s['optimizer'] for s in summaries] == OPTIMIZERS, dataset
    for s in summaries:
      assert len(s['sweep']) == 1 and 0.0 <= s['sweep'][0]['valid_acc'] <= 1.0
      assert [run['seed'] for run in s['runs']] == [0, 1]
      for run in s['runs']:
        assert len(run['train_loss']) == len(run['valid_acc']) == 1
        assert (run['lr'], run['wd']) == (s['lr'], s['wd'])
        assert 0.0 <= run['test_acc'] <= 1.0
      assert 0.0 <= s['test_acc_mean'] <= 1.0 and s['test_acc_std'] >= 0.0
      expected = {'sgd', 'adam'} - {s['optimizer']}
      assert set(s['vs']) == expected
      for d in s['vs'].values():
        assert d['low'] <= d['mean'] <= d['high'] and 0 <= d['wins'] <= 2
    # One epoch beats chance (0.1) on 28x28 digits by a wide margin.
    if dataset == 'mnist':
      assert all(s['test_acc_mean'] > 0.5 for s in summaries)

  # Printed and written: per data set, its results table then its grid table,
  # one row per optimizer, holding the numbers of results.json.
  for text in ((out / 'results.md').read_text(), capsys.readouterr().out):
    tables = markdown_tables(text)
    assert len(tables) == 2 * len(data['results'])
    for i, summaries in enumerate(data['results'].values()):
      results, grid = tables[2 * i][1:], tables[2 * i + 1][1:]
      assert [row[0] for row in results] == [row[0] for row in grid] == OPTIMIZERS
      for row, s in zip(results, summaries):
        _check_results_row(row, s, example.BASELINES, seeds=2)
      for row, s in zip(grid, summaries):
        cells = [re.fullmatch(r'(\S+)/(\S+): (\S+)', c) for c in row[1].split(', ')]
        got = [float(x) for m in cells for x in m.groups()]
        want = [x for p in s['sweep'] for x in (p['lr'], p['wd'], p['valid_acc'])]
        assert got == pytest.approx(want, abs=5.1e-4)


def _check_results_row(row: list[str], s: dict, baselines: tuple[str, ...], seeds: int) -> None:
  """A results-table row: the chosen (lr, wd), the test accuracy and the paired differences."""
  _, lr, wd, accuracy, *differences = row
  assert (float(lr), float(wd.split()[0])) == pytest.approx((s['lr'], s['wd']))
  mean, std = mean_std(accuracy)
  assert mean == pytest.approx(s['test_acc_mean'], abs=5.1e-5)
  assert std == pytest.approx(s['test_acc_std'], abs=5.1e-5) and std >= 0.0
  assert len(differences) == len(baselines)
  for base, cell in zip(baselines, differences):
    d = s['vs'].get(base)
    match = re.fullmatch(r'(\S+) \[(\S+), (\S+)\] \((\d+)/(\d+)\)', cell)
    assert (match is None) == (d is None), (base, cell)
    if d is not None:
      numbers = [float(x) for x in match.groups()[:3]]
      assert numbers == pytest.approx([d['mean'], d['low'], d['high']], abs=5.1e-5)
      assert (int(match[4]), int(match[5])) == (d['wins'], seeds)


def test_image_classification_one_dataset_and_subset(load_experiment, tmp_path):
  """--datasets and --optimizers: differences only against the baselines present.

  Run with its progress bar, which shows AdaBelief's belief statistics.
  """
  flags = '--datasets mnist1d --optimizers adabelief,adam --epochs 1 --seeds 1 '
  flags += '--lrs-adabelief 3e-3 --wds-adabelief 1e-2 --lrs-adam 3e-3 --wds-adam 1e-4'
  example = load_experiment('image_classification')
  data = example.main([*flags.split(), '--out', str(tmp_path)])
  (summaries,) = data['results'].values()
  assert [s['optimizer'] for s in summaries] == ['adabelief', 'adam']
  assert set(summaries[0]['vs']) == {'adam'} and summaries[1]['vs'] == {}
  # One seed: a zero-width interval, which decides nothing.
  (run,) = summaries[0]['runs']
  d = summaries[0]['vs']['adam']
  assert d['low'] == d['mean'] == d['high'] and d['wins'] in (0, 1)
  difference = run['test_acc'] - summaries[1]['runs'][0]['test_acc']
  assert d['mean'] == pytest.approx(difference, abs=1e-6)
  assert example.verdict(d, seeds=1) not in ('better', 'worse')


@pytest.mark.parametrize(
  'flags',
  [
    '--lrs-sgd 0.1',  # sgd: 1 x 2 grid, the others 3 x 2.
    '--datasets mnist1d,cifar',
    '--wds-adam=-1e-4,1e-4',
  ],
)
def test_image_classification_rejects_bad_flags(load_experiment, tmp_path, flags):
  with pytest.raises(SystemExit):
    load_experiment('image_classification').main([*flags.split(), '--out', str(tmp_path)])


def test_bootstrap_ci_known_answers(load_experiment):
  bootstrap_ci = load_experiment('image_classification').bootstrap_ci
  # Identical pairs: every difference 0, a zero-width interval at 0.
  assert bootstrap_ci(np.zeros(5)) == (0.0, 0.0, 0.0)
  # A constant difference d: every resample's mean is d.
  assert bootstrap_ci([0.25] * 5) == (0.25, 0.25, 0.25)
  assert bootstrap_ci([-0.125] * 7, resamples=100) == (-0.125, -0.125, -0.125)
  # Two seeds, differences 0 and 1: resampled means are 0, 1/2, 1 with probabilities
  # 1/4, 1/2, 1/4, so the central 95% spans [0, 1] and the mean is 1/2.
  assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
  # The interval holds the mean, and a fixed seed makes it reproducible.
  d = np.random.default_rng(1).normal(0.01, 0.02, size=5)
  mean, low, high = bootstrap_ci(d)
  assert low < mean < high and (mean, low, high) == bootstrap_ci(d)
  assert mean == pytest.approx(d.mean())


def test_summarize_counts_ties_exactly(load_experiment):
  """Float32 accuracies differ by rounding noise; paired differences must not.

  The seeds' MNIST test accuracies (1,000 images) of a real run: AdaBelief
  minus SGD is -1, +8, +4, -1, +21 images, whose interval starts at exactly 0
  (float32 arithmetic put it at +1.2e-8, a spurious 'better').
  """
  example = load_experiment('image_classification')

  def result(name, accuracies):
    return {'optimizer': name, 'runs': [{'test_acc': float(np.float32(a))} for a in accuracies]}

  adabelief = result('adabelief', [0.953, 0.958, 0.960, 0.956, 0.961])
  sgd = result('sgd', [0.954, 0.950, 0.956, 0.957, 0.940])
  vs = example.summarize([adabelief, sgd], test_size=1000)[0]['vs']['sgd']
  assert vs['mean'] == pytest.approx(0.0062) and vs['low'] == 0.0 and vs['wins'] == 3
  assert example.verdict(vs, seeds=5) == 'no clear difference'
  tie = example.summarize(
    [result('adabelief', [0.958, 0.953]), result('sgd', [0.957, 0.954])], 1000
  )
  assert tie[0]['vs']['sgd']['mean'] == 0.0 and tie[0]['vs']['sgd']['wins'] == 1


@pytest.mark.parametrize(
  'window, shape', [((5,), (3, 40, 2)), ((3,), (2, 10, 25)), ((3, 3), (2, 28, 28, 3))]
)
def test_patch_conv_matches_nnx_conv(load_experiment, window, shape):
  """PatchConv is nnx.Conv(strides=2, padding=1) with the same kernel and bias."""
  patch_conv = load_experiment('image_classification').PatchConv
  ours = patch_conv(shape[-1], 6, window, rngs=nnx.Rngs(1))
  padding = [(1, 1)] * len(window)
  theirs = nnx.Conv(shape[-1], 6, window, strides=2, padding=padding, rngs=nnx.Rngs(0))
  ours.bias[...] = jnp.linspace(-1.0, 1.0, 6)
  theirs.kernel[...], theirs.bias[...] = ours.kernel[...], ours.bias[...]
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
