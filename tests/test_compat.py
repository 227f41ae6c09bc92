"""Parity of adabelief_jax.compat.adabelief_pytorch with adabelief_pytorch.AdaBelief 0.2.1.

Both optimizers start from the same float32 parameters and see the same
gradients; the parameters must agree to TOL after every step, and must have
moved by far more than TOL. To keep the file fast, each JAX program runs all
its configurations at once: one ``lax.scan`` over the steps, the boolean flags
unrolled inside it (they change the program) and, on the full grid,
``weight_decay``/``eps`` as traced, vmapped arguments.

The worst difference seen is printed (``pytest -s``). Most of it is the
reference's own float32 rounding: with decoupled decay it multiplies by
float32(1 - lr * wd), 1.7e-8 relative below the exact factor, every step.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
  'torch', reason='the parity tests run the PyTorch reference: torch is not installed'
)
adabelief_pytorch = pytest.importorskip(
  'adabelief_pytorch',
  reason='the parity tests need the reference adabelief_pytorch (0.2.1) installed',
)

from adabelief_jax import compat  # noqa: E402

TOL = 2e-5  # max |param_jax - param_torch| allowed after any step
STEPS = 150
LR = 1e-2
FLAG_NAMES = ('amsgrad', 'weight_decouple', 'fixed_decay', 'rectify', 'degenerated_to_sgd')
FLAG_GRID = [dict(zip(FLAG_NAMES, v)) for v in itertools.product([False, True], repeat=5)]
# (weight_decay, eps), vmapped inside each JAX program.
HYPER_GRID = list(itertools.product([0.0, 1e-2], [1e-16, 1e-8]))
# Gradient scale per leaf: the 1e-4 leaf's s is dominated by the eps=1e-8 added
# to it every step, so eps changes its steps; the kernel's is not.
GRAD_SCALES = {'kernel': 1.0, 'bias': 1e-2, 'scale': 1e-4}


def _params():
  rng = np.random.default_rng(0)
  return {
    'kernel': jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
    'bias': jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    'scale': jnp.asarray(rng.normal(), jnp.float32),
  }


def _grads(params, steps, seed=1):
  """Per-step gradients (leading axis = step): drifting mean plus noise.

  Their size shrinks 20-fold over the first ~60 steps, as in a training run,
  so that s falls below its running maximum and AMSGrad changes the steps.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for name in params:
    shape = np.shape(params[name])
    drift = rng.normal(size=shape)
    noise = rng.normal(size=(steps,) + shape)
    t = np.arange(steps).reshape((steps,) + (1,) * len(shape))
    size = GRAD_SCALES[name] * (1 + 19 * np.exp(-t / 20))
    out[name] = (size * (drift * np.cos(t / 10) + noise)).astype(np.float32)
  return out


def _config_id(flags, **hyper):
  on = [k for k, v in flags.items() if v] or ['none']
  return '+'.join(on) + ''.join(f' {k}={v:g}' for k, v in hyper.items())


# ----------------------------------------------------------------------------
# The two sides.


def _reference(params, steps, set_grads, lr_lambda=None, wd_at=None, **kwargs):
  """adabelief_pytorch.AdaBelief's parameters after each step, per leaf (numpy)."""
  names = list(params)
  ps = [torch.tensor(np.array(params[n]), requires_grad=True) for n in names]
  with contextlib.redirect_stdout(io.StringIO()):
    opt = adabelief_pytorch.AdaBelief(ps, print_change_log=False, **kwargs)
  sched = None
  if lr_lambda is not None:
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
  out = [np.empty((steps,) + tuple(p.shape), np.float32) for p in ps]
  for k in range(steps):
    if wd_at is not None:
      for group in opt.param_groups:
        group['weight_decay'] = wd_at(k)
    set_grads(k, ps)
    opt.step()
    if sched is not None:
      sched.step()
    for o, p in zip(out, ps):
      o[k] = p.detach().numpy()
  return dict(zip(names, out))


