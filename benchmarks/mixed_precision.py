"""Low-memory and low-precision optimizer state: what it costs in quality and safety.

A. Quality of each state storage on an MLP on scikit-learn's digits:
   ``adabelief_jax.adabelief`` with float32 ``mu``/``nu`` (the baseline), bf16
   rounded to nearest and stochastically, bf16 ``mu`` with float32 ``nu``,
   8-bit ``mu``/``nu`` (int8 blocks) both ways, and bf16 ``mu`` with 8-bit
   ``nu``; several seeds; final train loss, each seed's ratio to the same
   seed's float32 run, and test accuracy.
B. Safety of 16-bit parameters: a least-squares fit whose gradients shrink as it
   converges, with bf16 or fp16 parameters and gradients, for ``--steps`` steps,
   with the library's default state (float32 for 16-bit parameters), float16
   ``mu``, and bf16 and 8-bit state. (A float16 ``nu`` is refused: ``eps_root``
   and any ``s`` below 6e-8 are zero in float16, and the step blows up.)
C. The same storages on the character-level LSTM of ``examples/lstm_lm.py``
   (stdlib source, its default model, AdaBelief at ``--lstm-lr``): train,
   validation and test bits per character (``--lstm-epochs 0`` skips it).

    python -m benchmarks.mixed_precision [--seeds 3] [--epochs 30] [--steps 5000] [--lstm-epochs 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

if __package__ in (None, ''):  # Run as a file: make `import adabelief_jax` work from a checkout.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import adabelief_jax  # pylint: disable=wrong-import-position
from benchmarks import _cli, _report  # pylint: disable=wrong-import-position

# Dtypes as strings: the storage options pass through optax.inject_hyperparams too.
STATE_VARIANTS: dict[str, dict[str, Any]] = {
  'float32 m, s': dict(),
  'bf16 m, s, to nearest': dict(
    mu_dtype='bfloat16', nu_dtype='bfloat16', stochastic_rounding=False
  ),
  'bf16 m, s, stochastic': dict(mu_dtype='bfloat16', nu_dtype='bfloat16'),
  'bf16 m, float32 s': dict(mu_dtype='bfloat16', stochastic_rounding=False),
  'int8 m, s, to nearest': dict(mu_dtype='int8', nu_dtype='int8', stochastic_rounding=False),
  'int8 m, s, stochastic': dict(mu_dtype='int8', nu_dtype='int8'),
  'bf16 m, int8 s, stochastic': dict(mu_dtype='bfloat16', nu_dtype='int8'),
}


def _digits() -> tuple[np.ndarray, ...]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  x, y = load_digits(return_X_y=True)
  return tuple(
    train_test_split((x / 16.0).astype(np.float32), y, test_size=0.25, random_state=0, stratify=y)
  )


def _mlp_init(key: jax.Array) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(key)
  return {
    'w1': jax.random.normal(k1, (64, 128)) * 64**-0.5,
    'b1': jnp.zeros(128),
    'w2': jax.random.normal(k2, (128, 10)) * 128**-0.5,
    'b2': jnp.zeros(10),
  }


def _mlp_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  h = jax.nn.relu(x @ params['w1'] + params['b1'])
  logits = h @ params['w2'] + params['b2']
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _accuracy(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> float:
  h = jax.nn.relu(x @ params['w1'] + params['b1'])
  return float(jnp.mean(jnp.argmax(h @ params['w2'] + params['b2'], -1) == y))


def train_digits(
  tx: optax.GradientTransformation, seed: int, epochs: int, batch: int = 64
) -> dict[str, float]:
  """Final train loss and test accuracy of the MLP trained with ``tx``."""
  x_tr, x_te, y_tr, y_te = map(jnp.asarray, _digits())
  n = (len(x_tr) // batch) * batch
  params = _mlp_init(jax.random.key(seed))
  state = tx.init(params)

  @jax.jit
  def epoch(carry, key):
    order = jax.random.permutation(key, len(x_tr))[:n].reshape(-1, batch)

    def step(carry, idx):
      params, state = carry
      grads = jax.grad(_mlp_loss)(params, x_tr[idx], y_tr[idx])
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, carry, order)[0]

  carry = (params, state)
  for key in jax.random.split(jax.random.key(seed + 1000), epochs):
    carry = epoch(carry, key)
  params = carry[0]
  return {
    'train_loss': float(_mlp_loss(params, x_tr, y_tr)),
    'test_accuracy': _accuracy(params, x_te, y_te),
    'state_bytes_per_param': state_bytes_per_param(carry[1], params),
  }


def state_bytes_per_param(state: Any, params: Any) -> float:
  """Bytes of a state's arrays (8-bit codes and their scales too) per parameter."""
  nbytes = lambda x: math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  return sum(map(nbytes, jax.tree.leaves(state))) / count


