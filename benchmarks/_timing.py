"""Timing the candidates: set them up, step them round-robin, summarize.

All candidates of one run see the same parameter shapes and the same
gradients, and are timed round-robin in one process with the start rotated
each round, so that machine noise hits them alike: compare ratios measured in
one run, not absolute times across runs.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from benchmarks._candidates import CANDIDATES, Runner, import_torch
from benchmarks._trees import Problem

Row = dict[str, Any]


def build_runners(
  names: Iterable[str],
  problem: Problem,
  log: Callable[[str], None] = print,
) -> tuple[dict[str, Runner], dict[str, str]]:
  """Sets up (and compiles) each candidate: (runners, skipped name -> why).

  Only a torch candidate may be skipped (torch or adabelief-pytorch missing,
  a dtype it lacks): its reason is logged and returned. Any other candidate
  that fails is a bug in what is measured, so its exception propagates.
  """
  runners, skipped = {}, {}
  for name in names:
    start = time.perf_counter()
    try:
      runners[name] = CANDIDATES[name].build(problem)
    except Exception as e:
      if CANDIDATES[name].family != 'torch':
        raise
      skipped[name] = f'{type(e).__name__}: {e}'
      log(f'  skipped {name}: {skipped[name]}')
      continue
    log(f'  set up {name} in {time.perf_counter() - start:.2f} s')
  return runners, skipped


def time_interleaved(
  runners: dict[str, Runner],
  rounds: int,
  warmup: int = 1,
) -> dict[str, list[float]]:
  """Seconds per step of each runner, round-robin, start rotated each round.

  The garbage collector is off while timing, so that its pauses land on no
  candidate in particular.
  """
  names = list(runners)
  for _ in range(warmup):
    for name in names:
      runners[name].step()
  samples = {name: [] for name in names}
  gc.collect()
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    for r in range(rounds):
      k = r % len(names) if names else 0
      for name in names[k:] + names[:k]:
        start = time.perf_counter()
        runners[name].step()
        samples[name].append(time.perf_counter() - start)
  finally:
    if gc_was_enabled:
      gc.enable()
  return samples


def summarize(
  runners: dict[str, Runner],
  samples: dict[str, list[float]],
  n_params: int,
) -> list[Row]:
  """One row per candidate: times, throughput, bytes, and ratios to optax.adam and the floor."""
  rows = []
  for name, secs in samples.items():
    runner = runners[name]
    median = statistics.median(secs)
    rows.append(
      {
        'mode': name,
        'label': CANDIDATES[name].label,
        'median_ms': median * 1e3,
        'min_ms': min(secs) * 1e3,
        'max_ms': max(secs) * 1e3,
        'samples_ms': [s * 1e3 for s in secs],
        'params_per_s': n_params / median,
        'state_bytes': runner.state_bytes,
        'state_bytes_per_param': runner.state_bytes / n_params,
        'bytes_per_step': runner.bytes_per_step,
        'bytes_per_param': runner.bytes_per_step / n_params,
        'effective_gb_per_s': runner.bytes_per_step / median / 1e9,
      }
    )
  by_name = {row['mode']: row for row in rows}
  for ref, key in (('optax_adam', 'vs_optax_adam'), ('floor', 'vs_floor')):
    base = by_name.get(ref)
    for row in rows:
      row[key] = row['median_ms'] / base['median_ms'] if base else None
  return rows


def measure(
  problem: Problem,
  modes: Sequence[str],
  rounds: int,
  warmup: int,
  torch_threads: int | None = None,
) -> tuple[list[Row], dict[str, str]]:
  """Sets up, times and summarizes ``modes`` on ``problem``: (rows, skipped name -> why).

  Torch gets ``torch_threads`` intra-op threads (default: every core). The
  runners' buffers are freed before this returns, so that the next problem
  of a sweep has the memory to itself.
  """
  if any(CANDIDATES[m].family == 'torch' for m in modes):
    import_torch(torch_threads or os.cpu_count() or 1)
  runners, skipped = build_runners(modes, problem)
  rows = summarize(runners, time_interleaved(runners, rounds, warmup), problem.n_params)
  del runners
  gc.collect()
  return rows, skipped
