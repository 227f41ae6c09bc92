"""Is my eps right? Which layers take adaptive steps and which take momentum-SGD steps.

AdaBelief divides the momentum by ``sqrt(s_hat) + eps``, and ``eps_root``,
added to ``s`` every step, keeps ``s_hat`` above ``eps_root / (1 - b2)``. Where
these epsilons make up most of the denominator the step is momentum SGD with a
fixed step size (too large an eps: "it acts like SGD"); where the belief
``(g - m)^2`` does, the step is adaptive. This script trains the CNN of
``quickstart_tuned.py`` on the 8x8 digits with
``adabelief(..., eps=eps_root=E, track_stats=True)`` for each ``E`` of
``--eps`` and records, after every epoch, the fraction of each parameter's
elements where eps dominates (``adabelief_jax.belief_stats``), then writes
``results.md``, ``results.json`` and ``eps_dominated.png`` into ``--out``::

    python experiments/eps_check.py                     # ~1 min on 2 CPU cores
    python experiments/eps_check.py --eps 1e-4,1e-8,1e-12,1e-16 --seeds 3

The statistics come from the optimizer state after each step (computed inside
the jitted update); reading them costs one device-to-host copy of a few
scalars per logged step.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import _common
import numpy as np
import quickstart_tuned
from flax import nnx

import adabelief_jax

# What a reader should take from the figure, printed under the table.
FINDINGS = (
  'eps-dominated: the epsilons (eps, and the floor sqrt(eps_root / (1 - b2)) that eps_root adds '
  'to s_hat) make up at least half of the denominator, so the step there is momentum SGD with a '
  'fixed step size, not adaptive. A layer that drifts towards 1 as its gradients shrink is trained '
  'by SGD from then on: smaller eps and eps_root keep it adaptive, larger ones make it SGD-like.'
)


def train_one(
  eps: float, seed: int, data: quickstart_tuned.Data, args: argparse.Namespace, bar
) -> dict:
  """One run: per-epoch eps-dominated fraction of every parameter, and the final test accuracy."""
  (x_train, y_train), _, test = data
  rng = _common.seed_everything(seed)
  model = quickstart_tuned.CNN(rngs=nnx.Rngs(seed))
  tx = adabelief_jax.adabelief(args.lr, eps=eps, eps_root=eps, track_stats=True)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = nnx.cached_partial(quickstart_tuned.train_step, model, optimizer)
  steps = len(x_train) // args.batch_size
  fractions: dict[str, list[float]] = {}
  for _ in range(args.epochs):
    perm = rng.permutation(len(x_train))[: steps * args.batch_size]
    for batch in perm.reshape(steps, args.batch_size):
      step(x_train[batch], y_train[batch])
    stats = adabelief_jax.belief_stats(optimizer.opt_state)
    for key, value in stats.items():
      if key.endswith('/eps_dominated'):
        fractions.setdefault(key.removesuffix('/eps_dominated'), []).append(float(value))
    bar.set_postfix(_common.belief_postfix(optimizer.opt_state))
    bar.update()
  return {'fractions': fractions, 'test_acc': float(quickstart_tuned.accuracy(model, *test))}


def summarize(eps: float, runs: list[dict]) -> dict:
  """Seed-mean fractions per parameter at 10%, 50% and 100% of training."""
  layers = list(runs[0]['fractions'])
  curves = {name: np.array([r['fractions'][name] for r in runs]) for name in layers}
  epochs = next(iter(curves.values())).shape[1]
  marks = {'10%': max(epochs // 10, 1) - 1, '50%': epochs // 2 - 1, 'end': epochs - 1}
  rows = [
    {
      'eps = eps_root': f'{eps:g}',
      'parameter': name,
      **{f'eps-dominated at {m}': f'{curve[:, i].mean():.3f}' for m, i in marks.items()},
    }
    for name, curve in curves.items()
  ]
  acc_mean, acc_std = _common.mean_std(r['test_acc'] for r in runs)
  return {'eps': eps, 'rows': rows, 'curves': curves, 'test_acc': (acc_mean, acc_std)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _common.make_parser(
    __doc__, 'eps_check', ['adabelief'], seeds=2, epochs=40, batch_size=32
  )
  parser.add_argument(
    '--eps',
    type=_common.positive_floats,
    default=[1e-8, 1e-16],
    help='comma-separated eps values, each used as eps and eps_root (default: %(default)s)',
  )
  parser.add_argument(
    '--lr', type=float, default=3e-3, help='AdaBelief learning rate (default: %(default)s)'
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  data = quickstart_tuned.load_data()
  print(
    f'digits CNN, adabelief lr {args.lr:g}, eps in {args.eps}, '
    f'{_common.plural(args.epochs, "epoch")} x {_common.plural(args.seeds, "seed")}'
  )
  with _common.progress_bar(len(args.eps) * args.seeds * args.epochs, 'epoch', args) as bar:
    summaries = [
      summarize(eps, [train_one(eps, seed, data, args, bar) for seed in range(args.seeds)])
      for eps in args.eps
    ]
  plot = _common.plot_curves(
    os.path.join(args.out, 'eps_dominated.png'),
    [(f'eps-dominated fraction, eps={s["eps"]:g}', s['curves']) for s in summaries],
    title=f'Share of each parameter whose step is eps-dominated, mean over {args.seeds} seeds',
  )
  accuracy = ', '.join(
    f'eps {s["eps"]:g}: test acc {_common.format_mean_std(*s["test_acc"])}' for s in summaries
  )
  _common.report(
    args,
    title='Is my eps right? eps-dominated fraction per layer',
    table=_common.table([row for s in summaries for row in s['rows']]),
    notes=f'quickstart_tuned CNN on load_digits, adabelief lr {args.lr:g}, batch {args.batch_size}. '
    + accuracy,
    findings=FINDINGS,
    plots=[plot],
    results=[{k: v for k, v in s.items() if k != 'curves'} for s in summaries],
    curves={f'{s["eps"]:g}': s['curves'] for s in summaries},
  )
  return summaries


if __name__ == '__main__':
  main()
