"""benchmarks/mixed_precision.py: smoke test at tiny sizes (no timing); its parameter dtypes."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adabelief_jax
from benchmarks import mixed_precision
from tests.helpers import json_numbers, markdown_tables, random_grads

# The smoke test's grid: the baseline, and 8-bit state with every parameter variant (each
# (params, state) pair compiles its own training step: the full grid takes minutes).
SMALL_GRID = [
  ('float32', 'float32 m, s'),
  ('float32', 'int8 m, s, stochastic'),
  ('bf16, to nearest', 'int8 m, s, stochastic'),
  ('bf16, stochastic', 'int8 m, s, stochastic'),
]


def test_mixed_precision_smoke(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(mixed_precision, 'grid', lambda states: SMALL_GRID)
  monkeypatch.setattr(mixed_precision, 'EPS', (1e-16,))
  monkeypatch.setattr(mixed_precision, 'SAFETY_STATES', {'default (float32)': {}})
  results = mixed_precision.main(
    '--seeds 2 --epochs 1 --steps 20 --lstm-epochs 1 --lstm-train-kb 8 --lstm-eval-kb 2 '
    f'--gpt-steps 2 --gpt-train-kb 8 --gpt-eval-kb 2 --out {tmp_path}'.split()
  )
  assert (tmp_path / 'results.md').is_file()
  assert json.loads((tmp_path / 'results.json').read_text()) == json.loads(json.dumps(results))
  # Printed and written: one table per part (A to E), a row per result, its numbers
  # those of results.json to the 3 significant digits shown.
  parts = [results[key] for key in ('quality', 'safety', 'lstm', 'gpt', 'targets')]
  for text in ((tmp_path / 'results.md').read_text(), capsys.readouterr().out):
    tables = markdown_tables(text)
    assert len(tables) == len(parts)
    for (header, *body), rows in zip(tables, parts):
      assert header == list(rows[0]) and len(body) == len(rows)
      for cells, row in zip(body, rows):
        for cell, value in zip(cells, row.values()):
          if value is None:
            assert cell == '-'
          elif isinstance(value, bool) or not isinstance(value, (int, float)):
            assert cell == str(value), (cell, value)
          else:
            assert float(cell) == pytest.approx(value, rel=5e-3), (cell, value)
  assert set(results['seconds']) == {'quality', 'safety', 'lstm', 'gpt'}
  for rows in (results['quality'], results['lstm'], results['gpt']):
    assert [(row['params'], row['state']) for row in rows] == SMALL_GRID
    assert all(math.isfinite(x) for x in json_numbers(rows))
    assert rows[0]['ratio to float32'] == 1.0  # float32 against itself.
    assert all(row['ratio min'] <= row['ratio to float32'] <= row['ratio max'] for row in rows)
  for row in results['quality']:
    assert 0.0 <= row['test acc'] <= 1.0
  # 8 bytes per parameter for float32 m and s; 8-bit blocks cover the 64 x 128
  # layer (87% of the parameters), float32 the rest. Parameters add 4 bytes in
  # float32, 2 in bf16 (and the stochastic rounding's step count, 4 bytes in all).
  state = [row['state B/param'] for row in results['quality']]
  params = [row['params + state B/param'] - row['state B/param'] for row in results['quality']]
  assert state[0] == 8 and 2 < state[1] < 3 and state[1:] == [state[1]] * 3
  assert params == pytest.approx([4, 4, 2, 2], abs=0.011)
  # Parameters, gradients and the library's default state in 16 bits: no non-finite step.
  assert all(r['non-finite steps'] == 0 for r in results['safety'])
  # The 8-bit target for each of the 3 models (the grid has no bf16 state); its ratios
  # are those of parts A, C and D.
  assert [row['model'] for row in results['targets']] == [
    'digits MLP, eps 1e-16',
    'char LSTM',
    'GPT',
  ]
  for row, part in zip(results['targets'], ('quality', 'lstm', 'gpt')):
    ratios = [r['ratio to float32'] for r in results[part][1:]]
    assert [row[f'{p} params'] for p in mixed_precision.PARAM_VARIANTS] == ratios
    assert row['within'] == (abs(ratios[-1] - 1) <= 0.02)


def test_grid_holds_every_target():
  """Parts A, C and D run every (params, state) pair that a target or its comparison needs."""
  for states in (list(mixed_precision.STATE_VARIANTS), mixed_precision.PARAM_STATES):
    runs = mixed_precision.grid(states)
    assert runs[0] == mixed_precision.BASELINE and len(set(runs)) == len(runs)
    for _, state in mixed_precision.TARGETS:
      assert {(p, state) for p in mixed_precision.PARAM_VARIANTS} <= set(runs)
  assert len(mixed_precision.grid(list(mixed_precision.STATE_VARIANTS))) == 7 + 6


def _final_params(tx, params, grads):
  """``params`` after one jitted step per gradient tree in ``grads``."""
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
  for g in grads:
    params, state = step(params, state, g)
  return params


@pytest.mark.parametrize(
  'state', ['float32 m, s', 'bf16 m, s, stochastic', 'int8 m, s, stochastic']
)
def test_nearest_chain_is_adabelief_on_float32_params(state):
  """The to-nearest chain from public pieces is ``adabelief`` without the parameter rounding.

  On float32 parameters, which that rounding leaves alone, the two give the
  same parameters bit for bit, weight decay and its mask included.
  """
  params = {'w': jnp.asarray(np.random.default_rng(0).normal(size=(4, 256)), jnp.float32)}
  params['b'] = jnp.zeros(256)
  grads = random_grads(params, 6, seed=1)
  mask = {'w': True, 'b': False}
  dtypes = mixed_precision.STATE_VARIANTS[state]
  want = adabelief_jax.adabelief(
    1e-2, eps=1e-8, eps_root=1e-8, weight_decay=0.1, weight_decay_mask=mask, **dtypes
  )
  nearest = mixed_precision.make_tx(
    1e-2, 'bf16, to nearest', state, 0, 0.1, mask, eps=1e-8, eps_root=1e-8
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    _final_params(nearest, params, grads),
    _final_params(want, params, grads),
  )


def test_stochastic_bf16_params_follow_float32_where_nearest_stalls():
  """The digits MLP's displacement from its start after one epoch (21 steps) at lr 1e-4.

  Updates of about 1e-4 are below half a bf16 step (2.4e-4 at the weights'
  size, 0.125): rounded to nearest, most weights never move, and the
  displacement covers about a third of float32's (its projection on it).
  Stochastic rounding is exact in expectation: its displacement covers
  float32's (projection about 0.98) and lies nearer to it.
  """
  mlp = mixed_precision
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(mlp.widened(tree))])
  moved = {}
  for params in mlp.PARAM_VARIANTS:
    start = mlp.stored(mlp._mlp_init(jax.random.key(0)), params)
    tx = mlp.make_tx(1e-4, params, 'float32 m, s', seed=0)
    weights, _ = mlp.fit_digits(tx, params, seed=0, epochs=1)
    moved[params] = flat(weights).astype(np.float64) - flat(start)
  float32 = moved['float32']
  projection = {p: float(d @ float32 / (float32 @ float32)) for p, d in moved.items()}
  distance = {p: float(np.linalg.norm(d - float32)) for p, d in moved.items()}
  assert projection['bf16, to nearest'] < 0.6, projection
  assert 0.9 < projection['bf16, stochastic'] < 1.1, projection
  assert distance['bf16, stochastic'] < 0.75 * distance['bf16, to nearest'], distance
