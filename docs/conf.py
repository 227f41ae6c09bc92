"""Sphinx configuration: the adabelief-jax API reference and guides.

Build (warnings are errors)::

  sphinx-build -W --keep-going -b html docs docs/_build/html

The guides include the repository's Markdown files (README.md,
examples/README.md, benchmarks/RESULTS.md) with MyST's ``{include}``; their
text is not copied here. No network is used at build time (no intersphinx).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / '_ext'))  # repo_links (local extension)
sys.path.insert(0, str(DOCS.parent))  # adabelief_jax from this checkout

import adabelief_jax  # noqa: E402

project = 'adabelief-jax'
author = 'adabelief-jax authors'
copyright = 'the adabelief-jax authors'
release = adabelief_jax.__version__
version = release

extensions = [
  'sphinx.ext.autodoc',
  'sphinx.ext.napoleon',
  'sphinx.ext.mathjax',
  'sphinx.ext.viewcode',
  'myst_parser',
  'repo_links',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', '_ext', 'Thumbs.db', '.DS_Store']

# -- autodoc / napoleon (Google-style docstrings) -----------------------------
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
# Show these annotations as written in the source, not expanded into their
# definitions (`chex.Numeric` would otherwise read `Array | ndarray | bool | ...`).
autodoc_type_aliases = {
  name: name
  for name in (
    'chex.Array',
    'chex.Numeric',
    'optax.OptState',
    'optax.ScalarOrSchedule',
    'optax.Updates',
    # Not 'optax.Params': Sphinx 9 prints an alias inside Callable[[...], ...]
    # as "TypeAliasForwardRef('optax.Params')".
    'PyTree',
    'WeightDecayMode',
  )
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
# `Attributes:` as `.. attribute::` entries (linkable, e.g. BeliefState.mu).
napoleon_use_ivar = False
napoleon_use_rtype = False

# Fail on broken references to this package's own objects (a :func: to a name
# that is not documented, e.g.). Objects of other packages cannot resolve
# without intersphinx (no network at build time): they are ignored by name
# below, never by warning type. Builtins and typing names resolve by themselves.
nitpicky = True
nitpick_ignore_regex = [
  (r'py:.*', r'(jax|jaxlib|optax|chex|numpy)(\..*)?'),
  # The package's own private type aliases, shown by name (autodoc_type_aliases).
  (r'py:class', r'(PyTree|WeightDecayMode)'),
]

# -- MyST ---------------------------------------------------------------------
myst_heading_anchors = 3  # `file.md#heading-slug` and `#heading-slug` links

# -- HTML ---------------------------------------------------------------------
html_theme = 'alabaster'
html_title = f'adabelief-jax {release}'
html_theme_options = {
  'description': 'AdaBelief as a JAX/Optax gradient transformation',
  'fixed_sidebar': True,
  'show_relbars': True,
}
html_static_path: list[str] = []
