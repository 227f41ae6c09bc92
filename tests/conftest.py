"""Shared fixtures: examples as modules, and 8-device checks in a child process."""

import importlib.util
import json
import pathlib
from typing import Any

import pytest

from tests import devices

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / 'examples'


@pytest.fixture
def load_example(monkeypatch):
  """Imports examples/<name>.py as a module, with examples/ on sys.path for _common."""
  monkeypatch.syspath_prepend(str(EXAMPLES))

  def load(name: str):
    spec = importlib.util.spec_from_file_location(f'examples_{name}', EXAMPLES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

  return load


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


@pytest.fixture(scope='module')
def device_checks(request) -> DeviceChecks:
  """Runs every check the requesting module registered, in one 8-device child."""
  module = request.module
  try:
    return DeviceChecks(devices.run_in_child(module.__name__, list(module.CHECKS.functions)))
  except RuntimeError as e:
    pytest.fail(str(e), pytrace=False)
