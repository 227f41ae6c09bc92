"""Whole-training memory: the largest GPT-style decoder that fits a device, per optimizer.

For each model of the GPT-3 family (125M to 13B parameters) and each optimizer
configuration (optax.adamw; adabelief with float32, bf16-SR or int8 state, on
float32 or bf16 params), the full train step (forward, cross-entropy loss,
backward, optimizer update, ``optax.apply_updates``; params and optimizer state
donated) is lowered and compiled ahead of time on ``jax.ShapeDtypeStruct``
inputs, so nothing of the model's size is allocated, and XLA's
``memory_analysis()`` is read: argument, output, alias and temporary bytes.
XLA:CPU's buffer assignment stands in for a GPU's: the program is the same, but
a GPU compiler fuses and schedules differently, so the figures estimate a
GPU's, they do not measure one.

Peak = argument + output - alias + temp. Arguments (params, state, tokens) live
for the whole step; an output written in place of a donated argument (alias)
needs no new buffer, any other output does; temp is the one block into which
buffer assignment packs every intermediate value (activations kept for the
backward pass, gradients, logits), its size already the most that is live at
once. Persistent bytes per parameter count params + optimizer state from the
structs of ``jax.eval_shape(tx.init, params)``: what a run keeps between steps.

By default: batch 1 x 2048 tokens (the smallest micro-batch; a larger batch is
gradient accumulation), bf16 matmuls, each model with and without
``jax.checkpoint`` of each layer, fit budgets 16, 24, 40 and 80 GiB. Writes
fit.json and fit.md under --out.

    python -m benchmarks.fit
    python -m benchmarks.fit --sizes tiny --configs adamw bf16_adabelief_int8 --out /tmp/fit
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ''):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

import adabelief_jax  # pylint: disable=g-import-not-at-top
from benchmarks import _cli, _report  # pylint: disable=g-import-not-at-top

GIB = 2**30
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Gpt:
  """A GPT-2/3 decoder: pre-layer-norm blocks, learned positions, tied input/output embedding."""

  name: str
  d_model: int
  n_layers: int
  n_heads: int
  vocab: int = 50304  # GPT-2's 50257 padded to a multiple of 128, as nanoGPT does.
  context: int = 2048

  @property
  def d_head(self) -> int:
    return self.d_model // self.n_heads


# The GPT-3 table (Brown et al. 2020, Table 2.1). 13B's width is 5120 (the table's 5140 is not a
# multiple of its 40 heads of 128); 'tiny' is for tests.
MODELS: dict[str, Gpt] = {
  m.name: m
  for m in [
    Gpt('tiny', 64, 2, 2, vocab=512, context=64),
    Gpt('125M', 768, 12, 12),
    Gpt('350M', 1024, 24, 16),
    Gpt('760M', 1536, 24, 16),
    Gpt('1.3B', 2048, 24, 32),
    Gpt('2.7B', 2560, 32, 32),
    Gpt('6.7B', 4096, 32, 32),
    Gpt('13B', 5120, 40, 40),
  ]
}
DEFAULT_SIZES = ['125M', '350M', '760M', '1.3B', '2.7B', '6.7B', '13B']


def param_shapes(model: Gpt) -> dict[str, Any]:
  """Shape tuples of the parameters; each per-layer leaf stacked on a leading layer axis."""
  d, n = model.d_model, model.n_layers
  return {
    'embed': (model.vocab, d),
    'position': (model.context, d),
    'layers': {
      'ln1': {'scale': (n, d), 'bias': (n, d)},
      'qkv': {'w': (n, d, 3 * d), 'b': (n, 3 * d)},
      'out': {'w': (n, d, d), 'b': (n, d)},
      'ln2': {'scale': (n, d), 'bias': (n, d)},
      'fc': {'w': (n, d, 4 * d), 'b': (n, 4 * d)},
      'proj': {'w': (n, 4 * d, d), 'b': (n, d)},
    },
    'ln_f': {'scale': (d,), 'bias': (d,)},
  }


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(k, int) for k in x)


def abstract_params(model: Gpt, dtype: Any) -> PyTree:
  """``jax.ShapeDtypeStruct`` params of ``model`` in ``dtype``: nothing allocated."""
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.dtype(dtype)), param_shapes(model), is_leaf=_is_shape
  )


def tree_bytes(tree: PyTree) -> int:
  """Bytes of every leaf of a tree of arrays or structs, scalars (step counts) included."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def bytes_by_dtype(tree: PyTree) -> dict[str, int]:
  """Bytes of ``tree`` per leaf dtype: what a state is made of (e.g. int8 codes, float32 scales)."""
  out: dict[str, int] = {}
  for x in jax.tree.leaves(tree):
    key = str(jnp.dtype(x.dtype))
    out[key] = out.get(key, 0) + math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
  return out


