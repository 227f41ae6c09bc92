"""Data-parallel training with AdaBelief across processes (multi-host JAX).

Trains a small Flax NNX MLP on a synthetic classification task with
``adabelief_jax.adabelief`` (decoupled weight decay, rectification on), data
parallel over every device of every process: one global batch per step, split
along the mesh axis ``data``, gradients averaged by XLA, parameters replicated.
With ``--zero`` the optimizer state is partitioned along ``data`` as well
(ZeRO-1, :mod:`adabelief_jax.sharding`), so each device keeps 1/N of it.

The same script runs as one process or as many::

    # One process, all of its devices (one CPU device unless told otherwise):
    python examples/multihost.py
    python examples/multihost.py --cpu-devices 4 --zero

    # Two processes with two CPU devices each, on this machine:
    python examples/multihost.py --coordinator-address 127.0.0.1:8476 \\
        --num-processes 2 --process-id 0 --cpu-devices 2 --zero &
    python examples/multihost.py --coordinator-address 127.0.0.1:8476 \\
        --num-processes 2 --process-id 1 --cpu-devices 2 --zero

On a cluster, start the same command once per host (or per GPU) with
``--coordinator-address`` set to ``<host of process 0>:<free port>``,
``--num-processes`` the number of processes and ``--process-id`` 0..N-1; leave
out ``--cpu-devices``, so that each process uses its own accelerators. Under
SLURM, Open MPI and on Cloud TPU pods use ``--auto-cluster`` instead: JAX then
reads all three from the environment. Nothing else changes: the mesh spans the
devices of all processes, and ``jax.jit`` inserts the collectives.

Each step's global batch is a pure function of (seed, step), and each process
materializes only the rows its own devices hold
(``jax.make_array_from_callback``), which is what a per-host data loader does.
Process 0 prints the loss, shows a progress bar with the loss and AdaBelief's
belief statistics (``track_stats=True``; ``--no-progress`` hides it) and
writes ``params.npz`` (the final parameters, keyed by their paths),
``results.json`` and ``results.md`` into ``--out`` (default
``results/multihost``), so runs with different process and device counts can
be compared.

Failures end the run instead of freezing it:

* One step in flight. The loop waits for each step (``jax.block_until_ready``)
  before it dispatches the next. Without that, a process that never reads a
  result (every process but 0) queues steps far ahead, and XLA:CPU can then
  deadlock: the thread that launches the next step for one local device waits
  for a free in-flight slot of that device, while the other local device is
  already inside a step's gloo all-reduce, waiting for the first.
* ``--timeout S`` (default 60) bounds every wait. XLA's CPU collectives give up
  after S seconds (``--xla_cpu_collective_timeout_seconds``, 30 minutes by
  default), and a watchdog thread ends the process (exit status 3) when the
  set-up, a step or the shutdown takes longer than S + 15 seconds (joining the
  process group: 135 s), with a message naming it. Raise S if compiling a step
  takes minutes.
* When a process dies or freezes, the others fail at their next collective,
  at once (connection reset) or after S seconds at most, with exit status 1
  and ``process I: step K failed: ...``. When process 0 dies, the coordination
  service it runs dies with it, and JAX aborts the others within a second with
  a fatal log ("Terminating process because the JAX distributed service
  detected fatal errors") and SIGABRT (exit status 134). The service also
  declares a process dead that sends no heartbeats for at most 2 S (between S
  and 1.5 S in our runs) and aborts the others the same way: a backstop, the
  collective timeout usually comes first.
* SIGTERM and Ctrl-C end the process at once (exit status 143 and 130), even
  while it waits in a collective: the watchdog thread hears the signal through
  ``signal.set_wakeup_fd``. (JAX's preemption service, which would otherwise
  take over SIGTERM and only log it, is switched off.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import _common

_LAUNCH_HELP = """\
launching (start the script once per process):
  one process, all its devices:
    python examples/multihost.py [--cpu-devices 4] [--zero]
  two processes on this machine, two CPU devices each:
    python examples/multihost.py --coordinator-address 127.0.0.1:8476 \\
        --num-processes 2 --process-id 0 --cpu-devices 2 &
    python examples/multihost.py --coordinator-address 127.0.0.1:8476 \\
        --num-processes 2 --process-id 1 --cpu-devices 2
  a cluster of N hosts: on host i = 0..N-1 run
    python examples/multihost.py --coordinator-address HOST0:PORT \\
        --num-processes N --process-id i
    where HOST0 is the host of process 0 (it runs the coordinator service) and
    PORT a free port there; GPUs and TPUs need no --cpu-devices.
  SLURM, Open MPI, Cloud TPU pods (JAX reads the three from the environment):
    python examples/multihost.py --auto-cluster

