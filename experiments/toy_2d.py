"""Toy 2-D problems: SGD, Adam and AdaBelief from the same start (paper, Fig. 3).

The AdaBelief paper illustrates its first claim -- it converges as fast as
Adam -- on five 2-D functions: three that separate the cases of its Fig. 1
(a large gradient with small curvature, where Adam steps too little, and a
large gradient with large curvature) and two classic test functions:

    |x| + |y|                   optimum (0, 0)
    |x + y| + |x - y| / 10      optimum (0, 0)
    (x + y)^2 + (x - y)^2 / 10  optimum (0, 0)
    Beale                       optimum (3, 0.5)
    Rosenbrock                  optimum (1, 1)

Each optimizer starts from the same point and runs ``--steps`` steps; a whole
trajectory is one ``jax.lax.scan``, vmapped over learning rates and starting
points, so the full run takes seconds. Two comparisons are reported:

* **shared lr** (the paper's setting): every optimizer uses ``--lr``;
* **tuned lr** (fair to each): every optimizer gets its best learning rate
  from the same grid ``--lrs`` (same budget: one run per grid point), the best
  being the one that reaches the tolerance from the most starts, then in the
  fewest (median) steps, then closest.

"Steps to reach" is the first step from which the Euclidean distance to the
optimum stays <= ``--tol`` (1e-3) until the end of the run (a trajectory that
passes close and leaves again has not reached it); the final distance is
reported too. Seed 0 is
the canonical start; seed k > 0 perturbs it by N(0, 0.25^2) per coordinate
(NumPy generator seeded with k), and the table gives medians over seeds::

    python experiments/toy_2d.py                       # a few seconds
    python experiments/toy_2d.py --steps 20000 --seeds 10 --lr 1e-2

Optimizers: SGD with momentum 0.9 (``optax.sgd``), Adam (``optax.adam``,
betas (0.9, 0.999), eps 1e-8) and AdaBelief (``adabelief_jax.adabelief``,
betas (0.9, 0.999), eps = eps_root = 1e-16, the library defaults). Writes
``results.md``, ``results.json``, ``trajectories.png`` (contour plots with the
three trajectories from the canonical start) and ``distance.png`` to --out.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import adabelief_jax

if TYPE_CHECKING:
  from matplotlib.axes import Axes

# A point (x, y): one array of shape (2,), or a pair of same-shape arrays (a grid).
Point = jax.Array | tuple[jax.Array, jax.Array]


class Problem(NamedTuple):
  """A 2-D test function with where to start, where its minimum is and what to plot."""

  label: str
  f: Callable[[Point], jax.Array]
  start: tuple[float, float]
  optimum: tuple[float, float]
  box: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax for plots.


def _abs(p: Point) -> jax.Array:
  x, y = p
  return jnp.abs(x) + jnp.abs(y)


def _abs_rotated(p: Point) -> jax.Array:
  x, y = p
  return jnp.abs(x + y) + jnp.abs(x - y) / 10


def _quadratic(p: Point) -> jax.Array:
  x, y = p
  return (x + y) ** 2 + (x - y) ** 2 / 10


def _beale(p: Point) -> jax.Array:
  x, y = p
  return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _rosenbrock(p: Point) -> jax.Array:
  x, y = p
  return (1 - x) ** 2 + 100 * (y - x**2) ** 2


PROBLEMS: dict[str, Problem] = {
  'abs': Problem('|x| + |y|', _abs, (-2.5, 1.0), (0.0, 0.0), (-3.0, 3.0, -3.0, 3.0)),
  'abs_rotated': Problem(
    '|x+y| + |x-y|/10', _abs_rotated, (2.5, 0.5), (0.0, 0.0), (-3.0, 3.0, -3.0, 3.0)
  ),
  'quadratic': Problem(
    '(x+y)^2 + (x-y)^2/10', _quadratic, (2.5, 0.5), (0.0, 0.0), (-3.0, 3.0, -3.0, 3.0)
  ),
  'beale': Problem('Beale', _beale, (1.0, 1.5), (3.0, 0.5), (-0.5, 4.0, -1.0, 2.5)),
  'rosenbrock': Problem('Rosenbrock', _rosenbrock, (-1.2, 1.0), (1.0, 1.0), (-2.0, 2.0, -1.0, 3.0)),
}

OPTIMIZERS: dict[str, Callable[[jax.Array], optax.GradientTransformation]] = {
  'sgd': lambda lr: optax.sgd(lr, momentum=0.9),
  'adam': lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8),
  'adabelief': lambda lr: adabelief_jax.adabelief(lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16),
}

COLORS = {'sgd': 'tab:green', 'adam': 'tab:blue', 'adabelief': 'tab:red'}
STYLES = {'sgd': '-', 'adam': '--', 'adabelief': '-'}
DEFAULT_LRS = '1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1,3e-1,1'


# ----------------------------------------------------------------------------
# Trajectories.


def trajectories(
  problem: Problem, optimizer: str, lrs: np.ndarray, starts: np.ndarray, steps: int
) -> np.ndarray:
  """Points visited, shape (len(lrs), len(starts), steps + 1, 2), float32.

  One ``lax.scan`` per trajectory, vmapped over starts and learning rates;
  the learning rate is a traced argument, so the grid compiles once.
  """
  make_tx = OPTIMIZERS[optimizer]
  grad = jax.grad(problem.f)

  def run(lr: jax.Array, p0: jax.Array) -> jax.Array:
    tx = make_tx(lr)

    def step(
      carry: tuple[jax.Array, optax.OptState], _: None
    ) -> tuple[tuple[jax.Array, optax.OptState], jax.Array]:
      p, state = carry
      updates, state = tx.update(grad(p), state, p)
      p = optax.apply_updates(p, updates)
      return (p, state), p

    _, path = jax.lax.scan(step, (p0, tx.init(p0)), None, length=steps)
    return jnp.concatenate([p0[None], path])

  batched = jax.jit(jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None)))
  return np.asarray(batched(jnp.asarray(lrs, jnp.float32), jnp.asarray(starts, jnp.float32)))


def distances(paths: np.ndarray, optimum: Sequence[float]) -> np.ndarray:
  """Euclidean distance to the optimum per point; inf where it diverged."""
  d = np.linalg.norm(paths.astype(np.float64) - np.asarray(optimum), axis=-1)
  return np.where(np.isfinite(d), d, np.inf)


def settle_step(dist: np.ndarray, tol: float) -> np.ndarray:
  """First step from which dist <= tol until the end (last axis); inf if none.

  Stricter than the first visit: a trajectory that passes near the optimum
  and leaves again does not count until it comes back for good.
  """
  ok = dist <= tol
  # stays[t]: ok at every step >= t.
  stays = np.flip(np.logical_and.accumulate(np.flip(ok, -1), axis=-1), -1)
  return np.where(stays[..., -1], stays.argmax(-1), np.inf)


def starts_for(problem: Problem, seeds: int) -> np.ndarray:
  """Seed 0: the canonical start; seed k: it plus N(0, 0.25^2) noise."""
  points = [np.asarray(problem.start, np.float64)]
  for seed in range(1, seeds):
    rng = np.random.default_rng(seed)
    points.append(points[0] + rng.normal(0.0, 0.25, size=2))
  return np.stack(points)


class Stats(NamedTuple):
  """How one learning rate did from every start."""

  lr: float
  steps: np.ndarray  # (seeds,) step from which within tol, inf if never.
  final: np.ndarray  # (seeds,) final distance (inf if diverged).

  @property
  def reached(self) -> int:
    return int(np.isfinite(self.steps).sum())

  def median_steps(self) -> float:
    return float(np.median(self.steps))

  def median_final(self) -> float:
    return float(np.median(self.final))

  def key(self) -> tuple[int, float, float]:
    """Sort key: most starts reached, then fewest steps, then closest."""
    return (-self.reached, self.median_steps(), self.median_final())

  def steps_text(self) -> str:
    n = len(self.steps)
    median = self.median_steps()
    text = f'{median:.0f}' if np.isfinite(median) else 'not reached'
    if n > 1 and self.reached < n:
      text += f' ({self.reached}/{n} reached)'
    return text

  def to_json(self) -> dict:
    return {
      'lr': self.lr,
      'steps': self.steps,
      'final_distance': self.final,
      'reached': self.reached,
      'median_steps': self.median_steps(),
      'median_final_distance': self.median_final(),
    }


# ----------------------------------------------------------------------------
# Experiment: every optimizer on every problem, over the learning-rate grid.


def compare(
  problem: Problem, opt: str, lrs: np.ndarray, starts: np.ndarray, args: argparse.Namespace
) -> dict:
  """``opt`` on ``problem`` from every start at every lr: stats at the shared and best lr.

  Also keeps the canonical start's paths at those two learning rates, and its
  distances at the best one, for the plots.
  """
  shared = int(np.argmin(np.abs(lrs - args.lr)))
  paths = trajectories(problem, opt, lrs, starts, args.steps)
  dist = distances(paths, problem.optimum)  # (lr, seed, t)
  hits = settle_step(dist, args.tol)  # (lr, seed)
  grid = [Stats(float(lr), hits[i], dist[i, :, -1]) for i, lr in enumerate(lrs)]
  best = min(range(len(lrs)), key=lambda i: grid[i].key())
  return {
    'shared': grid[shared],
    'tuned': grid[best],
    'grid': grid,
    'shared_path': paths[shared, 0],
    'tuned_path': paths[best, 0],
    'tuned_dist': dist[best, 0],
  }


def run_all(args: argparse.Namespace, lrs: np.ndarray, progress: tqdm) -> dict:
  """{problem: {'starts', 'optimizers': {optimizer: :func:`compare`'s entry}}}."""
  results: dict = {}
  for name in args.problems:
    problem = PROBLEMS[name]
    starts = starts_for(problem, args.seeds)
    results[name] = {'starts': starts, 'optimizers': {}}
    for opt in args.optimizers:
      progress.set_description(f'{name} {opt}')
      results[name]['optimizers'][opt] = compare(problem, opt, lrs, starts, args)
      progress.update()
  return results


# ----------------------------------------------------------------------------
# Report.


def results_table(results: dict, args: argparse.Namespace) -> str:
  rows = [
    {
      'function': PROBLEMS[name].label,
      'optimizer': opt,
      f'steps to {args.tol:g} (lr {args.lr:g})': r['shared'].steps_text(),
      f'final dist (lr {args.lr:g})': f'{r["shared"].median_final():.2g}',
      'best lr': f'{r["tuned"].lr:g}',
      'steps (best lr)': r['tuned'].steps_text(),
      'final dist (best lr)': f'{r["tuned"].median_final():.2g}',
    }
    for name, entry in results.items()
    for opt, r in entry['optimizers'].items()
  ]
  return _common.table(rows)


def summary_lines(results: dict, lr: float) -> list[str]:
  """On how many problems AdaBelief reaches the tolerance no later than Adam."""
  lines = []
  for which, text in (('shared', f'shared lr {lr:g}'), ('tuned', 'tuned lr')):
    pairs = [
      (entry['optimizers']['adabelief'][which], entry['optimizers']['adam'][which])
      for entry in results.values()
      if {'adabelief', 'adam'} <= entry['optimizers'].keys()
    ]
    if pairs:
      wins = sum(ours.key()[:2] <= adam.key()[:2] for ours, adam in pairs)
      lines.append(
        f'AdaBelief reaches the tolerance from at least as many starts and '
        f'no later (median) than Adam on {wins}/{len(pairs)} functions ({text}).'
      )
  return lines


def notes(args: argparse.Namespace, lrs: np.ndarray, wall: float) -> str:
  """How the table was made, for results.md."""
  seeds_text = (
    f'medians over {args.seeds} starts (seed 0 canonical, others perturbed by N(0, 0.25^2))'
    if args.seeds > 1
    else 'the canonical start'
  )
  return (
    f'{_common.plural(args.steps, "step")} per run; steps = first step from which the '
    f'iterate stays within {args.tol:g} (Euclidean) of the optimum until the '
    f'end of the run, {seeds_text}. "lr {args.lr:g}" is the '
    'shared learning rate of the paper-style comparison; "best lr" is each '
    f"optimizer's best of the same grid {[float(v) for v in lrs]} (most "
    'starts reached, then fewest steps, then final distance). SGD: momentum '
    '0.9; Adam: eps 1e-8; AdaBelief: eps = eps_root = 1e-16; betas (0.9, '
    f'0.999) for both. Wall time {wall:.1f} s.'
  )


def to_json(results: dict) -> dict:
  """The results without the plots' paths: stats at the shared, best and every lr."""
  return {
    name: {
      'function': PROBLEMS[name].label,
      'optimum': PROBLEMS[name].optimum,
      'starts': entry['starts'],
      'optimizers': {
        opt: {
          'shared': r['shared'].to_json(),
          'tuned': r['tuned'].to_json(),
          'grid': [s.to_json() for s in r['grid']],
        }
        for opt, r in entry['optimizers'].items()
      },
    }
    for name, entry in results.items()
  }


# ----------------------------------------------------------------------------
# Plots.


def _contour(ax: Axes, problem: Problem) -> None:
  """The function's log-scaled level sets over its box, and a star at the optimum."""
  x0, x1, y0, y1 = problem.box
  xs, ys = np.meshgrid(np.linspace(x0, x1, 241), np.linspace(y0, y1, 241))
  z = np.asarray(problem.f((jnp.asarray(xs), jnp.asarray(ys))), np.float64)
  z = np.log10(z - float(problem.f(jnp.asarray(problem.optimum))) + 1e-3)
  ax.contourf(xs, ys, z, levels=30, cmap='Greys', alpha=0.55)
  ax.contour(xs, ys, z, levels=15, colors='grey', linewidths=0.4, alpha=0.6)
  ax.plot(
    *problem.optimum, marker='*', color='gold', markersize=13, markeredgecolor='black', zorder=5
  )
  ax.set_xlim(x0, x1)
  ax.set_ylim(y0, y1)
  ax.set_aspect('equal', adjustable='box')


def _draw_path(ax: Axes, opt: str, stats: Stats, path_xy: np.ndarray) -> None:
  """One trajectory, with markers after 100 and 1000 steps to show its speed."""
  color = COLORS.get(opt)
  ax.plot(
    path_xy[:, 0],
    path_xy[:, 1],
    color=color,
    lw=1.2,
    ls=STYLES.get(opt, '-'),
    label=f'{opt} (lr {stats.lr:g})',
    alpha=0.9,
  )
  for t, marker in ((100, 'o'), (1000, 'X')):
    if t < len(path_xy):
      ax.plot(
        *path_xy[t],
        marker=marker,
        ms=5,
        color=color,
        markeredgecolor='black',
        markeredgewidth=0.4,
        zorder=4,
      )


def plot_trajectories(path: str, results: dict, steps: int) -> str:
  """Contours with each optimizer's path: shared lr on top, best lr below."""
  names = list(results)
  fig = _common.figure(
    3.1 * len(names),
    6.4,
    f'{_common.plural(steps, "step")} from the same start (black square); star: '
    'optimum; o / X: position after 100 / 1000 steps',
  )
  axes = fig.subplots(2, len(names), squeeze=False)
  for col, name in enumerate(names):
    problem = PROBLEMS[name]
    for row, which in enumerate(('shared', 'tuned')):
      ax = axes[row, col]
      _contour(ax, problem)
      for opt, entry in results[name]['optimizers'].items():
        _draw_path(ax, opt, entry[which], entry[f'{which}_path'])
      ax.plot(*problem.start, marker='s', ms=5, color='black')
      ax.legend(fontsize=6.5, loc='best', framealpha=0.8)
      if row == 0:
        ax.set_title(problem.label, fontsize=10)
      ax.tick_params(labelsize=7)
  axes[0, 0].set_ylabel('shared lr', fontsize=10)
  axes[1, 0].set_ylabel('tuned lr (best of grid)', fontsize=10)
  return _common.save_figure(fig, path, dpi=80)


def plot_distances(path: str, results: dict, tol: float) -> str:
  """Distance to the optimum against steps (log-log) at each optimizer's best lr."""
  names = list(results)
  fig = _common.figure(
    3.1 * len(names),
    2.9,
    'Tuned lr, canonical start; dotted: tolerance; distances below 1e-8 drawn at 1e-8',
  )
  axes = fig.subplots(1, len(names), squeeze=False)[0]
  for ax, name in zip(axes, names):
    for opt, entry in results[name]['optimizers'].items():
      d = entry['tuned_dist']
      ax.plot(
        np.arange(1, len(d) + 1),
        np.maximum(d, 1e-8),
        color=COLORS.get(opt),
        lw=1.0,
        ls=STYLES.get(opt, '-'),
        label=f'{opt} (lr {entry["tuned"].lr:g})',
      )
    ax.axhline(tol, color='black', ls=':', lw=0.8)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_ylim(1e-8, None)
    ax.set_title(PROBLEMS[name].label, fontsize=10)
    ax.set_xlabel('step + 1', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6.5)
  axes[0].set_ylabel('distance to optimum', fontsize=8)
  return _common.save_figure(fig, path, dpi=80)


# ----------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _common.make_parser(
    __doc__,
    'toy_2d',
    OPTIMIZERS,
    seeds=5,
    seeds_help='starting points per problem: seed 0 is the canonical start, others perturb it',
  )
  _common.add_positive_ints(parser, [('--steps', 10000, 'optimizer steps per trajectory')])
  parser.add_argument(
    '--lr', type=float, default=1e-3, help='the shared learning rate (default: %(default)s)'
  )
  parser.add_argument(
    '--lrs',
    type=_common.positive_floats,
    default=DEFAULT_LRS,
    help='learning-rate grid for the tuned comparison (default: %(default)s)',
  )
  parser.add_argument(
    '--tol',
    type=float,
    default=1e-3,
    help='distance to the optimum that counts as reached (default: %(default)s)',
  )
  parser.add_argument(
    '--problems',
    type=_common.comma_list(PROBLEMS),
    default=list(PROBLEMS),
    help='comma-separated subset of: ' + ','.join(PROBLEMS) + ' (default: all)',
  )
  args = parser.parse_args(argv)
  if args.lr <= 0 or args.tol <= 0:
    raise SystemExit('--lr and --tol must be > 0')
  args.lrs = sorted(set(args.lrs) | {args.lr})  # The shared lr is a grid point too.
  return args


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  lrs = np.asarray(args.lrs, np.float64)
  print(
    f'toy 2-D: {_common.plural(len(args.problems), "problem")} x '
    f'{_common.plural(len(args.optimizers), "optimizer")} x '
    f'{_common.plural(len(lrs), "learning rate")} x {_common.plural(args.seeds, "start")}, '
    f'{_common.plural(args.steps, "step")}, tolerance {args.tol:g}'
  )
  total = len(args.problems) * len(args.optimizers)
  results, wall = _common.run_timed(
    total, 'run', args, lambda progress: run_all(args, lrs, progress)
  )

  summary = summary_lines(results, args.lr)
  plots = [
    plot_trajectories(os.path.join(args.out, 'trajectories.png'), results, args.steps),
    plot_distances(os.path.join(args.out, 'distance.png'), results, args.tol),
  ]
  return _common.report(
    args,
    title='Toy 2-D problems: SGD vs. Adam vs. AdaBelief',
    table=results_table(results, args),
    notes=notes(args, lrs, wall),
    findings='\n'.join(summary),
    plots=plots,
    wall_time_s=wall,
    summary=summary,
    results=to_json(results),
  )


if __name__ == '__main__':
  main()
