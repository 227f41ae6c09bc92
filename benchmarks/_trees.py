"""Parameter trees of the benchmarks: their shapes, sizes, bytes and contents.

A *shape tree* is a pytree whose leaves are shape tuples; a :class:`Problem`
turns one into device parameters and precomputed gradients that every
candidate of a run shares, so that all of them see the same work.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TRANSFORMER_LAYERS = 12
# The 42M reference tree: d = 512, vocabulary 8192 = 16 d, MLP width 2048 = 4 d.
VOCAB_PER_WIDTH = 16
MLP_PER_WIDTH = 4

Shapes = Any  # A pytree whose leaves are shape tuples.
PyTree = Any


def parse_count(text: str | int | float) -> int:
  """'42M', '1.5e6', '50k', '100000' -> an int, so that flags read like the sizes they mean."""
  if isinstance(text, (int, float)):
    return int(text)
  match = re.fullmatch(r'\s*([0-9.eE+-]+)\s*([kKmMgG]?)\s*', text)
  if not match:
    raise ValueError(f'not a count: {text!r} (write e.g. 42M, 50k or 1e6)')
  scale = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[match.group(2).lower()]
  value = float(match.group(1)) * scale
  if value < 1:
    raise ValueError(f'a count must be >= 1, got {text!r}')
  return round(value)


def parse_counts(text: str) -> list[int]:
  """'1M,3M,10M' -> [1000000, 3000000, 10000000]; '' -> [] (a sweep to skip)."""
  return [parse_count(part) for part in text.split(',') if part.strip()]


def _transformer_count(d: int) -> int:
  """Params of the transformer tree of width ``d``."""
  layer = d * 3 * d + d * d + 2 * d * MLP_PER_WIDTH * d + 4 * d
  return TRANSFORMER_LAYERS * layer + VOCAB_PER_WIDTH * d * d


def transformer_width(n_params: int) -> int:
  """The width d whose transformer tree has closest to ``n_params`` params."""
  # n(d) = (12 * 12 + 16) d^2 + 12 * 4 d: solve the quadratic, then check the
  # neighbours because of rounding.
  a = TRANSFORMER_LAYERS * (4 + 2 * MLP_PER_WIDTH) + VOCAB_PER_WIDTH
  b = TRANSFORMER_LAYERS * 4
  d = int((-b + math.sqrt(b * b + 4 * a * n_params)) / (2 * a))
  candidates = [max(1, d + k) for k in (-1, 0, 1, 2)]
  return min(candidates, key=lambda w: abs(_transformer_count(w) - n_params))


def transformer_shapes(n_params: int) -> Shapes:
  """A 12-layer transformer-like tree of about ``n_params`` parameters.

  At the default 42M: width 512 (qkv 512x1536, attention output 512x512, MLP
  512x2048 and 2048x512, two layernorms' scales and biases per layer) and an
  8192x512 embedding; other sizes scale the width, so the leaf count (97) and
  the proportions stay the same.
  """
  d = transformer_width(n_params)
  h = MLP_PER_WIDTH * d
  layer = {
    'attn': {'qkv': (d, 3 * d), 'out': (d, d)},
    'ln1': {'scale': (d,), 'bias': (d,)},
    'mlp': {'w1': (d, h), 'w2': (h, d)},
    'ln2': {'scale': (d,), 'bias': (d,)},
  }
  return {
    'embed': (VOCAB_PER_WIDTH * d, d),
    'layers': {f'{i:02d}': layer for i in range(TRANSFORMER_LAYERS)},
  }


def equal_shapes(n_params: int, leaves: int) -> Shapes:
  """``leaves`` 1-D leaves that add up to exactly ``n_params``: per-leaf overhead alone."""
  if leaves < 1 or leaves > n_params:
    raise ValueError(f'need 1 <= leaves <= params, got {leaves} and {n_params}')
  base, extra = divmod(n_params, leaves)
  return [(base + (i < extra),) for i in range(leaves)]


def tree_shapes(kind: str, n_params: int, leaves: int) -> Shapes:
  """The ``--tree`` flag's tree: 'transformer' (``leaves`` unused) or 'equal'."""
  if kind == 'transformer':
    return transformer_shapes(n_params)
  if kind == 'equal':
    return equal_shapes(n_params, leaves)
  raise ValueError(f'unknown tree {kind!r}; use transformer or equal')


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def shape_leaves(shapes: Shapes) -> list[tuple[int, ...]]:
  """The shape tuples of ``shapes``, in pytree order."""
  return jax.tree.leaves(shapes, is_leaf=_is_shape)


def count_params(shapes: Shapes) -> int:
  """Total parameters of a shape tree."""
  return sum(math.prod(s) for s in shape_leaves(shapes))


def abstract_tree(shapes: Shapes, dtype: Any) -> PyTree:
  """``jax.ShapeDtypeStruct`` leaves: lowering and compiling need no memory."""
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.dtype(dtype)), shapes, is_leaf=_is_shape
  )


