"""The candidates: named optimizer steps to time, and the runners that take them.

A JAX candidate is ``jax.jit(step, donate_argnums=(0, 1))`` with
``step(params, state, grads) = update + optax.apply_updates``; a PyTorch one is
``optimizer.step()`` with each ``param.grad`` set once. The *floor* is a
jitted copy-like kernel with the byte model of an AdaBelief step, so its time
is what the memory bus allows.

To benchmark another adabelief_jax variant, add one ``_adabelief(name, label,
**kwargs)`` line to :data:`CANDIDATES`; the kwargs go to
``adabelief_jax.adabelief``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adabelief_jax
from benchmarks._trees import Problem, PyTree, nbytes, step_bytes

LR = 1e-3
WEIGHT_DECAY = 1e-4
BF16 = jnp.dtype(jnp.bfloat16)
INT8 = jnp.dtype(jnp.int8)

Family = Literal['adabelief_jax', 'optax', 'torch', 'floor']
MakeTx = Callable[[jnp.dtype | None], optax.GradientTransformation]


class Runner(Protocol):
  """One set-up candidate: ``step()`` runs and finishes one optimizer step."""

  state_bytes: int  # Bytes of the per-parameter state it allocated.
  bytes_per_step: int  # Its byte model: the least traffic of one step.

  def step(self) -> None: ...


def make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  """The timed function: update + apply_updates, params and state donated."""

  def step(params: PyTree, state: PyTree, grads: PyTree) -> tuple[PyTree, PyTree]:
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


class JaxRunner:
  """``fn(params, state, grads) -> (params, state)``, jitted with params and state donated."""

  def __init__(
    self, problem: Problem, init: Callable[[PyTree], PyTree], fn: Callable[..., Any]
  ) -> None:
    self.grads = problem.grads
    self.params = problem.fresh_params()
    self.state = init(self.params)
    self.fn = fn
    self.state_bytes = nbytes(self.state)
    self.bytes_per_step = step_bytes(problem.param_bytes, nbytes(problem.grads), self.state_bytes)
    self.step()  # Compiles.

  def step(self) -> None:
    self.params, self.state = self.fn(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))


def jax_runner(tx: optax.GradientTransformation, problem: Problem) -> JaxRunner:
  """The donated ``update + apply_updates`` step of ``tx``, from ``tx.init``'s state."""
  return JaxRunner(problem, tx.init, make_step(tx))


def _floor_state_dtype(problem: Problem) -> jnp.dtype:
  """The floor's m and s dtype: --state-dtype, else AdaBelief's default for the params."""
  return problem.state_dtype or jnp.promote_types(problem.dtype, jnp.float32)


def _touch(params: PyTree, state: tuple[PyTree, PyTree], grads: PyTree) -> tuple[PyTree, ...]:
  """(p + g, (m + g, s + g)): every byte an AdaBelief step moves, and no arithmetic to speak of."""
  plus_g = lambda tree: jax.tree.map(lambda x, g: (x + g).astype(x.dtype), tree, grads)
  m, s = state
  return plus_g(params), (plus_g(m), plus_g(s))


def floor_runner(problem: Problem) -> JaxRunner:
  """A jitted copy-like kernel with the traffic of one AdaBelief step.

  ``(p, m, s, g) -> (p + g, m + g, s + g)`` with p, m, s donated: 28 bytes per
  float32 parameter by the byte model (20 with bfloat16 m and s). XLA:CPU has
  no multi-output fusion, so it runs three loops that each read g (36 bytes
  of real traffic per float32 parameter); :class:`CopyRunner` is the
  one-stream bound.
  """
  zeros = lambda p: jnp.zeros(p.shape, _floor_state_dtype(problem))
  init = lambda params: (jax.tree.map(zeros, params), jax.tree.map(zeros, params))
  return JaxRunner(problem, init, jax.jit(_touch, donate_argnums=(0, 1)))


