"""Multi-process data-parallel training: ``examples/multihost.py`` under jax.distributed.

Two processes with two CPU devices each (gloo collectives over 127.0.0.1, ZeRO-1
optimizer state) must end with the parameters of one process on one device fed
the same global batches. A run must also fail instead of freezing: a killed
peer makes the survivor exit with an error within the script's --timeout, and
SIGTERM ends a process that waits in a collective for a frozen peer. Every
process is a child with a hard time limit, and is killed and reaped whatever
happens. ``python -m tests.multihost_soak`` repeats the two-process run many
times, which a hang that strikes one run in ten needs.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.multihost_soak import child_env, free_port, two_process_args

EXAMPLE = Path(__file__).resolve().parent.parent / 'examples' / 'multihost.py'
TIMEOUT_S = 180  # For all processes together; they take ~20-60 s on 2 busy cores.
STEPS = 40
TOLERANCE = 1e-5


def _run_all(
  commands: dict[str, list[str]], logs: Path, timeout_s: float, port: int
) -> dict[str, str]:
  """Runs the commands concurrently; returns their logs. Fails (and kills the
  rest) as soon as one exits non-zero or the time limit passes."""
  procs: dict[str, subprocess.Popen] = {}
  files = {}
  try:
    for name, args in commands.items():
      files[name] = open(logs / f'{name}.log', 'w')  # noqa: SIM115 (closed in the finally)
      procs[name] = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        env=child_env(port),
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
  port = free_port()
  common = ['--steps', str(STEPS), '--log-every', '10']
  multi = two_process_args(port)
  logs = _run_all(
    {
      'process0': [*common, *multi, '--process-id', '0', '--out', str(tmp_path / 'multi')],
      'process1': [*common, *multi, '--process-id', '1', '--out', str(tmp_path / 'unused')],
      'single': [*common, '--cpu-devices', '1', '--out', str(tmp_path / 'single')],
    },
    tmp_path,
    TIMEOUT_S,
    port,
  )
  # What each run trained on, and that process 0 logged the losses it wrote.
  results = {
    n: json.loads((tmp_path / n / 'results.json').read_text()) for n in ('multi', 'single')
  }
  for name, processes, devices in (('multi', 2, 4), ('single', 1, 1)):
    got = tuple(results[name][key] for key in ('processes', 'devices', 'steps', 'zero'))
    assert got == (processes, devices, STEPS, processes > 1), results[name]
  # ZeRO-1: each of the 4 devices holds about a quarter of the single device's state.
  multi_bytes, single_bytes = (results[n]['state_bytes_per_device'] for n in ('multi', 'single'))
  assert multi_bytes < 0.3 * single_bytes, (multi_bytes, single_bytes)
  losses = results['multi']['losses']
  assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
  assert losses[-1] < losses[0]  # It trains.
  logged = {
    int(step): float(loss)
    for step, loss in re.findall(r'step +(\d+) +loss (\S+)', logs['process0'])
  }
  assert sorted(logged) == list(range(10, STEPS + 1, 10)), logs['process0']
  assert all(loss == pytest.approx(losses[step - 1], abs=5.1e-5) for step, loss in logged.items())
  multi_params = np.load(tmp_path / 'multi' / 'params.npz')
  single_params = np.load(tmp_path / 'single' / 'params.npz')
  assert sorted(multi_params) == sorted(single_params) and len(single_params) == 4
  diffs = {k: float(np.max(np.abs(multi_params[k] - single_params[k]))) for k in single_params}
  print(f'max |multi-process - single-process| per parameter: {diffs}')
  assert max(diffs.values()) < TOLERANCE, diffs
  assert not (tmp_path / 'unused').exists()  # Only process 0 writes results.


def test_cluster_launch_flags_are_parsed(load_example):
  """The launch flags of the help's cluster recipes, parsed as documented."""
  parse = load_example('multihost').parse_args
  args = parse(['--coordinator-address', 'host0:8476', '--num-processes', '4', '--process-id', '3'])
  assert (args.coordinator_address, args.num_processes, args.process_id) == ('host0:8476', 4, 3)
  assert parse(['--auto-cluster']).auto_cluster
  args = parse(['--cpu-devices', '4', '--zero'])
  assert args.cpu_devices == 4 and args.zero and args.num_processes == 1


