"""The AdaBelief rescaling as an Optax gradient transformation.

AdaBelief (Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief
in Observed Gradients", NeurIPS 2020, https://arxiv.org/abs/2010.07468) scales
the momentum by the square root of an exponential moving average of the squared
*prediction error* ``g - m`` instead of the squared gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adabelief_jax import _checks, _storage, diagnostics
from adabelief_jax._hyperparams import BeliefHyperparams
from adabelief_jax._scalars import StepScalars, step_scalars


class BeliefState(NamedTuple):
  """State of :func:`scale_by_belief`.

  Its structure depends on the configuration only, never on data: the fields
  a configuration does not use hold ``optax.EmptyState()``.

  Attributes:
    count: number of updates taken (int32 scalar).
    mu: first moment ``m`` of the gradients, one leaf per parameter (with
      ``mu_dtype='int8'``, a :class:`~adabelief_jax.QuantizedMoment`).
    nu: moving average ``s`` of the squared prediction error ``|g - m|^2``
      (real, also for complex parameters); likewise.
    nu_max: running maximum of ``nu`` with ``amsgrad=True``.
    stats: the last update's :class:`~adabelief_jax.diagnostics.BeliefStats`
      with ``track_stats=True`` (read them with
      :func:`~adabelief_jax.belief_stats`).
  """

  count: chex.Array  # type: ignore[assignment]  # optax's name; shadows tuple.count.
  mu: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates | optax.EmptyState
  stats: diagnostics.BeliefStats | optax.EmptyState


class _Leaf(NamedTuple):
  """One parameter's gradient (or update) and its stored moments."""

  update: Any
  mu: Any
  nu: Any
  nu_max: Any  # None without AMSGrad.


def _compute_dtype(leaf: _Leaf) -> jnp.dtype:
  """At least float32, wider if the gradient or any state leaf is."""
  return jnp.result_type(*(x.dtype for x in leaf if x is not None), jnp.float32)


def _after(x: Any, reads: list[jax.Array]) -> Any:
  """``x``, unchanged, but computed after ``reads``.

  XLA updates a donated buffer in place only if every read of its old value
  comes before the write; reads that nothing the write uses depends on are
  not ordered, so XLA:CPU copies the buffer first (an optimization barrier
  does not order them there). A select on a condition that is always false,
  but that XLA cannot fold, makes ``x`` depend on the reads: whatever uses
  ``x`` waits for them (benchmarks/RESULTS.md measures the copy it saves).
  """
  total = sum(jnp.sum(r).real for r in reads)
  never = jnp.isnan(total) & ~jnp.isnan(total)
  return jax.tree.map(lambda v: jnp.where(never, jnp.zeros_like(v), v), x)


class _Bounds(NamedTuple):
  """Bounds of the block maxima of a leaf's new moments, for those stored in 8-bit blocks."""

  mu: jax.Array | None = None
  nu: jax.Array | None = None
  nu_max: jax.Array | None = None
  # The blocks bounded from a non-finite input, which keep their stored moments.
  kept: jax.Array | None = None


