"""Byte-level GPT language model: AdaBelief vs. AdamW vs. Adam vs. SGD (Flax NNX).

The AdaBelief authors also report Transformer results, with eps = 1e-16 and
decoupled weight decay; this is a CPU-sized Transformer on the text and file
splits of ``lstm_lm.py`` (``_text.py``): the top-level ``*.py`` files of
the running Python's standard library, nothing downloaded, every 10th file
(by SHA-1 of its name) for validation and the next for test, at most
``--file-kb`` KiB per file and ``--train-kb`` / ``--eval-kb`` KiB per split.
Tokens are bytes, so the unit is bits per byte (bpb); the numbers depend on
the Python version.

Model: a GPT-style decoder, ``--layers`` pre-LayerNorm blocks of causal
multi-head self-attention and a 4x GELU MLP, learned token and position
embeddings, a final LayerNorm and an untied output layer; width ``--dim``,
``--heads`` heads, context ``--seq-len`` bytes (GPT-2 initialization: normal
0.02, residual projections scaled by 1/sqrt(2 layers)). The default has about
0.25 M parameters, and every weight matrix and embedding at least 4096
elements, so 8-bit optimizer state stores them in 8 bits (smaller leaves,
biases and LayerNorm, stay float32 by design). It trains for ``--steps``
steps on batches of ``--batch-size`` non-overlapping windows, reshuffled each
pass over the training text, and is scored ``--evals`` times on the whole
validation text.

Optimizers, each with the same linear warm-up (first 10% of steps) and cosine
decay to 10% of the peak (``optax.warmup_cosine_decay_schedule``) and the
same clipping of the gradient's global norm to 1: AdaBelief
(``adabelief_jax.adabelief``, betas (0.9, 0.999), eps = eps_root = 1e-16, the
authors' setting for Transformers; no rectification, the warm-up does its
job), AdamW and Adam (betas (0.9, 0.999), eps 1e-8) and SGD with momentum
0.9. AdaBelief and AdamW get the same decoupled weight decay
(``--weight-decay``, on matrices and embeddings only); Adam and SGD have none.
The progress bar shows AdaBelief's belief statistics (``track_stats=True``).

Fair learning rates: every optimizer gets a grid of the same size
(``--lrs-adabelief`` etc.), each point trained with seed 0 for the same number
of steps; the lowest final *validation* bpb wins and is rerun with seeds
1..N-1. The test text plays no part in the choice. Extra rows rerun AdaBelief
at its chosen lr with the same seeds and other storage: bfloat16 parameters
(float32 compute and optimizer state), bfloat16 state with stochastic
rounding, and 8-bit block-wise state (``mu_dtype = nu_dtype = int8``, also
stochastically rounded). The table gives each row's optimizer state bytes per
parameter, and the findings each variant's final train bpb over float32
AdaBelief's, paired by seed (mean, min and max over the seeds)::

    python experiments/transformer_lm.py   # 29 runs of 300 steps: sweeps, seeds, variants
    python experiments/transformer_lm.py --dim 192 --layers 4 --steps 2000 --seeds 5
    python experiments/transformer_lm.py --optimizers adabelief,adamw --no-variants

Writes ``results.md``, ``results.json`` and ``curves.png`` to --out.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common
import _text
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import adabelief_jax

CLIP_NORM = 1.0
WARMUP = 0.1  # Share of the steps spent warming up.
FINAL_LR = 0.1  # The cosine decays to this share of the peak.


def decay_mask(params: Any) -> Any:
  """True on matrices and embeddings (2-D leaves): biases and LayerNorm are not decayed."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def adabelief(lr: optax.ScalarOrSchedule, wd: float, **dtypes: Any) -> optax.GradientTransformation:
  """AdaBelief with the authors' Transformer setting; ``dtypes`` sets the state storage."""
  return adabelief_jax.adabelief(
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-16,
    eps_root=1e-16,
    weight_decay=wd,
    weight_decay_mask=decay_mask,
    track_stats=True,  # For the progress bar; the updates are the same.
    **dtypes,
  )


# name -> (default lr grid, constructor(lr schedule, weight decay)). Grids of equal size.
OPTIMIZERS: dict[str, tuple[str, Callable[..., optax.GradientTransformation]]] = {
  'adabelief': ('1e-3,3e-3,1e-2', adabelief),
  'adamw': (
    '1e-3,3e-3,1e-2',
    lambda lr, wd: optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd, mask=decay_mask),
  ),
  'adam': ('1e-3,3e-3,1e-2', lambda lr, wd: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)),
  'sgd': ('0.03,0.1,0.3', lambda lr, wd: optax.sgd(lr, momentum=0.9)),
}

