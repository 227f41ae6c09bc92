"""Character-level LSTM language model: AdaBelief vs. Adam vs. SGD (Flax NNX).

The AdaBelief paper reports its lowest perplexities on LSTM language models
(Penn Treebank). This is a laptop-scale version that needs no download: the
text is the Python standard library's own source, read from the running
interpreter's installation (``os.path.dirname(os.__file__)``, top-level
``*.py`` files only). The files are ordered by the SHA-1 of their names, a
fixed order; every 10th file goes to the validation set, the next one to the
test set and the rest to training. Each file contributes at most its first
``--file-kb`` KiB and each split is capped at ``--train-kb`` / ``--eval-kb``
KiB (files are taken in order until the cap). Tokens are bytes (the sources
are almost all ASCII, so bits per byte are bits per character); the
vocabulary is the bytes seen in training plus one out-of-vocabulary token.
The text, hence the numbers, depend on the Python version.

Model: ``nnx.Embed`` -> ``nnx.RNN(nnx.OptimizedLSTMCell)`` -> ``nnx.Linear``,
trained on non-overlapping windows of ``--seq-len`` bytes (shuffled every
epoch, zero initial state per window) with the gradient's global norm clipped
to 0.25 for every optimizer (the usual setting for LSTM language models, e.g.
PyTorch's word_language_model example). Validation bits per character are
measured ``--evals-per-epoch`` times per epoch.

Fair learning rates: every optimizer gets the same budget, a small grid of
learning rates (``--lrs-adabelief`` etc.) trained with seed 0 for the same
number of epochs; the lr with the lowest final *validation* bits per
character wins, and the winner is run with the remaining seeds. The table
reports validation and *test* bits per character at the chosen lr (the test
files played no part in the choice), plus the whole sweep::

    python experiments/lstm_lm.py                     # ~4 min on 2 CPU cores
    python experiments/lstm_lm.py --epochs 10 --seeds 3 --hidden 256
    python experiments/lstm_lm.py --optimizers adabelief,adam --lrs-adam 3e-3

Optimizers: AdaBelief (``adabelief_jax.adabelief``, betas (0.9, 0.999),
eps = eps_root = 1e-16: the authors' setting for 1-layer LSTMs, which is also
this library's default), Adam (betas (0.9, 0.999), eps 1e-8) and SGD with
momentum 0.9. Writes ``results.md``, ``results.json`` and ``curves.png`` to
--out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import _common
import _text
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _text import Corpus, Data
from _text import stdlib_splits as stdlib_splits  # Re-exported: lstm_lm.stdlib_splits.
from flax import nnx
from tqdm.auto import tqdm

import adabelief_jax

CLIP_NORM = 0.25

# name -> (default lr grid, constructor(lr)).
OPTIMIZERS: dict[str, tuple[str, Callable[[float], optax.GradientTransformation]]] = {
  'adabelief': (
    '3e-3,1e-2,3e-2',
    lambda lr: adabelief_jax.adabelief(lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16),
  ),
  'adam': ('3e-3,1e-2,3e-2', lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)),
  'sgd': ('1,3,10', lambda lr: optax.sgd(lr, momentum=0.9)),
}


# ----------------------------------------------------------------------------
# Data: the standard library's source code (experiments/_text.py, shared with transformer_lm.py).


def load_corpus(args: argparse.Namespace) -> Corpus:
  """The splits of the standard library's source as windows; prints what they hold."""
  corpus = _text.load(args.train_kb, args.eval_kb, args.file_kb, args.seq_len)
  data = corpus.windows
  if args.batch_size > len(data['train'][0]):
    raise SystemExit(f'--batch-size must be <= {len(data["train"][0])}')
  print(
    _text.describe(corpus) + f'; {_common.plural(args.epochs, "epoch")} x '
    f'{_common.plural(len(data["train"][0]) // args.batch_size, "step")}, batch '
    f'{args.batch_size} x {args.seq_len}'
  )
  return corpus


# ----------------------------------------------------------------------------
# Model and steps.


