"""Smoke tests of the example scripts and of their shared helpers, examples/_common.py.

Each script runs in-process with tiny settings.
"""

from __future__ import annotations

import argparse

import pytest

from tests.helpers import check_example_outputs, squeeze


def test_quickstart_smoke(load_example, tmp_path, capsys):
  out = tmp_path / 'qs'
  flags = '--epochs 1 --seeds 1 --optimizers adabelief,sgd'
  # With the progress bar, which shows AdaBelief's belief statistics.
  summaries = load_example('quickstart').main([*flags.split(), '--out', str(out)])

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

  markdown = squeeze((out / 'results.md').read_text())
  captured = capsys.readouterr()
  printed = squeeze(captured.out)
  assert 'eps%=' in captured.err and 'du/p=' in captured.err
  assert '1 epoch x 1 seed,' in printed and '(mean ± std, 1 seed)' in markdown
  assert '1 seeds' not in printed + markdown and '1 epochs' not in printed + markdown
  for name in ('adabelief', 'sgd'):
    assert f'| {name} |' in markdown and f'| {name} |' in printed
  assert 'adam |' not in markdown
  # Fair learning rates: each optimizer's grid swept at seed 0, the best on validation chosen.
  grids = {'adabelief': [3e-3, 1e-2, 3e-2], 'sgd': [3e-2, 1e-1, 3e-1]}
  for result in results:
    sweep = result['sweep']
    assert [p['lr'] for p in sweep] == grids[result['optimizer']]
    best = max(sweep, key=lambda p: p['valid_acc'])
    assert result['learning_rate'] == best['lr'] == result['runs'][0]['lr']
    assert result['runs'][0]['valid_acc'] == best['valid_acc']
  # The line that says what the table can and cannot show, printed and written.
  assert 'What it does not' in printed and 'What it does not' in markdown
  accs = [100 * r['test_acc_mean'] for r in results]
  assert f'to {min(accs):.1f}-{max(accs):.1f}% test accuracy' in printed
  assert '450 test images (0.22 points each)' in printed
  assert 'adabelief {0.003, 0.01, 0.03}; sgd {0.03, 0.1, 0.3}' in markdown
  assert 'train / 270 validation / 450 test' in printed


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


def test_plural(load_example):
  common = load_example('_common')
  assert common.plural(1, 'seed') == '1 seed'
  assert common.plural(3, 'seed') == '3 seeds'
  assert common.plural(0, 'epoch') == '0 epochs'


def test_figure_title_fits_a_narrow_grid(load_example):
  """A one-panel-wide figure wraps its title onto more lines, inside the image."""
  common = load_example('_common')
  title = 'Generator samples at the end (circles: 3 std around each mode)'
  fig = common.figure(2.35, 4.0, title, title_size=9)
  fig.canvas.draw()
  (text,) = fig.texts
  box = text.get_window_extent()
  assert text.get_text().count('\n') >= 1 and text.get_text().replace('\n', ' ') == title
  assert fig.get_size_inches()[1] > 4.0  # Room for the extra lines.
  assert box.x0 >= 0 and box.x1 <= fig.bbox.width