# Extra AdaBelief rows, storage only: name -> (parameter dtype, state dtypes). Narrower
# state than float32 is written with stochastic rounding (the library's default).
VARIANTS: dict[str, tuple[Any, dict[str, Any]]] = {
  'adabelief, bf16 params': (jnp.bfloat16, {}),  # State defaults to float32.
  'adabelief, bf16-SR state': (jnp.float32, {'mu_dtype': jnp.bfloat16, 'nu_dtype': jnp.bfloat16}),
  'adabelief, int8 state': (jnp.float32, {'mu_dtype': jnp.int8, 'nu_dtype': jnp.int8}),
}


@functools.cache
def make_tx(row: str, lr: float, steps: int, weight_decay: float) -> optax.GradientTransformation:
  """Row ``row``'s chain at peak ``lr``: clip, then the optimizer with warm-up + cosine.

  Cached: the runs of a row at one lr (a sweep point and its reruns) share one
  object, hence one compiled step.
  """
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, lr, max(1, int(WARMUP * steps)), steps, end_value=FINAL_LR * lr
  )
  if row in VARIANTS:
    tx = adabelief(schedule, weight_decay, **VARIANTS[row][1])
  else:
    tx = OPTIMIZERS[row][1](schedule, weight_decay)
  return optax.chain(optax.clip_by_global_norm(CLIP_NORM), tx)


# ----------------------------------------------------------------------------
# Model.


def dense(fan_in: int, fan_out: int, dtype: Any, rngs: nnx.Rngs, std: float = 0.02) -> nnx.Linear:
  """A linear layer with ``dtype`` parameters, computing in float32, GPT-2 initialized."""
  init = nnx.initializers.normal(std)
  return nnx.Linear(
    fan_in, fan_out, dtype=jnp.float32, param_dtype=dtype, kernel_init=init, rngs=rngs
  )


class Attention(nnx.Module):
  """Causal multi-head self-attention with one fused q/k/v projection (2-D kernels)."""

  def __init__(self, dim: int, heads: int, layers: int, dtype: Any, *, rngs: nnx.Rngs) -> None:
    if dim % heads:
      raise SystemExit(f'--dim ({dim}) must be a multiple of --heads ({heads})')
    self.heads = heads
    self.qkv = dense(dim, 3 * dim, dtype, rngs)
    self.out = dense(dim, dim, dtype, rngs, std=0.02 / math.sqrt(2 * layers))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True)
    return self.out(y.reshape(b, t, d))