def _bounds(g: jax.Array, leaf: _Leaf, c: StepScalars) -> tuple[_Bounds, Any]:
  """The bounds 8-bit storage takes as block scales, and the old ``m`` to go on with.

  From the gradient's block maxima ``G`` and bounds ``M``, ``S`` of the old
  moments' (a stored 8-bit moment never exceeds its scales; a float one is
  measured): ``|m_t| <= b1 M + (1 - b1) G =: M'``, and since ``|g - m_t| <= G
  + M'``, ``s_t <= b2 S + (1 - b2) (G + M')^2 + eps_root``. No reduction over
  the new moments is needed. A float ``m`` measured so is read before it is
  updated in place: the ``m`` returned is ordered after that read. A block
  whose bounds come from a non-finite gradient (or old ``m``) is ``kept``: its
  8-bit moments stay as they were for this step, but for its non-finite
  elements. (The predicate reads the inputs, not the bounds: a select on the
  bounds changes how XLA contracts their arithmetic, differently sharded and
  not, which would break ZeRO-1's bit-identity.)
  """
  _, m, s, s_max = leaf
  block = next((b for b in map(_storage.block_length, (m, s, s_max)) if b is not None), None)
  if block is None:
    return _Bounds(), m
  g_max = _storage.block_max(jnp.abs(g), block)
  m_old = _storage.block_bound(m, block)
  m_in_blocks = _storage.block_length(m) is not None
  if not m_in_blocks:
    m = _after(m, [m_old])
  m_bound = jnp.asarray(c.b1 * m_old + c.one_minus_b1 * g_max)
  if _storage.block_length(s) is None:
    kept = ~jnp.isfinite(g_max + m_old)
    return _Bounds(mu=m_bound if m_in_blocks else None, kept=kept), m
  s_old = _storage.block_bound(s, block)
  s_bound = jnp.asarray(c.b2 * s_old + (c.one_minus_b2 * jnp.square(g_max + m_bound) + c.eps_root))
  s_max_bound = None if s_max is None else jnp.maximum(_storage.block_bound(s_max, block), s_bound)
  kept = ~jnp.isfinite(g_max + m_old + s_old)
  return _Bounds(m_bound if m_in_blocks else None, s_bound, s_max_bound, kept), m


def _moments(leaf: _Leaf, c: StepScalars, bits: list[jax.Array | None]) -> _Leaf:
  """One leaf's new moments, as stored: ``m_t``, ``s_t`` (and the AMSGrad maximum).

  ``c`` is in the leaf's real compute dtype. Each moment is rounded to its
  storage as soon as it is computed (stochastically with ``bits``) and the
  next one, and the step, use the rounded values: the step then depends on
  the new state only, not on float32 intermediates, so XLA updates the state
  in place instead of keeping a copy of the old one alive. The returned
  leaf's ``update`` is the gradient in the compute dtype.
  """
  dtype = _compute_dtype(leaf)
  real = jnp.finfo(dtype).dtype
  g = leaf.update.astype(dtype)
  bound, m = _bounds(g, leaf, c)
  m_new, m_t = _storage.store(
    c.b1 * _storage.load(m, dtype) + c.one_minus_b1 * g, leaf.mu, bits[0], bound.mu, bound.kept
  )
  d = g - m_t
  d2 = d.real * d.real + d.imag * d.imag if jnp.iscomplexobj(d) else d * d
  # This association lets XLA update s in place, where the others keep a copy
  # of the old s (benchmarks/RESULTS.md).
  s_sum = c.b2 * _storage.load(leaf.nu, real) + (c.one_minus_b2 * d2 + c.eps_root)
  s_new, s_t = _storage.store(s_sum, leaf.nu, bits[1], bound.nu, bound.kept)
  s_max = leaf.nu_max
  if s_max is not None:
    s_max_sum = jnp.maximum(_storage.load(s_max, real), s_t)
    s_max, _ = _storage.store(s_max_sum, s_max, bits[2], bound.nu_max, bound.kept)
  return _Leaf(g, m_new, s_new, s_max)


def _used(stored: _Leaf) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The gradient and the moments that the step uses: ``(g, m_t, s_t)`` in
  the compute dtype, ``s_t`` being the AMSGrad maximum with ``amsgrad``."""
  g = stored.update
  s = stored.nu if stored.nu_max is None else stored.nu_max
  return g, _storage.load(stored.mu, g.dtype), _storage.load(s, jnp.finfo(g.dtype).dtype)


def _direction(
  g: jax.Array, m: jax.Array, s: jax.Array, c: StepScalars, hp: BeliefHyperparams
) -> jax.Array:
  """The step, elementwise: ``m_hat_t / (sqrt(s_hat_t) + eps)`` (``c`` holds the
  bias corrections and the rectification), or momentum SGD before the
  rectification's threshold."""
  m_hat = c.mu_scale * m + c.grad_scale * g if hp.nesterov else c.mu_scale * m
  u = m_hat * c.step_scale / (jnp.sqrt(s) + c.eps_scaled)
  if hp.rectify:
    u = jnp.where(c.adaptive, u, c.sgd_scale * m_hat)
  return jnp.asarray(u)


