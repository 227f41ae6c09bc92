"""Multi-host: data-parallel AdaBelief over every device of every process (jax.distributed).

Start the same command once per process::

    # one process, all of its devices (one CPU device unless told otherwise)
    python examples/multihost.py [--cpu-devices 4] [--zero]
    # two processes on this machine, two CPU devices each
    python examples/multihost.py --coordinator-address 127.0.0.1:8476 \\
        --num-processes 2 --process-id 0 --cpu-devices 2 --zero &
    python examples/multihost.py --coordinator-address 127.0.0.1:8476 \\
        --num-processes 2 --process-id 1 --cpu-devices 2 --zero
    # a cluster: on host i of N (process 0's host runs the coordinator service)
    python examples/multihost.py --coordinator-address HOST0:PORT --num-processes N --process-id i
    # SLURM, Open MPI, Cloud TPU pods: JAX reads all three from the environment
    python examples/multihost.py --auto-cluster

A multi-host program needs three things: ``jax.distributed.initialize`` before
any other JAX call; one mesh over ``jax.devices()``, the devices of every
process; and global batches built from each process's own rows
(``jax.make_array_from_callback``, as a per-host data loader would). The model
is a Flax NNX MLP trained with ``adabelief(..., weight_decay=1e-4, rectify=True)``;
the optimizer code is the one-device code, and ``--zero`` partitions its state
along the mesh axis ``data`` (ZeRO-1). On GPUs and TPUs leave out
``--cpu-devices``: JAX uses NCCL or ICI/DCN where CPUs use gloo (whose
connection banners, ``[Gloo] Rank r is connected to ...``, are harmless).
Process 0 prints the loss every ``--log-every`` steps and writes ``params.npz``
(the final parameters by path) and ``results.json`` into ``--out``.

Why this is longer than the other examples: a process that dies or freezes can
leave the others waiting in a collective forever, and a copy of this script
without its guards would. They make every failure end the run:

* One step in flight: each step is waited for before the next is dispatched.
  A process that never reads its results could otherwise queue steps ahead, and
  XLA:CPU can deadlock when one local device already waits in a step's
  all-reduce while the other waits for a free in-flight slot.
* ``--timeout S`` (default 60) bounds every wait. Gloo collectives give up after
  S seconds (XLA's default is 30 minutes), so a dead or frozen peer makes the
  others fail at their next collective: ``process I: step K failed: ...``, exit
  status 1. A peer without heartbeats is declared dead within 2 S, and when
  process 0 (the coordination service) dies JAX aborts the others at once
  (SIGABRT, exit status 134). A watchdog thread ends any phase (joining: 135 s;
  set-up, a step, shutdown: S + 15 s) that overruns, with exit status 3.
* SIGTERM and Ctrl-C end a process at once (exit status 143 and 130), even one
  blocked in a collective: the watchdog hears them through ``signal.set_wakeup_fd``.
  (JAX's preemption service, which would only log SIGTERM, is switched off.)
Raise ``--timeout`` if compiling a step takes longer than a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator

JOIN_TIMEOUT_S = 120  # How long jax.distributed.initialize waits for every process to join.
GRACE_S = 15  # The watchdog fires this long after XLA's own timeouts would have.


def _count(text: str) -> int:
  """An argparse type: an integer >= 1."""
  if not text.strip().isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {text!r}')
  return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  add = parser.add_argument
  add('--coordinator-address', metavar='HOST:PORT', help="process 0's address (N > 1)")
  add('--num-processes', type=_count, default=1, metavar='N', help='processes in all (default: 1)')
  add('--process-id', type=int, default=0, metavar='I', help="this process's index, 0..N-1")
  add('--auto-cluster', action='store_true', help='read the three above from SLURM/MPI/TPU')
  add('--cpu-devices', type=_count, metavar='M', help='M virtual CPU devices per process')
  add('--zero', action='store_true', help='partition the optimizer state along data (ZeRO-1)')
  add('--timeout', type=float, default=60.0, metavar='S', help='seconds any wait may take')
  add('--steps', type=_count, default=100, help='training steps (default: %(default)s)')
  add('--global-batch', type=_count, default=64, help='rows per step, all devices together')
  add('--log-every', type=int, default=25, help='steps between loss lines (0: none)')
  add('--out', default='results/multihost', help='where process 0 writes its results')
  args = parser.parse_args(argv)
  if not 0 <= args.process_id < args.num_processes:
    parser.error(f'--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}')
  if args.num_processes > 1 and not args.coordinator_address:
    parser.error('--num-processes > 1 needs --coordinator-address HOST:PORT (of process 0)')
  if args.timeout <= 0 or args.log_every < 0:
    parser.error(
      f'--timeout must be > 0 and --log-every >= 0, got {args.timeout}, {args.log_every}'
    )
  return args


class Watchdog:
  """Ends this process, with a message, when a phase overruns or SIGTERM/SIGINT arrives.

  A thread, because a step waiting for a dead peer blocks inside XLA, where
  neither an exception nor a Python signal handler (which runs in the main
  thread, between bytecodes) can reach it. It learns of signals from
  ``signal.set_wakeup_fd`` and exits with ``os._exit``, skipping atexit on
  purpose: ``jax.distributed.shutdown`` would wait for the missing peer.
  """

  def __init__(self, who: str) -> None:
    self.who, self.current = who, ('start-up', None, 0.0)  # (phase, deadline, limit): atomic.
    self._wakeup, write_end = os.pipe()
    os.set_blocking(write_end, False)
    for sig in (signal.SIGTERM, signal.SIGINT):
      if signal.getsignal(sig) is not signal.SIG_IGN:  # A background job keeps SIGINT ignored.
        signal.signal(sig, lambda *_: None)  # The C handler still writes to the wakeup fd.
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, daemon=True).start()

  @contextlib.contextmanager
  def phase(self, name: str, limit_s: float | None) -> Iterator[None]:
    """Runs the body as phase ``name``, within ``limit_s`` seconds unless None."""
    self.current = (name, None if limit_s is None else time.monotonic() + limit_s, limit_s)
    try:
      yield
    finally:
      self.current = (name, None, limit_s)  # The name stays: the phase that failed, if any.

  def fail(self, status: int, message: str) -> None:
    with contextlib.suppress(OSError):
      os.write(2, f'{self.who}: {message}\n'.encode())
    os._exit(status)

  def _watch(self) -> None:
    while True:
      ready = select.select([self._wakeup], [], [], 0.5)[0]
      phase, deadline, limit_s = self.current
      if ready:
        signum = os.read(self._wakeup, 1)[0]
        self.fail(128 + signum, f'{signal.Signals(signum).name} received during {phase}; exiting')
      if deadline is not None and time.monotonic() > deadline:
        self.fail(
          3,
          f'{phase} did not finish within {limit_s:g} s; another process has probably died, '
          'hung or been stopped (see its output); exiting',
        )


def start_jax(args: argparse.Namespace):
  """Sets the timeouts and devices, joins the process group; before any other JAX work."""
  seconds = max(1, round(args.timeout))
  os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + (
    f' --xla_cpu_collective_timeout_seconds={seconds}'
    f' --xla_cpu_collective_call_terminate_timeout_seconds={seconds}'
  )
  import jax

  if args.cpu_devices:
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', args.cpu_devices)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # Cross-process, on CPU.
  jax.config.update('jax_enable_preemption_service', False)  # SIGTERM is the watchdog's.
  timeouts = dict(
    initialization_timeout=JOIN_TIMEOUT_S,
    heartbeat_timeout_seconds=2 * seconds,
    shutdown_timeout_seconds=seconds,
  )
  if args.auto_cluster:
    jax.distributed.initialize(**timeouts)
  elif args.num_processes > 1:
    jax.distributed.initialize(
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
      **timeouts,
    )
  return jax


def train(args: argparse.Namespace, jax, watchdog: Watchdog) -> dict:
  """Trains data parallel over every device of every process; process 0's results."""
  import numpy as np
  import optax
  from flax import nnx
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import adabelief_jax
  from adabelief_jax import sharding

  if args.global_batch % jax.device_count():
    sys.exit(f'--global-batch {args.global_batch} is not a multiple of {jax.device_count()}')
  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  # Every process builds the same parameters from the same seed.
  model = nnx.Sequential(
    nnx.Linear(32, 64, rngs=nnx.Rngs(0)), nnx.gelu, nnx.Linear(64, 8, rngs=nnx.Rngs(1))
  )
  graphdef, params = nnx.split(model)
  tx = adabelief_jax.adabelief(3e-3, weight_decay=1e-4, rectify=True)
  axis = 'data' if args.zero else None
  with watchdog.phase('set-up', args.timeout + GRACE_S):
    params = jax.block_until_ready(jax.device_put(params, replicated))
    param_sh = jax.tree.map(lambda _: replicated, params)
    state_sh = sharding.state_shardings(tx, params, shard_axis=axis)
    opt_state = jax.block_until_ready(sharding.init_sharded(tx, params, shard_axis=axis))

  @jax.jit(
    in_shardings=(param_sh, state_sh, rows, rows),
    out_shardings=(param_sh, state_sh, replicated),
    donate_argnums=(0, 1),
  )
  def train_step(params, opt_state, x, y):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      nnx.merge(graphdef, p)(x), y
    ).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def global_batch(step: int):
    """Step ``step``'s batch: each process makes only the rows its devices hold."""
    teacher = np.random.default_rng(0).normal(size=(32, 8))
    x = np.random.default_rng([1, step]).normal(size=(args.global_batch, 32)).astype(np.float32)
    y = np.argmax(x @ teacher, axis=-1).astype(np.int32)  # (A real loader reads only its rows.)
    return (
      jax.make_array_from_callback(x.shape, rows, lambda index: x[index]),
      jax.make_array_from_callback(y.shape, rows, lambda index: y[index]),
    )

  losses, start = [], time.perf_counter()
  for step in range(1, args.steps + 1):
    with watchdog.phase(f'step {step}', args.timeout + GRACE_S):
      params, opt_state, loss = jax.block_until_ready(  # One step in flight: see the docstring.
        train_step(params, opt_state, *global_batch(step))
      )
    losses.append(float(loss.addressable_data(0)))  # Replicated: every process holds it.
    if jax.process_index() == 0 and args.log_every and step % args.log_every == 0:
      print(f'step {step:4d}  loss {losses[-1]:.4f}', flush=True)
  paths = jax.tree_util.tree_leaves_with_path(params)
  return {
    'params': {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0)) for k, v in paths},
    'losses': losses,
    'seconds': time.perf_counter() - start,
    'processes': jax.process_count(),
    'devices': jax.device_count(),
    'zero': args.zero,
    'state_bytes_per_device': max(sharding.bytes_per_device(opt_state).values()),
  }