class Block(nnx.Module):
  """Pre-LayerNorm decoder block: x + attention(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, dim: int, heads: int, layers: int, dtype: Any, *, rngs: nnx.Rngs) -> None:
    norm = functools.partial(nnx.LayerNorm, dim, dtype=jnp.float32, param_dtype=dtype, rngs=rngs)
    self.norm1, self.norm2 = norm(), norm()
    self.attention = Attention(dim, heads, layers, dtype, rngs=rngs)
    self.up = dense(dim, 4 * dim, dtype, rngs)
    self.down = dense(4 * dim, dim, dtype, rngs, std=0.02 / math.sqrt(2 * layers))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(self.norm1(x))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class GPT(nnx.Module):
  """Token + position embeddings -> blocks -> LayerNorm -> logits, over bytes."""

  def __init__(self, vocab: int, args: argparse.Namespace, dtype: Any, *, rngs: nnx.Rngs) -> None:
    dim, layers = args.dim, args.layers
    embed = functools.partial(
      nnx.Embed, dtype=jnp.float32, param_dtype=dtype, embedding_init=nnx.initializers.normal(0.02)
    )
    self.tokens = embed(vocab, dim, rngs=rngs)
    self.positions = embed(args.seq_len, dim, rngs=rngs)
    self.blocks = nnx.List(
      [Block(dim, args.heads, layers, dtype, rngs=rngs) for _ in range(layers)]
    )
    self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, param_dtype=dtype, rngs=rngs)
    self.head = dense(dim, vocab, dtype, rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x))  # (batch, time, vocab), float32


def loss_fn(model: GPT, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy in nats per byte."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: GPT, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  """One minibatch step; updates model and optimizer in place."""
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


# ----------------------------------------------------------------------------
# Runs.


def batch_order(windows: int, batch: int, steps: int, rng: np.random.Generator) -> np.ndarray:
  """(steps, batch) window indices: shuffled passes over the windows, as many as needed."""
  per_pass = windows // batch
  passes = [
    rng.permutation(windows)[: per_pass * batch].reshape(per_pass, batch)
    for _ in range(-(-steps // per_pass))
  ]
  return np.concatenate(passes)[:steps]


def state_bytes_per_param(optimizer: nnx.Optimizer, model: GPT) -> float:
  """Bytes of the optimizer state's arrays (8-bit codes and scales too) per parameter.

  The belief statistics kept for the progress bar are left out: they are not
  the optimizer's, and this model's small leaves are sampled whole.
  """
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  is_stats = lambda x: isinstance(x, adabelief_jax.diagnostics.BeliefStats)
  state = [x for x in jax.tree.leaves(optimizer.opt_state, is_leaf=is_stats) if not is_stats(x)]
  return sum(x.size * x.dtype.itemsize for x in state) / sum(p.size for p in params)


def train_run(
  row: str, lr: float, seed: int, corpus: _text.Corpus, args: argparse.Namespace, progress: tqdm
) -> dict:
  """One model trained by row ``row`` (an optimizer or a variant) at ``lr``; its curves.

  Throughput counts training steps only (not evaluations or compilation: the
  step is compiled on a throwaway copy of model and optimizer first).
  """
  x, y = corpus.windows['train']
  dtype = VARIANTS[row][0] if row in VARIANTS else jnp.float32
  model = GPT(corpus.vocab, args, dtype, rngs=nnx.Rngs(seed))
  tx = make_tx(row, lr, args.steps, args.weight_decay)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  batch = x[: args.batch_size], y[: args.batch_size]
  jax.block_until_ready(train_step(*nnx.clone((model, optimizer)), *batch))
  step = nnx.cached_partial(train_step, model, optimizer)
  order = batch_order(len(x), args.batch_size, args.steps, _common.seed_everything(seed))
  train_bpb, valid_bpb, seconds = [], [], 0.0
  for segment in np.array_split(order, args.evals):
    start = time.perf_counter()
    loss = float(jnp.mean(jnp.stack([step(x[i], y[i]) for i in segment])))
    seconds += time.perf_counter() - start
    train_bpb.append(loss / math.log(2))
    finite = math.isfinite(loss)
    valid_bpb.append(_text.bits_per_byte(model, *corpus.windows['valid']) if finite else math.inf)
    progress.set_postfix(
      train=f'{train_bpb[-1]:.3f}',
      valid=f'{valid_bpb[-1]:.3f}',
      **_common.belief_postfix(optimizer.opt_state),
    )
    progress.update(len(segment))
  return {
    'optimizer': row,
    'lr': lr,
    'seed': seed,
    'train_bpb': train_bpb,
    'valid_bpb': valid_bpb,
    'test_bpb': _text.bits_per_byte(model, *corpus.windows['test']) if finite else math.inf,
    'tokens_per_s': args.steps * x.shape[1] * args.batch_size / seconds,
    'state_bytes_per_param': state_bytes_per_param(optimizer, model),
  }


def sweep_and_rerun(
  name: str, corpus: _text.Corpus, args: argparse.Namespace, progress: tqdm
) -> tuple[list[dict], list[dict]]:
  """(the lr sweep's runs, the chosen lr's runs) of optimizer ``name``.

  Every grid point gets seed 0 and all steps; the lowest final validation bpb
  wins, and is trained again with seeds 1..N-1.
  """
  sweep = [train_run(name, lr, 0, corpus, args, progress) for lr in getattr(args, f'lrs_{name}')]
  best = min(sweep, key=lambda r: r['valid_bpb'][-1])
  reruns = [train_run(name, best['lr'], s, corpus, args, progress) for s in range(1, args.seeds)]
  return sweep, [best, *reruns]


def train_all(corpus: _text.Corpus, args: argparse.Namespace, progress: tqdm) -> dict:
  """{row: (sweep, runs)}: each optimizer's sweep and reruns, then the AdaBelief variants.

  The variants have no sweep of their own: they take AdaBelief's chosen lr
  and its seeds, so each differs from the AdaBelief row in storage only.
  """
  trained = {name: sweep_and_rerun(name, corpus, args, progress) for name in args.optimizers}
  if 'adabelief' in trained and not args.no_variants:
    lr = trained['adabelief'][1][0]['lr']
    for row in VARIANTS:
      trained[row] = [], [train_run(row, lr, s, corpus, args, progress) for s in range(args.seeds)]
  return trained


# ----------------------------------------------------------------------------
# Report.


def summarize(row: str, sweep: list[dict], runs: list[dict], seeds: int) -> tuple[dict, dict]:
  """(JSON summary, table row) of one row's sweep and chosen-lr runs."""
  valid = _common.mean_std(r['valid_bpb'][-1] for r in runs)
  test = _common.mean_std(r['test_bpb'] for r in runs)
  summary = {
    'optimizer': row,
    'lr': runs[0]['lr'],
    'valid_bpb_mean': valid[0],
    'valid_bpb_std': valid[1],
    'test_bpb_mean': test[0],
    'test_bpb_std': test[1],
    'train_bpb_mean': float(np.mean([r['train_bpb'][-1] for r in runs])),
    'tokens_per_s': float(np.mean([r['tokens_per_s'] for r in runs])),
    'state_bytes_per_param': runs[0]['state_bytes_per_param'],
    'sweep': [{'lr': s['lr'], 'valid_bpb': s['valid_bpb'][-1]} for s in sweep],
    'runs': runs,
  }
  grid = ', '.join(f'{s["lr"]:g}: {s["valid_bpb"][-1]:.3f}' for s in sweep)
  table_row = {
    'optimizer': row,
    'lr sweep (valid bpb, seed 0)': grid or "AdaBelief's lr",
    'chosen lr': f'{runs[0]["lr"]:g}',
    f'valid bpb ({_common.plural(seeds, "seed")})': _common.format_mean_std(*valid, 3),
    'test bpb': _common.format_mean_std(*test, 3),
    'train bpb (last segment)': f'{summary["train_bpb_mean"]:.3f}',
    'tokens/s': f'{summary["tokens_per_s"]:.0f}',
    'state B/param': f'{summary["state_bytes_per_param"]:.2f}',
  }
  return summary, table_row


