"""The hyperparameters of the AdaBelief rescaling, as one validated record.

:func:`adabelief_jax.scale_by_belief`, :func:`adabelief_jax.adabelief` and the
constructors of :mod:`adabelief_jax.compat` all build a
:class:`BeliefHyperparams` and hand it whole to
:func:`adabelief_jax.transform.scale_by_belief_from`; it is checked once, here.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import chex
import jax.numpy as jnp

from adabelief_jax import _checks


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeliefHyperparams:
  """Everything :func:`~adabelief_jax.scale_by_belief` is configured by.

  The fields are the arguments of :func:`~adabelief_jax.scale_by_belief`
  (see it for their meaning), plus ``torch_rectified_eps``, which
  :func:`~adabelief_jax.compat.adabelief_pytorch` sets: rectified steps then
  divide by ``sqrt(s_t) + eps``, without bias correction on ``eps``, as
  adabelief-pytorch 0.2.1 does. Numeric fields may be Python numbers or JAX
  scalars (traced under ``optax.inject_hyperparams``); concrete values are
  validated when the record is made, and the state dtypes are canonicalized.
  """

  b1: chex.Numeric = 0.9
  b2: chex.Numeric = 0.999
  eps: chex.Numeric = 1e-16
  eps_root: chex.Numeric = 1e-16
  amsgrad: bool = False
  rectify: bool = False
  sma_threshold: chex.Numeric = 5.0
  degenerate_to_sgd: bool = True
  nesterov: bool = False
  mu_dtype: Any = None
  nu_dtype: Any = None
  stochastic_rounding: bool = True
  rounding_seed: int = 0  # A traced integer under optax.inject_hyperparams.
  quantization_block_size: int = 256  # Likewise; 8-bit state then needs it static.
  check_hyperparams: bool = False
  track_stats: bool = False
  torch_rectified_eps: bool = False

  def __post_init__(self) -> None:
    _checks.check_first_decay('b1', self.b1)
    _checks.check_decay('b2', self.b2)
    _checks.check_nonnegative('eps', self.eps)
    _checks.check_nonnegative('eps_root', self.eps_root)
    _checks.check_scalar('sma_threshold', self.sma_threshold, lambda v: v > 4.0, '> 4')
    for name, real in (('mu_dtype', False), ('nu_dtype', True)):
      dtype = _checks.check_state_dtype(name, getattr(self, name), real=real)
      object.__setattr__(self, name, dtype)
    # Integers used to shape arrays or seed the hash; optax.inject_hyperparams
    # may hand them over as (traced) arrays, which are checked where used.
    for name, minimum in (('rounding_seed', 0), ('quantization_block_size', 1)):
      object.__setattr__(self, name, _checks.check_integer(name, getattr(self, name), minimum))

  def numeric(self) -> dict[str, Any]:
    """The numeric hyperparameters ``check_hyperparams`` checks at every step."""
    return {name: getattr(self, name) for name in ('b1', 'b2', 'eps', 'eps_root')}


DEFAULTS = BeliefHyperparams()


class BeliefOptions(TypedDict, total=False):
  """The keyword-only options of :func:`~adabelief_jax.scale_by_belief` and
  :func:`~adabelief_jax.adabelief`, as a type for their ``**options``.

  Their defaults are the fields of :class:`BeliefHyperparams`.
  """

  amsgrad: bool
  rectify: bool
  sma_threshold: chex.Numeric
  degenerate_to_sgd: bool
  nesterov: bool
  mu_dtype: Any
  nu_dtype: Any
  stochastic_rounding: bool
  rounding_seed: int
  quantization_block_size: int
  check_hyperparams: bool
  track_stats: bool


# Each option's documentation, appended once to every constructor that takes
# them (see takes_belief_options), as Google-style "Keyword Args".
OPTION_DOCS = {
  'amsgrad': r"""use the running maximum of ``s``: :math:`\hat s_t` from
    :math:`\max_{k \le t} s_k` (AMSGrad).""",
  'rectify': r"""RAdam's variance rectification, as in adabelief-pytorch: with
    :math:`\rho_\infty = 2/(1-b_2) - 1` and :math:`\rho_t = \rho_\infty - 2 t b_2^t
    / (1 - b_2^t)`, steps with :math:`\rho_t \ge` ``sma_threshold`` are
    multiplied by :math:`r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
    {(\rho_\infty-4)(\rho_\infty-2)\rho_t}}`, earlier ones follow
    ``degenerate_to_sgd``.""",
  'sma_threshold': r"""the :math:`\rho_t` from which rectified steps are adaptive,
    a number above four.""",
  'degenerate_to_sgd': r"""with ``rectify``, take momentum-SGD steps,
    :math:`u_t = \hat m_t`, before the threshold (otherwise no step).""",
  'nesterov': r"""Nesterov momentum, :math:`\hat m_t = b_1 m_t / (1 - b_1^{t+1}) +
    (1 - b_1) g_t / (1 - b_1^t)`, as ``optax.scale_by_belief(nesterov=True)``.""",
  'mu_dtype': """storage of ``m``: a float dtype, or ``jnp.int8`` (``'int8'``)
    for 8-bit codes with one float32 scale per block; default float32 for
    16-bit parameters, else the parameter's dtype.""",
  'nu_dtype': """storage of ``s`` (and its maximum), likewise; float16 is
    refused (an ``s`` of 1e-16 is zero in float16).""",
  'stochastic_rounding': """round every store into a narrower format than the
    compute dtype (bfloat16, float16, 8-bit codes) stochastically, exact in
    expectation, with bits hashed from (``rounding_seed``, step, leaf, element
    index): no key in the state, bit-reproducible runs, the same bits whatever
    the sharding. ``False`` rounds to nearest, with which a bfloat16 ``s``
    stops decaying (``0.999 * s`` rounds back to ``s``).""",
  'rounding_seed': 'seed of the rounding bits, an integer >= 0.',
  'quantization_block_size': """elements per scale along the last axis of
    8-bit moments (blocks never span rows, so a leaf sharded on its other axes
    keeps whole blocks), a positive integer. Leaves of fewer than 4096
    elements stay float32.""",
  'check_hyperparams': """check ``b1``, ``b2``, ``eps`` and ``eps_root`` (for
    ``adabelief``, also numeric learning rate and weight decay) at every step,
    with a host callback that raises: for values traced through
    ``optax.inject_hyperparams``, which construction cannot check.""",
  'track_stats': r"""record the belief statistics of every step in the state
    (eps-dominated fraction, percentiles of :math:`\sqrt{\hat s_t}`, step and
    parameter RMS; see :mod:`adabelief_jax.diagnostics`), read with
    :func:`adabelief_jax.belief_stats`. It costs step time.""",
}

