"""Low memory: bfloat16 parameters, 8-bit AdaBelief state, and belief statistics as it trains.

    python examples/low_memory.py              # about 20 s on 2 CPU cores
    python examples/low_memory.py --float32    # the same run in float32, to compare

An MLP on scikit-learn's bundled digits keeps its parameters in bfloat16
(``param_dtype``). AdaBelief computes in float32 whatever the parameters are, and
stores both moments as 8-bit blocks (``mu_dtype='int8', nu_dtype='int8'``: a code
per element and a float32 scale per block; leaves under 4096 elements stay
float32). With ``stochastic_rounding=True`` (the default) it rounds what it
writes into the narrower formats, the bf16 parameters included, stochastically:
an update smaller than a bf16 step is kept on average instead of rounded away.
Bytes per parameter are summed over the arrays, beside float32's.

``track_stats=True`` keeps belief statistics in the optimizer state and
``adabelief_jax.belief_stats`` reads them as a flat dict for a logger; every
``--log-every`` steps this prints two global ones: the share of elements whose
step is momentum SGD because eps dominates ``sqrt(s)``, and the RMS of the
applied update over the RMS of the parameters.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import adabelief_jax

BATCH = 64


def make(dtype: str) -> tuple[nnx.Module, nnx.Optimizer]:
  """An MLP 64-256-256-10 with ``dtype`` parameters, and its AdaBelief (8-bit state for bf16)."""
  rngs, param_dtype = nnx.Rngs(0), jnp.dtype(dtype)
  linear = lambda i, o: nnx.Linear(i, o, param_dtype=param_dtype, rngs=rngs)
  model = nnx.Sequential(linear(64, 256), nnx.relu, linear(256, 256), nnx.relu, linear(256, 10))
  state_dtype = 'int8' if dtype == 'bfloat16' else None  # None: the parameters' dtype.
  tx = adabelief_jax.adabelief(
    3e-3, weight_decay=1e-4, mu_dtype=state_dtype, nu_dtype=state_dtype, track_stats=True
  )
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def bytes_per_param(model: nnx.Module, optimizer: nnx.Optimizer) -> tuple[float, float]:
  """(parameter bytes, optimizer-state bytes) per parameter, from the arrays themselves."""
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  count = sum(p.size for p in params)
  state = sum(x.nbytes for x in jax.tree.leaves(optimizer.opt_state))
  return sum(p.nbytes for p in params) / count, state / count


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
  loss_fn = lambda model: optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=600, help='steps (default: %(default)s)')
  parser.add_argument(
    '--log-every', type=int, default=100, help='steps between log lines (0: none)'
  )
  parser.add_argument('--float32', action='store_true', help='float32 parameters and state')
  args = parser.parse_args(argv)
  digits = load_digits()
  x, y = (digits.data / 16.0).astype(np.float32), digits.target
  x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)

  dtype = 'float32' if args.float32 else 'bfloat16'
  model, optimizer = make(dtype)
  sizes = {
    dtype + (' + int8 state' if dtype == 'bfloat16' else ''): bytes_per_param(model, optimizer)
  }
  sizes['float32'] = bytes_per_param(*make('float32'))
  rng, log = np.random.default_rng(0), []
  for step in range(1, args.steps + 1):
    batch = rng.integers(0, len(x_train), BATCH)
    loss = train_step(model, optimizer, x_train[batch], y_train[batch])
    if args.log_every and step % args.log_every == 0:
      stats = adabelief_jax.belief_stats(optimizer.opt_state)  # Scalars, on device.
      log.append({'step': step, 'loss': float(loss)} | {k: float(v) for k, v in stats.items()})
      print(
        f'step {step:4}  batch loss {log[-1]["loss"]:.4f}  eps-dominated '
        f'{log[-1]["global/eps_dominated"]:.3f}  update/param RMS '
        f'{log[-1]["global/update_to_param_rms"]:.2e}'
      )
  accuracy = float(jnp.mean(jnp.argmax(model(x_test), axis=-1) == y_test))
  print(f'test accuracy {accuracy:.4f} ({dtype} parameters)\n')
  print(f'{"bytes per parameter":22} {"params":>7} {"state":>7} {"total":>7}')
  for name, (params, state) in sizes.items():
    print(f'{name:22} {params:7.2f} {state:7.2f} {params + state:7.2f}')
  return {
    'test_accuracy': accuracy,
    'bytes_per_param': sizes,
    'log': log,
    'model': model,
    'optimizer': optimizer,
  }


if __name__ == '__main__':
  main()