def train_ratios(trained: dict) -> dict[str, list[float]]:
  """{variant: final train bpb over float32 AdaBelief's, seed by seed}.

  Paired by seed (same initialization, same batches), so the ratio measures
  the storage alone; a ratio of 1 is float32 quality.
  """
  if 'adabelief' not in trained:
    return {}
  base = {r['seed']: r['train_bpb'][-1] for r in trained['adabelief'][1]}
  return {
    row: [r['train_bpb'][-1] / base[r['seed']] for r in runs]
    for row, (_, runs) in trained.items()
    if row in VARIANTS
  }


def findings(summaries: Sequence[dict], ratios: dict[str, list[float]]) -> str:
  """The ranking by test bpb, and each variant's final train bpb over float32 AdaBelief's."""
  ranked = sorted(summaries, key=lambda s: s['test_bpb_mean'])
  text = 'Test bpb, best first: ' + ', '.join(
    f'{s["optimizer"]} {s["test_bpb_mean"]:.3f}' for s in ranked
  )
  changes = [
    f'{row} {np.mean(r):.4f} (min {min(r):.4f}, max {max(r):.4f})' for row, r in ratios.items()
  ]
  if changes:
    text += (
      '.\n\nFinal train bpb over float32-state AdaBelief, mean over the same '
      f'{_common.plural(len(next(iter(ratios.values()))), "seed")}: ' + '; '.join(changes)
    )
  return text + '.'


def notes(args: argparse.Namespace, corpus: _text.Corpus, params: int, wall: float) -> str:
  """How the table was made, for results.md."""
  text, files = corpus.text, corpus.files
  return (
    f'Python {sys.version.split()[0]} standard library: train {len(text["train"])} bytes '
    f'({_common.plural(len(files["train"]), "file")}), valid {len(text["valid"])} '
    f'({len(files["valid"])}), test {len(text["test"])} ({len(files["test"])}); vocab '
    f'{corpus.vocab}. GPT: {_common.plural(args.layers, "layer")}, dim {args.dim}, '
    f'{args.heads} heads, context {args.seq_len}, {params:,} parameters; '
    f'{args.steps} steps of batch {args.batch_size} x {args.seq_len} bytes, evaluated '
    f'{_common.plural(args.evals, "time")} on the whole validation text (train bpb: mean '
    f'over the steps since the previous evaluation). Warm-up {WARMUP:.0%} of steps, cosine '
    f'to {FINAL_LR:g} x peak, clip {CLIP_NORM:g}, decoupled weight decay '
    f'{args.weight_decay:g} (AdaBelief, AdamW; matrices and embeddings). LR chosen per '
    'optimizer by final validation bpb of seed 0 over its grid (grids of equal size), then '
    f"run with seeds 0..{args.seeds - 1}; variants reuse AdaBelief's lr and seeds. "
    'AdaBelief eps = eps_root = 1e-16; Adam(W) eps 1e-8; SGD momentum 0.9. tokens/s: '
    f'training steps only, wall clock. Total wall time {wall:.0f} s.'
  )