def _leaf_bits(
  leaf: _Leaf, index: int, count: jax.Array, hp: BeliefHyperparams
) -> list[jax.Array | None]:
  """The 16 rounding bits per element of each moment of leaf number ``index``, or None.

  One 32-bit draw serves ``m`` and ``s``; a second one ``nu_max``, in 8-bit
  blocks only: the maximum of two stored floats is stored exactly.
  """
  compute = _compute_dtype(leaf)
  rounded = [x is not None and _storage.rounds(x, compute) for x in leaf[1:]]
  if not hp.stochastic_rounding or not any(rounded):
    return [None] * 3
  rounded[2] = rounded[2] and _storage.block_length(leaf.nu_max) is not None
  streams = 2 if rounded[2] else 1
  bits = _storage.random_bits16(leaf.update.shape, hp.rounding_seed, count, index, streams)
  return [b if r else None for b, r in zip([*bits, None], rounded)]


_REBUILD = (
  'Build the state with this optimizer (tx.init(params)), or construct the optimizer with the '
  "options the state was made with; restore checkpoints into tx.init's structure (e.g. "
  'adabelief_jax.sharding.abstract_state) as target.'
)


def _check_state(state: optax.OptState, hp: BeliefHyperparams) -> BeliefState:
  """``state``, after checking that this configuration's init made it.

  A state of another configuration would fail deep in the update (or, with
  another float dtype, silently keep its own), so the option that differs is
  named instead.
  """
  if not isinstance(state, BeliefState):
    if isinstance(state, dict | list):
      hint = ' A checkpoint restored without a target gives dicts and lists.'
    elif type(state).__name__ == 'ScaleByBeliefState':
      hint = (
        ' It was made by optax.scale_by_belief (or optax.adabelief), whose state this '
        'optimizer does not read.'
      )
    else:
      hint = (
        " It is another transformation's state: the chain's transformations are in another "
        "order than when the state was made; inside adabelief, another weight_decay_mode ('l2' "
        "puts the weight decay before scale_by_belief, 'decoupled' and 'fixed' after)."
      )
    raise TypeError(
      'scale_by_belief: the state must be the adabelief_jax.BeliefState its init made, got '
      f'{_checks.describe_state(state)}.{hint} {_REBUILD}'
    )
  for name, made in (('amsgrad', state.nu_max), ('track_stats', state.stats)):
    if isinstance(made, optax.EmptyState) == getattr(hp, name):
      word = 'without' if getattr(hp, name) else 'with'
      raise ValueError(
        f'scale_by_belief: {name}={getattr(hp, name)}, but the state was made {word} {name}. '
        f'{_REBUILD}'
      )
  for name, moment in (('mu_dtype', state.mu), ('nu_dtype', state.nu)):
    requested = getattr(hp, name)
    made_with = getattr(moment, 'block_size', hp.quantization_block_size)
    if requested == jnp.int8 and made_with != hp.quantization_block_size:
      raise ValueError(
        f'scale_by_belief: quantization_block_size={hp.quantization_block_size}, but the '
        f'state was made with {made_with}. {_REBUILD}'
      )
    if not _storage.made_as(moment, requested):
      asked = f'{name}={requested}' if requested else f'{name}=None (float32 or wider)'
      raise ValueError(
        f'scale_by_belief: {asked}, but the state holds {_storage.describe(moment)}. {_REBUILD}'
      )
  return state