def test_bad_launch_arguments_are_rejected():
  proc = subprocess.run(
    [sys.executable, str(EXAMPLE), '--num-processes', '2'],
    env=child_env(),
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 2 and '--coordinator-address' in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------
# Failures end the run: a dead peer, a frozen peer, SIGTERM.

PEER_TIMEOUT_S = 10  # The example's --timeout in these tests: its collectives give up after it.
WATCHDOG_GRACE_S = 15  # examples/multihost.py's watchdog fires at --timeout + this at the latest.


@contextlib.contextmanager
def _pair(tmp_path: Path, timeout_s: float) -> Iterator[tuple[list[subprocess.Popen], list[Path]]]:
  """Two example processes with endless steps, each logged to a file; killed on exit."""
  port = free_port()
  args = [
    *two_process_args(port),
    '--steps',
    '1000000',
    '--log-every',
    '1',
    '--timeout',
    str(timeout_s),
  ]
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  procs: list[subprocess.Popen] = []
  try:
    for i, log in enumerate(logs):
      with open(log, 'w') as f:
        procs.append(
          subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args, '--process-id', str(i), '--out', str(tmp_path)],
            env=child_env(port),
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=EXAMPLE.parent.parent,
          )
        )
    yield procs, logs
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGCONT)  # A stopped process cannot be reaped otherwise.
        p.kill()
    for p in procs:
      p.wait()


def _wait_for_step(logs: list[Path], procs: list[subprocess.Popen], step: int) -> None:
  """Waits until process 0 has logged ``step``; fails if either process ends first."""
  deadline = time.monotonic() + TIMEOUT_S
  while f'step {step:4d}' not in logs[0].read_text():
    ended = [i for i, p in enumerate(procs) if p.poll() is not None]
    if ended or time.monotonic() > deadline:
      dump = '\n'.join(
        f'--- process {i} ---\n{log.read_text()[-3000:]}' for i, log in enumerate(logs)
      )
      pytest.fail(f'process 0 never logged step {step}; ended: {ended}\n{dump}', pytrace=False)
    time.sleep(0.1)


def _wait_exit(proc: subprocess.Popen, limit_s: float) -> float | None:
  """Seconds until ``proc`` exits, or None if it is still running after ``limit_s``."""
  start = time.monotonic()
  while time.monotonic() - start < limit_s:
    if proc.poll() is not None:
      return time.monotonic() - start
    time.sleep(0.05)
  return None


def test_killed_peer_makes_the_survivor_fail_within_the_timeout(tmp_path):
  with _pair(tmp_path, PEER_TIMEOUT_S) as (procs, logs):
    _wait_for_step(logs, procs, 5)
    procs[1].kill()
    took = _wait_exit(procs[0], PEER_TIMEOUT_S + WATCHDOG_GRACE_S + 15)
  text = logs[0].read_text()
  assert took is not None, f'process 0 still running after its peer died\n{text[-3000:]}'
  assert procs[0].returncode not in (0, None), text[-3000:]
  # The message names the process and the step it was in.
  assert 'process 0: step ' in text and ('failed' in text or 'did not finish' in text), text[-3000:]
  print(f'survivor exited {procs[0].returncode} {took:.1f} s after its peer was killed')


def test_sigterm_ends_a_process_waiting_for_a_frozen_peer(tmp_path):
  with _pair(tmp_path, 120) as (procs, logs):  # Long timeout: only SIGTERM may end it.
    _wait_for_step(logs, procs, 5)
    procs[1].send_signal(signal.SIGSTOP)  # Alive, but no longer in any collective.
    time.sleep(2)  # Process 0 is now blocked in a step, waiting for process 1.
    assert procs[0].poll() is None, logs[0].read_text()[-3000:]
    procs[0].send_signal(signal.SIGTERM)
    took = _wait_exit(procs[0], 10)
  text = logs[0].read_text()
  assert took is not None, f'SIGTERM did not end process 0 within 10 s\n{text[-3000:]}'
  assert procs[0].returncode == 128 + signal.SIGTERM, (procs[0].returncode, text[-3000:])
  assert 'process 0: SIGTERM received during step ' in text, text[-3000:]
  print(f'SIGTERM ended the waiting process in {took:.2f} s')
