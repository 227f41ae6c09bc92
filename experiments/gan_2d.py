"""A small Flax NNX GAN on a ring of 8 Gaussians: AdaBelief vs. Adam stability.

The AdaBelief paper's third claim is that it trains GANs stably. This is the
laptop-scale version of that test: the classic 2-D mixture of 8 Gaussians on
a circle (radius 2, std 0.02), where an unstable GAN drops modes or never
concentrates on them. Generator and discriminator are two-hidden-layer ReLU
MLPs (``nnx.Linear``), trained with the non-saturating GAN loss, one
discriminator step and one generator step per iteration, batch 128, a
2-dimensional Gaussian latent.

Settings: AdaBelief and Adam, each with beta1 = 0.5 (the usual GAN choice)
and 0.9 (the default), beta2 = 0.999, the same small learning-rate sweep
``--lrs`` (default 2e-4, the paper's GAN learning rate, and 1e-3) and the
same seeds: a seed fixes the initial weights, the data stream and the
evaluation noise, identically for every optimizer. Every (optimizer, beta1,
lr) combination is reported, and the summary pools them per optimizer
(stability across hyperparameters) and names each one's best. Adam:
eps 1e-8. AdaBelief: eps = eps_root = 1e-12 (the AdaBelief authors'
recommendation for GANs; adabelief-pytorch's single eps 1e-12).

Metrics, on 2,000 generator samples every ``--eval-every`` steps:

* **modes covered**: modes with at least 1/20 of the samples (100 of 2,000)
  within 3 std (0.06) of their centre;
* **high-quality samples**: fraction of samples within 3 std of some centre;
* **collapsed**: a run that covers fewer than 8 modes at the end; the table
  reports the fraction of seeds that collapsed.

The runs of a setting (seeds x learning rates) are trained together: one
``jax.vmap`` over runs of a ``jax.lax.scan`` over steps, with the NNX models
split into graph definition and parameter state (``nnx.split``/``nnx.merge``)::

    python experiments/gan_2d.py                      # ~4-5 min on 2 CPU cores
    python experiments/gan_2d.py --steps 4000 --seeds 2 --out /tmp/gan
    python experiments/gan_2d.py --lrs 1e-4 --b1s 0.5 --seeds 10

Writes ``results.md``, ``results.json``, ``samples.png`` (final samples of
every run) and ``curves.png`` (modes and quality during training) to --out.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import adabelief_jax

if TYPE_CHECKING:
  from matplotlib.axes import Axes

NUM_MODES = 8
RADIUS = 2.0
EVAL_SAMPLES = 2000

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  'adabelief': lambda lr, b1: adabelief_jax.adabelief(
    lr, b1=b1, b2=0.999, eps=1e-12, eps_root=1e-12
  ),
  'adam': lambda lr, b1: optax.adam(lr, b1=b1, b2=0.999, eps=1e-8),
}

# (generator, discriminator) graph definitions: what nnx.merge needs besides parameters.
Defs = tuple[nnx.GraphDef, nnx.GraphDef]


# ----------------------------------------------------------------------------
# Data, models, metrics.


def centers() -> jax.Array:
  """The 8 mode centres on the ring, shape (8, 2)."""
  angles = jnp.arange(NUM_MODES) * (2 * jnp.pi / NUM_MODES)
  return RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)


def sample_data(key: jax.Array, n: int, std: float) -> jax.Array:
  """``n`` real samples: a uniformly drawn mode plus N(0, std^2) noise."""
  k_mode, k_noise = jax.random.split(key)
  modes = jax.random.randint(k_mode, (n,), 0, NUM_MODES)
  return centers()[modes] + std * jax.random.normal(k_noise, (n, 2))


class MLP(nnx.Module):
  """``depth`` hidden ReLU layers of width ``hidden``, then a linear output."""

  def __init__(self, din: int, hidden: int, dout: int, depth: int, *, rngs: nnx.Rngs) -> None:
    dims = [din] + [hidden] * depth
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(dims)])
    self.out = nnx.Linear(dims[-1], dout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.out(x)


def mode_metrics(samples: jax.Array, std: float) -> tuple[jax.Array, jax.Array]:
  """(modes covered, fraction of high-quality samples) of (N, 2) samples."""
  dist = jnp.linalg.norm(samples[:, None, :] - centers()[None], axis=-1)
  near = dist < 3 * std  # (N, modes)
  covered = (near.sum(0) >= samples.shape[0] / 20).sum()
  return covered, near.any(1).mean()


# ----------------------------------------------------------------------------
# Training: pure functions of the parameter states, vmapped over runs.


def make_models(seed: jax.Array, args: argparse.Namespace) -> tuple[MLP, MLP]:
  """(generator, discriminator), initialized from keys derived from ``seed``."""
  key = jax.random.key(seed)
  g = MLP(args.latent, args.hidden, 2, 2, rngs=nnx.Rngs(jax.random.fold_in(key, 0)))
  d = MLP(2, args.hidden, 1, 2, rngs=nnx.Rngs(jax.random.fold_in(key, 1)))
  return g, d


def d_loss(
  defs: Defs, d_params: nnx.State, g_params: nnx.State, real: jax.Array, z: jax.Array
) -> jax.Array:
  """Discriminator loss: -log D(real) - log(1 - D(G(z))), G held fixed."""
  g, d = nnx.merge(defs[0], g_params), nnx.merge(defs[1], d_params)
  fake = jax.lax.stop_gradient(g(z))
  return jnp.mean(jax.nn.softplus(-d(real))) + jnp.mean(jax.nn.softplus(d(fake)))


def g_loss(defs: Defs, g_params: nnx.State, d_params: nnx.State, z: jax.Array) -> jax.Array:
  """Non-saturating generator loss: -log D(G(z))."""
  g, d = nnx.merge(defs[0], g_params), nnx.merge(defs[1], d_params)
  return jnp.mean(jax.nn.softplus(-d(g(z))))


def init_run(seed: jax.Array, tx: optax.GradientTransformation, args: argparse.Namespace) -> dict:
  """One run's carry: parameters, optimizer states, data key and evaluation latents."""
  g, d = make_models(seed, args)
  g_params, d_params = nnx.state(g, nnx.Param), nnx.state(d, nnx.Param)
  data_key = jax.random.fold_in(jax.random.key(seed), 2)
  eval_z = jax.random.normal(jax.random.fold_in(data_key, 0), (EVAL_SAMPLES, args.latent))
  return {
    'g': g_params,
    'd': d_params,
    'g_opt': tx.init(g_params),
    'd_opt': tx.init(d_params),
    'key': data_key,
    'eval_z': eval_z,
  }


