"""Multi-device test bodies, run in one child process with 8 CPU devices.

XLA creates virtual CPU devices only if told before JAX starts its backend, so
a test that needs 8 devices cannot run in the pytest process, whose device
count is whatever its environment gives. A test module registers such bodies
with ``CHECKS = devices.Checks()`` and ``@CHECKS``; the ``device_checks``
fixture (tests/conftest.py) runs the checks of every module of the session in
one child, ``python -m tests.devices <module>[:<check>] ...``, with
``JAX_PLATFORMS=cpu`` and ``--xla_force_host_platform_device_count=8`` (one
child, not one per module: each child pays JAX's start and the imports again),
and each test asserts on its check's result. Run checks by hand the same way,
e.g. ``python -m tests.devices tests.test_sharding:check_zero1_auto`` (a bare
module runs all of its checks).

This module imports no JAX at the top: the child sets its environment first.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

N_DEVICES = 8
TIMEOUT_S = 300  # Per module, for all of its checks, on 2 busy cores.
_TAG = 'ADABELIEF_DEVICE_CHECKS '
_ROOT = Path(__file__).resolve().parent.parent

Check = Callable[[], dict[str, Any] | None]


class Checks:
  """A test module's registry of 8-device bodies: decorate each with it."""

  def __init__(self) -> None:
    self.functions: dict[str, Check] = {}

  def __call__(self, fn: Check) -> Check:
    self.functions[fn.__name__] = fn
    return fn


def child_env() -> dict[str, str]:
  """This environment, with 8 CPU devices and the CPU platform."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  env['XLA_FLAGS'] = ' '.join([*flags, f'--xla_force_host_platform_device_count={N_DEVICES}'])
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def run_in_child(modules: list[str]) -> dict[str, dict[str, Any]]:
  """Runs every check of ``modules`` in one child; their results by module, then name.

  Raises ``RuntimeError`` with the child's output if it crashes or runs past
  :data:`TIMEOUT_S` per module (then it is killed).
  """
  timeout = TIMEOUT_S * len(modules)
  try:
    proc = subprocess.run(
      [sys.executable, '-m', 'tests.devices', *modules],
      env=child_env(),
      cwd=_ROOT,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
    )
  except subprocess.TimeoutExpired as e:
    raise RuntimeError(f'the checks of {modules} ran past {timeout} s:\n{e.stderr}') from e
  for line in proc.stdout.splitlines():
    if line.startswith(_TAG):
      return json.loads(line[len(_TAG) :])
  raise RuntimeError(
    f'the checks of {modules} crashed (exit {proc.returncode}):\n'
    f'{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}'
  )


def _run(checks: Checks, names: list[str]) -> dict[str, Any]:
  results: dict[str, Any] = {}
  for name in names:
    print(f'running {name}', file=sys.stderr, flush=True)  # Names a check that hangs.
    start = time.perf_counter()
    try:
      results[name] = {'ok': True, 'metrics': checks.functions[name]() or {}}
    except Exception:
      results[name] = {'ok': False, 'error': traceback.format_exc()}
    results[name]['seconds'] = round(time.perf_counter() - start, 2)
    print(f'{name}: {"ok" if results[name]["ok"] else "FAILED"}', file=sys.stderr)
  return results


def _selection(argv: list[str]) -> dict[str, list[str]]:
  """``MODULE`` or ``MODULE:CHECK`` arguments as the checks asked for, by module (empty: all)."""
  wanted: dict[str, list[str]] = {}
  for arg in argv:
    module, _, name = arg.partition(':')
    wanted.setdefault(module, [])
    if name:
      wanted[module].append(name)
  return wanted


def _main(argv: list[str]) -> None:
  os.environ.update(child_env())  # Before the modules below import JAX.
  if not argv:
    sys.exit('usage: python -m tests.devices MODULE[:CHECK] ...')
  results = {}
  for module, names in _selection(argv).items():
    checks = importlib.import_module(module).CHECKS
    names = names or list(checks.functions)
    unknown = [n for n in names if n not in checks.functions]
    if unknown:
      sys.exit(f'unknown checks {unknown} in {module}; known: {list(checks.functions)}')
    results[module] = _run(checks, names)
  print(_TAG + json.dumps(results), flush=True)


if __name__ == '__main__':
  _main(sys.argv[1:])