class CopyRunner:
  """``x -> x + 1`` (donated) on one float32 array of the floor's bytes.

  One read and one write stream of exactly the floor's byte model (28 bytes
  per float32 parameter): the step time the measured copy rate allows.
  """

  state_bytes = 0

  def __init__(self, problem: Problem) -> None:
    itemsize = _floor_state_dtype(problem).itemsize
    model = step_bytes(problem.param_bytes, nbytes(problem.grads), 2 * problem.n_params * itemsize)
    self.x = jnp.zeros(-(-model // 8), jnp.float32)
    self.fn = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    self.bytes_per_step = 8 * self.x.size
    self.step()

  def step(self) -> None:
    self.x = self.fn(self.x)
    self.x.block_until_ready()


def import_torch(threads: int | None = None) -> ModuleType | None:
  """torch, or None if absent; sets its intra-op threads when given.

  The benchmarks pass ``os.cpu_count()`` by default. On a machine that other
  jobs share, OpenMP barriers wait for descheduled threads, and a multi-thread
  ``optimizer.step()`` can take a thousand times its single-thread time;
  ``--torch-threads 1`` is the fair setting there.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if threads is not None:
    torch.set_num_threads(max(1, threads))
  return torch


class TorchRunner:
  """``optimizer.step()`` on torch copies of the problem's params, each ``.grad`` set once."""

  def __init__(self, make_optimizer: Callable[[list[Any]], Any], problem: Problem) -> None:
    torch = import_torch()
    if torch is None:
      raise RuntimeError('torch is not installed')
    tdtype = getattr(torch, problem.dtype.name)
    tensor = lambda x: torch.from_numpy(np.array(x, np.float32)).to(tdtype)
    self.params = []
    for p, g in zip(jax.tree.leaves(problem.params), jax.tree.leaves(problem.grads)):
      param = torch.nn.Parameter(tensor(p))
      param.grad = tensor(g)  # Its own copy: some optimizers write into it.
      self.params.append(param)
    self.optimizer = make_optimizer(self.params)
    self.step()  # Creates the state.
    self.state_bytes = sum(
      v.numel() * v.element_size()
      for p in self.params
      for v in self.optimizer.state[p].values()
      if torch.is_tensor(v) and v.shape == p.shape
    )
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in self.params)
    self.bytes_per_step = step_bytes(problem.param_bytes, grad_bytes, self.state_bytes)

  def step(self) -> None:
    self.optimizer.step()  # Synchronous on CPU.


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A named optimizer step to benchmark.

  ``make_tx(state_dtype)`` (JAX optimizers only: the memory benchmark compiles
  it without running it) returns the optax transformation; ``state_dtype`` is
  None for each optimizer's default and is ignored unless
  ``state_dtype_applies``.
  """

  name: str
  label: str
  family: Family
  build: Callable[[Problem], Runner]
  state_dtype_applies: bool = False
  make_tx: MakeTx | None = None


def _jax(
  name: str, label: str, family: Family, make_tx: MakeTx, state_dtype_applies: bool = True
) -> Candidate:
  """A candidate that times ``make_tx(--state-dtype)`` and lends it to the memory benchmark."""
  build = lambda problem: jax_runner(make_tx(problem.state_dtype), problem)
  return Candidate(name, label, family, build, state_dtype_applies, make_tx)


def _adabelief(name: str, label: str, **kwargs: Any) -> Candidate:
  """``adabelief_jax.adabelief(LR, **kwargs)``; ``--state-dtype`` sets the dtypes kwargs leave open."""
  make_tx = lambda sd: adabelief_jax.adabelief(LR, **{'mu_dtype': sd, 'nu_dtype': sd, **kwargs})
  fixed = {'mu_dtype', 'nu_dtype'} <= kwargs.keys()
  return _jax(name, label, 'adabelief_jax', make_tx, state_dtype_applies=not fixed)


def _torch(name: str, label: str, make_optimizer: Callable[[list[Any]], Any]) -> Candidate:
  """A candidate that times ``make_optimizer(params).step()``; skipped where it cannot run."""
  return Candidate(name, label, 'torch', lambda problem: TorchRunner(make_optimizer, problem))


def _torch_adabelief(**kwargs: Any) -> Callable[[list[Any]], Any]:
  """adabelief-pytorch's ``AdaBelief(params, lr=LR, **kwargs)``, quietly."""

  def make(params: list[Any]) -> Any:
    from adabelief_pytorch import AdaBelief  # pylint: disable=g-import-not-at-top

    # It prints its settings even with print_change_log=False.
    with contextlib.redirect_stdout(io.StringIO()):
      return AdaBelief(params, lr=LR, print_change_log=False, **kwargs)

  return make


def _torch_adam(params: list[Any]) -> Any:
  """torch's fastest Adam on CPU: the reference point of PyTorch step times."""
  return import_torch().optim.Adam(params, lr=LR, fused=True)


CANDIDATES: dict[str, Candidate] = {
  c.name: c
  for c in [
    _adabelief('adabelief', 'adabelief_jax'),
    # With --dtype bfloat16 and the default float32 state, the two differ by the
    # stochastic rounding of the parameters alone.
    _adabelief(
      'adabelief_rtn', 'adabelief_jax stochastic_rounding=False', stochastic_rounding=False
    ),
    _adabelief('adabelief_wd', 'adabelief_jax wd=1e-4 decoupled', weight_decay=WEIGHT_DECAY),
    _adabelief('adabelief_amsgrad', 'adabelief_jax amsgrad', amsgrad=True),
    _adabelief('adabelief_rectify', 'adabelief_jax rectify', rectify=True),
    _adabelief('adabelief_stats', 'adabelief_jax track_stats', track_stats=True),
    _adabelief('adabelief_bf16_state', 'adabelief_jax bf16 m,s', mu_dtype=BF16, nu_dtype=BF16),
    _adabelief(
      'adabelief_bf16_rtn',
      'adabelief_jax bf16 m,s to nearest',
      mu_dtype=BF16,
      nu_dtype=BF16,
      stochastic_rounding=False,
    ),
    _adabelief('adabelief_int8', 'adabelief_jax int8 m,s', mu_dtype=INT8, nu_dtype=INT8),
    _adabelief(
      'adabelief_int8_rtn',
      'adabelief_jax int8 m,s to nearest',
      mu_dtype=INT8,
      nu_dtype=INT8,
      stochastic_rounding=False,
    ),
    _adabelief('adabelief_bf16_int8', 'adabelief_jax bf16 m, int8 s', mu_dtype=BF16, nu_dtype=INT8),
    _jax('optax_adam', 'optax.adam', 'optax', lambda sd: optax.adam(LR, mu_dtype=sd)),
    _jax(
      'optax_adamw',
      'optax.adamw wd=1e-4',
      'optax',
      lambda sd: optax.adamw(LR, mu_dtype=sd, weight_decay=WEIGHT_DECAY),
    ),
    _jax('optax_adabelief', 'optax.adabelief', 'optax', lambda sd: optax.adabelief(LR), False),
    _torch('torch_adabelief', 'adabelief-pytorch rectify=False', _torch_adabelief(rectify=False)),
    _torch('torch_adabelief_default', 'adabelief-pytorch defaults', _torch_adabelief()),
    _torch('torch_adam_fused', 'torch.optim.Adam(fused=True)', _torch_adam),
    Candidate('floor', 'bandwidth floor (p+g, m+g, s+g)', 'floor', floor_runner, True),
    Candidate('copy', 'one-stream copy of the same bytes', 'floor', CopyRunner, True),
  ]
}