failures: the set-up, a step or the shutdown taking longer than
--timeout (+15 s) ends the process with status 3 and a message naming it; a
dead peer makes the others fail at their next collective (status 1; JAX
aborts them, status 134, when process 0 dies); SIGTERM and Ctrl-C end a
process at once, even one waiting for a peer.
"""

INIT_TIMEOUT_S = 120  # jax.distributed.initialize: how long to wait for every process to join.
WATCHDOG_GRACE_S = 15  # The watchdog fires this long after XLA's own timeouts would have.
EXIT_STUCK = 3  # Exit status when the watchdog ends a phase that overran.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0],
    epilog=_LAUNCH_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  dist = parser.add_argument_group('multi-process (jax.distributed.initialize)')
  dist.add_argument(
    '--coordinator-address',
    metavar='HOST:PORT',
    help='address of process 0, which runs the coordinator '
    'service (required with --num-processes > 1)',
  )
  dist.add_argument(
    '--num-processes',
    type=int,
    default=1,
    metavar='N',
    help='total number of processes (default: %(default)s)',
  )
  dist.add_argument(
    '--process-id',
    type=int,
    default=0,
    metavar='I',
    help="this process's index, 0..N-1 (default: %(default)s)",
  )
  dist.add_argument(
    '--auto-cluster',
    action='store_true',
    help='let jax.distributed.initialize() read the '
    'coordinator, N and I from SLURM, Open MPI or the '
    'TPU environment',
  )
  dist.add_argument(
    '--timeout',
    type=float,
    default=60.0,
    metavar='S',
    help='seconds a collective may wait for the other processes before the run '
    'ends with an error (default: %(default)s)',
  )
  parser.add_argument(
    '--cpu-devices',
    type=_common.positive_int,
    metavar='M',
    help='run on M virtual CPU devices per process, e.g. to '
    'try this on one machine (default: the default '
    "backend's devices)",
  )
  parser.add_argument(
    '--zero', action='store_true', help='partition the optimizer state along the data axis (ZeRO-1)'
  )
  _common.add_positive_ints(
    parser,
    [
      ('--steps', 100, 'training steps'),
      ('--global-batch', 64, 'examples per step over all devices; a multiple of the device count'),
    ],
  )
  parser.add_argument('--lr', type=float, default=3e-3, help='learning rate (default: %(default)s)')
  parser.add_argument(
    '--weight-decay', type=float, default=1e-4, help='decoupled weight decay (default: %(default)s)'
  )
  parser.add_argument(
    '--seed', type=int, default=0, help='seed of the parameters and the data (default: %(default)s)'
  )
  parser.add_argument(
    '--log-every', type=int, default=25, help='print the loss every this many steps (0: never)'
  )
  parser.add_argument(
    '--out',
    default=os.path.join('results', 'multihost'),
    help='directory where process 0 writes params.npz, results.md and results.json '
    '(default: %(default)s)',
  )
  parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
  args = parser.parse_args(argv)
  if args.num_processes < 1:
    parser.error('--num-processes must be >= 1')
  if not 0 <= args.process_id < args.num_processes:
    parser.error(f'--process-id must be in 0..{args.num_processes - 1}')
  if args.num_processes > 1 and not args.coordinator_address:
    parser.error('--num-processes > 1 needs --coordinator-address HOST:PORT')
  if args.timeout <= 0:
    parser.error('--timeout must be > 0')
  if args.log_every < 0:
    parser.error('--log-every must be >= 0')
  return args


# ----------------------------------------------------------------------------
# Failing loudly: watchdog, signals, output.


def _ignore_signal(signum: int, frame: Any) -> None:
  """The Python-level handler: nothing, the watchdog thread acts on the wakeup fd."""


class Watchdog:
  """Ends this process with a message when a phase overruns or SIGTERM/SIGINT arrives.

  Why a thread: a step waiting for a dead or frozen peer blocks inside XLA with
  the GIL released, where neither an exception nor a Python signal handler
  (which only the main thread runs, between bytecodes) can reach it. This
  thread keeps running, learns of signals from ``signal.set_wakeup_fd`` (the
  interpreter's C handler writes the signal number there at once), and ends
  the process with ``os._exit``: atexit handlers are skipped on purpose, since
  ``jax.distributed.shutdown`` would wait for the very peer that is missing.
  """

  def __init__(self, who: str) -> None:
    self.who = who
    self.bar: Any = None  # The progress bar, if any: a message must not land on its line.
    self._lock = threading.Lock()
    self._phase = 'start-up'
    self._limit_s = 0.0
    self._deadline: float | None = None
    self._wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    for sig in (signal.SIGTERM, signal.SIGINT):
      # A background job of a non-interactive shell starts with SIGINT ignored; keep it so.
      if signal.getsignal(sig) is not signal.SIG_IGN:
        signal.signal(sig, _ignore_signal)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, name='watchdog', daemon=True).start()

  @contextlib.contextmanager
  def phase(self, name: str, limit_s: float | None) -> Iterator[None]:
    """Runs the body as ``name`` (for messages), within ``limit_s`` seconds unless None."""
    with self._lock:
      self._phase, self._limit_s = name, limit_s or 0.0
      self._deadline = None if limit_s is None else time.monotonic() + limit_s
    try:
      yield
    finally:
      with self._lock:
        self._deadline = None

  @property
  def current(self) -> str:
    """The phase running now, or the last one (the one that failed, after an error)."""
    with self._lock:
      return self._phase

  def fail(self, status: int, message: str) -> None:
    """Writes ``message`` to stderr and ends the process with ``status`` at once."""
    # An open tqdm bar (closing it sets ``disable``) leaves the cursor at the end of its line.
    newline = '\n' if self.bar is not None and not self.bar.disable else ''
    with contextlib.suppress(OSError):
      os.write(2, f'{newline}{self.who}: {message}\n'.encode())
    os._exit(status)

  def _watch(self) -> None:
    while True:
      with self._lock:
        deadline = self._deadline
      wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
      ready, _, _ = select.select([self._wakeup_r], [], [], wait)
      with self._lock:  # Read after the wait: the main thread may have moved on.
        phase, limit_s, deadline = self._phase, self._limit_s, self._deadline
      if ready:
        signum = os.read(self._wakeup_r, 1)[0]
        name = signal.Signals(signum).name
        self.fail(128 + signum, f'{name} received during {phase}; exiting')
      if deadline is not None and time.monotonic() > deadline:
        self.fail(
          EXIT_STUCK,
          f'{phase} did not finish within {limit_s:g} s; another process has '
          'probably died, hung or been stopped (see its output); exiting',
        )


@contextlib.contextmanager
def _stdout_silenced(enabled: bool) -> Iterator[None]:
  """Sends file descriptor 1 to /dev/null, to drop gloo's connection banners.

  The gloo build in jaxlib writes '[Gloo] Rank r is connected to n peer ranks'
  to std::cout once per communicator (eight lines for 2 x 2 devices), with no
  setting to turn it off. Communicators are created on their first use, all of
  them during the set-up and the first step, so only that stretch is
  silenced; nothing else is printed to stdout then, and stderr (errors, the
  watchdog) is untouched.
  """
  if not enabled:
    yield
    return
  sys.stdout.flush()
  saved = os.dup(1)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)
  os.close(devnull)
  try:
    yield
  finally:
    os.dup2(saved, 1)
    os.close(saved)


def _xla_flags(timeout_s: float) -> str:
  """XLA_FLAGS with CPU collective timeouts of ``timeout_s``, unless already set.

  By default gloo collectives wait 30 minutes for a missing peer.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  seconds = max(1, round(timeout_s))
  for flag in (
    'xla_cpu_collective_timeout_seconds',
    'xla_cpu_collective_call_terminate_timeout_seconds',
  ):
    if flag not in flags:
      flags += f' --{flag}={seconds}'
  return flags.strip()


def start_jax(args: argparse.Namespace):
  """Configures devices and joins the process group; before any JAX work."""
  os.environ['XLA_FLAGS'] = _xla_flags(args.timeout)  # Read when the backend starts.
  import jax  # pylint: disable=g-import-not-at-top

  if args.cpu_devices is not None:
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', args.cpu_devices)
  # Cross-process collectives on CPU (GPUs use NCCL, TPUs their ICI/DCN).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # The preemption service installs a SIGTERM handler that only records the
  # signal; this script ends on SIGTERM instead (see Watchdog).
  jax.config.update('jax_enable_preemption_service', False)
  # A process that stops sending heartbeats (dead or frozen) is declared dead
  # within twice --timeout, and JAX then aborts the others with a fatal log: a
  # backstop, as a stuck collective usually raises a plain error first.
  timeouts = {
    'initialization_timeout': INIT_TIMEOUT_S,
    'heartbeat_timeout_seconds': max(2, round(2 * args.timeout)),
    'shutdown_timeout_seconds': max(1, round(args.timeout)),
  }
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


IN_FEATURES, HIDDEN, CLASSES = 32, 64, 8


def make_batch(seed: int, step: int, rows: slice, global_batch: int):
  """Rows ``rows`` of step ``step``'s global batch: the same on every process.

  A real loader reads its process's shard of the data set; here every row is
  a pure function of (seed, step), so any process can make any row.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng([seed, 1])
  teacher = rng.normal(size=(IN_FEATURES, CLASSES))
  x = np.random.default_rng([seed, 2, step]).normal(size=(global_batch, IN_FEATURES))
  x = x[rows].astype(np.float32)
  return x, np.argmax(x @ teacher, axis=-1).astype(np.int32)


def train(args: argparse.Namespace, jax: Any, watchdog: Watchdog) -> dict[str, Any]:
  """Builds the mesh, the model and the step; trains; returns what process 0 reports."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P

  import adabelief_jax  # pylint: disable=g-import-not-at-top
  from adabelief_jax import sharding  # pylint: disable=g-import-not-at-top

  lead = jax.process_index() == 0
  n_devices = jax.device_count()
  if args.global_batch % n_devices:
    sys.exit(f'--global-batch {args.global_batch} is not a multiple of the {n_devices} devices')
  # One mesh axis over every device of every process; Auto axes let XLA place
  # the intermediate values of the model.
  mesh = jax.make_mesh((n_devices,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))

  class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.hidden = nnx.Linear(IN_FEATURES, HIDDEN, rngs=rngs)
      self.out = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.gelu(self.hidden(x)))

  # Every process builds the same initial parameters from the seed; the
  # functional split keeps them as a plain pytree we can place on the mesh.
  graphdef, params = nnx.split(MLP(nnx.Rngs(args.seed)), nnx.Param)
  tx = adabelief_jax.adabelief(
    args.lr,
    weight_decay=args.weight_decay,
    rectify=True,
    track_stats=True,  # For the progress bar; the updates are the same.
  )
  shard_axis = 'data' if args.zero else None
  multi = jax.process_count() > 1
  with (
    watchdog.phase('set-up', args.timeout + WATCHDOG_GRACE_S),
    _stdout_silenced(multi),  # The first collectives: see _stdout_silenced.
  ):
    params = jax.block_until_ready(jax.device_put(params, replicated))
    param_sh = jax.tree.map(lambda _: replicated, params)
    state_sh = sharding.state_shardings(tx, params, shard_axis=shard_axis)
    opt_state = jax.block_until_ready(sharding.init_sharded(tx, params, shard_axis=shard_axis))

  def loss_fn(params, batch):
    x, y = batch
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(
    train_step,
    in_shardings=(param_sh, state_sh, batch_sharding),
    out_shardings=(param_sh, state_sh, replicated),
    donate_argnums=(0, 1),
  )

  def global_batch(step: int):
    shape = (args.global_batch,)
    cache = {}

    def rows(index):  # index: this device's slice of the global batch.
      key = (index[0].start, index[0].stop)
      if key not in cache:
        cache[key] = make_batch(args.seed, step, index[0], args.global_batch)
      return cache[key]

    x = jax.make_array_from_callback(shape + (IN_FEATURES,), batch_sharding, lambda i: rows(i)[0])
    y = jax.make_array_from_callback(shape, batch_sharding, lambda i: rows(i)[1])
    return x, y

  state_bytes = max(sharding.bytes_per_device(opt_state).values())
  losses = []
  start = time.perf_counter()
  with _common.progress_bar(args.steps, 'step', args) as bar:
    watchdog.bar = bar
    for step in range(args.steps):
      with (
        watchdog.phase(f'step {step + 1}', args.timeout + WATCHDOG_GRACE_S),
        _stdout_silenced(multi and step == 0),  # The step's collectives are new too.
      ):
        # One step in flight at a time: see the module docstring.
        params, opt_state, loss = jax.block_until_ready(
          train_step(params, opt_state, global_batch(step))
        )
      if step == 0 and lead:
        bar.write(
          f'{jax.process_count()} process(es) x {jax.local_device_count()} '
          f'{jax.devices()[0].platform} device(s); optimizer state '
          f'{state_bytes} bytes per device{" (ZeRO-1)" if args.zero else ""}'
        )
      # The loss is replicated: every process holds it, no gather needed.
      losses.append(float(loss.addressable_data(0)))
      if lead and args.log_every and (step + 1) % args.log_every == 0:
        bar.write(f'step {step + 1:4d}  loss {losses[-1]:.4f}')
      if not bar.disable:  # Process 0: the statistics are replicated, no gather needed.
        bar.set_postfix(
          loss=f'{losses[-1]:.4f}', **_common.belief_postfix(opt_state), refresh=False
        )
      bar.update()
  seconds = time.perf_counter() - start
  # Parameters are replicated: each process reads its own copy.
  final = {
    jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }
  return {
    'params': final,
    'losses': losses,
    'seconds': seconds,
    'state_bytes_per_device': state_bytes,
  }


