"""Low-precision parameters and optimizer state: what they cost in quality and safety.

Parameters: float32; bf16 whose update ``optax.apply_updates`` rounds to
nearest (an update below half a bf16 step is lost); bf16 whose update
``adabelief`` rounds stochastically (``round_params_stochastically`` ends its
chain: the new parameter is an unbiased rounding of p + u). float32
parameters are trained with every state storage of ``STATE_VARIANTS``, bf16
parameters with the three of ``PARAM_STATES`` (float32, bf16 stochastic, int8
stochastic). The compute is float32 throughout: bf16 parameters are cast to
float32 for the forward pass, their gradients come back in bf16 (the
parameters' dtype), and the optimizer computes in float32. Each run's final
train loss is divided by that of the same seed's float32-parameter,
float32-state run (same initialization, same data order, see
:func:`paired`). The rounding bits' seed is the library's default, 0, in
every run.

A. An MLP on scikit-learn's digits at eps = eps_root = 1e-8 and 1e-16: final
   train loss, its ratio to float32, and test accuracy.
B. Safety of 16-bit parameters: a least-squares fit whose gradients shrink as it
   converges, with bf16 or fp16 parameters and gradients (its forward pass in
   their dtype), for ``--steps`` steps (0 skips it), with the library's
   default state (float32 for 16-bit parameters), and bf16 and 8-bit state.
   (float16 state is refused: ``eps_root`` and any ``s`` below 6e-8 are zero
   in float16, and the step blows up; ``m`` of small gradients loses its bits
   likewise.)
C. The character-level LSTM of ``experiments/lstm_lm.py`` (stdlib source, its
   default model, AdaBelief at ``--lstm-lr``), each parameter variant with the
   states of ``PARAM_STATES``: train, validation and test bits per character
   (``--lstm-epochs 0`` skips it).
D. The byte-level GPT of ``experiments/transformer_lm.py`` (its default model,
   warm-up + cosine to ``--gpt-lr``, decoupled weight decay 0.1 on matrices),
   likewise: train, validation and test bits per byte (``--gpt-steps 0`` skips
   it).
E. Issue 18's targets: bf16 stochastic parameters with bf16 stochastic state
   within 1% of float32 parameters and state in final train loss (mean of the
   per-seed ratios), with int8 state within 2%; the to-nearest rows beside.

    python -m benchmarks.mixed_precision [--seeds 3] [--epochs 30] [--steps 5000] \\
        [--lstm-epochs 3] [--gpt-steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

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

# Parameter storage: name -> (dtype, whether the update is rounded to nearest: the chain of
# adabelief without its round_params_stochastically, see make_tx).
PARAM_VARIANTS: dict[str, tuple[str, bool]] = {
  'float32': ('float32', False),
  'bf16, to nearest': ('bfloat16', True),
  'bf16, stochastic': ('bfloat16', False),
}

# Part A's values of eps = eps_root: the usual one, and the authors' (and the default).
EPS = (1e-8, 1e-16)

# The states bf16 parameters are trained with (float32 parameters get every STATE_VARIANTS entry).
PARAM_STATES = ('float32 m, s', 'bf16 m, s, stochastic', 'int8 m, s, stochastic')

# The (params, state) run every other run of its seed is divided by.
BASELINE = ('float32', 'float32 m, s')

# Issue 18's targets: (params, state) -> the most the mean ratio to BASELINE may differ from 1.
TARGETS: dict[tuple[str, str], float] = {
  ('bf16, stochastic', 'bf16 m, s, stochastic'): 0.01,
  ('bf16, stochastic', 'int8 m, s, stochastic'): 0.02,
}


def grid(states: Sequence[str]) -> list[tuple[str, str]]:
  """The (params, state) runs of a part: float32 params with ``states``, bf16 with PARAM_STATES."""
  bf16 = [p for p, (dtype, _) in PARAM_VARIANTS.items() if dtype == 'bfloat16']
  return [('float32', state) for state in states] + [(p, s) for p in bf16 for s in PARAM_STATES]


def make_tx(
  learning_rate: optax.ScalarOrSchedule,
  params: str,
  state: str,
  seed: int = 0,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  **belief: Any,
) -> optax.GradientTransformation:
  """AdaBelief with ``state``'s storage, its parameter update rounded as ``params`` says.

  ``adabelief_jax.adabelief`` itself, which leaves float32 parameters' updates
  as they are and rounds those of bf16 parameters stochastically
  (``round_params_stochastically`` ends its chain). To nearest: the same
  decoupled chain built from public pieces without that rounding,
  ``scale_by_belief -> [add_decayed_weights] -> scale_by_learning_rate``, so
  that ``optax.apply_updates`` rounds ``p + u`` to nearest (the tests check
  that it is ``adabelief``, bit for bit, on float32 parameters). ``seed``
  seeds the rounding bits; ``belief`` goes to ``scale_by_belief`` (eps,
  eps_root, ...).
  """
  belief = {**belief, **STATE_VARIANTS[state], 'rounding_seed': seed}
  if not PARAM_VARIANTS[params][1]:
    return adabelief_jax.adabelief(
      learning_rate, weight_decay=weight_decay, weight_decay_mask=weight_decay_mask, **belief
    )
  return optax.chain(
    adabelief_jax.scale_by_belief(**belief),
    *([optax.add_decayed_weights(weight_decay, weight_decay_mask)] if weight_decay else []),
    optax.scale_by_learning_rate(learning_rate),
  )


def stored(tree: Any, params: str) -> Any:
  """``tree``'s arrays in parameter variant ``params``' dtype (rounded to nearest)."""
  dtype = jnp.dtype(PARAM_VARIANTS[params][0])
  return jax.tree.map(lambda x: x.astype(dtype), tree)


def widened(tree: Any) -> Any:
  """``tree``'s arrays as float32, exactly: the forward pass computes in float32."""
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


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


