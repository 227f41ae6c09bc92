"""Multi-device test bodies, run in one child process with 8 CPU devices.

XLA creates virtual CPU devices only if told before JAX starts its backend, so
a test that needs 8 devices cannot run in the pytest process, whose device
count is whatever its environment gives. A test module registers such bodies
with ``CHECKS = devices.Checks()`` and ``@CHECKS``; the ``device_checks``
fixture (tests/conftest.py) runs all of a module's checks in one child,
``python -m tests.devices <module> [check ...]``, with ``JAX_PLATFORMS=cpu`` and
``--xla_force_host_platform_device_count=8``, and each test asserts on its
check's result. Run checks by hand the same way, e.g.
``python -m tests.devices tests.test_sharding check_zero1_auto``.

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
TIMEOUT_S = 300  # For all of one module's checks, on 2 busy cores.
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


def run_in_child(module: str, names: list[str]) -> dict[str, Any]:
  """Runs checks ``names`` of ``module`` in one child; their results by name.

  Raises ``RuntimeError`` with the child's output if it crashes or runs past
  :data:`TIMEOUT_S` (then it is killed).
  """
  try:
    proc = subprocess.run(
      [sys.executable, '-m', 'tests.devices', module, *names],
      env=child_env(),
      cwd=_ROOT,
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
      check=False,
    )
  except subprocess.TimeoutExpired as e:
    raise RuntimeError(f'the {module} checks ran past {TIMEOUT_S} s:\n{e.stderr}') from e
  for line in proc.stdout.splitlines():
    if line.startswith(_TAG):
      return json.loads(line[len(_TAG) :])
  raise RuntimeError(
    f'the {module} checks crashed (exit {proc.returncode}):\n'
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


def _main(argv: list[str]) -> None:
  os.environ.update(child_env())  # Before the module below imports JAX.
  if not argv:
    sys.exit('usage: python -m tests.devices MODULE [CHECK ...]')
  checks = importlib.import_module(argv[0]).CHECKS
  names = argv[1:] or list(checks.functions)
  unknown = [n for n in names if n not in checks.functions]
  if unknown:
    sys.exit(f'unknown checks {unknown}; known: {list(checks.functions)}')
  print(_TAG + json.dumps(_run(checks, names)), flush=True)


if __name__ == '__main__':
  _main(sys.argv[1:])
