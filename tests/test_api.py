"""The package's shape: explicit signatures, one table of limits, no import cycle."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adabelief_jax
from adabelief_jax import _checks, _hyperparams, compat
from tests.helpers import random_grads, tree_of

PACKAGE = pathlib.Path(adabelief_jax.__file__).parent
OWN = ('b1', 'b2', 'eps', 'eps_root')  # scale_by_belief's positional hyperparameters.


def _parameters(fn) -> dict[str, inspect.Parameter]:
  return dict(inspect.signature(fn).parameters)


@pytest.mark.parametrize('fn', [adabelief_jax.scale_by_belief, adabelief_jax.adabelief])
def test_every_option_is_an_explicit_keyword_documented_in_args(fn):
  """No **options and no rewritten signature: the code lists each option, the
  docstring's Args section says what each does."""
  parameters = _parameters(fn)
  assert all(p.kind is not p.VAR_KEYWORD for p in parameters.values())
  assert not hasattr(fn, '__signature__')
  args = fn.__doc__.split('Args:')[1].split('Returns:')[0]
  for name in parameters:
    assert re.search(rf'^    {name}: \S', args, re.MULTILINE), name
  record = [f.name for f in _hyperparams.dataclasses.fields(_hyperparams.BeliefHyperparams)]
  # Two fields are set by the package's own chains, not by users.
  assert set(record) - {'torch_rectified_eps', 'compute_dtype_updates'} <= set(parameters)


def test_defaults_agree_between_the_constructors_and_the_record():
  """scale_by_belief, adabelief and the record that compat builds from hold the same defaults."""
  belief, alias = _parameters(adabelief_jax.scale_by_belief), _parameters(adabelief_jax.adabelief)
  record = _hyperparams.BeliefHyperparams()
  for name, parameter in belief.items():
    assert alias[name].default == parameter.default == getattr(record, name), name
  assert list(belief)[:4] == list(OWN) == list(alias)[1:5]
  keyword_only = [n for n, p in belief.items() if p.kind is p.KEYWORD_ONLY]
  assert keyword_only == [n for n, p in alias.items() if p.kind is p.KEYWORD_ONLY][1:]


@pytest.mark.parametrize('name', sorted(_checks.LIMITS))
def test_docs_state_the_limits_that_the_checks_apply(name):
  """The interval in each Args entry is the one the checks enforce (b1 = 0 is refused)."""
  interval = str(_checks.LIMITS[name])
  documented = 0
  for fn in (adabelief_jax.scale_by_belief, adabelief_jax.adabelief):
    entry = re.search(rf'^    {name}: (.*?)(?=^    \w+:|\Z)', fn.__doc__, re.MULTILINE | re.DOTALL)
    if entry is not None:
      documented += 1
      assert interval in ' '.join(entry.group(1).split()), (fn.__name__, name, interval)
  assert documented
  low = _checks.LIMITS[name].low
  value_at_low = {True: ValueError, False: None}[_checks.LIMITS[name].low_open]
  make = lambda v: adabelief_jax.adabelief(**{'learning_rate': 1e-3, name: v})
  if value_at_low is None:
    make(low)
  else:
    with pytest.raises(value_at_low, match=name):
      make(low)


def test_compat_checks_the_same_limits_under_the_reference_names():
  with pytest.raises(
    ValueError, match=re.escape('betas[0] must be a finite number in (0, 1) (with b1 = 0')
  ):
    compat.adabelief_pytorch(betas=(0.0, 0.999))
  with pytest.raises(ValueError, match=re.escape('beta_2 must be a finite number in [0, 1)')):
    compat.adabelief_tf(beta_2=1.0)


@pytest.mark.parametrize(
  'name,value', [('b1', 0.5), ('b2', 0.9), ('eps', 1e-8), ('eps_root', 1e-12), ('sma_threshold', 6)]
)
def test_inject_hyperparams_injects_every_numeric_argument(name, value):
  """Each numeric argument is in the injected hyperparameters, and changing it
  there changes the step as passing it does."""
  params = tree_of(np.float32)
  grads = random_grads(params, 8, seed=1)
  make = optax.inject_hyperparams(adabelief_jax.adabelief)
  tx = make(1e-2, rectify=True)
  state = tx.init(params)
  assert {'learning_rate', *OWN, 'sma_threshold', 'weight_decay'} <= set(state.hyperparams)
  state.hyperparams[name] = jnp.asarray(value, jnp.float32)
  constant = adabelief_jax.adabelief(1e-2, rectify=True, **{name: value})
  constant_state = constant.init(params)
  for g in grads:
    injected, state = jax.jit(tx.update)(g, state, params)
    expected, constant_state = jax.jit(constant.update)(g, constant_state, params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9), injected, expected
  )


def _imports(path: pathlib.Path) -> set[str]:
  """The adabelief_jax modules that ``path`` imports (absolute or relative)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names |= {f'{node.module}.{a.name}' for a in node.names}
  return {n for n in names if n.startswith('adabelief_jax')}


def _module_graph() -> dict[str, set[str]]:
  """Each module of the package and the modules of the package it imports."""
  modules = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def test_the_module_graph_has_no_cycle():
  """A package imports its submodules; no module imports one that imports it back."""
  graph = _module_graph()
  is_package = lambda name: (PACKAGE.parent / name.replace('.', '/') / '__init__.py').exists()
  # Importing a submodule runs its package's __init__ first: a package's own
  # imports of its submodules are not the cycles that break an import.
  edges = {
    n: {m for m in deps if not (is_package(n) and m.startswith(n + '.'))}
    for n, deps in graph.items()
  }
  state: dict[str, str] = {}

  def visit(node: str, path: list[str]) -> None:
    state[node] = 'open'
    for nxt in sorted(edges[node]):
      assert state.get(nxt) != 'open', ' -> '.join([*path, node, nxt])
      if nxt not in state:
        visit(nxt, [*path, node])
    state[node] = 'done'

  for node in sorted(edges):
    if node not in state:
      visit(node, [])
  assert 'adabelief_jax.transform' not in graph['adabelief_jax.diagnostics']


def test_the_documented_size_of_a_leaf_in_8_bits_is_the_one_used():
  from adabelief_jax import _quantize

  for fn in (adabelief_jax.scale_by_belief,):
    assert f'fewer than {_quantize.MIN_ELEMENTS} elements' in ' '.join(fn.__doc__.split())
