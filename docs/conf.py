"""Sphinx configuration: the adabelief-jax documentation site.

Build as CI does (warnings are errors)::

  sphinx-build -q -W --keep-going -b html docs docs/_build/html

The site holds the README (the home page), the guides (docs/guides/), the examples with their code,
the experiments' README, the benchmark results, the changelog and the API reference. A repository
file outside docs/ is shown by the page at the same path under docs/ (``benchmarks/RESULTS.md`` by
``docs/benchmarks/RESULTS.md``, ``examples/quickstart.py`` by ``docs/examples/quickstart.md``;
the README by the home page), which includes it; docs/_ext/repo_links.py sends links to such a file
to its page. Nothing is fetched at build time or when a page is read: no intersphinx, and MathJax
is served from the site itself (sphinx-mathjax-offline).
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
  'sphinx-mathjax-offline',  # Its module name has hyphens: MathJax 3 copied into _static/mathjax.
  'sphinx.ext.viewcode',
  'myst_parser',
  'repo_links',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
# _snippets: parts that pages {include}, not pages of their own.
exclude_patterns = ['_build', '_ext', '_snippets', 'Thumbs.db', '.DS_Store']

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
# One parameter a line where a signature is longer than this (adabelief() has 21).
python_maximum_signature_line_length = 88
nitpicky = True
nitpick_ignore_regex = [
  (r'py:.*', r'(jax|jaxlib|optax|chex|numpy)(\..*)?'),
  # The standard library's abstract types, likewise (no intersphinx to Python's docs).
  (r'py:class', r'collections\.abc\..*'),
  # The package's own private type aliases, shown by name (autodoc_type_aliases).
  (r'py:class', r'(PyTree|WeightDecayMode)'),
]

# -- MyST ---------------------------------------------------------------------
myst_heading_anchors = 3  # `file.md#heading-slug` links, slugs as GitHub makes them

# -- HTML: sphinx-book-theme, as optax, flax and orbax use --------------------
html_theme = 'sphinx_book_theme'
html_title = 'adabelief-jax'
html_theme_options = {
  'home_page_in_toc': True,
  'navbar_persistent': [],  # The search field is in the sidebar; not twice.
  'show_toc_level': 2,
  'navigation_with_keys': False,
  'use_download_button': False,
}
html_static_path = ['_static']
html_css_files = ['custom.css']
