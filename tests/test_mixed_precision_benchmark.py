"""Smoke test of benchmarks/mixed_precision.py at tiny sizes (no timing)."""

import json
import math

from benchmarks import mixed_precision
from tests.helpers import json_numbers


def test_mixed_precision_smoke(tmp_path, capsys):
  results = mixed_precision.main(
    ['--seeds', '1', '--epochs', '1', '--steps', '20', '--out', str(tmp_path)]
  )
  assert (tmp_path / 'results.md').is_file()
  assert json.loads((tmp_path / 'results.json').read_text()) == json.loads(json.dumps(results))
  assert '## A.' in capsys.readouterr().out
  assert len(results['quality']) == 6
  assert all(math.isfinite(x) for x in json_numbers(results['quality']))
  for row in results['quality']:
    assert 0.0 <= row['test acc'] <= 1.0
  assert {row['state B/param'] for row in results['quality']} == {8, 4, 6}
  # Default state (float32 for 16-bit params) never goes non-finite; fp16 state
  # with 1e-3 gradients does at once (the reason float32 is the default).
  default = [r for r in results['safety'] if 'default' in r['state']]
  assert all(r['non-finite steps'] == 0 for r in default)
  assert any(r['non-finite steps'] > 0 for r in results['safety'] if r['state'] == 'float16')