def _layer_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  """Layer norm with its statistics in float32 (bf16 sums of d values lose digits)."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + 1e-5)
  return (y * p['scale'].astype(jnp.float32) + p['bias'].astype(jnp.float32)).astype(x.dtype)


def _attention(x: jax.Array, p: dict[str, Any], model: Gpt) -> jax.Array:
  """Causal multi-head self-attention by ``jax.nn.dot_product_attention``'s XLA implementation.

  Its scores are materialized (softmax in float32), as on any backend without a
  fused attention kernel; a flash-attention kernel would keep less for the
  backward pass.
  """
  b, s, d = x.shape
  qkv = x @ p['qkv']['w'] + p['qkv']['b']
  q, k, v = (t.reshape(b, s, model.n_heads, model.d_head) for t in jnp.split(qkv, 3, axis=-1))
  out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation='xla')
  return out.reshape(b, s, d) @ p['out']['w'] + p['out']['b']


def _block(x: jax.Array, p: dict[str, Any], model: Gpt) -> jax.Array:
  """One pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(.)) with GELU, 4d wide."""
  x = x + _attention(_layer_norm(x, p['ln1']), p, model)
  h = jax.nn.gelu(_layer_norm(x, p['ln2']) @ p['fc']['w'] + p['fc']['b'])
  return x + h @ p['proj']['w'] + p['proj']['b']


def loss_fn(
  params: PyTree, tokens: jax.Array, model: Gpt, compute_dtype: Any, remat: bool
) -> jax.Array:
  """Mean next-token cross-entropy of ``tokens`` (batch, seq + 1).

  Each layer's params are cast to ``compute_dtype`` inside the scanned body, so
  the cast copy is one layer's, and gradients reach the params in the params'
  dtype (bf16 params get bf16 gradients). With ``remat`` the body is
  ``jax.checkpoint``-ed: the backward pass keeps each layer's input only and
  recomputes the rest.
  """
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  cast = lambda tree: jax.tree.map(lambda a: a.astype(compute_dtype), tree)
  embed = params['embed'].astype(compute_dtype)
  x = embed[inputs] + params['position'][: inputs.shape[1]].astype(compute_dtype)

  def body(x: jax.Array, layer: PyTree) -> tuple[jax.Array, None]:
    return _block(x, cast(layer), model), None

  x, _ = jax.lax.scan(jax.checkpoint(body) if remat else body, x, params['layers'])
  logits = (_layer_norm(x, params['ln_f']) @ embed.T).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def make_train_step(
  tx: optax.GradientTransformation, model: Gpt, compute_dtype: Any, remat: bool
) -> Callable[..., Any]:
  """The jitted step (params, state, tokens) -> (params, state, loss), params and state donated."""

  def step(params: PyTree, state: PyTree, tokens: jax.Array) -> tuple[PyTree, PyTree, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, model, compute_dtype, remat)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return jax.jit(step, donate_argnums=(0, 1))


@dataclasses.dataclass(frozen=True)
class Config:
  """An optimizer configuration: its label, the params' dtype and the optimizer."""

  label: str
  param_dtype: str
  make_tx: Callable[[], optax.GradientTransformation]


LEARNING_RATE = 3e-4
WEIGHT_DECAY = 0.1  # GPT-3's; the same for every optimizer (it changes no buffer).

