"""Sharded: ZeRO-1 AdaBelief state on 8 devices, an orbax checkpoint, and a resume that matches.

    python examples/sharded.py                 # about 15 s on 2 CPU cores

The host CPU is split into 8 devices (set before JAX is imported). Data parallel:
each batch is split along the mesh axis ``data``, the parameters are replicated,
and with ``shard_axis='data'`` every moment is partitioned along ``data`` (ZeRO
stage 1): each device keeps 1/8 of the optimizer state, and ``jax.jit``
all-gathers the updates. The run trains, saves parameters and state with orbax,
and trains on; then it restores the checkpoint straight into the same shardings
(``sharding.abstract_state`` is the target) and trains the same steps again. The
two runs must agree bit for bit.
"""

from __future__ import annotations

import os

# This demo's 8 devices are the host CPU's, made before JAX starts; on a real
# multi-device machine drop these two lines and the mesh takes its devices.
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
)

import argparse
import tempfile

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adabelief_jax
from adabelief_jax import sharding


def batch(step: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Step ``step``'s batch: a pure function of the step, so a resumed run sees the same data."""
  teacher = np.random.default_rng(0).normal(size=(32, 8))
  x = np.random.default_rng([1, step]).normal(size=(size, 32)).astype(np.float32)
  return x, np.argmax(x @ teacher, axis=-1)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=100, help='steps before the checkpoint')
  parser.add_argument('--resume-steps', type=int, default=20, help='steps after it')
  args = parser.parse_args(argv)
  if min(args.steps, args.resume_steps) < 1:
    parser.error(f'--steps and --resume-steps must be >= 1, got {args.steps}, {args.resume_steps}')
  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))

  model = nnx.Sequential(
    nnx.Linear(32, 256, rngs=nnx.Rngs(0)), nnx.gelu, nnx.Linear(256, 8, rngs=nnx.Rngs(1))
  )
  graphdef, params = nnx.split(model)  # A plain pytree of arrays, to place on the mesh.
  params = jax.device_put(params, replicated)
  tx = adabelief_jax.adabelief(3e-3, weight_decay=1e-4)
  param_sh = jax.tree.map(lambda p: p.sharding, params)
  state_sh = sharding.state_shardings(tx, params, shard_axis='data')
  opt_state = sharding.init_sharded(tx, params, shard_axis='data')  # Never whole on one device.

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(x), y).mean()

  @jax.jit(
    in_shardings=(param_sh, state_sh, split, split),
    out_shardings=(param_sh, state_sh, replicated),
    donate_argnums=(0, 1),
  )
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def train(params, opt_state, steps: range):
    losses = []
    for step in steps:
      params, opt_state, loss = train_step(params, opt_state, *batch(step))
      losses.append(float(loss))
    return params, opt_state, losses

  params, opt_state, losses = train(params, opt_state, range(args.steps))
  path = os.path.join(tempfile.mkdtemp(), 'checkpoint')
  with ocp.StandardCheckpointer() as checkpointer:  # Leaving the block waits for the write.
    checkpointer.save(path, {'params': params, 'opt_state': opt_state})
  after = range(args.steps, args.steps + args.resume_steps)
  params, opt_state, straight = train(params, opt_state, after)

  abstract = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
  )
  target = {
    'params': abstract,
    'opt_state': sharding.abstract_state(tx, abstract, shard_axis='data'),
  }
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, target)
  resumed_params, _, resumed = train(restored['params'], restored['opt_state'], after)

  per_device = max(sharding.bytes_per_device(opt_state).values())
  whole = sum(x.nbytes for x in jax.tree.leaves(opt_state))
  diff = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed_params))
  )
  print(f'{jax.device_count()} devices; optimizer state {per_device} bytes per device of {whole}')
  print(f'loss: step 1 {losses[0]:.4f}, step {args.steps} {losses[-1]:.4f}; checkpoint saved')
  print(f'step {after[-1] + 1}: loss {straight[-1]:.6f} uninterrupted, {resumed[-1]:.6f} resumed')
  print(f'max |uninterrupted - resumed| over the parameters: {diff:g}')
  return {
    'losses': losses,
    'straight': straight,
    'resumed': resumed,
    'max_param_diff': diff,
    'state_bytes': (per_device, whole),
  }


if __name__ == '__main__':
  main()
