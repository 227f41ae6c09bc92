"""Smoke tests of the example scripts: each runs in-process with tiny settings."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import json_numbers


def test_quickstart_smoke(load_example, tmp_path, capsys):
  quickstart = load_example('quickstart')
  out = tmp_path / 'qs'
  summaries = quickstart.main(
    [
      '--epochs',
      '1',
      '--seeds',
      '1',
      '--optimizers',
      'adabelief,sgd',
      '--out',
      str(out),
      '--no-progress',
    ]
  )

  assert [s['optimizer'] for s in summaries] == ['adabelief', 'sgd']
  for name in ('results.json', 'results.md', 'curves.png'):
    assert (out / name).is_file() and (out / name).stat().st_size > 0, name
  assert (out / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  data = json.loads((out / 'results.json').read_text())
  assert data['config']['epochs'] == 1
  assert data['config']['optimizers'] == ['adabelief', 'sgd']
  results = data['results']
  assert [r['optimizer'] for r in results] == ['adabelief', 'sgd']
  for result in results:
    assert all(math.isfinite(x) for x in json_numbers(result)), result
    assert 0.0 <= result['test_acc_mean'] <= 1.0
    assert result['test_acc_std'] == 0.0  # One seed.
    assert result['best_epoch'] == 1
    assert result['final_train_loss_mean'] > 0.0
    (run,) = result['runs']
    assert len(run['train_loss']) == len(run['test_acc']) == 1
    assert all(0.0 <= acc <= 1.0 for acc in run['test_acc'])
    # One epoch of training beats chance (0.1) on digits by a wide margin.
    assert result['test_acc_mean'] > 0.5

  markdown = (out / 'results.md').read_text()
  printed = capsys.readouterr().out
  for name in ('adabelief', 'sgd'):
    assert f'| {name} |' in markdown and f'| {name} |' in printed
  assert 'adam |' not in markdown


def test_quickstart_rejects_unknown_optimizer(load_example, tmp_path):
  quickstart = load_example('quickstart')
  with pytest.raises(SystemExit):
    quickstart.main(['--optimizers', 'adabelief,lion', '--out', str(tmp_path)])