def paired(runs: dict[str, list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
  """One row per state: the mean and std of ``key``, and each seed's ratio to float32.

  The ratio pairs a seed's run with the same seed's float32 run, whose
  initialization and data order it shares: the float32 loss itself varies
  from seed to seed by more than the storages differ.
  """
  baseline = np.array([r[key] for r in runs['float32 m, s']])
  rows = []
  for name, variant in runs.items():
    values = np.array([r[key] for r in variant])
    ratio = values / baseline
    rows.append(
      {
        'state': name,
        'state B/param': round(variant[0]['state_bytes_per_param'], 2),
        key: float(values.mean()),
        f'{key} std': float(values.std()),
        'ratio to float32': float(ratio.mean()),
        'ratio min': float(ratio.min()),
        'ratio max': float(ratio.max()),
      }
    )
  return rows


def quality(seeds: int, epochs: int) -> list[dict[str, Any]]:
  """Part A: one row per (eps, state), over seeds, with test accuracy beside."""
  rows = []
  for eps in (1e-8, 1e-16):
    runs = {
      name: [
        train_digits(adabelief_jax.adabelief(1e-3, eps=eps, eps_root=eps, **dtypes), seed, epochs)
        for seed in range(seeds)
      ]
      for name, dtypes in STATE_VARIANTS.items()
    }
    for row in paired(runs, 'train_loss'):
      accuracy = np.array([r['test_accuracy'] for r in runs[row['state']]])
      rows.append({'eps = eps_root': eps, **row, 'test acc': float(accuracy.mean())})
  return rows


SAFETY_STATES: dict[str, dict[str, Any]] = {
  'default (float32)': {},
  'float16 m, float32 s': dict(mu_dtype='float16'),
  'bf16 m, s, stochastic': dict(mu_dtype='bfloat16', nu_dtype='bfloat16'),
  'int8 m, s, stochastic': dict(mu_dtype='int8', nu_dtype='int8'),
}


def safety_run(
  param_dtype: Any, state_name: str, steps: int, feature_scale: float
) -> dict[str, Any]:
  """Part B: least squares in 16-bit parameters; the first non-finite step.

  ``feature_scale`` sets the gradients' size: about 1 at 1.0, about 1e-3 at
  0.03, the size deep networks' gradients often have.
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(feature_scale * rng.normal(size=(256, 64)), param_dtype)
  w_true = rng.normal(size=(64, 128))
  y = jnp.asarray(np.asarray(x, np.float32) @ w_true, param_dtype)
  loss_fn = lambda w: jnp.mean((x @ w - y) ** 2)  # In the parameters' dtype.
  tx = adabelief_jax.adabelief(1e-2, **SAFETY_STATES[state_name])
  w = jnp.zeros((64, 128), param_dtype)  # Large enough for 8-bit blocks.

  def step(carry, _):
    w, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(w)
    updates, state = tx.update(grads, state, w)
    w = optax.apply_updates(w, updates)
    return (w, state), (loss.astype(jnp.float32), jnp.all(jnp.isfinite(w)))

  _, (losses, finite) = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((w, tx.init(w)))
  finite = np.asarray(finite)
  bad = np.flatnonzero(~finite)
  losses = np.asarray(losses)
  return {
    'params': jnp.dtype(param_dtype).name,
    'feature scale': feature_scale,
    'state': state_name,
    'first non-finite step': int(bad[0]) + 1 if bad.size else None,
    'non-finite steps': int(bad.size),
    'min loss': float(np.min(losses[np.isfinite(losses)], initial=np.inf)),
    'final loss': float(losses[-1]),
  }


def safety(steps: int) -> list[dict[str, Any]]:
  """Part B: every (gradient scale, parameter dtype, state dtype) of :func:`safety_run`."""
  return [
    safety_run(p, state, steps, scale)
    for scale in (1.0, 0.03)
    for p in (jnp.bfloat16, jnp.float16)
    for state in SAFETY_STATES
  ]


def _lstm_example() -> Any:
  """examples/lstm_lm.py as a module (examples/ on sys.path for its _common)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples')
  if examples not in sys.path:
    sys.path.insert(0, examples)
  spec = importlib.util.spec_from_file_location('lstm_lm', os.path.join(examples, 'lstm_lm.py'))
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def lstm_quality(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Part C: the char LSTM with each state storage; bits per char, over seeds."""
  lstm = _lstm_example()
  seeds, lr = args.seeds, args.lstm_lr
  args = lstm.parse_args(
    [
      '--epochs',
      str(args.lstm_epochs),
      '--no-progress',
      '--evals-per-epoch',
      '1',
      '--train-kb',
      str(args.lstm_train_kb),
      '--eval-kb',
      str(args.lstm_eval_kb),
    ]
  )
  corpus = lstm.load_corpus(args)
  progress = lstm.tqdm(disable=True)
  runs: dict[str, list[dict[str, Any]]] = {}
  for name, dtypes in STATE_VARIANTS.items():
    make_tx = lambda lr, dtypes=dtypes: adabelief_jax.adabelief(lr, **dtypes)
    runs[name] = []
    for seed in range(seeds):
      run = lstm.train_run(
        'adabelief', lr, seed, corpus.windows, corpus.vocab, args, progress, make_tx
      )
      tx = make_tx(lr)
      params = lstm.nnx.state(
        lstm.CharLSTM(corpus.vocab, args.embed, args.hidden, rngs=lstm.nnx.Rngs(0)), lstm.nnx.Param
      )
      run['state_bytes_per_param'] = state_bytes_per_param(jax.eval_shape(tx.init, params), params)
      run['train_bpc_final'] = run['train_bpc'][-1]
      run['valid_bpc_final'] = run['valid_bpc'][-1]
      runs[name].append(run)
  rows = paired(runs, 'train_bpc_final')
  for row in rows:
    for key in ('valid_bpc_final', 'test_bpc'):
      row[key] = float(np.mean([r[key] for r in runs[row['state']]]))
  return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The shared --out flag, plus the sizes of parts A and B."""
  parser = _cli.make_parser(
    'python -m benchmarks.mixed_precision', __doc__, [_cli.out('results/mixed_precision')]
  )
  parser.add_argument('--seeds', type=int, default=3, help='seeds of part A (default 3)')
  parser.add_argument('--epochs', type=int, default=30, help='epochs of part A (default 30)')
  parser.add_argument('--steps', type=int, default=5000, help='steps of part B (default 5000)')
  parser.add_argument(
    '--lstm-epochs', type=int, default=3, help='epochs of part C, 0 to skip it (default 3)'
  )
  parser.add_argument('--lstm-lr', type=float, default=3e-3, help='lr of part C (default 3e-3)')
  parser.add_argument(
    '--lstm-train-kb', type=int, default=512, help='training text of part C, KiB (default 512)'
  )
  parser.add_argument(
    '--lstm-eval-kb', type=int, default=64, help='validation and test text of part C (default 64)'
  )
  return parser.parse_args(argv)


def report(args: argparse.Namespace, results: dict[str, Any], seconds: float) -> str:
  """results.md: both parts' tables, then what they ran on and how long it took."""
  dict_table = lambda rows: _report.rows_table(rows, {key: key for key in rows[0]})
  return (
    f'## A. Optimizer state storage: digits MLP, {args.epochs} epochs, {args.seeds} seeds, '
    f'adabelief(1e-3)\n\n{dict_table(results["quality"])}\n\n'
    f'## B. 16-bit parameters: least squares, {args.steps} steps, adabelief(1e-2), '
    f'eps = eps_root = 1e-16\n\n{dict_table(results["safety"])}\n\n'
    + (
      f'## C. char LSTM (examples/lstm_lm.py defaults), {args.lstm_epochs} epochs, '
      f'{args.seeds} seeds, adabelief({args.lstm_lr:g}), bits per char\n\n'
      f'{dict_table(results["lstm"])}\n\n'
      if results['lstm']
      else ''
    )
    + f'{_report.machine_line(results["machine"])}, {seconds:.0f} s\n'
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs parts A and B; prints the tables and writes results.md and results.json under --out."""
  args = parse_args(argv)
  start = time.perf_counter()
  results = {
    'quality': quality(args.seeds, args.epochs),
    'safety': safety(args.steps),
    'lstm': lstm_quality(args) if args.lstm_epochs else [],
    'machine': _report.machine_info(),
  }
  text = report(args, results, time.perf_counter() - start)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(text)
  _report.write_json(os.path.join(args.out, 'results.json'), results)
  return results


if __name__ == '__main__':
  main()
