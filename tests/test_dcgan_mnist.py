"""Tests of experiments/dcgan_mnist.py: its metrics, and a smoke run with tiny settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import check_example_outputs, markdown_tables, mean_std, run_example


@pytest.fixture
def dcgan(load_experiment):
  return load_experiment('dcgan_mnist')


def test_frechet_distance_of_a_sample_with_itself_is_zero(dcgan):
  x = np.random.default_rng(0).normal(size=(2000, 16)) @ np.diag(np.linspace(0.5, 2, 16))
  stats = dcgan.gaussian_stats(x)
  assert abs(dcgan.frechet_distance(*stats, *stats)) < 1e-8


def test_frechet_distance_of_a_mean_shift_is_its_squared_norm(dcgan):
  """Equal covariances: FD = ||mu1 - mu2||^2, and it grows with the shift."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8))  # A correlated Gaussian.
  direction = rng.normal(size=8)
  distances = []
  for scale in (0.1, 0.5, 1.0, 3.0):
    shift = scale * direction
    fd = dcgan.frechet_distance(*dcgan.gaussian_stats(x), *dcgan.gaussian_stats(x + shift))
    assert fd == pytest.approx(shift @ shift, rel=1e-6)
    distances.append(fd)
  assert distances == sorted(distances)


def test_frechet_distance_with_different_covariances(dcgan):
  """Diagonal covariances a, b: FD = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2."""
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.zeros(3), np.array([1.0, -2.0, 0.5])
  want = 1 + 4 + 0.25 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
  assert dcgan.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want)


def test_frechet_distance_with_covariances_that_do_not_commute(dcgan):
  """2-d: the eigenvalues l1, l2 of S1 S2 give tr (S1 S2)^(1/2) = sqrt(tr S1 S2 + 2 sqrt(det S1 S2))."""
  rng = np.random.default_rng(2)
  for _ in range(5):
    a, b = rng.normal(size=(2, 2, 2))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(2), b @ b.T + 0.1 * np.eye(2)
    assert not np.allclose(sigma1 @ sigma2, sigma2 @ sigma1)
    mu1, mu2 = rng.normal(size=(2, 2))
    product = sigma1 @ sigma2
    trace_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1 + sigma2) - 2 * trace_sqrt
    assert dcgan.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(want, rel=1e-9)


@pytest.mark.filterwarnings('error')
def test_frechet_distance_of_singular_covariances_is_exact_and_silent(dcgan):
  """Rank-1 covariances u u^T, v v^T (dead features): tr (S1 S2)^(1/2) = |u . v|, no warning.

  The three zero eigenvalues of the product come out as round-off of either
  sign, about eps * 36; a positive one adds its square root, up to 1e-7 each
  (which of them is positive depends on the machine's LAPACK). A ridge of
  1e-6, the FID reference's cure for singular covariances, moves the distance
  by about 1e-3.
  """
  u, v = np.array([1.0, 2.0, 0.0, -1.0]), np.array([0.5, -1.0, 3.0, 2.0])
  mu1, mu2 = np.zeros(4), np.ones(4)
  want = 4 + u @ u + v @ v - 2 * abs(u @ v)
  got = dcgan.frechet_distance(mu1, np.outer(u, u), mu2, np.outer(v, v))
  round_off = 3 * 2 * np.sqrt(np.finfo(float).eps * np.abs(u @ v) ** 2)
  assert got == pytest.approx(want, rel=0, abs=round_off)


def test_coverage(dcgan):
  uniform = np.repeat(np.arange(10), 100)
  entropy, classes = dcgan.coverage(uniform)
  assert entropy == pytest.approx(math.log(10)) and classes == 10
  entropy, classes = dcgan.coverage(np.full(1000, 7))
  assert entropy == 0.0 and classes == 1
  # Two classes at 50%, one at 1.9% (under the 2% line): 2 classes count.
  skewed = np.concatenate([np.zeros(491, int), np.ones(490, int), np.full(19, 2)])
  entropy, classes = dcgan.coverage(skewed)
  assert classes == 2 and math.log(2) < entropy < math.log(3)


def test_collapse_rule(dcgan):
  start = {'fd': 300.0}
  assert not dcgan.collapsed({'start': start, 'fd': [100.0, 20.0], 'entropy': [1.0, 2.2]})
  assert dcgan.collapsed({'start': start, 'fd': [20.0, 20.0], 'entropy': [2.2, 1.5]})
  assert dcgan.collapsed({'start': start, 'fd': [20.0, 200.0], 'entropy': [2.2, 2.2]})


def test_escape_step_is_the_first_evaluation_covering_the_digits(dcgan):
  assert dcgan.escape_step({'entropy': [0.5, 1.2, 2.0, 1.0, 2.2]}, 100) == 300
  assert dcgan.escape_step({'entropy': [0.5, 1.9]}, 100) is None


def test_dcgan_mnist_smoke(dcgan, tmp_path, capsys):
  out = tmp_path / 'dcgan'
  flags = '--steps 4 --eval-every 2 --seeds 1 --width 4 --batch-size 8 --classifier-epochs 1'
  data = run_example(dcgan, out, flags)
  saved = check_example_outputs(out, ['curves.png', 'samples.png'])
  results = saved['results']
  assert [(r['optimizer'], r['b1']) for r in results] == [
    ('adabelief', 0.5),
    ('adabelief', 0.9),
    ('adam', 0.5),
    ('adam', 0.9),
  ]
  for r in results:
    assert r['eval_steps'] == [2, 4]
    (run,) = r['runs']
    assert len(run['fd']) == len(run['entropy']) == len(run['classes']) == 2
    assert all(fd >= 0 for fd in run['fd'])
    assert all(0 <= h <= math.log(10) + 1e-9 for h in run['entropy'])
    assert r['collapsed'] in (0, 1)
    assert len(r['escape_steps']) == 1
  reference = saved['reference']
  assert 0.0 <= reference['classifier_test_accuracy'] <= 1.0
  assert not reference['classifier_cached'] and (out / 'classifier.npz').is_file()
  # The printed table: a row per (optimizer, b1) with the numbers of results.json.
  (table,) = markdown_tables(capsys.readouterr().out)
  assert [(row[0], float(row[1])) for row in table[1:]] == [
    (r['optimizer'], r['b1']) for r in results
  ]
  for row, r in zip(table[1:], results):
    fd_end, fd_best, entropy_end = mean_std(row[2]), mean_std(row[3]), mean_std(row[4])
    assert fd_end == pytest.approx((r['fd_end_mean'], r['fd_end_std']), abs=0.051)
    assert fd_best == pytest.approx((r['fd_best_mean'], r['fd_best_std']), abs=0.051)
    assert entropy_end == pytest.approx((r['entropy_end_mean'], r['entropy_end_std']), abs=5.1e-4)
    assert row[7] == f'{r["collapsed"]}/1'  # Collapsed runs of the one seed.
  # The same --out again: the classifier comes from the cache, with the same numbers.
  data_again = dcgan.load_data()
  clf, cached = dcgan.load_or_train_classifier(
    data_again, dcgan.parse_args([*flags.split(), '--out', str(out)])
  )
  assert cached
  assert dcgan.make_evaluator(clf, data_again)[1] == {
    key: data['reference'][key] for key in ('classifier_test_accuracy', 'real')
  }