def random_tree(shapes: Shapes, dtype: Any, seed: int, scale: float = 1.0) -> PyTree:
  """Normal(0, scale^2) leaves, drawn on the host in one go (fast at 100M params)."""
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
  sizes = [math.prod(s) for s in leaves]
  flat = np.random.default_rng(seed).standard_normal(sum(sizes), np.float32)
  flat *= np.float32(scale)
  chunks = np.split(flat, np.cumsum(sizes)[:-1])
  return treedef.unflatten(
    [jnp.array(c.reshape(s), dtype=jnp.dtype(dtype)) for c, s in zip(chunks, leaves)]
  )


def nbytes(tree: PyTree, min_ndim: int = 1) -> int:
  """Bytes of the array leaves of ``tree`` with at least ``min_ndim`` dims.

  ``min_ndim=1`` leaves scalars (step counts) out of a state's size. Works on
  arrays and on ``jax.ShapeDtypeStruct`` leaves alike.
  """
  return sum(
    math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
    for leaf in jax.tree.leaves(tree)
    if hasattr(leaf, 'shape') and len(leaf.shape) >= min_ndim
  )


def step_bytes(param_bytes: int, grad_bytes: int, state_bytes: int) -> int:
  """Least traffic of one step: read P, G, S; write P, S (28 B/param for float32 Adam)."""
  return 2 * param_bytes + grad_bytes + 2 * state_bytes


_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


@dataclasses.dataclass
class Problem:
  """The shapes, dtypes, initial parameters and gradients of one benchmark."""

  shapes: Shapes
  dtype: jnp.dtype
  state_dtype: jnp.dtype | None  # None: each optimizer's default.
  params: PyTree  # Device arrays; candidates take copies (their steps donate them).
  grads: PyTree  # Never donated: every step of every candidate reads the same ones.
  n_params: int
  n_leaves: int

  @property
  def param_bytes(self) -> int:
    return self.n_params * self.dtype.itemsize

  def fresh_params(self) -> PyTree:
    """A private copy of the parameters, for a candidate to donate."""
    return _copy_tree(self.params)


def make_problem(
  shapes: Shapes,
  dtype: Any = 'float32',
  state_dtype: Any = None,
  seed: int = 0,
) -> Problem:
  """Parameters ~ N(0, 0.02^2) and gradients ~ N(0, 1e-6) of ``shapes``, from ``seed``."""
  dtype = jnp.dtype(dtype)
  return Problem(
    shapes=shapes,
    dtype=dtype,
    state_dtype=None if state_dtype is None else jnp.dtype(state_dtype),
    params=random_tree(shapes, dtype, seed, scale=0.02),
    grads=random_tree(shapes, dtype, seed + 1, scale=1e-3),
    n_params=count_params(shapes),
    n_leaves=len(shape_leaves(shapes)),
  )