def gan_step(
  c: dict, defs: Defs, tx: optax.GradientTransformation, args: argparse.Namespace
) -> dict:
  """One discriminator step, then one generator step against the updated D."""
  key, k_real, k_zd, k_zg = jax.random.split(c['key'], 4)
  real = sample_data(k_real, args.batch_size, args.std)
  z = jax.random.normal(k_zd, (args.batch_size, args.latent))
  grads = jax.grad(d_loss, argnums=1)(defs, c['d'], c['g'], real, z)
  updates, d_opt = tx.update(grads, c['d_opt'], c['d'])
  d_params = optax.apply_updates(c['d'], updates)
  z = jax.random.normal(k_zg, (args.batch_size, args.latent))
  grads = jax.grad(g_loss, argnums=1)(defs, c['g'], d_params, z)
  updates, g_opt = tx.update(grads, c['g_opt'], c['g'])
  g_params = optax.apply_updates(c['g'], updates)
  return dict(c, g=g_params, d=d_params, g_opt=g_opt, d_opt=d_opt, key=key)


def make_setting(optimizer: str, b1: float, args: argparse.Namespace) -> tuple[Callable, Callable]:
  """(init, train_chunk) for one (optimizer, beta1) setting, vmapped over runs.

  ``init(seeds) -> carry``; ``train_chunk(lrs, carry) -> (carry, modes,
  quality, samples)`` runs ``args.eval_every`` steps of every run (one per
  entry of ``lrs``/``seeds``) and evaluates them.
  """
  g_model, d_model = nnx.eval_shape(lambda: make_models(0, args))
  defs = (nnx.split(g_model)[0], nnx.split(d_model)[0])

  def tx(lr: jax.Array | float) -> optax.GradientTransformation:
    return OPTIMIZERS[optimizer](lr, b1)

  def chunk(lr: jax.Array, carry: dict) -> tuple[dict, jax.Array, jax.Array, jax.Array]:
    optim = tx(lr)
    carry, _ = jax.lax.scan(
      lambda c, _: (gan_step(c, defs, optim, args), None), carry, None, length=args.eval_every
    )
    samples = nnx.merge(defs[0], carry['g'])(carry['eval_z'])
    covered, quality = mode_metrics(samples, args.std)
    return carry, covered, quality, samples

  # init runs once per setting: eager vmap is cheaper than compiling it.
  return jax.vmap(lambda seed: init_run(seed, tx(0.0), args)), jax.jit(jax.vmap(chunk))