# Every AdaBelief configuration is built by adabelief_jax.adabelief alone, so that what it
# adds for 16-bit params (stochastic rounding of the parameter update) is measured as it ships.
CONFIGS: dict[str, Config] = {
  'adamw': Config(
    'optax.adamw, f32 params',
    'float32',
    lambda: optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
  ),
  'adabelief': Config(
    'adabelief, f32 params, f32 state',
    'float32',
    lambda: adabelief_jax.adabelief(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
  ),
  'adabelief_bf16': Config(
    'adabelief, f32 params, bf16-SR state',
    'float32',
    lambda: adabelief_jax.adabelief(
      LEARNING_RATE, weight_decay=WEIGHT_DECAY, mu_dtype='bfloat16', nu_dtype='bfloat16'
    ),
  ),
  'adabelief_int8': Config(
    'adabelief, f32 params, int8 state',
    'float32',
    lambda: adabelief_jax.adabelief(
      LEARNING_RATE, weight_decay=WEIGHT_DECAY, mu_dtype='int8', nu_dtype='int8'
    ),
  ),
  'bf16_adabelief_bf16': Config(
    'adabelief, bf16 params, bf16-SR state',
    'bfloat16',
    lambda: adabelief_jax.adabelief(
      LEARNING_RATE, weight_decay=WEIGHT_DECAY, mu_dtype='bfloat16', nu_dtype='bfloat16'
    ),
  ),
  'bf16_adabelief_int8': Config(
    'adabelief, bf16 params, int8 state',
    'bfloat16',
    lambda: adabelief_jax.adabelief(
      LEARNING_RATE, weight_decay=WEIGHT_DECAY, mu_dtype='int8', nu_dtype='int8'
    ),
  ),
}
DEVICE_GIB = [16, 24, 40, 80]


def persistent(config: Config, model: Gpt) -> dict[str, Any]:
  """Params and optimizer state of ``config`` on ``model``, from structs alone (no compile).

  Bytes per parameter = (params + state) / params: 12 for AdamW with float32
  params (4 + two float32 moments), ~4 for bf16 params with 8-bit moments.
  """
  params = abstract_params(model, config.param_dtype)
  state = jax.eval_shape(config.make_tx().init, params)
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  param_bytes, state_bytes = tree_bytes(params), tree_bytes(state)
  return {
    'params': n,
    'param_bytes': param_bytes,
    'state_bytes': state_bytes,
    'state_bytes_by_dtype': bytes_by_dtype(state),
    'persistent_bytes': param_bytes + state_bytes,
    'persistent_bytes_per_param': (param_bytes + state_bytes) / n,
  }


# XLA:CPU has no bfloat16 matmul: it converts bf16 operands to float32. Left to its loop-invariant
# code motion, it hoists that convert of the stacked bf16 weights out of the layer scan, a float32
# copy of every weight at once (4 bytes/param) that a GPU, which multiplies bf16 natively, never
# makes. Without the pass the convert stays inside the loop: one layer's copy at a time.
NO_HOIST = {'xla_disable_hlo_passes': 'while-loop-invariant-code-motion'}


def memory_row(
  size: str,
  config_name: str,
  batch: int,
  seq: int,
  remat: bool,
  compute_dtype: str = 'bfloat16',
  hoist: bool = False,
) -> dict[str, Any]:
  """XLA's memory analysis of one compiled train step, with the persistent bytes beside it.

  Peak = argument + output - alias + temp (see the module docstring).
  """
  model, config = MODELS[size], CONFIGS[config_name]
  if seq > model.context:
    raise ValueError(f'seq={seq} exceeds the context of model {size!r} ({model.context}).')
  tx = config.make_tx()
  params = abstract_params(model, config.param_dtype)
  state = jax.eval_shape(tx.init, params)
  tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
  start = time.perf_counter()
  lowered = make_train_step(tx, model, jnp.dtype(compute_dtype), remat).lower(params, state, tokens)
  ma = lowered.compile(compiler_options=None if hoist else NO_HOIST).memory_analysis()
  compile_s = time.perf_counter() - start
  row = {
    'size': size,
    'config': config_name,
    'label': config.label,
    'param_dtype': config.param_dtype,
    'compute_dtype': compute_dtype,
    'batch': batch,
    'seq': seq,
    'remat': remat,
    **persistent(config, model),
    'grad_bytes': tree_bytes(params),  # Gradients come in the params' dtype.
    'token_bytes': tree_bytes(tokens),
    'argument_bytes': ma.argument_size_in_bytes,
    'output_bytes': ma.output_size_in_bytes,
    'alias_bytes': ma.alias_size_in_bytes,
    'temp_bytes': ma.temp_size_in_bytes,
    'compile_s': compile_s,
  }
  row['peak_bytes'] = (
    row['argument_bytes'] + row['output_bytes'] - row['alias_bytes'] + row['temp_bytes']
  )
  row['peak_bytes_per_param'] = row['peak_bytes'] / row['params']
  return row


def largest_fits(
  rows: Sequence[dict[str, Any]], budgets_gib: Sequence[float]
) -> list[dict[str, Any]]:
  """Per config and remat setting, the model with the most params whose peak fits each budget."""
  out = []
  for key in dict.fromkeys((r['config'], r['remat']) for r in rows):
    mine = [r for r in rows if (r['config'], r['remat']) == key]
    fit_row = {'config': key[0], 'label': mine[0]['label'], 'remat': key[1]}
    for gib in budgets_gib:
      fitting = [r for r in mine if r['peak_bytes'] <= gib * GIB]
      fit_row[f'{gib:g} GiB'] = max(fitting, key=lambda r: r['params'])['size'] if fitting else None
    out.append(fit_row)
  return out


_yes_no = lambda r: 'yes' if r['remat'] else 'no'

MEMORY_COLUMNS: dict[str, _report.Column] = {
  'model': 'size',
  'params': 'params',
  'config': 'label',
  'remat': _yes_no,
  'persistent B/param': 'persistent_bytes_per_param',
  'persistent GiB': lambda r: r['persistent_bytes'] / GIB,
  'args GiB': lambda r: r['argument_bytes'] / GIB,
  'outputs GiB': lambda r: r['output_bytes'] / GIB,
  'alias GiB': lambda r: r['alias_bytes'] / GIB,
  'temp GiB': lambda r: r['temp_bytes'] / GIB,
  'grads GiB': lambda r: r['grad_bytes'] / GIB,
  'peak GiB': lambda r: r['peak_bytes'] / GIB,
  'peak B/param': 'peak_bytes_per_param',
}


def fit_table(result: dict[str, Any]) -> str:
  """Largest model that fits each budget, one row per config and remat setting."""
  columns: dict[str, _report.Column] = {'config': 'label', 'remat': _yes_no}
  columns.update({f'{g:g} GiB': f'{g:g} GiB' for g in result['config']['budgets']})
  return _report.rows_table(result['fits'], columns)


def peak_table(rows: Sequence[dict[str, Any]]) -> str:
  """Peak GiB by config and remat setting (rows) and model (columns)."""
  sizes = list(dict.fromkeys(r['size'] for r in rows))
  keys = list(dict.fromkeys((r['label'], r['remat']) for r in rows))
  peak = {(r['label'], r['remat'], r['size']): r['peak_bytes'] / GIB for r in rows}
  return _report.table(
    ['peak GiB', 'remat', *sizes],
    [
      [label, 'yes' if remat else 'no', *(peak.get((label, remat, s)) for s in sizes)]
      for label, remat in keys
    ],
  )


def markdown(result: dict[str, Any]) -> str:
  """fit.md: what was compiled and how to read it, then the fit, peak and full tables."""
  c = result['config']
  seq = '/'.join(dict.fromkeys(str(r['seq']) for r in result['memory']))
  return '\n\n'.join(
    [
      '# Whole-training memory of GPT-style decoders (`python -m benchmarks.fit`)',
      f'Command: `{result["command"]}`. Train step = forward, cross-entropy, backward, optimizer '
      f'update, `optax.apply_updates`; params and optimizer state donated; batch {c["batch"]} x '
      f'{seq} tokens; matmuls in {c["compute_dtype"]} (layer norm, softmax and loss in float32; '
      "gradients in the params' dtype); attention by `jax.nn.dot_product_attention` "
      "(implementation='xla', scores materialized); remat = `jax.checkpoint` of each layer. "
      'Compiled ahead of time on `jax.ShapeDtypeStruct` inputs; nothing allocated.',
      "**XLA:CPU's buffer assignment stands in for a GPU's**: the numbers are those of the "
      'CPU compiler on the same program, an estimate of what a GPU needs, not a measurement of one. '
      'XLA:CPU converts bf16 matmul operands to float32 ('
      + (
        'all weights at once: loop-invariant code motion is on and hoists the convert'
        if c['xla_hoist']
        else 'one layer at a time here: loop-invariant code motion is off'
      )
      + ').',
      'Peak = argument + output - alias + temp: arguments (params, state, tokens) live through '
      'the step, an output written in place of a donated argument (alias) takes no new memory, '
      'temp is the block buffer assignment packs every intermediate into (activations, gradients, '
      'logits), already sized to what is live at once. Persistent = params + optimizer state, '
      'from the structs of `jax.eval_shape(tx.init, params)`. Budgets are whole device memory, '
      'nothing reserved for the runtime.',
      '## Largest model that fits\n\n' + fit_table(result),
      '## Peak by model\n\n' + peak_table(result['memory']),
      '## Every number\n\n' + _report.rows_table(result['memory'], MEMORY_COLUMNS),
      f'Machine: {_report.machine_line(result["machine"])}. Checkout {result["revision"]}; '
      f'library {result["library"]}.',
    ]
  )


def _git_revision() -> str | None:
  """The checkout's commit, '+dirty' if tracked files changed: which code was measured."""
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    git = lambda *a: subprocess.run(
      ['git', *a], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    return git('rev-parse', 'HEAD') + ('+dirty' if git('status', '--porcelain', '-uno') else '')
  except (OSError, subprocess.CalledProcessError):
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """--sizes, --configs, --batch, --seq, --remat, --compute-dtype, --budgets, --xla-hoist, --out."""
  parser = _cli.make_parser(
    'python -m benchmarks.fit', __doc__, [_cli.out('benchmarks/results/cpu')]
  )
  parser.add_argument(
    '--sizes',
    nargs='+',
    choices=list(MODELS),
    default=DEFAULT_SIZES,
    help=f'models of the family (default: {" ".join(DEFAULT_SIZES)}; tiny is for tests)',
  )
  parser.add_argument(
    '--configs',
    nargs='+',
    choices=list(CONFIGS),
    default=list(CONFIGS),
    help='optimizer configurations (default: all)',
  )
  parser.add_argument('--batch', type=int, default=1, help='sequences per step (default 1)')
  parser.add_argument(
    '--seq', type=int, default=None, help="tokens per sequence (default: each model's context)"
  )
  parser.add_argument(
    '--remat',
    choices=['no', 'yes', 'both'],
    default='both',
    help='jax.checkpoint each layer: no, yes, or a row of each (default both)',
  )
  parser.add_argument(
    '--compute-dtype',
    choices=_cli.DTYPES,
    default='bfloat16',
    help='dtype of the matmuls, whatever the params (default bfloat16)',
  )
  parser.add_argument(
    '--budgets',
    nargs='+',
    type=float,
    default=DEVICE_GIB,
    help='device memories of the fit table, GiB (default 16 24 40 80)',
  )
  parser.add_argument(
    '--xla-hoist',
    action='store_true',
    help="keep XLA:CPU's loop-invariant code motion, which hoists a float32 copy of all bf16 "
    'weights out of the layer loop (a CPU-only artifact; off by default)',
  )
  args = parser.parse_args(argv)
  if args.batch < 1 or (args.seq is not None and args.seq < 1):
    parser.error(f'--batch and --seq must be >= 1, got {args.batch} and {args.seq}')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Compiles every (size, config, remat) step; prints the tables, writes fit.json and fit.md."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  remats = {'no': [False], 'yes': [True], 'both': [False, True]}[args.remat]
  print(
    f'# fit: train-step memory of GPT sizes {args.sizes}, batch {args.batch} x seq '
    f"{args.seq or 'context'}, compute {args.compute_dtype}; XLA:CPU's buffer assignment "
    "stands in for a GPU's"
  )
  rows = []
  for size in args.sizes:
    seq = args.seq or MODELS[size].context
    for config in args.configs:
      for remat in remats:
        row = memory_row(size, config, args.batch, seq, remat, args.compute_dtype, args.xla_hoist)
        rows.append(row)
        print(
          f'  {size} {config} remat={remat}: {row["persistent_bytes_per_param"]:.3f} B/param '
          f'persistent, peak {row["peak_bytes"] / GIB:.2f} GiB, compiled in {row["compile_s"]:.1f} s'
        )
        gc.collect()
  result = {
    'benchmark': 'fit',
    'command': ' '.join(['python -m benchmarks.fit', *argv]),
    'config': vars(args),
    'revision': _git_revision(),
    'library': str(pathlib.Path(adabelief_jax.__file__).parent),
    'machine': _report.machine_info(),
    'memory': rows,
    'fits': largest_fits(rows, args.budgets),
  }
  result['table'] = fit_table(result) + '\n\n' + peak_table(rows)
  _report.emit(result, f'{args.out}/fit.json')
  with open(f'{args.out}/fit.md', 'w') as f:
    f.write(markdown(result) + '\n')
  print(f'Wrote {args.out}/fit.md')
  return result


if __name__ == '__main__':
  main()
