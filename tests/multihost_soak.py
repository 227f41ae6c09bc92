"""Soak harness for ``examples/multihost.py``: many two-process runs, each with a time limit.

A multi-process run that freezes prints nothing, so a hang that strikes one run in ten
goes unnoticed in a test that runs once. This starts the example as two processes x two
CPU devices on 127.0.0.1 again and again, one run after the other (the machine may be
small and shared), and sorts each run into:

* ok: both processes exited 0;
* failed: a process exited non-zero (the example's watchdog turns a stuck collective
  into such an exit, so a freeze shows up here once the watchdog is in place);
* hung: the harness had to kill the processes at ``--run-timeout``. It sends SIGTERM first
  and says whether that ended them, because a frozen process must stay killable.

Usage::

    python -m tests.multihost_soak --runs 50 [--zero] [--steps N]
    python -m tests.multihost_soak --runs 5 --kill-peer-at 10   # process 1 dies at step 10
    python -m tests.multihost_soak --runs 3 --stop-peer-at 10   # process 1 freezes (SIGSTOP)

One line per run, then ``runs: N, ok: K, hung: H, failed: F``; the exit status is 0 only
when every run was ok. Flags the harness does not know are passed to the example (e.g.
``--timeout 10``); ``--script`` runs another copy of it, e.g. an older one to compare. With
``--kill-peer-at``/``--stop-peer-at`` (``--victim 0`` hits process 0 instead) a run is ok
when the other process exits non-zero by itself, and its line says how long after the hit
that took and what each process said last. ``--stacks`` saves gdb's native stacks of
hung processes before they are killed.

Only 127.0.0.1 is used: the coordinator's port comes from binding port 0, and
JAX_COORDINATOR_BIND_ADDRESS keeps the coordinator service off the other interfaces.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / 'examples' / 'multihost.py'
SIGTERM_GRACE_S = 10.0  # How long a hung process gets to honour SIGTERM before SIGKILL.


def free_port() -> int:
  """A TCP port the OS reports free on 127.0.0.1 (for the coordinator)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def child_env(port: int | None = None) -> dict[str, str]:
  """The environment for the example's processes.

  Drops a forced device count (the example picks its own with --cpu-devices) and
  pins JAX to the CPU; with ``port``, binds the coordinator service to loopback
  only (JAX binds every interface by default).
  """
  env = dict(os.environ)
  flags = [
    f
    for f in env.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  if port is not None:
    env['JAX_COORDINATOR_BIND_ADDRESS'] = f'127.0.0.1:{port}'
  env['PYTHONUNBUFFERED'] = '1'
  return env


def two_process_args(port: int, zero: bool = True) -> list[str]:
  """The example's flags for two processes x two CPU devices (less --process-id)."""
  return [
    '--coordinator-address',
    f'127.0.0.1:{port}',
    '--num-processes',
    '2',
    '--cpu-devices',
    '2',
    *(['--zero'] if zero else []),
  ]


@dataclass
class Outcome:
  """What happened to one run."""

  status: str  # 'ok', 'failed' or 'hung'
  seconds: float
  detail: str = ''


def last_line(text: str) -> str:
  """The last line of a log that is not part of a native stack trace, shortened."""
  lines = [line.strip() for line in text.splitlines()]
  lines = [line for line in lines if line and not line.startswith(('@', '***'))]
  return lines[-1][:240] if lines else '(no output)'


def dump_stacks(pid: int, path: Path) -> None:
  """Saves the native stacks of every thread of ``pid`` (gdb, if installed)."""
  try:
    out = subprocess.run(
      ['gdb', '-p', str(pid), '-batch', '-ex', 'thread apply all bt'],
      capture_output=True,
      text=True,
      timeout=120,
    )
    path.write_text(out.stdout + out.stderr)
  except (OSError, subprocess.TimeoutExpired) as e:
    path.write_text(f'gdb failed: {e!r}\n')


def stop(procs: list[subprocess.Popen]) -> str:
  """Ends still-running processes: SIGTERM, then SIGKILL after a grace period.

  Returns what SIGTERM achieved, e.g. 'SIGTERM ended them in 0.3 s'.
  """
  alive = [p for p in procs if p.poll() is None]
  if not alive:
    return ''
  start = time.monotonic()
  for p in alive:
    p.send_signal(signal.SIGTERM)
    p.send_signal(signal.SIGCONT)  # A SIGSTOPped process handles SIGTERM only once running.
  while time.monotonic() - start < SIGTERM_GRACE_S and any(p.poll() is None for p in alive):
    time.sleep(0.05)
  took = time.monotonic() - start
  stubborn = [p for p in alive if p.poll() is None]
  for p in stubborn:
    p.kill()
  for p in procs:
    p.wait()
  if stubborn:
    return f'SIGTERM ignored for {SIGTERM_GRACE_S:.0f} s, SIGKILLed'
  return f'SIGTERM ended them in {took:.1f} s'


def run_once(
  index: int, args: argparse.Namespace, extra: list[str], logs: Path
) -> tuple[Outcome, dict[str, str]]:
  """Starts the two processes, watches them until they end or time runs out."""
  port = free_port()
  common = [*two_process_args(port, args.zero), '--steps', str(args.steps)]
  peer_at = args.kill_peer_at or args.stop_peer_at
  victim, survivor = args.victim, 1 - args.victim
  if peer_at:
    common += ['--log-every', '1']  # Process 0 reports each step, so we know when to act.
  if '--out' not in extra:
    common += ['--out', str(logs / 'out')]  # Process 0's results: not into the checkout.
  common += extra
  paths = [logs / f'run{index:03d}-process{i}.log' for i in range(2)]
  files = [open(path, 'w') for path in paths]  # noqa: SIM115 (closed in the finally)
  procs: list[subprocess.Popen] = []
  start = time.monotonic()
  peer_hit_at = None
  hung = False
  killing = ''
  try:
    for i in range(2):
      procs.append(
        subprocess.Popen(
          [sys.executable, str(args.script), *common, '--process-id', str(i)],
          env=child_env(port),
          stdout=files[i],
          stderr=subprocess.STDOUT,
          cwd=ROOT,
          start_new_session=True,  # A Ctrl-C meant for the harness reaches only it.
        )
      )
    want = re.compile(rf'^step\s+{peer_at}\b', re.M) if peer_at else None
    while any(p.poll() is None for p in procs):
      now = time.monotonic()
      if now - start > args.run_timeout:
        if args.stacks:
          for i, p in enumerate(procs):
            if p.poll() is None:
              dump_stacks(p.pid, logs / f'run{index:03d}-process{i}.stacks')
        hung, killing = True, stop(procs)
        break
      if want is not None and peer_hit_at is None and want.search(paths[0].read_text()):
        procs[victim].send_signal(signal.SIGKILL if args.kill_peer_at else signal.SIGSTOP)
        peer_hit_at = time.monotonic()
      if peer_hit_at is None and not peer_at and any(p.poll() not in (None, 0) for p in procs):
        # One process failed: give the other a moment to report, then end it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
          time.sleep(0.1)
        killing = stop(procs)
        break
      if peer_hit_at is not None and procs[survivor].poll() is not None:
        break
      time.sleep(0.05)
  finally:
    survivor_s = time.monotonic() - peer_hit_at if peer_hit_at is not None else None
    stop(procs)
    for f in files:
      f.close()
  seconds = time.monotonic() - start
  texts = {f'process{i}': path.read_text() for i, path in enumerate(paths)}
  codes = [p.returncode for p in procs]
  if hung:
    status, detail = 'hung', f'killed after {args.run_timeout:.0f} s; {killing}'
  elif peer_at:
    if peer_hit_at is None:
      status, detail = 'failed', f'process 0 never logged step {peer_at}'
    elif codes[survivor] not in (None, 0):
      status = 'ok'
      detail = f'process {survivor} exited {codes[survivor]} {survivor_s:.1f} s after the peer'
    else:
      status, detail = 'failed', f'process {survivor} exited {codes[survivor]} after the peer'
  elif all(code == 0 for code in codes):
    status, detail = 'ok', ''
  else:
    status = 'failed'
    detail = f'exit codes {codes}' + (f'; {killing}' if killing else '')
  if status != 'ok' or peer_at:
    detail += ''.join(f' | {name}: {last_line(text)!r}' for name, text in texts.items())
  else:
    for path in paths:
      path.unlink()  # Keep only the logs of runs worth reading.
  return Outcome(status, seconds, detail), texts


def _interrupt(signum: int, frame: object) -> None:
  """SIGTERM as Ctrl-C: unwinds into run_once's cleanup, which ends the children."""
  raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
  signal.signal(signal.SIGTERM, _interrupt)
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--runs', type=int, default=50, help='two-process runs (default: 50)')
  parser.add_argument('--zero', action='store_true', help='pass --zero (ZeRO-1 state)')
  parser.add_argument('--steps', type=int, default=40, help='training steps per run (default: 40)')
  parser.add_argument(
    '--run-timeout',
    type=float,
    default=240,
    help='seconds before a run counts as hung and is killed (default: 240)',
  )
  parser.add_argument('--script', type=Path, default=EXAMPLE, help='the example to run')
  parser.add_argument('--logs', type=Path, help='keep logs here (default: a temporary folder)')
  parser.add_argument('--stacks', action='store_true', help="save hung processes' gdb stacks")
  peer = parser.add_mutually_exclusive_group()
  peer.add_argument(
    '--kill-peer-at', type=int, metavar='STEP', help='SIGKILL process 1 after step STEP'
  )
  peer.add_argument(
    '--stop-peer-at', type=int, metavar='STEP', help='SIGSTOP process 1 after step STEP'
  )
  parser.add_argument(
    '--victim',
    type=int,
    choices=(0, 1),
    default=1,
    help='the process that --kill-peer-at/--stop-peer-at hits (default: 1)',
  )
  args, extra = parser.parse_known_args(argv)
  logs = args.logs or Path(tempfile.mkdtemp(prefix='multihost_soak_'))
  logs.mkdir(parents=True, exist_ok=True)
  print(f'{args.script} x {args.runs} runs, logs of runs not ok in {logs}', flush=True)
  counts = {'ok': 0, 'hung': 0, 'failed': 0}
  gloo_lines = 0
  start = time.monotonic()
  for i in range(1, args.runs + 1):
    outcome, texts = run_once(i, args, extra, logs)
    counts[outcome.status] += 1
    gloo_lines += sum(text.count('[Gloo]') for text in texts.values())
    print(
      f'run {i:3d}/{args.runs}  {outcome.status:6s} {outcome.seconds:6.1f} s  {outcome.detail}',
      flush=True,
    )
  wall = time.monotonic() - start
  print(f'wall time {wall:.0f} s ({wall / args.runs:.1f} s per run); [Gloo] lines: {gloo_lines}')
  print(
    f'runs: {args.runs}, ok: {counts["ok"]}, hung: {counts["hung"]}, failed: {counts["failed"]}'
  )
  return 0 if counts['ok'] == args.runs else 1


if __name__ == '__main__':
  sys.exit(main())
