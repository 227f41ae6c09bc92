"""Smoke tests of the examples a user copies (examples/): each runs with small settings,
and its numbers are checked (multihost.py is tested in tests/test_multihost.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import adabelief_jax

EXAMPLES = Path(__file__).resolve().parent.parent / 'examples'


def test_quickstart_trains_both_optimizers_and_times_them_alike(load_example):
  results = load_example('quickstart').main(['--epochs', '2'])
  assert list(results) == ['adabelief', 'adamw']
  for r in results.values():
    # Two epochs on the digits: far above chance (0.1); 450 test images, so k / 450.
    assert r['test_accuracy'] > 0.8, results
    assert r['test_accuracy'] * 450 == pytest.approx(round(r['test_accuracy'] * 450), abs=1e-3)
    assert r['train_s'] > 0 and r['compile_s'] > 0


def test_quickstart_tracks_nothing_that_adamw_does_not(load_example):
  """No belief statistics in AdaBelief's state: its time is the optimizer's alone."""
  quickstart = load_example('quickstart')
  params = {'w': jnp.ones((3, 4))}
  state = quickstart.OPTIMIZERS['adabelief']().init(params)
  with pytest.raises(ValueError, match='no belief statistics'):
    adabelief_jax.belief_stats(state)


def test_low_memory_stores_less_and_logs_the_statistics(load_example):
  result = load_example('low_memory').main(['--steps', '60', '--log-every', '20'])
  assert result['test_accuracy'] > 0.5, result['test_accuracy']  # Chance is 0.1.
  sizes = result['bytes_per_param']
  (params, state), (params32, state32) = sizes['bfloat16 + int8 state'], sizes['float32']
  assert (params, params32) == (2.0, 4.0)
  # 8-bit moments: two 1-byte codes and a little for scales and the small float32 leaves,
  # against two float32 moments (+ the statistics, in both).
  assert state < 0.35 * state32 and params + state < 0.4 * (params32 + state32), sizes
  assert [entry['step'] for entry in result['log']] == [20, 40, 60]
  for entry in result['log']:
    assert 0.0 <= entry['global/eps_dominated'] <= 1.0
    assert 0.0 < entry['global/update_to_param_rms'] < 1.0
    assert math.isfinite(entry['loss'])
  assert result['log'][-1]['loss'] < 2.3  # Below chance's cross-entropy, log 10.

  # What was measured and trained: bf16 parameters, int8 codes in the state.
  assert {p.dtype for p in jax.tree.leaves(result['model'])} == {jnp.dtype(jnp.bfloat16)}
  state_dtypes = {x.dtype for x in jax.tree.leaves(result['optimizer'].opt_state)}
  assert jnp.dtype(jnp.int8) in state_dtypes


# Run as a child process: the script itself must make its 8 devices before JAX starts, which
# it cannot do in this process, where JAX has started. The child prints main's result as JSON.
_RUN_SHARDED = (
  'import json, runpy, sys; '
  "main = runpy.run_path('examples/sharded.py', run_name='sharded')['main']; "
  "result = main(['--steps', '30', '--resume-steps', '5']); "
  "import jax; result['devices'] = jax.device_count(); "
  "print('RESULT ' + json.dumps(result))"
)


def test_sharded_resumes_exactly_and_splits_the_state():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  proc = subprocess.run(
    [sys.executable, '-c', _RUN_SHARDED],
    cwd=EXAMPLES.parent,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(lines[0].removeprefix('RESULT '))
  assert result['devices'] == 8  # Made by the script, from an environment without them.
  assert len(result['losses']) == 30 and result['losses'][-1] < result['losses'][0]
  # The run resumed from the checkpoint retraces the uninterrupted one, bit for bit.
  assert len(result['resumed']) == 5 and result['resumed'] == result['straight']
  assert result['max_param_diff'] == 0.0
  # ZeRO-1: each device holds 1/8 of every moment, plus the replicated scalars (step counts:
  # a few bytes; unsharded, each device would hold all of it).
  per_device, whole = result['state_bytes']
  assert per_device <= whole / 8 + 64, (per_device, whole)
