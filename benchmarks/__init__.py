"""Benchmarks of adabelief_jax against optax and the PyTorch references.

Each module runs as ``python -m benchmarks.<name>`` (or ``python
benchmarks/<name>.py``) and exposes ``main(argv) -> dict`` for in-process use:

* :mod:`benchmarks.step_time`: median ms per donated, jitted optimizer step,
  interleaved with optax, PyTorch and a memory-bandwidth floor.
* :mod:`benchmarks.memory`: XLA's memory analysis of one donated step, state
  bytes per parameter, and compile time against the number of leaves.
* :mod:`benchmarks.scaling`: step time against parameter count and leaf count,
  with plots.
* :mod:`benchmarks.mixed_precision`: what bf16 state costs in quality, and
  whether 16-bit parameters stay finite.
* :mod:`benchmarks.fit`: the memory of a whole GPT train step compiled ahead
  of time, and the largest model that fits a device.

The private modules hold what the scripts share: ``_trees`` (parameter trees
and the problem), ``_candidates`` (the optimizer steps compared), ``_timing``
(interleaved timing), ``_report`` (tables, machine info, JSON) and ``_cli``
(the flags, as argparse parents).
"""