class CharLSTM(nnx.Module):
  """Embed -> LSTM (nnx.RNN over nnx.OptimizedLSTMCell) -> logits."""

  def __init__(self, vocab: int, embed: int, hidden: int, *, rngs: nnx.Rngs) -> None:
    self.embed = nnx.Embed(vocab, embed, rngs=rngs)
    self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(embed, hidden, rngs=rngs))
    self.out = nnx.Linear(hidden, vocab, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return self.out(self.rnn(self.embed(tokens)))  # (batch, time, vocab)


def loss_fn(model: CharLSTM, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy in nats per byte."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: CharLSTM, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  """One minibatch step; updates ``model`` and ``optimizer`` in place."""
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


def train_run(
  name: str,
  lr: float,
  seed: int,
  data: Data,
  vocab: int,
  args: argparse.Namespace,
  progress: tqdm,
  make_tx: Callable[[float], optax.GradientTransformation] | None = None,
) -> dict:
  """One model trained with one optimizer, lr and seed; per-evaluation curves.

  ``make_tx(lr)`` builds the optimizer (default: ``name``'s in OPTIMIZERS);
  benchmarks/mixed_precision.py passes AdaBelief with other state storages.
  """
  x_train, y_train = data['train']
  rng = _common.seed_everything(seed)  # Window order.
  model = CharLSTM(vocab, args.embed, args.hidden, rngs=nnx.Rngs(seed))
  tx = optax.chain(optax.clip_by_global_norm(CLIP_NORM), (make_tx or OPTIMIZERS[name][1])(lr))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = nnx.cached_partial(train_step, model, optimizer)
  steps = len(x_train) // args.batch_size
  train_bpc, valid_bpc = [], []
  start = time.perf_counter()
  for _ in range(args.epochs):
    perm = rng.permutation(len(x_train))[: steps * args.batch_size]
    perm = perm.reshape(steps, args.batch_size)
    # Evaluate args.evals_per_epoch times per epoch, after equal segments.
    for segment in np.array_split(perm, args.evals_per_epoch):
      losses = [step(x_train[p], y_train[p]) for p in segment]
      train_bpc.append(float(jnp.mean(jnp.stack(losses))) / math.log(2))
      valid_bpc.append(_text.bits_per_byte(model, *data['valid']))
      if not math.isfinite(train_bpc[-1]):
        valid_bpc[-1] = math.inf
      progress.set_postfix(train=f'{train_bpc[-1]:.3f}', valid=f'{valid_bpc[-1]:.3f}')
      progress.update()
  wall = time.perf_counter() - start
  return {
    'optimizer': name,
    'lr': lr,
    'seed': seed,
    'train_bpc': train_bpc,
    'valid_bpc': valid_bpc,
    'test_bpc': _text.bits_per_byte(model, *data['test']),
    'wall_s': wall,
  }


def sweep_and_rerun(
  name: str, data: Data, vocab: int, args: argparse.Namespace, progress: tqdm
) -> tuple[list[dict], list[dict]]:
  """(the lr sweep's runs, the chosen lr's runs) of optimizer ``name``.

  Every grid point gets the same budget, seed 0 and all epochs; the lowest
  final validation bpc wins and is trained again with the other seeds.
  """
  sweep = []
  for lr in getattr(args, f'lrs_{name}'):
    progress.set_description(f'{name} lr={lr:g} seed 0')
    sweep.append(train_run(name, lr, 0, data, vocab, args, progress))
  best = min(sweep, key=lambda r: r['valid_bpc'][-1])
  runs = [best]
  for seed in range(1, args.seeds):
    progress.set_description(f'{name} lr={best["lr"]:g} seed {seed}')
    runs.append(train_run(name, best['lr'], seed, data, vocab, args, progress))
  return sweep, runs


# ----------------------------------------------------------------------------
# Report.


def summarize(name: str, sweep: list[dict], runs: list[dict], seeds: int) -> tuple[dict, dict]:
  """(JSON summary, table row) of one optimizer's sweep and chosen-lr runs."""
  valid = _common.mean_std(x['valid_bpc'][-1] for x in runs)
  test = _common.mean_std(x['test_bpc'] for x in runs)
  train = _common.mean_std(x['train_bpc'][-1] for x in runs)
  summary = {
    'optimizer': name,
    'lr': runs[0]['lr'],
    'valid_bpc_mean': valid[0],
    'valid_bpc_std': valid[1],
    'test_bpc_mean': test[0],
    'test_bpc_std': test[1],
    'train_bpc_mean': train[0],
    'sweep': [{'lr': s['lr'], 'valid_bpc': s['valid_bpc'][-1]} for s in sweep],
    'runs': runs,
  }
  row = {
    'optimizer': name,
    'lr sweep (valid bpc, seed 0)': ', '.join(
      f'{s["lr"]:g}: {s["valid_bpc"][-1]:.3f}' for s in sweep
    ),
    'chosen lr': f'{runs[0]["lr"]:g}',
    f'valid bpc ({_common.plural(seeds, "seed")})': _common.format_mean_std(*valid, 3),
    'test bpc': _common.format_mean_std(*test, 3),
    'train bpc (last segment)': f'{train[0]:.3f}',
    'time/run (s)': f'{np.mean([x["wall_s"] for x in runs]):.0f}',
  }
  return summary, row


def notes(args: argparse.Namespace, corpus: Corpus, wall: float) -> str:
  """How the table was made, for results.md."""
  text, files = corpus.text, corpus.files
  return (
    f'Python {sys.version.split()[0]} standard library: train '
    f'{len(text["train"])} bytes ({_common.plural(len(files["train"]), "file")}), valid '
    f'{len(text["valid"])} ({len(files["valid"])}), test {len(text["test"])} '
    f'({len(files["test"])}); vocab {corpus.vocab}. 1-layer LSTM, embed '
    f'{args.embed}, hidden {args.hidden}; {_common.plural(args.epochs, "epoch")} of batch '
    f'{args.batch_size} x {args.seq_len} bytes, evaluated '
    f'{_common.plural(args.evals_per_epoch, "time")} per epoch (train bpc: mean over the '
    'steps since the previous evaluation); clip 0.25. LR chosen per '
    'optimizer by final validation bpc of seed 0 over its grid (same '
    'budget for every grid point), then run with seeds '
    f'0..{args.seeds - 1}. AdaBelief eps = eps_root = 1e-16; Adam eps 1e-8; '
    f'SGD momentum 0.9. Total wall time {wall:.0f} s.'
  )


# ----------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _common.make_parser(__doc__, 'lstm_lm', OPTIMIZERS, seeds=2, epochs=3, batch_size=32)
  _common.add_lr_grids(parser, {name: grid for name, (grid, _) in OPTIMIZERS.items()})
  _common.add_positive_ints(
    parser,
    [
      ('--seq-len', 64, 'bytes per training window'),
      ('--embed', 32, 'embedding size'),
      ('--hidden', 128, 'LSTM hidden size'),
      ('--train-kb', 512, 'training text, KiB'),
      ('--eval-kb', 64, 'validation and test text each, KiB'),
      ('--evals-per-epoch', 4, 'validation evaluations per epoch'),
      ('--file-kb', 8, 'at most this many KiB from each file'),
    ],
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  corpus = load_corpus(args)
  data, vocab = corpus.windows, corpus.vocab
  grid_runs = sum(len(getattr(args, f'lrs_{name}')) + args.seeds - 1 for name in args.optimizers)
  trained, wall = _common.run_timed(
    args.epochs * args.evals_per_epoch * grid_runs,
    'eval',
    args,
    lambda bar: {name: sweep_and_rerun(name, data, vocab, args, bar) for name in args.optimizers},
  )

  summaries, rows = zip(
    *(summarize(name, sweep, runs, args.seeds) for name, (sweep, runs) in trained.items())
  )
  ranked = sorted(summaries, key=lambda s: s['test_bpc_mean'])
  ranking = ', '.join(f'{s["optimizer"]} {s["test_bpc_mean"]:.3f}' for s in ranked)
  curves_path = _common.plot_curves(
    os.path.join(args.out, 'curves.png'),
    [
      ('train bits per char', _common.curves(summaries, 'train_bpc')),
      ('validation bits per char', _common.curves(summaries, 'valid_bpc')),
    ],
    xlabel=f'evaluation ({args.evals_per_epoch} per epoch)',
    title='char LSTM on stdlib source, chosen lr, mean ± std over '
    + _common.plural(args.seeds, 'seed'),
  )
  return _common.report(
    args,
    title='Character-level LSTM LM: AdaBelief vs. Adam vs. SGD',
    table=_common.table(rows),
    notes=notes(args, corpus, wall),
    findings=f'Test bpc, best first: {ranking}.',
    plots=[curves_path],
    data={s: {'bytes': len(b), 'files': corpus.files[s]} for s, b in corpus.text.items()}
    | {'vocab': vocab},
    wall_time_s=wall,
    results=list(summaries),
  )


if __name__ == '__main__':
  main()
