"""Smoke test of experiments/eps_check.py: its outputs, and eps ordering the eps-dominated fractions."""

from __future__ import annotations

import numpy as np

from tests.helpers import check_example_outputs


def test_eps_check_fractions_grow_with_eps(load_experiment, tmp_path):
  out = tmp_path / 'eps'
  flags = ['--epochs', '2', '--seeds', '1', '--eps', '1e-3,1e-16', '--no-progress']
  summaries = load_experiment('eps_check').main([*flags, '--out', str(out)])

  data = check_example_outputs(out, ['eps_dominated.png'])
  assert [r['eps'] for r in data['results']] == [1e-3, 1e-16]
  fractions = {s['eps']: np.array(list(s['curves'].values())) for s in summaries}
  assert all(((f >= 0) & (f <= 1)).all() and f.shape[-1] == 2 for f in fractions.values())
  # A large eps makes nearly every step SGD-like; a tiny one leaves most of them adaptive.
  assert fractions[1e-3].mean() > 0.9 and fractions[1e-16].mean() < 0.5
  assert {'conv1/kernel', 'dense2/bias', 'global'} <= set(summaries[0]['curves'])