# ----------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _common.make_parser(__doc__, 'transformer_lm', OPTIMIZERS, seeds=3, batch_size=16)
  _common.add_lr_grids(parser, {name: grid for name, (grid, _) in OPTIMIZERS.items()})
  _common.add_positive_ints(
    parser,
    [
      ('--steps', 300, 'training steps per run'),
      ('--evals', 5, 'validation evaluations per run, evenly spaced'),
      ('--seq-len', 64, 'bytes per window (the context)'),
      ('--dim', 96, 'model width'),
      ('--layers', 2, 'decoder blocks'),
      ('--heads', 4, 'attention heads'),
      ('--train-kb', 512, 'training text, KiB'),
      ('--eval-kb', 32, 'validation and test text each, KiB'),
      ('--file-kb', 8, 'at most this many KiB from each file'),
    ],
  )
  parser.add_argument(
    '--weight-decay', type=float, default=0.1, help='AdaBelief and AdamW (default: %(default)s)'
  )
  parser.add_argument('--no-variants', action='store_true', help='skip the extra AdaBelief rows')
  args = parser.parse_args(argv)
  if args.evals > args.steps or args.weight_decay < 0:
    parser.error('need --evals <= --steps and --weight-decay >= 0')
  return args


def load_corpus(args: argparse.Namespace) -> tuple[_text.Corpus, int]:
  """The text as windows, and the model's parameter count; prints both."""
  corpus = _text.load(args.train_kb, args.eval_kb, args.file_kb, args.seq_len)
  if args.batch_size > len(corpus.windows['train'][0]):
    raise SystemExit(f'--batch-size must be <= {len(corpus.windows["train"][0])}')
  model = nnx.eval_shape(lambda: GPT(corpus.vocab, args, jnp.float32, rngs=nnx.Rngs(0)))
  params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(
    f'{_text.describe(corpus)}; GPT {params:,} parameters; '
    f'{_common.plural(args.steps, "step")} of batch {args.batch_size} x {args.seq_len}'
  )
  return corpus, params


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  corpus, params = load_corpus(args)
  rows = len(VARIANTS) if 'adabelief' in args.optimizers and not args.no_variants else 0
  runs = rows * args.seeds + sum(
    len(getattr(args, f'lrs_{name}')) + args.seeds - 1 for name in args.optimizers
  )
  trained, wall = _common.run_timed(
    runs * args.steps, 'step', args, lambda bar: train_all(corpus, args, bar)
  )

  ratios = train_ratios(trained)
  summaries, table_rows = zip(
    *(summarize(row, sweep, runs, args.seeds) for row, (sweep, runs) in trained.items())
  )
  curves_path = _common.plot_curves(
    os.path.join(args.out, 'curves.png'),
    [
      ('train bits per byte', _common.curves(summaries, 'train_bpb')),
      ('validation bits per byte', _common.curves(summaries, 'valid_bpb')),
    ],
    xlabel=f'evaluation (every {args.steps / args.evals:g} steps)',
    title=f'byte-level GPT ({params:,} params) on stdlib source, chosen lr, mean ± std over '
    + _common.plural(args.seeds, 'seed'),
  )
  return _common.report(
    args,
    title='Byte-level GPT LM: AdaBelief vs. AdamW vs. Adam vs. SGD',
    table=_common.table(table_rows),
    notes=notes(args, corpus, params, wall),
    findings=findings(summaries, ratios),
    plots=[curves_path],
    data={s: {'bytes': len(b), 'files': corpus.files[s]} for s, b in corpus.text.items()}
    | {'vocab': corpus.vocab, 'parameters': params},
    wall_time_s=wall,
    results=list(summaries),
    train_bpb_ratio_to_float32_state=ratios,
  )


if __name__ == '__main__':
  main()
