"""An independent float64 NumPy oracle for AdaBelief.

This module transcribes the AdaBelief algorithm directly from its math, in
float64 (complex128 for complex leaves), with no JAX. The tests compare the
JAX implementation against it. Everything works on a flat list of NumPy
leaves, one optimizer state per leaf.

For each leaf, at step ``t = 1, 2, ...`` with gradient ``g``::

    m_t   = b1 * m_{t-1} + (1 - b1) * g
    s_t   = b2 * s_{t-1} + (1 - b2) * |g - m_t|^2 + eps_root
    m_hat = m_t / (1 - b1^t)
    s_hat = s_t / (1 - b2^t)
    u_t   = m_hat / (sqrt(s_hat) + eps)

Here ``|z|^2 = z * conj(z)``, which is real, so ``s`` is real even when the leaf
is complex. ``u_t`` is the *direction* (what ``scale_by_belief`` outputs). It
points along the gradient, so the optimizer multiplies it by ``-lr``.

Options:

* ``amsgrad``: ``nu_max_t = max(nu_max_{t-1}, s_t)`` with ``nu_max_0 = 0``, and
  ``s_hat = nu_max_t / (1 - b2^t)``.
* ``nesterov``: ``m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``.
* ``rectify`` (RAdam-style): with ``rho_inf = 2 / (1 - b2) - 1`` and
  ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``. If ``rho_t >= sma_threshold``::

      r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
      u_t = r_t * m_hat / (sqrt(s_hat) + eps)

  Otherwise ``u_t = m_hat`` when ``degenerate_to_sgd``, else ``u_t = 0``.
* ``torch_rectified_eps`` (models adabelief-pytorch 0.2.1): in the rectified
  branch only, the denominator's ``eps`` becomes ``eps / sqrt(1 - b2^t)``.

Full optimizer step, with learning rate ``lr`` and weight decay ``wd``. Each may
be a constant or a schedule ``f(k)`` of the update index ``k = t - 1``:

* ``'decoupled'``: ``delta = -lr * (u_t + wd * p)``
* ``'fixed'``:     ``delta = -lr * u_t - wd * p``
* ``'l2'``:        ``g <- g + wd * p`` before the moments; ``delta = -lr * u_t``

An optional per-leaf boolean mask turns weight decay off for leaves marked
``False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Scalar = float | int
ScalarOrSchedule = Scalar | Callable[[int], Scalar]
Leaves = list[np.ndarray]

WEIGHT_DECAY_MODES = ('decoupled', 'fixed', 'l2')


# ---------------------------------------------------------------------------
# Small pure functions (scalars and single leaves).
# ---------------------------------------------------------------------------


def as_float64(x: np.ndarray | Scalar | complex) -> np.ndarray:
  """Cast to float64, or to complex128 if the input is complex.

  Args:
    x: An array or a scalar.

  Returns:
    A new float64 (or complex128) array with the same values.
  """
  a = np.asarray(x)
  dtype = np.complex128 if np.iscomplexobj(a) else np.float64
  return np.array(a, dtype=dtype)


def bias_correction(decay: float, t: int) -> float:
  """The bias-correction divisor ``1 - decay^t``.

  Args:
    decay: An EMA decay rate ``b`` in ``[0, 1)``.
    t: The step number, starting at 1.

  Returns:
    ``1 - decay**t`` as a Python float.
  """
  return 1.0 - float(decay) ** int(t)


def update_first_moment(m: np.ndarray, g: np.ndarray, b1: float) -> np.ndarray:
  """The first-moment EMA: ``m_t = b1 m_{t-1} + (1 - b1) g``.

  Args:
    m: ``m_{t-1}``, the previous first moment.
    g: The gradient at step ``t``.
    b1: The first-moment decay rate.

  Returns:
    ``m_t``.
  """
  return b1 * m + (1.0 - b1) * g


def update_belief(
  s: np.ndarray, g: np.ndarray, m: np.ndarray, b2: float, eps_root: float
) -> np.ndarray:
  """The belief (second-moment) EMA.

  ``s_t = b2 s_{t-1} + (1 - b2) |g - m_t|^2 + eps_root``, where
  ``|z|^2 = Re(z conj(z))``, so ``s_t`` stays real for complex leaves.

  Args:
    s: ``s_{t-1}``, the previous belief (real).
    g: The gradient at step ``t``.
    m: ``m_t``, the first moment *already updated* with ``g``.
    b2: The belief decay rate.
    eps_root: Added to ``s_t`` at every step.

  Returns:
    ``s_t`` as a real float64 array.
  """
  d = g - m
  sq = np.real(d * np.conj(d))
  return b2 * s + (1.0 - b2) * sq + eps_root


def nesterov_first_moment_hat(m: np.ndarray, g: np.ndarray, b1: float, t: int) -> np.ndarray:
  """The Nesterov bias-corrected first moment (as in optax's ``nesterov=True``).

  ``m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``.

  Args:
    m: ``m_t``, the updated first moment.
    g: The gradient at step ``t``.
    b1: The first-moment decay rate.
    t: The step number, starting at 1.

  Returns:
    The Nesterov ``m_hat``.
  """
  return b1 * m / bias_correction(b1, t + 1) + (1.0 - b1) * g / bias_correction(b1, t)


def rho_inf(b2: float) -> float:
  """The maximum length of the approximated SMA: ``rho_inf = 2 / (1 - b2) - 1``.

  Args:
    b2: The second-moment decay rate.

  Returns:
    ``rho_inf``.
  """
  return 2.0 / (1.0 - b2) - 1.0


def rho_t(b2: float, t: int) -> float:
  """The SMA length at step ``t``: ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``.

  Args:
    b2: The second-moment decay rate.
    t: The step number, starting at 1. ``rho_1 = 1`` for any ``b2``.

  Returns:
    ``rho_t``.
  """
  b2t = float(b2) ** int(t)
  return rho_inf(b2) - 2.0 * t * b2t / (1.0 - b2t)


def rectification_factor(rho: float, rho_max: float) -> float:
  """The RAdam variance-rectification term ``r_t``.

  ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``.

  Only meaningful when ``rho_t > 4``. Callers use it only when
  ``rho_t >= sma_threshold``.

  Args:
    rho: ``rho_t``.
    rho_max: ``rho_inf``.

  Returns:
    ``r_t``.
  """
  num = (rho - 4.0) * (rho - 2.0) * rho_max
  den = (rho_max - 4.0) * (rho_max - 2.0) * rho
  return math.sqrt(num / den)


def resolve(value: ScalarOrSchedule, k: int) -> float:
  """Evaluates a constant or a schedule at update index ``k``.

  Args:
    value: A number, or a callable ``f(k)``.
    k: The 0-based update index (``k = t - 1``).

  Returns:
    The value as a Python float.
  """
  v = value(k) if callable(value) else value
  return float(np.asarray(v, dtype=np.float64))


SIGNIFICANT_BITS = {'bfloat16': 8, 'float32': 24}
INT8_MIN_ELEMENTS = 4096  # Smaller leaves keep 8-bit state in float32,
INT8_MIN_ROW = 8  # and so do leaves of shorter rows (last axis).
# kind -> (mantissa bits, largest code, lowest code of a positive value).
INT8_FORMATS = {'signed': (3, 127, 0), 'nonnegative': (2, 255, 1)}


def round_to_format(x: np.ndarray, fmt: str | None) -> np.ndarray:
  """``x`` as stored in a float format, rounded to nearest (ties to even), in float64.

  ``None`` stores ``x`` exactly. ``'bfloat16'`` and ``'float32'`` keep 8 and
  24 significant bits and the float32 exponent range (every value here is far
  from its limits): with ``x = f 2^e``, ``0.5 <= |f| < 1``, it is
  ``round(f 2^k) 2^(e - k)``.

  Args:
    x: A real float64 array.
    fmt: ``None``, ``'bfloat16'`` or ``'float32'``.

  Returns:
    The stored values, as float64.
  """
  if fmt is None:
    return x
  bits = SIGNIFICANT_BITS[fmt]
  fraction, exponent = np.frexp(x)
  return np.ldexp(np.round(fraction * 2.0**bits), exponent - bits)


def int8_values(kind: str) -> np.ndarray:
  """The magnitude each 8-bit code stands for, code 0 to the largest.

  Code ``c >= 1`` is a float with ``k`` mantissa bits whose largest value, 1,
  is the largest code: with ``q = c + 127 * 2^k - top``, its value is
  ``2^(q // 2^k - 127) (1 + (q mod 2^k) / 2^k)``. Code 0 is 0.

  Args:
    kind: ``'signed'`` (``m``: 3 mantissa bits, codes to 127) or
      ``'nonnegative'`` (``s``: 2 mantissa bits, codes to 255).

  Returns:
    A float64 array of ``top + 1`` increasing values, from 0 to 1.
  """
  mantissa, top, _ = INT8_FORMATS[kind]
  q = np.arange(1, top + 1) + (127 << mantissa) - top
  values = 2.0 ** ((q >> mantissa) - 127) * (1 + (q & ((1 << mantissa) - 1)) / 2**mantissa)
  return np.concatenate([[0.0], values])


def block_max(x: np.ndarray, block_size: int) -> np.ndarray:
  """The largest of each block of ``block_size`` along the last axis (the last one shorter)."""
  starts = range(0, x.shape[-1], block_size)
  return np.stack([x[..., i : i + block_size].max(axis=-1) for i in starts], axis=-1)


def per_element(scales: np.ndarray, block_size: int, n: int) -> np.ndarray:
  """Each element's block value, for a last axis of ``n``."""
  return np.repeat(scales, block_size, axis=-1)[..., :n]


def quantize_blocks(x: np.ndarray, kind: str, scales: np.ndarray, block_size: int) -> np.ndarray:
  """``x`` stored in 8-bit blocks with the given block ``scales``, decoded.

  Each magnitude ``v = |x| / scale`` (``<= 1``) becomes the nearest of
  :func:`int8_values` from the lowest code of a positive value on (the upper
  one on a tie); the sign is kept.

  Args:
    x: A real float64 array.
    kind: ``'signed'`` or ``'nonnegative'``.
    scales: One scale per block: ``x.shape[:-1] + (blocks,)``.
    block_size: Elements per block.

  Returns:
    The decoded values, float64, shaped like ``x``.
  """
  _, _, lowest = INT8_FORMATS[kind]
  values = int8_values(kind)[lowest:]
  scale = per_element(scales, block_size, x.shape[-1])
  v = np.abs(x) / np.where(scale > 0, scale, 1.0)
  distance = np.abs(v[..., None] - values)
  # The last (upper) of equally near codes: argmin of the reversed candidates.
  nearest = len(values) - 1 - np.argmin(distance[..., ::-1], axis=-1)
  return np.sign(x) * values[nearest] * scale


def int8_scale_bounds(
  g: np.ndarray,
  state: LeafState,
  quantized: tuple[bool, bool, bool],
  b1: float,
  b2: float,
  eps_root: float,
  block: int,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
  """The new block scales of a leaf's 8-bit moments: bounds of their magnitudes.

  With ``G`` the blocks' largest ``|g|`` and the old scales ``M``, ``S``
  (for a float ``m``, its blocks' largest ``|m|``):
  ``M' = b1 M + (1 - b1) G``, ``S' = b2 S + (1 - b2) (G + M')^2 + eps_root``,
  and for the running maximum ``max(S_max, S')``.
  """
  big = block_max(np.abs(g), block)
  m_old = state.mu_scales if quantized[0] else block_max(np.abs(state.mu), block)
  m = b1 * m_old + (1 - b1) * big
  s_old = state.nu_scales if quantized[1] else block_max(state.nu, block)
  s = b2 * s_old + (1 - b2) * (big + m) ** 2 + eps_root
  s_max = np.maximum(state.nu_max_scales, s) if quantized[2] else None
  return (m if quantized[0] else None), (s if quantized[1] else None), s_max


def store(
  x: np.ndarray, fmt: str | None, kind: str, scales: np.ndarray | None, block: int
) -> np.ndarray:
  """``x`` as stored in ``fmt``: a float format, or 8-bit blocks with ``scales``.

  ``'int8'`` leaves too small for blocks (``scales is None``) are float32.
  """
  if fmt == 'int8':
    if scales is None:
      return round_to_format(x, 'float32')
    return quantize_blocks(x, kind, scales, block)
  return round_to_format(x, fmt)


# ---------------------------------------------------------------------------
# Per-leaf state and the single-leaf direction.
# ---------------------------------------------------------------------------


@dataclass
class LeafState:
  """The float64 optimizer state of one leaf.

  Attributes:
    mu: The first moment ``m`` (complex128 for complex leaves).
    nu: The belief ``s`` (always real float64).
    nu_max: The running maximum of ``s``, used only with amsgrad.
    mu_scales: The block scales of an 8-bit ``m`` (else ``None``).
    nu_scales: Likewise for ``s``.
    nu_max_scales: Likewise for the running maximum.
  """

  mu: np.ndarray
  nu: np.ndarray
  nu_max: np.ndarray
  mu_scales: np.ndarray | None = None
  nu_scales: np.ndarray | None = None
  nu_max_scales: np.ndarray | None = None

  @classmethod
  def zeros_like(cls, leaf: np.ndarray) -> LeafState:
    """Zero state shaped like ``leaf`` (``m_0 = s_0 = nu_max_0 = 0``)."""
    a = as_float64(leaf)
    return cls(
      mu=np.zeros_like(a), nu=np.zeros(a.shape, np.float64), nu_max=np.zeros(a.shape, np.float64)
    )


def leaf_direction(
  state: LeafState,
  g: np.ndarray,
  t: int,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-16,
  eps_root: float = 1e-16,
  amsgrad: bool = False,
  rectify: bool = False,
  sma_threshold: float = 5.0,
  degenerate_to_sgd: bool = True,
  nesterov: bool = False,
  torch_rectified_eps: bool = False,
  mu_format: str | None = None,
  nu_format: str | None = None,
  quantization_block_size: int = 256,
) -> tuple[np.ndarray, LeafState]:
  """One AdaBelief direction ``u_t`` for one leaf. This is a pure function.

  Computes ``m_t``, ``s_t`` (and ``nu_max_t``), then::

      m_hat = m_t / (1 - b1^t)              (or the Nesterov form)
      s_hat = s_t / (1 - b2^t)              (nu_max_t / (1 - b2^t) with amsgrad)
      u_t   = m_hat / (sqrt(s_hat) + eps)   (without rectify)

  With ``rectify``, ``u_t = r_t m_hat / (sqrt(s_hat) + eps')`` when
  ``rho_t >= sma_threshold``. Here ``eps' = eps / sqrt(1 - b2^t)`` if
  ``torch_rectified_eps``, else ``eps' = eps``. Otherwise ``u_t = m_hat`` (when
  ``degenerate_to_sgd``) or ``0``.

  With a storage format, ``m_t`` is rounded to ``mu_format`` as soon as it is
  computed and ``s_t`` to ``nu_format``; everything after uses the rounded
  values (the maximum of two stored floats needs no rounding; 8-bit blocks
  store it anew). 8-bit blocks (:func:`store`) take the scales of
  :func:`int8_scale_bounds`.

  Args:
    state: The leaf's state after ``t - 1`` steps.
    g: The gradient at step ``t`` (after any L2 term has been added).
    t: The step number, starting at 1.
    b1: The first-moment decay rate.
    b2: The belief decay rate.
    eps: Added to ``sqrt(s_hat)`` in the denominator.
    eps_root: Added to ``s_t`` at every step.
    amsgrad: Use the running maximum of ``s_t``.
    rectify: Apply RAdam-style rectification.
    sma_threshold: The ``rho_t`` threshold for the rectified branch.
    degenerate_to_sgd: Below the threshold, output ``m_hat`` rather than 0.
    nesterov: Use the Nesterov ``m_hat``.
    torch_rectified_eps: Scale ``eps`` by ``1 / sqrt(1 - b2^t)`` in the
      rectified branch, as adabelief-pytorch 0.2.1 does.
    mu_format: The storage format of ``m`` (see :func:`round_to_format`).
    nu_format: The storage format of ``s``.
    quantization_block_size: The block size of ``'int8'`` storage.

  Returns:
    ``(u_t, new_state)``.
  """
  if t < 1:
    raise ValueError(f'step t must be >= 1, got {t}')
  g = as_float64(g)
  block = quantization_block_size
  blocks = g.ndim >= 1 and g.size >= INT8_MIN_ELEMENTS and g.shape[-1] >= INT8_MIN_ROW
  quantized = (mu_format == 'int8' and blocks, nu_format == 'int8' and blocks)
  quantized += (amsgrad and quantized[1],)
  scales: tuple[np.ndarray | None, ...] = (None, None, None)
  if any(quantized):
    scales = int8_scale_bounds(g, state, quantized, b1, b2, eps_root, block)
  m = store(update_first_moment(state.mu, g, b1), mu_format, 'signed', scales[0], block)
  s = store(update_belief(state.nu, g, m, b2, eps_root), nu_format, 'nonnegative', scales[1], block)
  nu_max = state.nu_max
  if amsgrad:
    nu_max = store(np.maximum(state.nu_max, s), nu_format, 'nonnegative', scales[2], block)
  new_state = LeafState(m, s, nu_max, *scales)

  if nesterov:
    m_hat = nesterov_first_moment_hat(m, g, b1, t)
  else:
    m_hat = m / bias_correction(b1, t)
  s_hat = (nu_max if amsgrad else s) / bias_correction(b2, t)

  if not rectify:
    return m_hat / (np.sqrt(s_hat) + eps), new_state

  rho = rho_t(b2, t)
  if rho >= sma_threshold:
    r = rectification_factor(rho, rho_inf(b2))
    eps_eff = eps / math.sqrt(bias_correction(b2, t)) if torch_rectified_eps else eps
    return r * m_hat / (np.sqrt(s_hat) + eps_eff), new_state
  if degenerate_to_sgd:
    return m_hat, new_state
  return np.zeros_like(m_hat), new_state


# ---------------------------------------------------------------------------
# Stateful oracles over a flat list of leaves.
# ---------------------------------------------------------------------------


class BeliefOracle:
  """The float64 model of ``scale_by_belief`` over a flat list of leaves.

  Each call to :meth:`direction` advances the step count ``t`` by one and
  returns ``u_t`` for every leaf (see :func:`leaf_direction`).

  Attributes:
    states: One :class:`LeafState` per leaf; a test may replace them (e.g.
      with the implementation's state) to compare a single step.
    count: The number of steps taken so far (``t - 1`` before a call).
    hyper: The keyword hyperparameters passed to :func:`leaf_direction`.
  """

  def __init__(self, leaves: Sequence[np.ndarray], **hyper: float | bool | str | None) -> None:
    """Zero state for ``leaves``.

    Args:
      leaves: Arrays that give the shape and real/complex kind of each leaf.
      **hyper: Keyword arguments of :func:`leaf_direction` (its defaults are
        the library's).
    """
    self.states: list[LeafState] = [LeafState.zeros_like(x) for x in leaves]
    self.count: int = 0
    self.hyper = hyper

  def direction(self, grads: Sequence[np.ndarray]) -> Leaves:
    """Takes one step and returns ``u_t`` for each leaf.

    Args:
      grads: One gradient per leaf, in the constructor's order.

    Returns:
      ``u_t`` per leaf (float64 or complex128).
    """
    if len(grads) != len(self.states):
      raise ValueError(f'expected {len(self.states)} leaves, got {len(grads)}')
    t = self.count + 1
    out = [leaf_direction(state, g, t, **self.hyper) for state, g in zip(self.states, grads)]
    self.states = [state for _, state in out]
    self.count = t
    return [u for u, _ in out]


class AdaBeliefOracle:
  """The float64 model of the full ``adabelief`` optimizer step.

  For each leaf ``p`` with gradient ``g``, at update index ``k = t - 1``, with
  ``lr = lr(k)`` and ``wd = wd(k)`` (``wd = 0`` on masked-out leaves)::

      'decoupled': delta = -lr * (u_t + wd * p)
      'fixed':     delta = -lr * u_t - wd * p
      'l2':        g <- g + wd * p  (before the moments);  delta = -lr * u_t

  and ``p_new = p + delta``.

  Attributes:
    belief: The :class:`BeliefOracle` that produces ``u_t``.
    learning_rate: A constant or a schedule ``f(k)``.
    weight_decay: A constant or a schedule ``f(k)``.
    weight_decay_mode: ``'decoupled'``, ``'fixed'`` or ``'l2'``.
    weight_decay_mask: One bool per leaf (True = decayed), or ``None`` (all).
  """

  def __init__(
    self,
    params: Sequence[np.ndarray],
    *,
    learning_rate: ScalarOrSchedule = 1e-3,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mode: str = 'decoupled',
    weight_decay_mask: Sequence[bool] | None = None,
    **hyper: float | bool | str | None,
  ) -> None:
    """Zero state for ``params``.

    Args:
      params: The initial parameter leaves (for shapes and kinds).
      learning_rate: A constant or a schedule of ``k = t - 1``.
      weight_decay: A constant or a schedule of ``k = t - 1``.
      weight_decay_mode: ``'decoupled'``, ``'fixed'`` or ``'l2'``.
      weight_decay_mask: One bool per leaf, or ``None`` to decay every leaf.
      **hyper: Keyword arguments of :func:`leaf_direction`.
    """
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
      raise ValueError(
        f'weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}'
      )
    if weight_decay_mask is not None and len(weight_decay_mask) != len(params):
      raise ValueError(f'mask has {len(weight_decay_mask)} entries for {len(params)} leaves')
    self.belief = BeliefOracle(params, **hyper)
    self.learning_rate = learning_rate
    self.weight_decay = weight_decay
    self.weight_decay_mode = weight_decay_mode
    self.weight_decay_mask: list[bool] = (
      [True] * len(params) if weight_decay_mask is None else [bool(b) for b in weight_decay_mask]
    )

  @property
  def count(self) -> int:
    """The number of updates taken so far."""
    return self.belief.count

  def step(
    self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]
  ) -> tuple[Leaves, Leaves]:
    """Takes one optimizer step.

    Args:
      params: The current parameter leaves.
      grads: One gradient per leaf.

    Returns:
      ``(new_params, deltas)``, where ``new_params[i] = params[i] + deltas[i]``
      (float64 or complex128).
    """
    if len(params) != len(grads):
      raise ValueError(f'{len(params)} params but {len(grads)} grads')
    k = self.count
    lr = resolve(self.learning_rate, k)
    wd = resolve(self.weight_decay, k)
    ps = [as_float64(p) for p in params]
    gs = [as_float64(g) for g in grads]
    wds = [wd if keep else 0.0 for keep in self.weight_decay_mask]

    if self.weight_decay_mode == 'l2':
      gs = [g + w * p for g, w, p in zip(gs, wds, ps)]
    us = self.belief.direction(gs)

    if self.weight_decay_mode == 'decoupled':
      deltas = [-lr * (u + w * p) for u, w, p in zip(us, wds, ps)]
    elif self.weight_decay_mode == 'fixed':
      deltas = [-lr * u - w * p for u, w, p in zip(us, wds, ps)]
    else:  # 'l2'
      deltas = [-lr * u for u in us]
    new_params = [p + d for p, d in zip(ps, deltas)]
    return new_params, deltas