def _leaves(updates: optax.Updates, state: BeliefState, amsgrad: bool) -> list[_Leaf]:
  """The updates and the state, leaf by leaf, after checking that they match.

  The state's moments must have the updates' structure (an 8-bit moment has
  it twice, in its codes and its scales) and every moment its update's shape:
  a moment that broadcast against a gradient of another shape would silently
  grow.
  """
  paths, structure = jax.tree_util.tree_flatten_with_path(_checks.as_arrays(updates))
  treedef: Any = structure  # jaxlib ships no stubs for PyTreeDef's methods.
  _checks.check_inexact_leaves(updates, 'updates')
  moments = [state.mu, state.nu] + ([state.nu_max] if amsgrad else [])
  try:
    columns = [_storage.leaves(tree, treedef) for tree in moments]
  except (ValueError, TypeError) as error:
    raise ValueError(
      'scale_by_belief: the updates do not have the structure of the state they were '
      f'initialized with.\n  updates:  {treedef}\n  state.mu: {jax.tree.structure(state.mu)}'
    ) from error
  if not amsgrad:
    columns.append([None] * len(paths))
  leaves = [_Leaf(g, *moment) for (_, g), *moment in zip(paths, *columns)]
  for (path, _), leaf in zip(paths, leaves):
    where = jax.tree_util.keystr(path) or '<root>'
    for name, moment in zip(('mu', 'nu', 'nu_max'), leaf[1:]):
      if moment is not None and tuple(moment.shape) != tuple(leaf.update.shape):
        raise ValueError(
          f'scale_by_belief: updates{where} has shape {tuple(leaf.update.shape)} but '
          f'state.{name}{where} has shape {tuple(moment.shape)}: the state was made for other '
          'parameters. Build it with tx.init(params) for the parameters you update.'
        )
    if jnp.iscomplexobj(leaf.update) and not jnp.issubdtype(leaf.mu.dtype, jnp.complexfloating):
      raise TypeError(
        f'scale_by_belief: updates{where} is complex ({leaf.update.dtype}) but its parameter '
        f'is real (state.mu{where} is {leaf.mu.dtype}): the imaginary part would be dropped. '
        'Take the real part of the gradient, or make the parameter complex.'
      )
  return leaves


def _statistics(
  stored: list[_Leaf],
  casts: list[StepScalars],
  params: list[Any],
  last: diagnostics.BeliefStats,
  adaptive: jax.Array,
  treedef: Any,
) -> diagnostics.BeliefStats:
  """The statistics of this update: of the ``s`` each step divides by, and of the parameters.

  An element is eps-dominated where the epsilons make up half of its step's
  denominator: the step divides by ``sqrt(s) + eps_scaled``, and ``eps_root``
  has added ``eps_root (1 - b2^t) / (1 - b2)`` to ``s`` by step t, so in ``s``'s
  own units the bound is ``2 sqrt(that) + eps_scaled``.
  """
  samples, kept = [], []
  paths = [
    jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(last.last_params)
  ]
  leaves = zip(stored, casts, params, treedef.flatten_up_to(last.last_params), paths)
  for x, c, param, last_param, where in leaves:
    s = _used(x)[2]
    floor = c.eps_root * jnp.square(c.sqrt_bias_correction2) / c.one_minus_b2
    bound = jnp.asarray(2 * jnp.sqrt(floor) + c.eps_scaled)
    param_sample = None if param is None else diagnostics.param_sample(param, last_param, where)
    samples.append(
      diagnostics.leaf_sample(
        s,
        diagnostics.strided(s),
        bound,
        jnp.asarray(c.sqrt_bias_correction2),
        param_sample,
        last_param,
      )
    )
    kept.append(last_param if param_sample is None else param_sample)
  return diagnostics.stats_of(treedef, samples, jax.tree.unflatten(treedef, kept), adaptive)


