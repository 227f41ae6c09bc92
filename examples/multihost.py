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
Process 0 prints the loss and, with ``--out``, saves the final parameters to a
``.npz`` file (keys are the parameters' paths), so runs with different process
and device counts can be compared.
"""

from __future__ import annotations

import argparse
import sys
import time

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
"""


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
  parser.add_argument(
    '--cpu-devices',
    type=int,
    metavar='M',
    help='run on M virtual CPU devices per process, e.g. to '
    'try this on one machine (default: the default '
    "backend's devices)",
  )
  parser.add_argument(
    '--zero', action='store_true', help='partition the optimizer state along the data axis (ZeRO-1)'
  )
  parser.add_argument(
    '--steps', type=int, default=100, help='training steps (default: %(default)s)'
  )
  parser.add_argument(
    '--global-batch',
    type=int,
    default=64,
    help='examples per step over all devices; a multiple of '
    'the device count (default: %(default)s)',
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
  parser.add_argument('--out', metavar='FILE.npz', help='process 0 saves the final parameters here')
  args = parser.parse_args(argv)
  if args.num_processes < 1:
    parser.error('--num-processes must be >= 1')
  if not 0 <= args.process_id < args.num_processes:
    parser.error(f'--process-id must be in 0..{args.num_processes - 1}')
  if args.num_processes > 1 and not args.coordinator_address:
    parser.error('--num-processes > 1 needs --coordinator-address HOST:PORT')
  if args.cpu_devices is not None and args.cpu_devices < 1:
    parser.error('--cpu-devices must be >= 1')
  return args


def start_jax(args: argparse.Namespace):
  """Configures devices and joins the process group; before any JAX work."""
  import jax  # pylint: disable=g-import-not-at-top

  if args.cpu_devices is not None:
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', args.cpu_devices)
  # Cross-process collectives on CPU (GPUs use NCCL, TPUs their ICI/DCN).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if args.auto_cluster:
    jax.distributed.initialize()
  elif args.num_processes > 1:
    jax.distributed.initialize(
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=120,
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


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  jax = start_jax(args)
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
  params = jax.device_put(params, replicated)
  param_sh = jax.tree.map(lambda _: replicated, params)

  tx = adabelief_jax.adabelief(args.lr, weight_decay=args.weight_decay, rectify=True)
  shard_axis = 'data' if args.zero else None
  state_sh = sharding.state_shardings(tx, params, shard_axis=shard_axis)
  opt_state = sharding.init_sharded(tx, params, shard_axis=shard_axis)

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

  if lead:
    state_bytes = max(sharding.bytes_per_device(opt_state).values())
    print(
      f'{jax.process_count()} process(es) x {jax.local_device_count()} '
      f'{jax.devices()[0].platform} device(s); optimizer state '
      f'{state_bytes} bytes per device{" (ZeRO-1)" if args.zero else ""}',
      flush=True,
    )
  start = time.perf_counter()
  for step in range(args.steps):
    params, opt_state, loss = train_step(params, opt_state, global_batch(step))
    if lead and args.log_every and (step + 1) % args.log_every == 0:
      # The loss is replicated: every process holds it, no gather needed.
      print(f'step {step + 1:4d}  loss {float(loss.addressable_data(0)):.4f}', flush=True)
  # Parameters are replicated: each process reads its own copy.
  final = {
    jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }
  if lead:
    print(f'{args.steps} steps in {time.perf_counter() - start:.2f} s', flush=True)
    if args.out:
      np.savez(args.out, **final)
      print(f'saved the parameters to {args.out}', flush=True)
  if jax.process_count() > 1:
    jax.distributed.shutdown()  # Waits for every process to get here.
  return 0


if __name__ == '__main__':
  sys.exit(main())
