"""Multi-process data-parallel training: ``examples/multihost.py`` under jax.distributed.

Two processes with two CPU devices each (gloo collectives over 127.0.0.1, ZeRO-1
optimizer state) must end with the parameters of one process on one device fed
the same global batches. Every process is a child with a hard time limit, and
is killed and reaped whatever happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / 'examples' / 'multihost.py'
TIMEOUT_S = 180  # For all processes together; they take ~15-30 s on 2 cores.
STEPS = 40
TOLERANCE = 1e-5


def _free_port() -> int:
  """A TCP port the OS reports free on 127.0.0.1 (for the coordinator)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env() -> dict[str, str]:
  """The environment minus the test session's 8-device flag: the example
  chooses its device count with --cpu-devices."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _run_all(commands: dict[str, list[str]], logs: Path, timeout_s: float) -> dict[str, str]:
  """Runs the commands concurrently; returns their logs. Fails (and kills the
  rest) as soon as one exits non-zero or the time limit passes."""
  procs: dict[str, subprocess.Popen] = {}
  files = {}
  try:
    for name, args in commands.items():
      files[name] = open(logs / f'{name}.log', 'w')  # noqa: SIM115 (closed in the finally)
      procs[name] = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        env=_env(),
        stdout=files[name],
        stderr=subprocess.STDOUT,
        cwd=EXAMPLE.parent.parent,
      )
    deadline = time.monotonic() + timeout_s
    failure = None
    while failure is None and any(p.poll() is None for p in procs.values()):
      failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
      if failed:
        failure = f'{failed[0]} exited with status {procs[failed[0]].returncode}'
      elif time.monotonic() > deadline:
        failure = f'still running after {timeout_s} s'
      else:
        time.sleep(0.2)
    if failure is None:
      failed = [n for n, p in procs.items() if p.returncode != 0]
      failure = failed and f'{failed[0]} exited with status {procs[failed[0]].returncode}'
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
    for p in procs.values():
      p.wait()
    for f in files.values():
      f.close()
  texts = {name: (logs / f'{name}.log').read_text() for name in commands}
  if failure:
    dump = '\n'.join(f'--- {name} ---\n{text[-4000:]}' for name, text in texts.items())
    pytest.fail(f'{failure}\n{dump}', pytrace=False)
  return texts


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  common = ['--steps', str(STEPS), '--log-every', '10']
  multi = [
    '--coordinator-address',
    f'127.0.0.1:{port}',
    '--num-processes',
    '2',
    '--cpu-devices',
    '2',
    '--zero',
  ]
  logs = _run_all(
    {
      'process0': [*common, *multi, '--process-id', '0', '--out', str(tmp_path / 'multi.npz')],
      'process1': [*common, *multi, '--process-id', '1'],
      'single': [*common, '--cpu-devices', '1', '--out', str(tmp_path / 'single.npz')],
    },
    tmp_path,
    TIMEOUT_S,
  )
  assert '2 process(es) x 2 cpu device(s)' in logs['process0'], logs['process0']
  assert '1 process(es) x 1 cpu device(s)' in logs['single'], logs['single']
  multi_params, single_params = np.load(tmp_path / 'multi.npz'), np.load(tmp_path / 'single.npz')
  assert sorted(multi_params) == sorted(single_params) and len(single_params) == 4
  diffs = {k: float(np.max(np.abs(multi_params[k] - single_params[k]))) for k in single_params}
  print(f'max |multi-process - single-process| per parameter: {diffs}')
  assert max(diffs.values()) < TOLERANCE, diffs
  assert f'step {STEPS:4d}' in logs['process0']  # Process 0 logged the whole run.


def test_help_explains_cluster_launch():
  out = subprocess.run(
    [sys.executable, str(EXAMPLE), '--help'],
    env=_env(),
    capture_output=True,
    text=True,
    timeout=60,
    check=True,
  ).stdout
  for flag in (
    '--coordinator-address',
    '--num-processes',
    '--process-id',
    '--auto-cluster',
    '--cpu-devices',
  ):
    assert flag in out, flag
  assert 'once per process' in out


def test_bad_launch_arguments_are_rejected():
  proc = subprocess.run(
    [sys.executable, str(EXAMPLE), '--num-processes', '2'],
    env=_env(),
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 2 and '--coordinator-address' in proc.stderr, proc.stderr
