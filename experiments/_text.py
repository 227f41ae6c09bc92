"""Text shared by the language-model experiments: the standard library's source, as bytes.

``lstm_lm.py`` and ``transformer_lm.py`` train on the same files, split the
same way, encode them with the same vocabulary and score them in the same
unit (bits per byte), so that their numbers can be compared. Nothing is
downloaded: the text is the running interpreter's own standard library
(``os.path.dirname(os.__file__)``, top-level ``*.py`` files), ordered by the
SHA-1 of their names; every 10th file goes to validation, the next one to
test, the rest to training. The text, hence the numbers, depend on the
Python version. Example scripts import it as ``import _text``, like
``_common``.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, NamedTuple

import _common
import jax
import numpy as np
import optax
from flax import nnx

# {split: (inputs, next-byte targets)}, each (windows, seq_len), for 'train', 'valid', 'test'.
Data = dict[str, tuple[np.ndarray, np.ndarray]]


def stdlib_splits(train_kb: int, eval_kb: int, file_kb: int = 8) -> tuple[dict, dict]:
  """(bytes per split, file names per split) for 'train', 'valid', 'test'.

  Each file contributes at most its first ``file_kb`` KiB, so that a split
  holds many files rather than a few long ones.
  """
  root = os.path.dirname(os.__file__)
  names = sorted(n for n in os.listdir(root) if n.endswith('.py'))
  names.sort(key=lambda n: hashlib.sha1(n.encode()).hexdigest())
  caps = {'train': train_kb * 1024, 'valid': eval_kb * 1024, 'test': eval_kb * 1024}
  chunks = {split: [] for split in caps}
  files = {split: [] for split in caps}
  sizes = dict.fromkeys(caps, 0)
  for i, name in enumerate(names):
    split = {0: 'valid', 1: 'test'}.get(i % 10, 'train')
    if sizes[split] >= caps[split]:
      continue
    with open(os.path.join(root, name), 'rb') as f:
      text = f.read(file_kb * 1024)[: caps[split] - sizes[split]]
    chunks[split].append(text)
    files[split].append(name)
    sizes[split] += len(text)
  data = {split: b''.join(parts) for split, parts in chunks.items()}
  if min(len(v) for v in data.values()) < 1024:
    raise SystemExit(f'not enough standard-library source under {root}')
  return data, files


def encode(data: dict[str, bytes]) -> tuple[dict[str, np.ndarray], int]:
  """Byte ids over the training bytes' vocabulary (+1 out-of-vocabulary id)."""
  train = np.frombuffer(data['train'], np.uint8)
  vocab = np.unique(train)
  table = np.full(256, len(vocab), np.int32)  # Unseen bytes -> OOV id.
  table[vocab] = np.arange(len(vocab), dtype=np.int32)
  ids = {split: table[np.frombuffer(text, np.uint8)] for split, text in data.items()}
  return ids, len(vocab) + 1


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping (inputs, next-byte targets), each (n, seq_len)."""
  n = (len(ids) - 1) // seq_len
  x = ids[: n * seq_len].reshape(n, seq_len)
  y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
  return x, y


class Corpus(NamedTuple):
  """The text of each split, its files, its windows and the vocabulary size."""

  text: dict[str, bytes]
  files: dict[str, list[str]]
  windows: Data
  vocab: int


def load(train_kb: int, eval_kb: int, file_kb: int, seq_len: int) -> Corpus:
  """The splits of :func:`stdlib_splits`, encoded, as windows of ``seq_len`` bytes."""
  text, files = stdlib_splits(train_kb, eval_kb, file_kb)
  ids, vocab = encode(text)
  return Corpus(text, files, {split: windows(v, seq_len) for split, v in ids.items()}, vocab)


def describe(corpus: Corpus) -> str:
  """'stdlib source (<dir>): train 512 KiB (74 files), ...; vocab 98', for the log."""
  text, files = corpus.text, corpus.files
  return (
    f'stdlib source ({os.path.dirname(os.__file__)}): '
    + ', '.join(
      f'{s} {len(text[s]) // 1024} KiB ({_common.plural(len(files[s]), "file")})' for s in text
    )
    + f'; vocab {corpus.vocab}'
  )


# ----------------------------------------------------------------------------
# Scoring: bits per byte.


@nnx.jit
def window_losses(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """Summed cross-entropy (nats) of each window, shape (batch,); ``model(x)`` gives logits."""
  logits = model(x).astype(np.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum(-1)


def bits_per_byte(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
  """Bits per byte over all windows, in fixed-size batches (one compile)."""
  total = 0.0
  for i in range(0, len(x), batch):
    xb, yb = x[i : i + batch], y[i : i + batch]
    n = len(xb)
    if n < batch:  # Pad with zeros to the compiled shape; padding is dropped.
      xb = np.concatenate([xb, np.zeros((batch - n, x.shape[1]), x.dtype)])
      yb = np.concatenate([yb, np.zeros((batch - n, y.shape[1]), y.dtype)])
    total += float(window_losses(model, xb, yb)[:n].sum())
  return total / (x.size * math.log(2))