def write_results(args: argparse.Namespace, run: dict) -> None:
  """Process 0: params.npz (the final parameters by path) and results.json into --out."""
  import numpy as np

  os.makedirs(args.out, exist_ok=True)
  np.savez(os.path.join(args.out, 'params.npz'), **run.pop('params'))
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump({'steps': args.steps, **run}, f, indent=1)
  print(
    f'{run["devices"]} devices in {run["processes"]} process(es): {args.steps} steps in '
    f'{run["seconds"]:.1f} s; optimizer state {run["state_bytes_per_device"]} B per device'
  )


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  watchdog = Watchdog(f'process {args.process_id}')  # First: signals work while joining.
  with watchdog.phase('joining the process group', JOIN_TIMEOUT_S + GRACE_S):
    jax = start_jax(args)
  watchdog.who = f'process {jax.process_index()}'
  try:
    run = train(args, jax, watchdog)
    if jax.process_index() == 0:
      with watchdog.phase('writing the results', None):  # Local work: no deadline.
        write_results(args, run)
    if jax.process_count() > 1:
      with watchdog.phase('shutdown', args.timeout + GRACE_S):
        jax.distributed.shutdown()  # Waits for every process to get here.
  except Exception as e:  # Any failure: say which phase, and end this process at once.
    first = (str(e).strip().splitlines() or [''])[0]
    hint = '; another process has probably died or hung (see its output)'
    hint = hint if isinstance(e, jax.errors.JaxRuntimeError) and jax.process_count() > 1 else ''
    watchdog.fail(1, f'{watchdog.current[0]} failed: {type(e).__name__}: {first}{hint}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
