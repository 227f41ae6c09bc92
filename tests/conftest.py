"""Test-wide setup: 8 virtual CPU devices, so sharding and pmap tests run anywhere.

XLA reads the flag once, when JAX first initializes its backend, so it is set
here, before any test module imports JAX.
"""

import importlib.util
import os
import pathlib

import pytest

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_FLAG}'.strip()


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