def write_results(args: argparse.Namespace, jax: Any, run: dict[str, Any]) -> None:
  """Process 0: params.npz, and the summary table as results.md/results.json, into --out."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  print(f'{args.steps} steps in {run["seconds"]:.2f} s', flush=True)
  os.makedirs(args.out, exist_ok=True)
  params_path = os.path.join(args.out, 'params.npz')
  np.savez(params_path, **run['params'])
  print(f'saved the parameters to {params_path}', flush=True)
  row = {
    'processes': jax.process_count(),
    'devices': jax.device_count(),
    'ZeRO-1': 'yes' if args.zero else 'no',
    'steps': args.steps,
    'final loss': f'{run["losses"][-1]:.4f}',
    'state bytes per device': run['state_bytes_per_device'],
    'train s': f'{run["seconds"]:.2f}',
  }
  _common.report(
    args,
    title='Multi-process data-parallel training with AdaBelief',
    table=_common.table([row]),
    notes=(
      'One global batch per step over every device of every process; '
      'the final parameters are in params.npz.'
    ),
    plots=[],
    losses=run['losses'],
    train_seconds=run['seconds'],
  )


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  # Before JAX starts: SIGTERM and Ctrl-C must work while waiting for the others to join.
  watchdog = Watchdog(f'process {args.process_id}')
  with watchdog.phase('joining the process group', INIT_TIMEOUT_S + WATCHDOG_GRACE_S):
    jax = start_jax(args)
  watchdog.who = f'process {jax.process_index()}'
  lead = jax.process_index() == 0
  args.no_progress = args.no_progress or not lead  # Only process 0 shows a progress bar.
  try:
    run = train(args, jax, watchdog)
    if lead:
      with watchdog.phase('writing the results', None):  # Local work: no deadline.
        write_results(args, jax, run)
    if jax.process_count() > 1:
      with watchdog.phase('shutdown', args.timeout + WATCHDOG_GRACE_S):
        jax.distributed.shutdown()  # Waits for every process to get here.
  except Exception as e:  # Any failure: report it, then end this process at once.
    lines = str(e).strip().splitlines()
    hint = ''
    if isinstance(e, jax.errors.JaxRuntimeError) and jax.process_count() > 1:
      hint = '; another process has probably died or hung (see its output)'
    watchdog.fail(
      1, f'{watchdog.current} failed: {type(e).__name__}: {lines[0] if lines else ""}{hint}'
    )
  return 0


if __name__ == '__main__':
  sys.exit(main())
