"""Smoke tests of the benchmarks: each main() runs in-process at tiny sizes.

No timing is asserted; the tests check that every table and JSON file holds
finite, positive numbers, that the byte models are the documented ones, and
that the scripts run as files as well as modules.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

from benchmarks import _candidates, _trees, memory, scaling, step_time
from tests.helpers import json_numbers

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A 50k-parameter tree of 3 equal leaves: every number is real, every step fast.
SMALL = ['--params', '50k', '--tree', 'equal', '--leaves', '3']


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip('|').split('|')]


def _table_cells(text: str, headers: str) -> list[list[str]]:
  """The body cells of the Markdown table whose first header cells are ``headers`` ('a | b')."""
  lines = text.splitlines()
  first = _cells(headers)
  start = next(
    i
    for i, line in enumerate(lines)
    if line.startswith('|') and _cells(line)[: len(first)] == first
  )
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith('|'):
      break
    rows.append(_cells(line))
  assert rows, f'empty table under {headers!r}'
  return rows


def _assert_positive_cells(rows: list[list[str]], skip_columns: int) -> None:
  for row in rows:
    for cell in row[skip_columns:]:
      if cell == '-':  # A ratio whose baseline was not run.
        continue
      value = float(cell)
      assert math.isfinite(value) and value > 0, (cell, row)


def _assert_positive(row: dict, keys) -> None:
  for key in keys:
    assert math.isfinite(row[key]) and row[key] > 0, (key, row)


def test_transformer_tree_is_the_42m_reference():
  shapes = _trees.transformer_shapes(42_000_000)
  leaves = _trees.shape_leaves(shapes)
  assert shapes['embed'] == (8192, 512)
  assert shapes['layers']['00']['attn']['qkv'] == (512, 1536)
  assert shapes['layers']['00']['mlp']['w1'] == (512, 2048)
  assert len(leaves) == 1 + 12 * 8
  assert _trees.count_params(shapes) == 41_967_616


@pytest.mark.parametrize('n', [50_000, 1_000_000, 100_000_000])
def test_trees_hit_the_requested_size(n):
  got = _trees.count_params(_trees.transformer_shapes(n))
  assert abs(got - n) / n < 0.1  # The width is an integer.
  equal = _trees.equal_shapes(n, 7)
  assert _trees.count_params(equal) == n and len(equal) == 7


def test_parse_count():
  assert _trees.parse_count('42M') == 42_000_000
  assert _trees.parse_count('50k') == 50_000
  assert _trees.parse_count('1e6') == 1_000_000
  assert _trees.parse_counts('1M,3M') == [1_000_000, 3_000_000]
  with pytest.raises(ValueError):
    _trees.parse_count('lots')


def test_step_time(tmp_path, capsys):
  out = tmp_path / 'step.json'
  argv = '--rounds 2 --warmup 1 --torch-threads 1'
  result = step_time.main([*SMALL, *argv.split(), '--json', str(out)])
  printed = capsys.readouterr().out
  data = json.loads(out.read_text())
  assert data['config']['params'] == 50_000
  assert data['machine']['nproc'] >= 1 and data['machine']['jax']
  ran = {row['mode'] for row in data['results']}
  expected = set(_candidates.CANDIDATES)
  if _candidates.import_torch() is None:
    expected = {m for m in expected if not m.startswith('torch')}
  assert ran | set(data['skipped']) == expected
  assert {'adabelief', 'optax_adam', 'floor'} <= ran
  for row in data['results']:
    _assert_positive(
      row,
      [
        'median_ms',
        'min_ms',
        'params_per_s',
        'effective_gb_per_s',
        'bytes_per_param',
        'vs_optax_adam',
        'vs_floor',
      ],
    )
    assert all(s > 0 for s in row['samples_ms'])
  assert all(math.isfinite(x) for x in json_numbers(data))
  bytes_per_param = {r['mode']: r['bytes_per_param'] for r in data['results']}
  assert bytes_per_param['adabelief'] == 28
  assert bytes_per_param['floor'] == 28
  assert bytes_per_param['copy'] == 28
  assert bytes_per_param['adabelief_amsgrad'] == 36
  assert bytes_per_param['adabelief_bf16_state'] == bytes_per_param['adabelief_bf16_rtn'] == 20
  # 8-bit state: 1 byte per moment and element, plus a float32 scale per 256 (or fewer).
  for mode, state_bytes in [('adabelief_int8', 2), ('adabelief_bf16_int8', 3)]:
    assert 12 + 2 * state_bytes < bytes_per_param[mode] < 12 + 2 * (state_bytes + 0.05)
  rows = _table_cells(printed, 'candidate')
  assert len(rows) == len(data['results'])
  _assert_positive_cells(rows, skip_columns=1)
  assert result['results'] == data['results']


class _Crash(Exception):
  """What the deliberately broken candidates raise."""


def _crash(*_) -> None:
  raise _Crash('deliberate')


class _CrashingStep:
  """A runner that sets up but fails its first timed step."""

  state_bytes = bytes_per_step = 1
  step = staticmethod(_crash)


def _register(monkeypatch, family: str, build) -> None:
  candidate = _candidates.Candidate('crash', 'a broken candidate', family, build)
  monkeypatch.setitem(_candidates.CANDIDATES, 'crash', candidate)


@pytest.mark.parametrize('family', ['adabelief_jax', 'optax', 'floor'])
@pytest.mark.parametrize('build', [_crash, lambda _: _CrashingStep()], ids=['setup', 'step'])
def test_step_time_fails_when_a_jax_candidate_crashes(monkeypatch, family, build):
  _register(monkeypatch, family, build)
  with pytest.raises(_Crash, match='deliberate'):
    step_time.main([*SMALL, '--rounds', '1', '--modes', 'adabelief', 'crash', 'optax_adam'])


def test_step_time_skips_a_crashing_torch_candidate_and_says_why(monkeypatch, capsys):
  _register(monkeypatch, 'torch', _crash)
  result = step_time.main([*SMALL, '--rounds', '1', '--modes', 'adabelief', 'crash'])
  assert result['skipped'] == {'crash': '_Crash: deliberate'}
  assert [row['mode'] for row in result['results']] == ['adabelief']
  assert 'Skipped crash: _Crash: deliberate' in capsys.readouterr().out


def test_memory(tmp_path, capsys):
  out = tmp_path / 'memory.json'
  argv = (
    '--modes adabelief_amsgrad optax_adabelief '
    '--compile-leaves 2 4 --compile-params 1000 --compile-modes adabelief'
  )
  memory.main([*SMALL, *argv.split(), '--json', str(out)])
  printed = capsys.readouterr().out
  data = json.loads(out.read_text())
  assert all(math.isfinite(x) for x in json_numbers(data))
  per_param = {(r['mode'], r['state_dtype']): r['state_bytes_per_param'] for r in data['memory']}
  assert per_param == {
    ('adabelief_amsgrad', 'float32'): 12,
    ('adabelief_amsgrad', 'bfloat16'): 6,
    ('optax_adabelief', 'default'): 8,
  }
  for row in data['memory']:
    _assert_positive(row, ['argument_bytes', 'output_bytes', 'alias_bytes', 'compile_s'])
    assert row['temp_bytes'] >= 0
    assert row['alias_bytes'] <= row['donated_bytes']
  assert len(data['compile']) == 2
  for row in data['compile']:
    _assert_positive(row, ['lower_s', 'compile_s', 'total_s', 'ms_per_leaf'])
  rows = _table_cells(printed, 'mode | state dtype')
  assert len(rows) == len(data['memory'])
  # Temp bytes (columns 6 and 7) may be zero; the rest must be positive.
  _assert_positive_cells([r[2:6] + r[8:] for r in rows], skip_columns=0)
  assert all(float(c) >= 0 for r in rows for c in r[6:8])
  _assert_positive_cells(_table_cells(printed, 'mode | leaves'), skip_columns=1)


def test_scaling(tmp_path, capsys):
  out = tmp_path / 'scaling'
  argv = (
    '--params-list 20k --tree equal --leaves 3 --leaves-list 4 --leaves-params 10k '
    '--rounds 2 --warmup 1 --modes adabelief optax_adam'
  )
  result = scaling.main([*argv.split(), '--out', str(out)])
  capsys.readouterr()
  for name in ('scaling.md', 'scaling.json', 'scaling_params.png', 'scaling_leaves.png'):
    assert (out / name).stat().st_size > 0, name
  assert (out / 'scaling_params.png').read_bytes()[:4] == b'\x89PNG'
  data = json.loads((out / 'scaling.json').read_text())
  assert all(math.isfinite(x) for x in json_numbers(data))
  assert len(data['results']) == 2 + 2
  for row in data['results']:
    _assert_positive(row, ['median_ms', 'effective_gb_per_s', 'params', 'leaves', 'vs_optax_adam'])
  text = (out / 'scaling.md').read_text()
  _assert_positive_cells(_table_cells(text, 'candidate'), skip_columns=1)
  assert result['files']['json'] == str(out / 'scaling.json')


def test_runs_as_a_file():
  proc = subprocess.run(
    [sys.executable, 'benchmarks/step_time.py', '--help'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  # A documented flag, parsed rather than read in the help text.
  args = step_time.parse_args([*SMALL, '--state-dtype', 'bfloat16', '--rounds', '3'])
  assert (args.state_dtype, args.rounds, args.leaves) == ('bfloat16', 3, 3)


def test_xla_cpu_measures_each_idiom_against_its_plain_form(capsys):
  """Every case runs each of its forms, the library's first, with finite numbers."""
  from benchmarks import xla_cpu

  result = xla_cpu.main(['--elements', '64k', '--rounds', '1', '--kernels-only'])
  rows = result['results']
  for case, (_, forms, _, _) in xla_cpu.CASES.items():
    got = [row['form'] for row in rows if row['case'] == case]
    assert got == [f'{forms[0]} (library)', *forms[1:]], case
  assert all(row['temp MB'] >= 0 and row['median ms'] > 0 for row in rows)
  assert '| case' in capsys.readouterr().out
