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

    python examples/lstm_lm.py                     # ~4 min on 2 CPU cores
    python examples/lstm_lm.py --epochs 10 --seeds 3 --hidden 256
    python examples/lstm_lm.py --optimizers adabelief,adam --lrs-adam 3e-3

Optimizers: AdaBelief (``adabelief_jax.adabelief``, betas (0.9, 0.999),
eps = eps_root = 1e-16: the authors' setting for 1-layer LSTMs, which is also
this library's default), Adam (betas (0.9, 0.999), eps 1e-8) and SGD with
momentum 0.9. Writes ``results.md``, ``results.json`` and ``curves.png`` to
--out.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
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
# Data: the standard library's source code.


def stdlib_splits(train_kb: int, eval_kb: int, file_kb: int = 8) -> tuple[dict, dict]:
  """(bytes per split, file names per split) for 'train', 'valid', 'test'.

  Each file contributes at most its first ``file_kb`` KiB, so that a split
  holds many files rather than a few long ones.
  """
  root = os.path.dirname(os.__file__)
  names = sorted(n for n in os.listdir(root) if n.endswith('.py'))
  names.sort(key=lambda n: hashlib.sha1(n.encode()).hexdigest())
  caps = {'train': train_kb * 1024, 'valid': eval_kb * 1024, 'test': eval_kb * 1024}
  chunks = {split: [] for split in caps}
  files = {split: [] for split in caps}
  sizes = dict.fromkeys(caps, 0)
  for i, name in enumerate(names):
    split = {0: 'valid', 1: 'test'}.get(i % 10, 'train')
    if sizes[split] >= caps[split]:
      continue
    with open(os.path.join(root, name), 'rb') as f:
      text = f.read(file_kb * 1024)[: caps[split] - sizes[split]]
    chunks[split].append(text)
    files[split].append(name)
    sizes[split] += len(text)
  data = {split: b''.join(parts) for split, parts in chunks.items()}
  if min(len(v) for v in data.values()) < 1024:
    raise SystemExit(f'not enough standard-library source under {root}')
  return data, files


def encode(data: dict[str, bytes]) -> tuple[dict[str, np.ndarray], int]:
  """Byte ids over the training bytes' vocabulary (+1 out-of-vocabulary id)."""
  train = np.frombuffer(data['train'], np.uint8)
  vocab = np.unique(train)
  table = np.full(256, len(vocab), np.int32)  # Unseen bytes -> OOV id.
  table[vocab] = np.arange(len(vocab), dtype=np.int32)
  ids = {split: table[np.frombuffer(text, np.uint8)] for split, text in data.items()}
  return ids, len(vocab) + 1


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping (inputs, next-byte targets), each (n, seq_len)."""
  n = (len(ids) - 1) // seq_len
  x = ids[: n * seq_len].reshape(n, seq_len)
  y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
  return x, y


# ----------------------------------------------------------------------------
# Model and steps.


class CharLSTM(nnx.Module):
  """Embed -> LSTM (nnx.RNN over nnx.OptimizedLSTMCell) -> logits."""

  def __init__(self, vocab: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
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
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def window_losses(model: CharLSTM, x: jax.Array, y: jax.Array) -> jax.Array:
  """Summed cross-entropy (nats) of each window, shape (batch,)."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).sum(-1)


def bits_per_char(model: CharLSTM, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
  """Bits per byte over all windows, in fixed-size batches (one compile)."""
  total = 0.0
  for i in range(0, len(x), batch):
    xb, yb = x[i : i + batch], y[i : i + batch]
    n = len(xb)
    if n < batch:  # Pad with zeros to the compiled shape; padding is dropped.
      xb = np.concatenate([xb, np.zeros((batch - n, x.shape[1]), x.dtype)])
      yb = np.concatenate([yb, np.zeros((batch - n, y.shape[1]), y.dtype)])
    total += float(window_losses(model, xb, yb)[:n].sum())
  return total / (x.size * math.log(2))


def train_run(
  name: str, lr: float, seed: int, data: dict, vocab: int, args: argparse.Namespace, progress: tqdm
) -> dict:
  """One model trained with one optimizer, lr and seed; per-epoch curves."""
  x_train, y_train = data['train']
  rng = _common.seed_everything(seed)  # Window order.
  model = CharLSTM(vocab, args.embed, args.hidden, rngs=nnx.Rngs(seed))
  tx = optax.chain(optax.clip_by_global_norm(CLIP_NORM), OPTIMIZERS[name][1](lr))
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
      valid_bpc.append(bits_per_char(model, *data['valid']))
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
    'test_bpc': bits_per_char(model, *data['test']),
    'wall_s': wall,
  }


# ----------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  _common.add_common_args(
    parser,
    epochs=3,
    seeds=2,
    batch_size=32,
    out=os.path.join('results', 'lstm_lm'),
    optimizers=list(OPTIMIZERS),
  )
  for name, (grid, _) in OPTIMIZERS.items():
    parser.add_argument(
      f'--lrs-{name}',
      type=_common.comma_list(),
      default=grid,
      help=f'learning-rate grid for {name} (default: %(default)s)',
    )
  parser.add_argument(
    '--seq-len', type=int, default=64, help='bytes per training window (default: %(default)s)'
  )
  parser.add_argument('--embed', type=int, default=32, help='embedding size (default: %(default)s)')
  parser.add_argument(
    '--hidden', type=int, default=128, help='LSTM hidden size (default: %(default)s)'
  )
  parser.add_argument(
    '--train-kb', type=int, default=512, help='training text, KiB (default: %(default)s)'
  )
  parser.add_argument(
    '--eval-kb',
    type=int,
    default=64,
    help='validation and test text each, KiB (default: %(default)s)',
  )
  parser.add_argument(
    '--evals-per-epoch',
    type=int,
    default=4,
    help='validation evaluations per epoch (default: %(default)s)',
  )
  parser.add_argument(
    '--file-kb',
    type=int,
    default=8,
    help='at most this many KiB from each file (default: %(default)s)',
  )
  args = parser.parse_args(argv)
  for name in OPTIMIZERS:
    key = f'lrs_{name}'
    try:
      setattr(args, key, [float(v) for v in getattr(args, key)])
    except ValueError as error:
      raise SystemExit(f'--lrs-{name}: {error}') from error
    if min(getattr(args, key)) <= 0:
      raise SystemExit(f'--lrs-{name}: learning rates must be > 0')
  _common.check_positive(
    args,
    'epochs',
    'seeds',
    'batch_size',
    'seq_len',
    'embed',
    'hidden',
    'train_kb',
    'eval_kb',
    'file_kb',
    'evals_per_epoch',
  )
  return args


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  text, files = stdlib_splits(args.train_kb, args.eval_kb, args.file_kb)
  ids, vocab = encode(text)
  data = {split: windows(v, args.seq_len) for split, v in ids.items()}
  if args.batch_size > len(data['train'][0]):
    raise SystemExit(f'--batch-size must be <= {len(data["train"][0])}')
  print(
    f'stdlib source ({os.path.dirname(os.__file__)}): '
    + ', '.join(f'{s} {len(text[s]) // 1024} KiB ({len(files[s])} files)' for s in text)
    + f'; vocab {vocab}; {args.epochs} epochs x '
    f'{len(data["train"][0]) // args.batch_size} steps, batch '
    f'{args.batch_size} x {args.seq_len}'
  )

  grids = {name: getattr(args, f'lrs_{name}') for name in args.optimizers}
  total = args.epochs * args.evals_per_epoch * sum(len(g) + args.seeds - 1 for g in grids.values())
  sweep, runs = {}, {}
  start = time.perf_counter()
  with tqdm(total=total, unit='eval', disable=args.no_progress) as progress:
    for name, grid in grids.items():
      sweep[name] = []
      for lr in grid:  # Same budget for every grid point: seed 0, all epochs.
        progress.set_description(f'{name} lr={lr:g} seed 0')
        sweep[name].append(train_run(name, lr, 0, data, vocab, args, progress))
      best = min(sweep[name], key=lambda r: r['valid_bpc'][-1])
      runs[name] = [best]
      for seed in range(1, args.seeds):
        progress.set_description(f'{name} lr={best["lr"]:g} seed {seed}')
        runs[name].append(train_run(name, best['lr'], seed, data, vocab, args, progress))
  wall = time.perf_counter() - start

  rows, summaries = [], []
  for name in grids:
    r = runs[name]
    valid = _common.mean_std(x['valid_bpc'][-1] for x in r)
    test = _common.mean_std(x['test_bpc'] for x in r)
    train = _common.mean_std(x['train_bpc'][-1] for x in r)
    summaries.append(
      {
        'optimizer': name,
        'lr': r[0]['lr'],
        'valid_bpc_mean': valid[0],
        'valid_bpc_std': valid[1],
        'test_bpc_mean': test[0],
        'test_bpc_std': test[1],
        'train_bpc_mean': train[0],
        'sweep': [{'lr': s['lr'], 'valid_bpc': s['valid_bpc'][-1]} for s in sweep[name]],
        'runs': r,
      }
    )
    rows.append(
      {
        'optimizer': name,
        'lr sweep (valid bpc, seed 0)': ', '.join(
          f'{s["lr"]:g}: {s["valid_bpc"][-1]:.3f}' for s in sweep[name]
        ),
        'chosen lr': f'{r[0]["lr"]:g}',
        f'valid bpc ({args.seeds} seeds)': _common.format_mean_std(*valid, 3),
        'test bpc': _common.format_mean_std(*test, 3),
        'train bpc (last segment)': f'{train[0]:.3f}',
        'time/run (s)': f'{np.mean([x["wall_s"] for x in r]):.0f}',
      }
    )
  table = _common.markdown_table(rows)
  ranked = sorted(summaries, key=lambda s: s['test_bpc_mean'])
  ranking = (
    'Test bpc, best first: '
    + ', '.join(f'{s["optimizer"]} {s["test_bpc_mean"]:.3f}' for s in ranked)
    + '.'
  )
  print('\n' + table + '\n\n' + ranking)

  curves_path = _common.plot_curves(
    os.path.join(args.out, 'curves.png'),
    [
      (
        'train bits per char',
        {s['optimizer']: [x['train_bpc'] for x in s['runs']] for s in summaries},
      ),
      (
        'validation bits per char',
        {s['optimizer']: [x['valid_bpc'] for x in s['runs']] for s in summaries},
      ),
    ],
    xlabel=f'evaluation ({args.evals_per_epoch} per epoch)',
    title=(f'char LSTM on stdlib source, chosen lr, mean ± std over {args.seeds} seed(s)'),
  )
  notes = (
    f'Python {sys.version.split()[0]} standard library: train '
    f'{len(text["train"])} bytes ({len(files["train"])} files), valid '
    f'{len(text["valid"])} ({len(files["valid"])}), test {len(text["test"])} '
    f'({len(files["test"])}); vocab {vocab}. 1-layer LSTM, embed '
    f'{args.embed}, hidden {args.hidden}; {args.epochs} epochs of batch '
    f'{args.batch_size} x {args.seq_len} bytes, evaluated '
    f'{args.evals_per_epoch} times per epoch (train bpc: mean over the '
    'steps since the previous evaluation); clip 0.25. LR chosen per '
    'optimizer by final validation bpc of seed 0 over its grid (same '
    'budget for every grid point), then run with seeds '
    f'0..{args.seeds - 1}. AdaBelief eps = eps_root = 1e-16; Adam eps 1e-8; '
    f'SGD momentum 0.9. Total wall time {wall:.0f} s.\n\n{ranking}'
    f'\n\n![curves]({os.path.basename(curves_path)})'
  )
  data_out = {
    'config': vars(args),
    'environment': _common.environment(),
    'data': {s: {'bytes': len(text[s]), 'files': files[s]} for s in text} | {'vocab': vocab},
    'wall_time_s': wall,
    'results': summaries,
  }
  md_path, json_path = _common.write_results(
    args.out,
    title='Character-level LSTM LM: AdaBelief vs. Adam vs. SGD',
    table=table,
    notes=notes,
    data=data_out,
  )
  print(f'\nwrote {md_path}, {json_path}, {curves_path}')
  return data_out


if __name__ == '__main__':
  main()
