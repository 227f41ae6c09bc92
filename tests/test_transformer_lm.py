"""Tests of experiments/transformer_lm.py: a smoke run with tiny settings, and its model and optimizers.

The script's ``main`` runs in-process into ``tmp_path``; the other tests
check that the model is causal and that the default model is what the
docstring promises.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import check_example_outputs, markdown_tables, mean_std, run_example

# The smoke run's rows: AdamW and Adam are left out, to save their compilations
# (test_every_row_steps builds them).
ROWS = [
  'adabelief',
  'sgd',
  'adabelief, bf16 params',
  'adabelief, bf16-SR state',
  'adabelief, int8 state',
]


def test_transformer_lm(load_experiment, tmp_path, capsys):
  out = tmp_path / 'gpt'
  # dim 32: the MLP's 32 x 128 kernels have 4096 elements, enough for 8-bit state.
  flags = (
    '--steps 4 --evals 2 --seeds 1 --train-kb 8 --eval-kb 1 --dim 32 --heads 2 --layers 1 '
    '--seq-len 16 --batch-size 4 --optimizers adabelief,sgd --lrs-adabelief 3e-3 '
    '--lrs-sgd 0.1,0.3'
  )
  run_example(load_experiment('transformer_lm'), out, flags)
  saved = check_example_outputs(out, ['curves.png'])  # Every number finite, too.
  results = {r['optimizer']: r for r in saved['results']}
  assert list(results) == ROWS
  assert len(results['sgd']['sweep']) == 2 and results['adabelief, bf16-SR state']['sweep'] == []
  vocab = saved['data']['vocab']
  for r in results.values():
    # Barely trained, but a proper model: within a few bits of uniform.
    assert 0.0 < r['test_bpb_mean'] < math.log2(vocab) + 3
    assert 0.0 < r['valid_bpb_mean'] < math.log2(vocab) + 3
    assert r['valid_bpb_std'] == 0.0  # One seed.
    assert r['tokens_per_s'] > 0
    (run,) = r['runs']
    assert len(run['train_bpb']) == len(run['valid_bpb']) == 2
  # The variants rerun AdaBelief's chosen lr.
  assert {results[row]['lr'] for row in ROWS if row.startswith('adabelief')} == {3e-3}
  # State bytes per parameter; step counts and AdaBelief's statistics add a little.
  state = {row: pytest.approx(r['state_bytes_per_param'], abs=0.03) for row, r in results.items()}
  assert state['sgd'] == 4.0 and state['adabelief'] == 8.0
  assert state['adabelief, bf16 params'] == 8.0  # float32 state for bf16 parameters.
  assert state['adabelief, bf16-SR state'] == 4.0
  # The 4096-element kernels in 8 bits.
  assert results['adabelief, int8 state']['state_bytes_per_param'] < 6.0
  # Each variant's final train bpb over float32 AdaBelief's, for its one seed.
  ratios = saved['train_bpb_ratio_to_float32_state']
  assert list(ratios) == ROWS[2:] and all(len(r) == 1 and r[0] > 0 for r in ratios.values())
  # The table, printed and written: a row per optimizer and variant with the numbers of
  # results.json.
  for text in ((out / 'results.md').read_text(), capsys.readouterr().out):
    (table,) = markdown_tables(text)
    assert [row[0] for row in table[1:]] == ROWS
    for row, r in zip(table[1:], results.values()):
      assert float(row[2]) == pytest.approx(r['lr'])
      valid, test = mean_std(row[3]), mean_std(row[4])
      assert valid == pytest.approx((r['valid_bpb_mean'], r['valid_bpb_std']), abs=5.1e-4)
      assert test == pytest.approx((r['test_bpb_mean'], r['test_bpb_std']), abs=5.1e-4)
      assert float(row[7]) == pytest.approx(r['state_bytes_per_param'], abs=0.0051)


def test_model_is_causal(load_experiment):
  """Changing the byte at position 9 leaves the logits at positions 0..8 unchanged."""
  import jax.numpy as jnp
  from flax import nnx

  gpt = load_experiment('transformer_lm')
  args = gpt.parse_args(['--dim', '32', '--heads', '4', '--layers', '2', '--seq-len', '16'])
  model = gpt.GPT(50, args, jnp.float32, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(0).integers(0, 50, (3, 16))
  changed = tokens.copy()
  changed[:, 9] = (changed[:, 9] + 1) % 50
  before, after = np.asarray(model(tokens)), np.asarray(model(changed))
  assert before.shape == (3, 16, 50)
  np.testing.assert_allclose(after[:, :9], before[:, :9], rtol=0, atol=1e-6)
  assert np.all(np.abs(after[:, 9:] - before[:, 9:]).max(axis=-1) > 1e-4)


def test_defaults(load_experiment):
  """>= 3 seeds, equal grids, 0.2-1M parameters, weight matrices large enough for 8 bits."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  gpt = load_experiment('transformer_lm')
  text = load_experiment('_text')
  args = gpt.parse_args([])
  assert args.seeds >= 3
  assert len({len(getattr(args, f'lrs_{name}')) for name in gpt.OPTIMIZERS}) == 1
  vocab = text.load(args.train_kb, args.eval_kb, args.file_kb, args.seq_len).vocab
  model = nnx.eval_shape(lambda: gpt.GPT(vocab, args, jnp.float32, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert 200_000 <= sum(p.size for p in leaves) <= 1_000_000
  assert all(p.size >= 4096 for p in leaves if p.ndim >= 2)


def test_every_row_steps(load_experiment):
  """Each row's chain (every optimizer and variant) takes a finite, non-zero step on a small tree."""
  import jax
  import jax.numpy as jnp

  gpt = load_experiment('transformer_lm')
  params = {'w': jnp.linspace(-1.0, 1.0, 4096 * 2).reshape(64, 128), 'b': jnp.ones(128)}
  grads = jax.tree.map(lambda p: 0.1 * jnp.cos(7 * p), params)
  for row in [*gpt.OPTIMIZERS, *gpt.VARIANTS]:
    tx = gpt.make_tx(row, 1e-2, 10, 0.1)
    update, state = jax.jit(tx.update), tx.init(params)
    for _ in range(2):  # The warm-up starts at lr 0: the first step is zero.
      updates, state = update(grads, state, params)
    leaves = jax.tree.leaves(updates)
    assert all(bool(jnp.all(jnp.isfinite(d))) and float(jnp.abs(d).max()) > 0 for d in leaves)
