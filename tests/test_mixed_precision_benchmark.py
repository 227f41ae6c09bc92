"""Smoke test of benchmarks/mixed_precision.py at tiny sizes (no timing)."""

import json
import math

import pytest

from benchmarks import mixed_precision
from tests.helpers import json_numbers, markdown_tables


def test_mixed_precision_smoke(tmp_path, capsys):
  results = mixed_precision.main(
    '--seeds 1 --epochs 1 --steps 20 --lstm-epochs 1 --lstm-train-kb 8 --lstm-eval-kb 2 '
    f'--out {tmp_path}'.split()
  )
  assert (tmp_path / 'results.md').is_file()
  assert json.loads((tmp_path / 'results.json').read_text()) == json.loads(json.dumps(results))
  # Printed and written: one table per part (A, B, C), a row per result, its numbers
  # those of results.json to the 3 significant digits shown.
  parts = [results[key] for key in ('quality', 'safety', 'lstm')]
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
  variants = len(mixed_precision.STATE_VARIANTS)
  assert len(results['quality']) == 2 * variants and len(results['lstm']) == variants
  for rows in (results['quality'], results['lstm']):
    assert all(math.isfinite(x) for x in json_numbers(rows))
    assert rows[0]['ratio to float32'] == 1.0  # float32 against itself.
  for row in results['quality']:
    assert 0.0 <= row['test acc'] <= 1.0
  # 8 bytes per parameter for float32 m and s, 4 in bf16, 6 for bf16 m; 8-bit
  # blocks cover the 64 x 128 layer (87% of the parameters), float32 the rest.
  per_param = {row['state']: row['state B/param'] for row in results['quality']}
  assert per_param['float32 m, s'] == 8 and per_param['bf16 m, s, stochastic'] == 4
  assert per_param['bf16 m, float32 s'] == 6
  assert 2 < per_param['int8 m, s, stochastic'] < 3
  # The library's default state (float32 for 16-bit params), float16 m,
  # bf16 and 8-bit state: no non-finite step (float16 s is refused outright).
  assert all(r['non-finite steps'] == 0 for r in results['safety'])