@functools.cache
def _digits_epoch(tx: optax.GradientTransformation, batch: int) -> Callable[..., Any]:
  """One jitted epoch of the MLP under ``tx``: cached, so that the seeds of a run share it.

  The forward pass widens the stored parameters to float32; the gradient is
  taken with respect to the stored ones, so it has their dtype.
  """
  loss = lambda p, x, y: _mlp_loss(widened(p), x, y)

  @jax.jit
  def epoch(carry: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> Any:
    order = jax.random.permutation(key, len(x))[: len(x) // batch * batch].reshape(-1, batch)

    def step(carry: Any, idx: jax.Array) -> Any:
      weights, state = carry
      grads = jax.grad(loss)(weights, x[idx], y[idx])
      updates, state = tx.update(grads, state, weights)
      return (optax.apply_updates(weights, updates), state), None

    return jax.lax.scan(step, carry, order)[0]

  return epoch


def fit_digits(
  tx: optax.GradientTransformation, params: str, seed: int, epochs: int, batch: int = 64
) -> tuple[dict[str, jax.Array], Any]:
  """The MLP's parameters, stored as ``params`` says, and ``tx``'s state after ``epochs``."""
  x_tr, _, y_tr, _ = map(jnp.asarray, _digits())
  weights = stored(_mlp_init(jax.random.key(seed)), params)
  carry, epoch = (weights, tx.init(weights)), _digits_epoch(tx, batch)
  for key in jax.random.split(jax.random.key(seed + 1000), epochs):
    carry = epoch(carry, x_tr, y_tr, key)
  return carry


def train_digits(
  tx: optax.GradientTransformation, params: str, seed: int, epochs: int
) -> dict[str, float]:
  """Final train loss and test accuracy of the MLP of :func:`fit_digits`; bytes per parameter."""
  x_tr, x_te, y_tr, y_te = map(jnp.asarray, _digits())
  weights, state = fit_digits(tx, params, seed, epochs)
  return {
    'train_loss': float(_mlp_loss(widened(weights), x_tr, y_tr)),
    'test_accuracy': _accuracy(widened(weights), x_te, y_te),
    'state_bytes_per_param': bytes_per_param(state, weights),
    'params_bytes_per_param': bytes_per_param(weights, weights),
  }


def bytes_per_param(tree: Any, params: Any) -> float:
  """Bytes of ``tree``'s arrays (8-bit codes and their scales too) per parameter of ``params``."""
  nbytes = lambda x: math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  return sum(map(nbytes, jax.tree.leaves(tree))) / count


def paired(runs: dict[tuple[str, str], list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
  """One row per (params, state): the mean and std of ``key``, and each seed's ratio to BASELINE.

  The ratio pairs a seed's run with the same seed's float32 run, whose
  initialization and data order it shares: the float32 loss itself varies
  from seed to seed by more than the storages differ.
  """
  baseline = np.array([r[key] for r in runs[BASELINE]])
  rows = []
  for (params, state), variant in runs.items():
    values = np.array([r[key] for r in variant])
    ratio = values / baseline
    state_bytes = variant[0]['state_bytes_per_param']
    rows.append(
      {
        'params': params,
        'state': state,
        'state B/param': round(state_bytes, 2),
        'params + state B/param': round(variant[0]['params_bytes_per_param'] + state_bytes, 2),
        key: float(values.mean()),
        f'{key} std': float(values.std()),
        'ratio to float32': float(ratio.mean()),
        'ratio min': float(ratio.min()),
        'ratio max': float(ratio.max()),
      }
    )
  return rows


def quality(seeds: int, epochs: int) -> list[dict[str, Any]]:
  """Part A: one row per (eps, params, state), over seeds, with test accuracy beside."""
  rows = []
  for eps in EPS:
    runs = {}
    for params, state in grid(list(STATE_VARIANTS)):
      tx = make_tx(1e-3, params, state, eps=eps, eps_root=eps)
      runs[params, state] = [train_digits(tx, params, seed, epochs) for seed in range(seeds)]
    for row in paired(runs, 'train_loss'):
      accuracy = np.array([r['test_accuracy'] for r in runs[row['params'], row['state']]])
      rows.append({'eps = eps_root': eps, **row, 'test acc': float(accuracy.mean())})
  return rows


SAFETY_STATES: dict[str, dict[str, Any]] = {
  'default (float32)': {},
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
  """experiments/lstm_lm.py as a module (experiments/ on sys.path for its _common)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  experiments = os.path.join(root, 'experiments')
  if experiments not in sys.path:
    sys.path.insert(0, experiments)
  spec = importlib.util.spec_from_file_location('lstm_lm', os.path.join(experiments, 'lstm_lm.py'))
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _transformer_example() -> Any:
  """experiments/transformer_lm.py as a module, from the folder that :func:`_lstm_example`
  puts on sys.path."""
  _lstm_example()
  return importlib.import_module('transformer_lm')


def train_lm(
  models: Sequence[nnx.Module],
  orders: Sequence[np.ndarray],
  loss_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
  tx: optax.GradientTransformation,
  params: str,
  segments: int,
  windows: dict[str, tuple[np.ndarray, np.ndarray]],
  bits_per_byte: Callable[..., float],
) -> list[dict[str, Any]]:
  """Language models, one per seed: ``models[k]`` trained on ``orders[k]``'s window indices.

  The runs share ``tx``, hence one compiled step (and the rounding seed);
  their initializations and data orders differ. A model's parameters are
  stored as ``params`` says and widened to float32 for every forward pass
  (:func:`widened`); the gradient is taken with respect to the stored ones.
  Each run's train loss is the mean over each of ``segments`` equal parts of
  its (steps, batch) order, in bits; validation and test bits per byte are
  scored at the end.
  """
  graphdef = nnx.graphdef(models[0])
  as_model = lambda weights, rest: nnx.merge(graphdef, widened(weights), rest, copy=True)

  def segment(carry: Any, rest: Any, x: jax.Array, y: jax.Array, idx: jax.Array) -> Any:
    def step(carry: Any, i: jax.Array) -> Any:
      weights, state = carry
      loss_of = lambda w: loss_fn(as_model(w, rest), x[i], y[i])
      loss, grads = jax.value_and_grad(loss_of)(weights)
      updates, state = tx.update(grads, state, weights)
      return (optax.apply_updates(weights, updates), state), loss

    carry, losses = jax.lax.scan(step, carry, idx)
    return carry, jnp.mean(losses)

  segment = jax.jit(segment, donate_argnums=0)
  x, y = map(jnp.asarray, windows['train'])
  runs = []
  for model, order in zip(models, orders):
    _, weights, rest = nnx.split(model, nnx.Param, ...)
    weights = stored(weights, params)
    carry, train = (weights, tx.init(weights)), []
    for idx in np.array_split(order, segments):
      carry, loss = segment(carry, rest, x, y, jnp.asarray(idx))
      train.append(float(loss) / math.log(2))
    trained = as_model(carry[0], rest)
    runs.append(
      {
        'train': train,
        'valid': bits_per_byte(trained, *windows['valid']),
        'test': bits_per_byte(trained, *windows['test']),
        'state_bytes_per_param': bytes_per_param(carry[1], carry[0]),
        'params_bytes_per_param': bytes_per_param(carry[0], carry[0]),
      }
    )
  return runs


def lm_rows(runs: dict[tuple[str, str], list[dict[str, Any]]], unit: str) -> list[dict[str, Any]]:
  """:func:`paired` rows of the final train score in ``unit``, held-out scores beside."""
  for run in (run for variant in runs.values() for run in variant):
    run[f'train_{unit}_final'] = run['train'][-1]
  rows = paired(runs, f'train_{unit}_final')
  for row in rows:
    variant = runs[row['params'], row['state']]
    row[f'valid_{unit}'] = float(np.mean([r['valid'] for r in variant]))
    row[f'test_{unit}'] = float(np.mean([r['test'] for r in variant]))
  return rows


def lstm_quality(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Part C: the char LSTM with each (params, state) of PARAM_STATES; bits per char, over seeds."""
  lstm = _lstm_example()
  seeds, lr, epochs = args.seeds, args.lstm_lr, args.lstm_epochs
  args = lstm.parse_args(
    [
      '--epochs',
      str(epochs),
      '--no-progress',
      '--train-kb',
      str(args.lstm_train_kb),
      '--eval-kb',
      str(args.lstm_eval_kb),
    ]
  )
  corpus = lstm.load_corpus(args)
  windows, batch = len(corpus.windows['train'][0]), args.batch_size
  steps = windows // batch

  def order(seed: int) -> np.ndarray:
    """The window order of lstm_lm.train_run: a permutation per epoch."""
    rng = np.random.default_rng(seed)
    epoch = lambda: rng.permutation(windows)[: steps * batch].reshape(steps, batch)
    return np.concatenate([epoch() for _ in range(epochs)])

  runs = {}
  for params, state in grid(PARAM_STATES):
    models = [
      lstm.CharLSTM(corpus.vocab, args.embed, args.hidden, rngs=nnx.Rngs(seed))
      for seed in range(seeds)
    ]
    tx = optax.chain(optax.clip_by_global_norm(lstm.CLIP_NORM), make_tx(lr, params, state))
    runs[params, state] = train_lm(
      models,
      [order(seed) for seed in range(seeds)],
      lstm.loss_fn,
      tx,
      params,
      epochs,
      corpus.windows,
      lstm._text.bits_per_byte,
    )
  return lm_rows(runs, 'bpc')


def gpt_quality(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Part D: the byte-level GPT with each (params, state) of PARAM_STATES; bits per byte."""
  gpt = _transformer_example()
  seeds, lr, steps = args.seeds, args.gpt_lr, args.gpt_steps
  args = gpt.parse_args(
    [
      '--steps',
      str(steps),
      '--evals',
      str(min(5, steps)),
      '--no-progress',
      '--train-kb',
      str(args.gpt_train_kb),
      '--eval-kb',
      str(args.gpt_eval_kb),
    ]
  )
  corpus, _ = gpt.load_corpus(args)
  windows = len(corpus.windows['train'][0])
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, lr, max(1, int(gpt.WARMUP * steps)), steps, end_value=gpt.FINAL_LR * lr
  )
  runs = {}
  for params, state in grid(PARAM_STATES):
    models = [
      gpt.GPT(corpus.vocab, args, jnp.float32, rngs=nnx.Rngs(seed)) for seed in range(seeds)
    ]
    orders = [
      gpt.batch_order(windows, args.batch_size, steps, np.random.default_rng(seed))
      for seed in range(seeds)
    ]
    tx = optax.chain(
      optax.clip_by_global_norm(gpt.CLIP_NORM),
      make_tx(
        schedule, params, state, weight_decay=args.weight_decay, weight_decay_mask=gpt.decay_mask
      ),
    )
    runs[params, state] = train_lm(
      models, orders, gpt.loss_fn, tx, params, args.evals, corpus.windows, gpt._text.bits_per_byte
    )
  return lm_rows(runs, 'bpb')


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
  """Part E: each model's TARGETS rows, the ratio of every parameter variant beside.

  A target is met ('within') when the mean of the per-seed ratios of bf16
  stochastic parameters differs from 1 by at most its tolerance, either way;
  'no worse' asks only that it exceed 1 by at most the tolerance (a lower
  train loss is no loss of quality, but it is a difference).
  """
  blocks = [
    (f'digits MLP, eps {eps:g}', [r for r in results['quality'] if r['eps = eps_root'] == eps])
    for eps in EPS
  ] + [('char LSTM', results['lstm']), ('GPT', results['gpt'])]
  rows = []
  for model, block in blocks:
    if not block:
      continue
    ratio = {(r['params'], r['state']): r for r in block}
    for (params, state), tolerance in TARGETS.items():
      if any((p, state) not in ratio for p in PARAM_VARIANTS):
        continue  # A grid without the target's state (the tests' small ones).
      row = ratio[params, state]
      rows.append(
        {
          'model': model,
          'state': state,
          'target': f'within {tolerance:.0%}',
          **{f'{p} params': ratio[p, state]['ratio to float32'] for p in PARAM_VARIANTS},
          'stochastic min': row['ratio min'],
          'stochastic max': row['ratio max'],
          'within': bool(abs(row['ratio to float32'] - 1) <= tolerance),
          'no worse': bool(row['ratio to float32'] - 1 <= tolerance),
        }
      )
  return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The shared --out flag, plus the sizes of parts A to D."""
  parser = _cli.make_parser(
    'python -m benchmarks.mixed_precision', __doc__, [_cli.out('results/mixed_precision')]
  )
  parser.add_argument('--seeds', type=int, default=3, help='seeds of parts A, C, D (default 3)')
  parser.add_argument('--epochs', type=int, default=30, help='epochs of part A (default 30)')
  parser.add_argument(
    '--steps', type=int, default=5000, help='steps of part B, 0 to skip it (default 5000)'
  )
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
  parser.add_argument(
    '--gpt-steps', type=int, default=300, help='steps of part D, 0 to skip it (default 300)'
  )
  parser.add_argument('--gpt-lr', type=float, default=3e-3, help='peak lr of part D (default 3e-3)')
  parser.add_argument(
    '--gpt-train-kb', type=int, default=512, help='training text of part D, KiB (default 512)'
  )
  parser.add_argument(
    '--gpt-eval-kb', type=int, default=32, help='validation and test text of part D (default 32)'
  )
  return parser.parse_args(argv)


COMPUTE = (
  'float32 compute: bf16 parameters are widened to float32 for the forward pass, their gradients '
  'are bf16, the optimizer computes in float32'
)


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
  """results.md: every part's table, then what they ran on and how long each part took."""
  dict_table = lambda rows: _report.rows_table(rows, {key: key for key in rows[0]})
  section = lambda title, rows: f'## {title}\n\n{dict_table(rows)}\n\n' if rows else ''
  seconds = results['seconds']
  return (
    section(
      f'A. Digits MLP, {args.epochs} epochs, {args.seeds} seeds, adabelief(1e-3); {COMPUTE}',
      results['quality'],
    )
    + section(
      f'B. 16-bit parameters: least squares, {args.steps} steps, adabelief(1e-2), '
      'eps = eps_root = 1e-16',
      results['safety'],
    )
    + section(
      f'C. char LSTM (experiments/lstm_lm.py defaults), {args.lstm_epochs} epochs, '
      f'{args.seeds} seeds, adabelief({args.lstm_lr:g}), bits per char; {COMPUTE}',
      results['lstm'],
    )
    + section(
      f'D. byte-level GPT (experiments/transformer_lm.py defaults), {args.gpt_steps} steps, '
      f'{args.seeds} seeds, adabelief(warm-up + cosine to {args.gpt_lr:g}, weight decay 0.1), '
      f'bits per byte; {COMPUTE}',
      results['gpt'],
    )
    + section(
      'E. Targets: mean of the per-seed ratios of final train loss to float32 params and state',
      results['targets'],
    )
    + f'{_report.machine_line(results["machine"])}, {sum(seconds.values()):.0f} s ('
    + ', '.join(f'{part} {s:.0f} s' for part, s in seconds.items())
    + ')\n'
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs parts A to D; prints the tables and writes results.md and results.json under --out."""
  args = parse_args(argv)
  parts: dict[str, Callable[[], list[dict[str, Any]]]] = {
    'quality': lambda: quality(args.seeds, args.epochs),
    'safety': lambda: safety(args.steps) if args.steps else [],
    'lstm': lambda: lstm_quality(args) if args.lstm_epochs else [],
    'gpt': lambda: gpt_quality(args) if args.gpt_steps else [],
  }
  results: dict[str, Any] = {'seconds': {}}
  for name, part in parts.items():
    start = time.perf_counter()
    results[name] = part()
    results['seconds'][name] = round(time.perf_counter() - start, 1)
  results['targets'] = targets(results)
  results['machine'] = _report.machine_info()
  text = report(args, results)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(text)
  _report.write_json(os.path.join(args.out, 'results.json'), results)
  return results


if __name__ == '__main__':
  main()