def _fixed_grads(grads):
  """set_grads for the reference: a fresh copy each step (it adds L2 decay in place)."""
  tensors = [torch.from_numpy(grads[n]) for n in grads]

  def set_grads(k, ps):
    for p, g in zip(ps, tensors):
      p.grad = g[k].clone()

  return set_grads


def _scan_all(txs, params, steps, grad_at, xs=None):
  """Parameters after each step for every tx in `txs`, all in one lax.scan."""
  # The boolean flags change the program, so each tx is traced separately; one
  # scan (and one compilation) for all of them is much faster than one each.

  def step(carry, x):
    new = []
    for tx, (p, s) in zip(txs, carry):
      updates, s = tx.update(grad_at(p, x), s, p)
      new.append((optax.apply_updates(p, updates), s))
    return new, [p for p, _ in new]

  init = [(params, tx.init(params)) for tx in txs]
  return jax.lax.scan(step, init, xs, length=steps)[1]


def _max_diff_per_step(got, want):
  """max over leaves and elements of |got - want|, one value per step."""
  return np.max(
    np.stack(
      [
        np.abs(np.asarray(got[n], np.float64) - want[n]).reshape(want[n].shape[0], -1).max(1)
        for n in want
      ]
    ),
    axis=0,
  )


def _moved(traj, params):
  return max(float(np.max(np.abs(traj[n][-1] - np.asarray(params[n])))) for n in params)


def _check(results, label):
  """Asserts every (config -> (got, want)) pair within TOL at every step; prints the worst."""
  failures = []
  worst = (-1.0, None, None)
  for cid, (got, want, params) in results.items():
    diff = _max_diff_per_step(got, want)
    k = int(np.argmax(diff))
    if diff[k] > worst[0]:
      worst = (float(diff[k]), cid, k + 1)
    bad = np.flatnonzero(~(diff < TOL))
    if bad.size:
      failures.append(
        f'{cid}: first bad step {bad[0] + 1} (diff {diff[bad[0]]:.3g}), '
        f'worst {diff.max():.3g} at step {k + 1}'
      )
    moved = min(_moved(got, params), _moved(want, params))
    if not moved > 1000 * TOL:
      failures.append(f'{cid}: parameters moved only {moved:.3g}; the comparison is vacuous')
  print(
    f'\n[{label}] worst |param_jax - param_torch| over {len(results)} configs x '
    f'every step: {worst[0]:.3g} ({worst[1]}, step {worst[2]}); tolerance {TOL:g}'
  )
  assert not failures, f'{len(failures)} of {len(results)} configs fail:\n' + '\n'.join(failures)
  return worst[0]


# ----------------------------------------------------------------------------
# Parity on the full flag x weight_decay x eps grid, gradients independent of params.


@jax.jit
def _jax_grid(params, grads, weight_decay, eps):
  def run(weight_decay, eps):
    txs = [
      compat.adabelief_pytorch(lr=LR, weight_decay=weight_decay, eps=eps, **flags)
      for flags in FLAG_GRID
    ]
    return _scan_all(txs, params, STEPS, lambda p, g: g, xs=grads)

  return jax.vmap(run)(weight_decay, eps)


@pytest.fixture(scope='module')
def grid_results():
  params = _params()
  grads = _grads(params, STEPS)
  wd, eps = (jnp.asarray(v, jnp.float32) for v in zip(*HYPER_GRID))
  got = jax.device_get(_jax_grid(params, grads, wd, eps))
  results = {}
  for flags, got_flags in zip(FLAG_GRID, got):
    for i, (weight_decay, e) in enumerate(HYPER_GRID):
      want = _reference(
        params, STEPS, _fixed_grads(grads), lr=LR, weight_decay=weight_decay, eps=e, **flags
      )
      cid = _config_id(flags, weight_decay=weight_decay, eps=e)
      results[cid] = ({n: v[i] for n, v in got_flags.items()}, want, params)
  return results


