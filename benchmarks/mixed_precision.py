"""Low-precision optimizer state and parameters: what they cost in quality and safety.

A. Quality of bf16 state: an MLP on scikit-learn's digits, trained with
   ``adabelief_jax.adabelief`` with float32 ``mu``/``nu`` (the baseline), both in
   bf16, and bf16 ``mu`` with float32 ``nu``; several seeds; final train loss and
   test accuracy, and their relative change against float32 state.
B. Safety of 16-bit parameters: a least-squares fit whose gradients shrink as it
   converges, with bf16 or fp16 parameters and gradients, for ``--steps`` steps,
   with the library's default state (float32 for 16-bit parameters) and with
   fp16 state. In fp16 an ``s`` of 1e-16 (``eps_root``) or a squared prediction
   error below 6e-8 is zero, and the step ``m / (sqrt(s) + eps)`` blows up.

    python -m benchmarks.mixed_precision [--seeds 3] [--epochs 30] [--steps 5000] [--out DIR]
"""

from __future__ import annotations

import argparse
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

STATE_VARIANTS = {
  'float32 m, s': dict(),
  'bf16 m, s': dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
  'bf16 m, float32 s': dict(mu_dtype=jnp.bfloat16),
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
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(carry[1]))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  return {
    'train_loss': float(_mlp_loss(params, x_tr, y_tr)),
    'test_accuracy': _accuracy(params, x_te, y_te),
    'state_bytes_per_param': round(state_bytes / n_params, 2),
  }


def quality(seeds: int, epochs: int) -> list[dict[str, Any]]:
  """Part A: one row per (eps, state variant), mean and std over seeds."""
  rows = []
  for eps in (1e-8, 1e-16):
    baseline = None
    for name, dtypes in STATE_VARIANTS.items():
      runs = [
        train_digits(adabelief_jax.adabelief(1e-3, eps=eps, eps_root=eps, **dtypes), seed, epochs)
        for seed in range(seeds)
      ]
      loss = np.array([r['train_loss'] for r in runs])
      acc = np.array([r['test_accuracy'] for r in runs])
      row = {
        'eps = eps_root': eps,
        'state': name,
        'state B/param': runs[0]['state_bytes_per_param'],
        'train loss': float(loss.mean()),
        'train loss std': float(loss.std()),
        'test acc': float(acc.mean()),
        'test acc std': float(acc.std()),
      }
      baseline = baseline or row
      row['loss vs float32 %'] = 100 * (row['train loss'] / baseline['train loss'] - 1)
      row['acc vs float32 %'] = 100 * (row['test acc'] / baseline['test acc'] - 1)
      rows.append(row)
  return rows


def safety_run(
  param_dtype: Any, state_dtype: Any, steps: int, feature_scale: float
) -> dict[str, Any]:
  """Part B: least squares in 16-bit parameters; the first non-finite step.

  ``feature_scale`` sets the gradients' size: about 1 at 1.0, about 1e-3 at
  0.03, the size deep networks' gradients often have.
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(feature_scale * rng.normal(size=(256, 32)), param_dtype)
  w_true = rng.normal(size=(32,))
  y = jnp.asarray(np.asarray(x, np.float32) @ w_true, param_dtype)
  loss_fn = lambda w: jnp.mean((x @ w - y) ** 2)  # In the parameters' dtype.
  dtypes = {} if state_dtype is None else dict(mu_dtype=state_dtype, nu_dtype=state_dtype)
  tx = adabelief_jax.adabelief(1e-2, **dtypes)
  w = jnp.zeros(32, param_dtype)

  def step(carry, _):
    w, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(w)
    updates, state = tx.update(grads, state, w)
    w = optax.apply_updates(w, updates)
    return (w, state), (loss.astype(jnp.float32), jnp.all(jnp.isfinite(w)))

  (w, state), (losses, finite) = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))(
    (w, tx.init(w))
  )
  finite = np.asarray(finite)
  bad = np.flatnonzero(~finite)
  losses = np.asarray(losses)
  state_leaf = jax.tree.leaves(state[0].nu)[0]  # Its dtype names the state.
  return {
    'params': jnp.dtype(param_dtype).name,
    'feature scale': feature_scale,
    'state': jnp.dtype(state_leaf.dtype).name + (' (default)' if state_dtype is None else ''),
    'first non-finite step': int(bad[0]) + 1 if bad.size else None,
    'non-finite steps': int(bad.size),
    'min loss': float(np.min(losses[np.isfinite(losses)], initial=np.inf)),
    'final loss': float(losses[-1]),
  }


def safety(steps: int) -> list[dict[str, Any]]:
  """Part B: every (gradient scale, parameter dtype, state dtype) of :func:`safety_run`."""
  return [
    safety_run(p, s, steps, scale)
    for scale in (1.0, 0.03)
    for p in (jnp.bfloat16, jnp.float16)
    for s in (None, jnp.float16)
  ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The shared --out flag, plus the sizes of parts A and B."""
  parser = _cli.make_parser(
    'python -m benchmarks.mixed_precision', __doc__, [_cli.out('results/mixed_precision')]
  )
  parser.add_argument('--seeds', type=int, default=3, help='seeds of part A (default 3)')
  parser.add_argument('--epochs', type=int, default=30, help='epochs of part A (default 30)')
  parser.add_argument('--steps', type=int, default=5000, help='steps of part B (default 5000)')
  return parser.parse_args(argv)


def report(args: argparse.Namespace, results: dict[str, Any], seconds: float) -> str:
  """results.md: both parts' tables, then what they ran on and how long it took."""
  dict_table = lambda rows: _report.rows_table(rows, {key: key for key in rows[0]})
  return (
    f'## A. bf16 optimizer state: digits MLP, {args.epochs} epochs, {args.seeds} seeds, '
    f'adabelief(1e-3)\n\n{dict_table(results["quality"])}\n\n'
    f'## B. 16-bit parameters: least squares, {args.steps} steps, adabelief(1e-2), '
    f'eps = eps_root = 1e-16\n\n{dict_table(results["safety"])}\n\n'
    f'{_report.machine_line(results["machine"])}, {seconds:.0f} s\n'
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs parts A and B; prints the tables and writes results.md and results.json under --out."""
  args = parse_args(argv)
  start = time.perf_counter()
  results = {
    'quality': quality(args.seeds, args.epochs),
    'safety': safety(args.steps),
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