def _update_leaves(
  leaves: list[_Leaf],
  count: jax.Array,
  hp: BeliefHyperparams,
  params: Any,
  last: Any,
  treedef: Any,
) -> tuple[list[_Leaf], Any]:
  """Every leaf's new moments and step (the step's scalars cast once per
  compute dtype), and with ``track_stats`` the statistics, measured between
  the two."""
  scalars = step_scalars(count, hp)
  casts: dict[jnp.dtype, StepScalars] = {}
  stored, per_leaf = [], []
  for index, leaf in enumerate(leaves):
    real = jnp.finfo(_compute_dtype(leaf)).dtype
    if real not in casts:
      casts[real] = scalars.cast(real)
    stored.append(_moments(leaf, casts[real], _leaf_bits(leaf, index, count, hp)))
    per_leaf.append(casts[real])
  stats: Any = optax.EmptyState()
  if hp.track_stats:
    params_leaves = [None] * len(leaves) if params is None else treedef.flatten_up_to(params)
    adaptive = jnp.asarray(scalars.adaptive)
    stats = _statistics(stored, per_leaf, params_leaves, last, adaptive, treedef)
    # The parameters are read for the statistics before the step updates them in place.
    reads = [stats.param_rms, stats.update_rms, stats.last_params]
    reads = [x for tree in reads for x in jax.tree.leaves(tree)]
    scales = _after([c.step_scale for c in per_leaf], reads)
    per_leaf = [c._replace(step_scale=scale) for c, scale in zip(per_leaf, scales)]
  new = [x._replace(update=_direction(*_used(x), c, hp)) for x, c in zip(stored, per_leaf)]
  return new, stats


def _zeros(params: Any, requested: jnp.dtype | None, *, real: bool, block_size: Any) -> Any:
  """The zero moment tree of ``params`` as ``requested`` (int8: 8-bit blocks).

  A float moment takes ``requested``, or by default float32 for 16-bit
  parameters (an ``s`` of 1e-16 is zero in float16) and the parameter's dtype
  otherwise; ``real`` for ``s``, which is real for complex parameters too.
  """
  if requested == jnp.int8:
    fmt = _storage.POSITIVE if real else _storage.SIGNED
    return _storage.quantized_zeros(params, fmt, block_size)

  def leaf(param: Any) -> jax.Array:
    dtype = jnp.dtype(jnp.finfo(param.dtype).dtype if real else param.dtype)
    if requested is not None:
      dtype = requested
    elif jnp.finfo(dtype).bits < 32:
      dtype = jnp.dtype(jnp.float32)
    return jnp.zeros_like(param, dtype)

  return jax.tree.map(leaf, params)


def _check_params(params: Any, hp: BeliefHyperparams) -> None:
  """Raises if a parameter cannot be optimized with these state dtypes, naming it."""
  _checks.check_inexact_leaves(params, 'params')
  for path, param in jax.tree_util.tree_flatten_with_path(params)[0]:
    complex_param = jnp.issubdtype(param.dtype, jnp.complexfloating)
    complex_mu = hp.mu_dtype is not None and jnp.issubdtype(hp.mu_dtype, jnp.complexfloating)
    where = jax.tree_util.keystr(path) or '<root>'
    if complex_param and hp.mu_dtype is not None and not complex_mu:
      raise ValueError(
        f'mu_dtype={hp.mu_dtype} stores real moments, but params{where} is complex '
        f'({param.dtype}): the first moment of a complex parameter is complex. Use a complex '
        'mu_dtype (complex64) or None (the parameter dtype).'
      )
    if complex_mu and not complex_param:
      raise ValueError(
        f'mu_dtype={hp.mu_dtype} is complex, but params{where} is real ({param.dtype}): the '
        'first moment of a real parameter is real, and a complex one would double its memory '
        'for zeros. Use a real mu_dtype (or None: the parameter dtype).'
      )