def test_parity_full_grid_random_grads(grid_results):
  assert len(grid_results) == 128
  _check(grid_results, 'grid, random grads, lr=1e-2')


def test_grid_distinguishes_hyperparameters(grid_results):
  """eps and weight_decay change the reference's trajectory by far more than TOL, so
  a compat that mishandled them would fail the parity test."""
  smallest = math.inf
  for flags in FLAG_GRID:

    def final(weight_decay, eps, flags=flags):
      want = grid_results[_config_id(flags, weight_decay=weight_decay, eps=eps)][1]
      return np.concatenate([v[-1].ravel() for v in want.values()])

    pairs = [((wd, 1e-16), (wd, 1e-8)) for wd in (0.0, 1e-2)]
    pairs += [((0.0, e), (1e-2, e)) for e in (1e-16, 1e-8)]
    for a, b in pairs:
      change = float(np.max(np.abs(final(*a) - final(*b))))
      assert change > 10 * TOL, (flags, a, b, change)
      smallest = min(smallest, change)
  print(f'\n[grid] smallest effect of changing eps or weight_decay: {smallest:.3g}')


# ----------------------------------------------------------------------------
# Parity when the gradients depend on the parameters (each framework differentiates).


def _loss_terms(p, xp):
  """Least squares on the kernel, Rosenbrock on the bias, a double well on the scale."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(16, 7)).astype(np.float32)
  y = rng.normal(size=(16, 5)).astype(np.float32)
  if xp is torch:
    x, y = torch.from_numpy(x), torch.from_numpy(y)
  w, b, s = p['kernel'], p['bias'], p['scale']
  fit = ((x @ w + b - y) ** 2).sum() / 16
  rosen = (100 * (b[1:] - b[:-1] ** 2) ** 2 + (1 - b[:-1]) ** 2).sum()
  return fit + 1e-2 * rosen + (s * s - 1) ** 2


# One configuration per distinct code path (decay mode x rectify/SGD/AMSGrad),
# with Python-float hyperparameters (the user's path) and lr at its default.
_CLOSED_LOOP = [
  dict(),  # all defaults
  dict(rectify=True, degenerated_to_sgd=False, amsgrad=True, weight_decay=1e-2, eps=1e-8),
  dict(rectify=True, fixed_decay=True, weight_decay=1e-2),
  dict(rectify=True, weight_decouple=False, weight_decay=1e-2, eps=1e-8),
  dict(rectify=False, weight_decay=1e-2),
  dict(rectify=False, amsgrad=True, fixed_decay=True, weight_decay=1e-2, eps=1e-8),
  dict(rectify=False, amsgrad=True, weight_decouple=False, weight_decay=1e-2),
  dict(rectify=False, weight_decouple=False, degenerated_to_sgd=False, weight_decay=1e-2, eps=1e-8),
]


@jax.jit
def _jax_closed_loop(params):
  txs = [compat.adabelief_pytorch(**cfg) for cfg in _CLOSED_LOOP]
  grad = jax.grad(lambda p: _loss_terms(p, jnp))
  return _scan_all(txs, params, STEPS, lambda p, _: grad(p))


def test_parity_grads_depend_on_params():
  params = _params()
  got = jax.device_get(_jax_closed_loop(params))

  def set_grads(k, ps):
    for p in ps:
      p.grad = None
    _loss_terms(dict(zip(params, ps)), torch).backward()

  results = {}
  for cfg, got_cfg in zip(_CLOSED_LOOP, got):
    cid = ', '.join(f'{k}={v}' for k, v in cfg.items()) or 'defaults'
    results[cid] = (got_cfg, _reference(params, STEPS, set_grads, **cfg), params)
  _check(results, 'closed loop, grads of a loss, default lr=1e-3')


# ----------------------------------------------------------------------------
# Non-default betas, and an eps large enough that where it is added shows.


@functools.partial(jax.jit, static_argnums=0)
def _jax_fixed_grads(configs, params, grads):
  """`configs`: a tuple of compat.adabelief_pytorch kwargs, as tuples of items."""
  txs = [compat.adabelief_pytorch(**dict(cfg)) for cfg in configs]
  steps = next(iter(grads.values())).shape[0]
  return _scan_all(txs, params, steps, lambda p, g: g, xs=grads)


def _parity_fixed_grads(configs, steps, seed, label):
  params = _params()
  grads = _grads(params, steps, seed=seed)
  got = jax.device_get(
    _jax_fixed_grads(tuple(tuple(cfg.items()) for cfg in configs), params, grads)
  )
  results = {}
  for cfg, got_cfg in zip(configs, got):
    want = _reference(params, steps, _fixed_grads(grads), **cfg)
    results[', '.join(f'{k}={v}' for k, v in cfg.items())] = (got_cfg, want, params)
  return _check(results, label)


# Where eps goes on rectified steps, sqrt(s) + eps rather than the bias-corrected
# sqrt(s) + eps sqrt(1 - b2^t), only shows when eps is not small next to sqrt(s),
# which is at least sqrt(t eps) as eps is also added to s every step: with eps of
# 1e-8 or 1e-3 the two differ by less than TOL here, with 0.1 by 20 TOL.
OTHER_HYPER = [
  dict(lr=LR, eps=0.1),
  dict(lr=LR, eps=0.1, amsgrad=True, weight_decay=1e-2),
  dict(lr=LR, eps=0.1, rectify=False),
  dict(lr=LR, eps=0.1, rectify=False, amsgrad=True),
  dict(lr=LR, betas=(0.8, 0.99), weight_decay=1e-2),
  dict(
    lr=LR,
    betas=(0.8, 0.99),
    rectify=False,
    amsgrad=True,
    weight_decouple=False,
    weight_decay=1e-2,
    eps=1e-8,
  ),
  dict(lr=LR, betas=(0.5, 0.9), degenerated_to_sgd=False, fixed_decay=True, weight_decay=1e-2),
]


def test_parity_other_betas_and_large_eps():
  _parity_fixed_grads(OTHER_HYPER, STEPS, 4, 'other betas, eps=0.1')


# PyTorch takes betas as any pair it can index: so does compat, traced ones included.
BETAS = {
  'numpy': np.array([0.8, 0.99]),
  'jax-float32': jnp.asarray([0.8, 0.99]),
  'torch': torch.tensor([0.8, 0.99], dtype=torch.float64),
}


def test_parity_with_betas_as_any_pair_of_reals():
  """Each form of betas gives the reference's parameters with the same two numbers
  (the arrays were refused: 'betas must be a pair'), also traced through
  optax.inject_hyperparams."""
  steps, params = 30, _params()
  grads = _grads(params, steps, seed=5)
  txs = [compat.adabelief_pytorch(lr=LR, betas=betas) for betas in BETAS.values()]
  txs.append(optax.inject_hyperparams(compat.adabelief_pytorch)(lr=LR, betas=BETAS['numpy']))
  got = jax.device_get(
    jax.jit(lambda p, g: _scan_all(txs, p, steps, lambda p, g: g, xs=g))(params, grads)
  )
  results = {}
  for (name, betas), got_betas in zip([*BETAS.items(), ('injected', BETAS['numpy'])], got):
    pair = tuple(float(b) for b in betas)  # As the reference reads them.
    want = _reference(params, steps, _fixed_grads(grads), lr=LR, betas=pair)
    results[name] = (got_betas, want, params)
  _check(results, 'betas as arrays')


# ----------------------------------------------------------------------------
# Schedules: torch LambdaLR (and group['weight_decay'] set every step) vs optax schedules.

SCHEDULE_STEPS = 50
SCHEDULE_GRID = [
  dict(weight_decouple=wdc, fixed_decay=fd, rectify=r)
  for (wdc, fd) in [(True, False), (True, True), (False, False)]
  for r in (True, False)
]


def _lr_factor(k, xp):
  """Linear warm-up over 10 steps, then cosine decay to 0 at step 50."""
  return xp.minimum(1.0, (k + 1) / 10) * 0.5 * (1 + xp.cos(math.pi * k / SCHEDULE_STEPS))


def _wd_at(k):
  return 1e-2 * (1 + k / SCHEDULE_STEPS)


@jax.jit
def _jax_scheduled(params, grads):
  lr = lambda count: LR * _lr_factor(count, jnp)
  txs = [compat.adabelief_pytorch(lr=lr, weight_decay=_wd_at, **cfg) for cfg in SCHEDULE_GRID]
  return _scan_all(txs, params, SCHEDULE_STEPS, lambda p, g: g, xs=grads)


def test_parity_with_lr_and_weight_decay_schedules():
  params = _params()
  grads = _grads(params, SCHEDULE_STEPS, seed=3)
  got = jax.device_get(_jax_scheduled(params, grads))
  results = {}
  for cfg, got_cfg in zip(SCHEDULE_GRID, got):
    want = _reference(
      params,
      SCHEDULE_STEPS,
      _fixed_grads(grads),
      lr=LR,
      lr_lambda=lambda k: float(_lr_factor(k, np)),
      wd_at=_wd_at,
      **cfg,
    )
    results[_config_id(cfg)] = (got_cfg, want, params)
  _check(results, 'LambdaLR + weight-decay schedule')


# ----------------------------------------------------------------------------
# Signature and argument checking.


def test_defaults_match_reference_constructor():
  ours = inspect.signature(compat.adabelief_pytorch).parameters
  theirs = inspect.signature(adabelief_pytorch.AdaBelief).parameters
  # Same arguments in the same order (positional calls carry over), minus the
  # reference's params and its banner switch.
  assert list(ours) == [n for n in theirs if n not in ('params', 'print_change_log')]
  for name in ours:
    assert ours[name].default == theirs[name].default, name
    # The reference's weight_decay default is the int 0; ours is 0.0.
    assert type(ours[name].default) is type(theirs[name].default) or name == 'weight_decay'


@pytest.mark.parametrize(
  'kwargs,needles,reference_raises',
  [
    (dict(betas=(1.0, 0.999)), ['betas[0]', '1.0'], True),
    (dict(betas=(-0.1, 0.999)), ['betas[0]', '-0.1'], True),
    (dict(betas=(0.9, 1.0)), ['betas[1]', '1.0'], True),
    (dict(lr=-1), ['lr', '-1'], True),
    (dict(eps=-1e-8), ['eps', '-1e-08'], True),
    # The reference does not check weight_decay; compat does.
    (dict(weight_decay=-0.1), ['weight_decay', '-0.1'], False),
    # Not a pair: refused by name (the reference fails at its first step, or indexes a string).
    (dict(betas=np.array([0.9, 0.999, 0.5])), ['betas', '0.5'], False),
    (dict(betas=(0.9,)), ['betas', '(0.9,)'], False),
    (dict(betas=None), ['betas', 'None'], False),
    (dict(betas=np.array([[0.9], [0.999]])), ['betas[0]', '0.9'], False),
  ],
  ids=[
    'beta1=1',
    'beta1<0',
    'beta2=1',
    'lr<0',
    'eps<0',
    'weight_decay<0',
    'betas-of-3',
    'betas-of-1',
    'betas-None',
    'betas-2x1',
  ],
)
def test_invalid_arguments_raise_naming_them(kwargs, needles, reference_raises):
  with pytest.raises(ValueError) as info:
    compat.adabelief_pytorch(**kwargs)
  for needle in needles:
    assert needle in str(info.value), (needle, str(info.value))
  if reference_raises:
    with pytest.raises(ValueError), contextlib.redirect_stdout(io.StringIO()):
      adabelief_pytorch.AdaBelief([torch.zeros(1)], print_change_log=False, **kwargs)