def train_setting(
  optimizer: str,
  b1: float,
  lrs: np.ndarray,
  seeds: np.ndarray,
  args: argparse.Namespace,
  progress: tqdm,
) -> dict:
  """Trains every (lr, seed) run of a setting; per-evaluation metrics."""
  init, chunk = make_setting(optimizer, b1, args)
  start = time.perf_counter()
  carry = init(jnp.asarray(seeds))
  lrs = jnp.asarray(lrs, jnp.float32)
  modes, quality = [], []
  for _ in range(args.steps // args.eval_every):
    carry, covered, hq, samples = chunk(lrs, carry)
    modes.append(np.asarray(covered))
    quality.append(np.asarray(hq))
    progress.set_postfix(modes=f'{np.mean(modes[-1]):.1f}', hq=f'{np.mean(quality[-1]):.2f}')
    progress.update(args.eval_every)
  return {
    'modes': np.stack(modes, 1),
    'quality': np.stack(quality, 1),
    'samples': np.asarray(samples),
    'wall_s': time.perf_counter() - start,
  }


def train_all(args: argparse.Namespace, progress: tqdm) -> list[dict]:
  """One entry per (optimizer, beta1, lr): its seeds' metrics and final samples.

  The runs of a setting, every (lr, seed) pair, are trained together.
  """
  run_lrs = np.repeat(np.asarray(args.lrs), args.seeds)
  run_seeds = np.tile(np.arange(args.seeds), len(args.lrs))
  entries = []
  for opt, b1 in itertools.product(args.optimizers, args.b1s):
    progress.set_description(f'{opt} b1={b1:g}')
    out = train_setting(opt, b1, run_lrs, run_seeds, args, progress)
    for lr in args.lrs:
      idx = np.flatnonzero(run_lrs == lr)
      entries.append(
        {
          'optimizer': opt,
          'b1': b1,
          'lr': lr,
          'label': f'{opt} b1={b1:g}' + (f' lr={lr:g}' if len(args.lrs) > 1 else ''),
          'seeds': run_seeds[idx],
          'modes': out['modes'][idx],
          'quality': out['quality'][idx],
          'samples': out['samples'][idx],
          'wall_s': out['wall_s'] / len(args.lrs),
        }
      )
  return entries


# ----------------------------------------------------------------------------
# Report.


def summarize(e: dict, args: argparse.Namespace) -> tuple[dict, dict]:
  """(table row, JSON result) of one (optimizer, beta1, lr) entry."""
  n = args.seeds
  modes_end, hq_end = e['modes'][:, -1], e['quality'][:, -1]
  collapsed = float(np.mean(modes_end < NUM_MODES))
  mean_modes, std_modes = _common.mean_std(modes_end)
  mean_hq, std_hq = _common.mean_std(hq_end)
  # Stability over the second half of training: mean modes and the number
  # of evaluations at which a run covered all 8.
  half = e['modes'][:, e['modes'].shape[1] // 2 :]
  row = {
    'optimizer': e['optimizer'],
    'b1': f'{e["b1"]:g}',
    'lr': f'{e["lr"]:g}',
    f'modes at end (of 8, {_common.plural(n, "seed")})': _common.format_mean_std(
      mean_modes, std_modes, 1
    ),
    'high-quality at end': _common.format_mean_std(mean_hq, std_hq, 2),
    'collapsed (<8 modes at end)': f'{round(collapsed * n)}/{n} ({collapsed:.0%})',
    'modes, 2nd half (mean)': f'{half.mean():.2f}',
    'wall (s)': f'{e["wall_s"]:.0f}',
  }
  result = {
    'optimizer': e['optimizer'],
    'b1': e['b1'],
    'lr': e['lr'],
    'seeds': e['seeds'],
    'modes_end_mean': mean_modes,
    'modes_end_std': std_modes,
    'quality_end_mean': mean_hq,
    'quality_end_std': std_hq,
    'collapsed_fraction': collapsed,
    'modes_second_half_mean': float(half.mean()),
    'eval_steps': list(range(args.eval_every, args.steps + 1, args.eval_every)),
    'modes': e['modes'],
    'quality': e['quality'],
    'wall_s': e['wall_s'],
  }
  return row, result


def pooled_summary(results: list[dict], optimizers: Sequence[str]) -> list[str]:
  """Per optimizer: all its settings pooled (robustness), and its best setting."""
  lines = []
  for opt in optimizers:
    mine = [r for r in results if r['optimizer'] == opt]
    modes_end = np.concatenate([np.asarray(r['modes'])[:, -1] for r in mine])
    best = max(mine, key=lambda r: (r['modes_end_mean'], -r['collapsed_fraction']))
    lines.append(
      f'{opt}, all {_common.plural(len(mine), "setting")} pooled '
      f'({_common.plural(len(modes_end), "run")}): {modes_end.mean():.2f} modes at end, '
      f'{np.mean(modes_end < NUM_MODES):.0%} collapsed; best setting b1='
      f'{best["b1"]:g} lr={best["lr"]:g}: {best["modes_end_mean"]:.1f} '
      f'modes, {best["collapsed_fraction"]:.0%} collapsed.'
    )
  return lines


def notes(args: argparse.Namespace, wall: float) -> str:
  """How the table was made, for results.md."""
  return (
    f'{_common.plural(args.steps, "iteration")} (1 D + 1 G step each), batch '
    f'{args.batch_size}, MLPs 2x{args.hidden} ReLU, latent {args.latent}, '
    f'ring radius {RADIUS:g}, std {args.std:g}; seeds 0..{args.seeds - 1}, shared by '
    'every setting (same initial weights and data). Every optimizer uses the '
    f'same learning rate(s) {args.lrs} and beta2 0.999; Adam eps 1e-8, '
    'AdaBelief eps = eps_root = 1e-12. Evaluated on 2,000 samples: a mode is '
    f'covered if >= 100 samples lie within 3 std ({3 * args.std:g}) of it; '
    'high-quality = fraction of samples within 3 std of some mode; '
    'collapsed = fewer than 8 modes covered at the end. "modes, 2nd half" '
    'averages the modes covered over the evaluations of the second half '
    f'(a stability measure). Total wall time {wall:.0f} s.'
  )


# ----------------------------------------------------------------------------
# Plots.


def plot_samples(path: str, entries: list[dict], std: float) -> str:
  """Every run's final samples, one row per entry and one column per seed.

  The figure's size follows the grid (1.75 inch a panel) and its title wraps
  to that width, so any number of seeds gives a readable image.
  """
  ncols = max(len(e['seeds']) for e in entries)
  fig = _common.figure(
    1.75 * ncols + 0.6,
    1.75 * len(entries) + 0.5,
    'Generator samples at the end (circles: 3 std around each mode)',
    title_size=9,
  )
  axes = fig.subplots(len(entries), ncols, squeeze=False)
  lim = RADIUS + 0.8
  for row, e in enumerate(entries):
    for col, ax in enumerate(axes[row]):
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_xlim(-lim, lim)
      ax.set_ylim(-lim, lim)
      ax.set_aspect('equal')
      if col >= len(e['seeds']):
        ax.axis('off')
        continue
      _draw_samples(ax, e['samples'][col], std)
      ax.set_title(
        f'seed {e["seeds"][col]}: {e["modes"][col, -1]} modes, hq {e["quality"][col, -1]:.2f}',
        fontsize=6.5,
      )
      if col == 0:
        ax.set_ylabel(e['label'], fontsize=7.5)
  return _common.save_figure(fig, path, dpi=80)


def _draw_samples(ax: Axes, xy: np.ndarray, std: float) -> None:
  """A run's samples, with a circle of 3 std around each mode."""
  from matplotlib.patches import Circle

  ax.scatter(xy[:, 0], xy[:, 1], s=1, alpha=0.3, color='tab:blue', rasterized=True)
  for center in np.asarray(centers()):
    ax.add_patch(Circle(tuple(center), 3 * std, fill=False, color='tab:red', lw=0.6))


# ----------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _common.make_parser(
    __doc__, 'gan_2d', OPTIMIZERS, seeds=5, seeds_help='runs per setting, seeds 0..N-1'
  )
  _common.add_gan_flags(parser, steps=20000, eval_every=1000, batch_size=128, unit='samples')
  _common.add_positive_ints(
    parser, [('--hidden', 64, 'width of the MLPs'), ('--latent', 2, 'latent dimension')]
  )
  parser.add_argument(
    '--lrs',
    type=_common.positive_floats,
    default='2e-4,1e-3',
    help='learning rates, each run for every setting and seed (default: %(default)s)',
  )
  parser.add_argument(
    '--std', type=float, default=0.02, help='std of each Gaussian (default: %(default)s)'
  )
  return _common.parse_gan_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  settings = len(args.optimizers) * len(args.b1s)
  print(
    f'8-Gaussian ring GAN: {_common.plural(settings, "setting")} x '
    f'{_common.plural(len(args.lrs), "lr")} x {_common.plural(args.seeds, "seed")}, '
    f'{_common.plural(args.steps, "iteration")}, batch {args.batch_size}, '
    f'device {jax.devices()[0].device_kind}'
  )
  entries, wall = _common.run_timed(
    settings * args.steps, 'it', args, lambda progress: train_all(args, progress)
  )

  rows, results = map(list, zip(*(summarize(e, args) for e in entries)))
  summary = pooled_summary(results, args.optimizers)
  plots = [
    plot_samples(os.path.join(args.out, 'samples.png'), entries, args.std),
    _common.plot_curves(
      os.path.join(args.out, 'curves.png'),
      [
        ('modes covered (of 8)', {e['label']: e['modes'] for e in entries}),
        ('high-quality fraction', {e['label']: e['quality'] for e in entries}),
      ],
      xlabel=f'evaluation (every {_common.plural(args.eval_every, "iteration")})',
      title=f'8-Gaussian ring GAN, mean ± std over {_common.plural(args.seeds, "seed")}',
    ),
  ]
  return _common.report(
    args,
    title='8-Gaussian ring GAN: AdaBelief vs. Adam',
    table=_common.table(rows),
    notes=notes(args, wall),
    findings='\n'.join(f'- {line}' for line in summary),
    plots=plots,
    wall_time_s=wall,
    summary=summary,
    results=results,
  )


if __name__ == '__main__':
  main()