def scale_by_belief_from(hp: BeliefHyperparams) -> optax.GradientTransformation:
  """:func:`scale_by_belief` configured by a validated :class:`BeliefHyperparams` record."""

  def init_fn(params: optax.Params) -> BeliefState:
    params = _checks.as_arrays(params)
    _check_params(params, hp)
    block = hp.quantization_block_size
    nu_zeros = lambda: _zeros(params, hp.nu_dtype, real=True, block_size=block)
    return BeliefState(
      count=jnp.zeros([], jnp.int32),
      mu=_zeros(params, hp.mu_dtype, real=False, block_size=block),
      nu=nu_zeros(),
      nu_max=nu_zeros() if hp.amsgrad else optax.EmptyState(),
      stats=diagnostics.zeros(params) if hp.track_stats else optax.EmptyState(),
    )

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, BeliefState]:
    state = _check_state(state, hp)
    params = None if params is None else _checks.as_arrays(params)
    if hp.check_hyperparams:
      jax.debug.callback(_checks.raise_if_invalid, hp.numeric())
    leaves = _leaves(updates, state, hp.amsgrad)
    treedef: Any = jax.tree.structure(updates)  # jaxlib has no stubs for PyTreeDef.
    count = jnp.asarray(optax.safe_increment(state.count))
    new, stats = _update_leaves(leaves, count, hp, params, state.stats, treedef)

    def moment(field: str) -> Any:
      return _storage.tree(getattr(state, field), treedef, [getattr(n, field) for n in new])

    # In the gradients' dtype, as optax's wrappers expect (apply_if_finite), but float16's:
    # the unscaled step can exceed its range (it reaches g / sqrt(eps_root / (1 - b2))),
    # so it stays float32 until a learning rate has scaled it.
    u = jax.tree.unflatten(
      treedef,
      [
        n.update
        if hp.compute_dtype_updates or x.update.dtype == jnp.float16
        else n.update.astype(x.update.dtype)
        for n, x in zip(new, leaves)
      ],
    )
    nu_max = moment('nu_max') if hp.amsgrad else state.nu_max
    return u, BeliefState(count, moment('mu'), moment('nu'), nu_max, stats)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_belief(
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-16,
  eps_root: chex.Numeric = 1e-16,
  *,
  amsgrad: bool = False,
  rectify: bool = False,
  sma_threshold: chex.Numeric = 5.0,
  degenerate_to_sgd: bool = True,
  nesterov: bool = False,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  stochastic_rounding: bool = True,
  rounding_seed: int = 0,
  quantization_block_size: int = 256,
  check_hyperparams: bool = False,
  track_stats: bool = False,
) -> optax.GradientTransformation:
  r"""Rescales updates by the AdaBelief rule (Zhuang et al., 2020).

  For each leaf, at step ``t = 1, 2, ...`` with gradient ``g``::

    m_t   = b1 * m_{t-1} + (1 - b1) * g
    s_t   = b2 * s_{t-1} + (1 - b2) * |g - m_t|^2 + eps_root
    m_hat = m_t / (1 - b1^t),   s_hat = s_t / (1 - b2^t)
    u_t   = m_hat / (sqrt(s_hat) + eps)

  The output is ``u_t``; chain with ``optax.scale_by_learning_rate`` (which
  negates) to obtain the step ``-lr * u_t``.

  Unlike Adam's, AdaBelief's ``eps`` values are compared with a square root of
  ``s``: ``eps_root`` (the paper's epsilon, added to ``s`` every step)
  of 1e-16 plays the role of Adam's eps of 1e-8.

  The arithmetic is done in at least float32 whatever the parameters' dtype;
  updates come back in the gradients' dtype, but for float16 gradients, whose
  unscaled step can exceed float16's range: those come back in float32
  (``optax.apply_updates`` rounds the scaled step to the parameters' dtype).
  Complex leaves use
  ``|g - m|^2 = (g - m) * conj(g - m)`` and a real ``s``.

  Args:
    b1: the decay of the first moment ``m``, in (0, 1). Zero is refused:
      the momentum would be the gradient itself, the prediction error
      ``g - m`` always 0 and ``s`` only ``eps_root``.
    b2: the decay of ``s``, the moving average of the squared prediction
      error, in [0, 1).
    eps: added to ``sqrt(s_hat)`` in the denominator, >= 0.
    eps_root: added to ``s_t`` at every step, >= 0 (the paper's epsilon). It
      must be positive to differentiate through the update (meta-learning),
      where ``sqrt(s)`` at 0 has no derivative.
    amsgrad: if true, ``s_hat`` is computed from the running maximum of ``s``
      over the steps so far (AMSGrad), kept in the state as ``nu_max``.
    rectify: if true, RAdam's variance rectification, as in adabelief-pytorch:
      with ``rho_inf = 2 / (1 - b2) - 1`` and
      ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``, steps with
      ``rho_t >= sma_threshold`` are multiplied by
      ``r_t = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))``,
      and earlier steps follow ``degenerate_to_sgd``.
    sma_threshold: the ``rho_t`` from which rectified steps are adaptive,
      a number > 4.
    degenerate_to_sgd: with ``rectify``, the steps before the threshold are
      momentum-SGD steps, ``u_t = m_hat``, if true, and no steps if false.
    nesterov: if true, Nesterov momentum,
      ``m_hat = b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g / (1 - b1^t)``, as
      ``optax.scale_by_belief(nesterov=True)``.
    mu_dtype: how ``m`` is stored: a float dtype (``'bfloat16'``,
      ``jnp.float32``...), or ``'int8'`` for 8-bit codes with one float32 scale
      per block (3 mantissa bits relative to the block's scale). By default,
      float32 for 16-bit parameters and the parameter's dtype otherwise.
      float16 is refused: it stores nothing below 6e-8 (``m`` of gradients
      below 6e-7), where bfloat16, of the same size, has float32's range.
    nu_dtype: how ``s`` (and its AMSGrad maximum) is stored, likewise, real;
      in 8 bits, 2 mantissa bits over 63 powers of two, a positive ``s``
      never stored as zero. float16 is refused: an ``s`` of 1e-16 is zero
      in float16, and the step ``m / sqrt(s)`` then blows up.
    stochastic_rounding: if true, every store into a narrower format than the
      compute dtype (bfloat16, float16, 8-bit codes) rounds stochastically,
      exact in expectation, with bits hashed from (``rounding_seed``, step,
      leaf, element index): no key in the state, bit-reproducible runs, the
      same bits whatever the sharding. If false, stores round to nearest, with
      which a bfloat16 ``s`` stops decaying (``0.999 * s`` rounds back to
      ``s``). The step uses the moments as stored.
    rounding_seed: the seed of the rounding bits, an integer in [0, 2^32).
    quantization_block_size: the number of elements per scale along the last
      axis of 8-bit moments, at least 8; blocks never span rows, so a leaf
      sharded on its other axes keeps whole blocks. Leaves of fewer than 4096
      elements, or whose last axis is shorter than 8, stay float32. With ``optax.inject_hyperparams``, list it in ``static_args``.
    check_hyperparams: if true, ``b1``, ``b2``, ``eps`` and ``eps_root`` (and
      ``sma_threshold`` with ``rectify``) are checked at every step by a host
      callback that raises: for values traced through
      ``optax.inject_hyperparams``, which construction cannot check.
    track_stats: if true, the belief statistics of every update are kept in the
      state (the share of eps-dominated elements, percentiles of
      ``sqrt(s_hat)``, the RMS of the step and of the parameters: see
      :mod:`adabelief_jax.diagnostics`); read them with
      :func:`~adabelief_jax.belief_stats`. It costs step time and a small sample
      of each parameter in the state.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`BeliefState`.

  References:
    Zhuang et al., `AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients <https://arxiv.org/abs/2010.07468>`_, NeurIPS 2020.
    Liu et al., `On the Variance of the Adaptive Learning Rate and Beyond
    <https://arxiv.org/abs/1908.03265>`_, ICLR 2020 (rectification).
  """
  return scale_by_belief_from(
    BeliefHyperparams(
      b1=b1,
      b2=b2,
      eps=eps,
      eps_root=eps_root,
      amsgrad=amsgrad,
      rectify=rectify,
      sma_threshold=sma_threshold,
      degenerate_to_sgd=degenerate_to_sgd,
      nesterov=nesterov,
      mu_dtype=mu_dtype,
      nu_dtype=nu_dtype,
      stochastic_rounding=stochastic_rounding,
      rounding_seed=rounding_seed,
      quantization_block_size=quantization_block_size,
      check_hyperparams=check_hyperparams,
      track_stats=track_stats,
    )
  )