F = TypeVar('F', bound=Callable[..., Any])


def takes_belief_options(fn: F) -> F:
  """Gives ``fn``'s ``**options`` the signature of :class:`BeliefOptions`.

  ``inspect.signature(fn)`` (which ``optax.inject_hyperparams`` binds
  arguments with, and the docs show) then lists each option as a keyword-only
  parameter with its default, in place of ``**options``: the options are
  listed once, in :class:`BeliefOptions`, whatever the number of
  constructors that take them. Their documentation, :data:`OPTION_DOCS`, is
  appended to ``fn``'s docstring in the same way.
  """
  signature = inspect.signature(fn)
  own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
  options = [
    inspect.Parameter(
      name,
      inspect.Parameter.KEYWORD_ONLY,
      default=getattr(DEFAULTS, name),
      annotation=getattr(annotation, '__forward_arg__', annotation),  # As written.
    )
    for name, annotation in BeliefOptions.__annotations__.items()
  ]
  fn.__signature__ = signature.replace(parameters=own + options)  # type: ignore[attr-defined]
  fn.__doc__ = _with_option_docs(fn.__doc__ or '')
  return fn


def _with_option_docs(doc: str) -> str:
  """``doc`` with a "Keyword Args" section of :data:`OPTION_DOCS` before its
  "Returns" (a docstring indented by two spaces, as in this package)."""
  entry = lambda name: textwrap.fill(
    ' '.join(OPTION_DOCS[name].split()),
    width=80,
    initial_indent=f'    {name}: ',
    subsequent_indent='      ',
    break_long_words=False,
    break_on_hyphens=False,
  )
  section = '  Keyword Args:\n' + ''.join(f'{entry(n)}\n' for n in BeliefOptions.__annotations__)
  head, returns, tail = doc.partition('\n  Returns:')
  return (
    f'{head.rstrip()}\n\n{section}\n{returns.lstrip(chr(10))}{tail}' if returns else doc + section
  )


def default_state_dtype(param_dtype: Any, requested: jnp.dtype | None) -> jnp.dtype:
  """``requested``, else float32 for 16-bit parameters, else the parameter's."""
  if requested is not None:
    return requested
  dtype = jnp.dtype(param_dtype)
  if jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype
