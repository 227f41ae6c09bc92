"""Shared fixtures: examples and experiments as modules, and 8-device checks in one child process.

Also a line at the end of every run that collected tests/test_compat.py: whether
the PyTorch parity tests ran, or why they were skipped.
"""

import importlib.util
import json
import pathlib
from typing import Any

import pytest

from tests import devices

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _loader(folder: str, monkeypatch: pytest.MonkeyPatch, on_path: bool):
  """A function that imports <folder>/<name>.py as a module, named after both."""
  if on_path:
    monkeypatch.syspath_prepend(str(ROOT / folder))

  def load(name: str):
    spec = importlib.util.spec_from_file_location(f'{folder}_{name}', ROOT / folder / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

  return load


@pytest.fixture
def load_example(monkeypatch):
  """Imports examples/<name>.py: self-contained, so examples/ is not put on sys.path."""
  return _loader('examples', monkeypatch, on_path=False)


@pytest.fixture
def load_experiment(monkeypatch):
  """Imports experiments/<name>.py, with experiments/ on sys.path for _common and _text."""
  return _loader('experiments', monkeypatch, on_path=True)


class DeviceChecks:
  """The results of a module's 8-device checks (see tests/devices.py)."""

  def __init__(self, results: dict[str, Any]) -> None:
    self.results = results

  def metrics(self, name: str) -> dict[str, Any]:
    """Fails the calling test unless check ``name`` passed; returns its metrics."""
    result = self.results[name]
    if not result['ok']:
      pytest.fail(f'{name} failed in the 8-device child process:\n{result["error"]}', pytrace=False)
    print(f'{name}: {result["seconds"]} s, {json.dumps(result["metrics"])}')
    return result['metrics']


@pytest.fixture(scope='session')
def _device_results(request) -> dict[str, Any]:
  """The results of every 8-device check of the session's modules, from one child.

  One child for all modules, started when the first test asks: each child
  pays JAX's start and the imports (about 2 s of CPU), and the modules share
  one. The modules are those of the collected tests that use ``device_checks``.
  """
  modules = list(
    dict.fromkeys(
      item.module.__name__
      for item in request.session.items
      if 'device_checks' in getattr(item, 'fixturenames', ())
    )
  )
  try:
    return devices.run_in_child(modules)
  except RuntimeError as e:
    pytest.fail(str(e), pytrace=False)


@pytest.fixture
def device_checks(request, _device_results) -> DeviceChecks:
  """The results of the requesting module's 8-device checks (see tests/devices.py)."""
  return DeviceChecks(_device_results[request.module.__name__])


PARITY_FILE = 'tests/test_compat.py'
PARITY_REFERENCE = 'adabelief-pytorch 0.2.1'


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
  """The reason of a skip report: longrepr is (path, line, 'Skipped: reason')."""
  longrepr = report.longrepr
  reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
  return reason.removeprefix('Skipped: ')


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  """Says whether the PyTorch parity tests ran: a skip must not pass for a pass."""
  reports = {
    outcome: [
      r
      for r in terminalreporter.stats.get(outcome, [])
      if getattr(r, 'nodeid', '').split('::')[0] == PARITY_FILE
      and (outcome != 'passed' or r.when == 'call')
    ]
    for outcome in ('passed', 'failed', 'skipped', 'error')
  }
  if not any(reports.values()):
    return  # Not collected in this run.
  ran = len(reports['passed']) + len(reports['failed'])
  if ran:
    counts = [
      f'{len(reports[outcome])} {outcome}'
      for outcome in ('failed', 'skipped', 'error')
      if reports[outcome]
    ]
    line = f'{ran} tests ran' + (f' ({", ".join(counts)})' if counts else '')
  elif reports['skipped']:
    line = 'SKIPPED, ' + '; '.join(dict.fromkeys(map(_skip_reason, reports['skipped'])))
  else:
    line = f'ERROR, {len(reports["error"])} errors, no test ran'
  terminalreporter.write_line(f'PyTorch parity ({PARITY_REFERENCE}): {line}')
