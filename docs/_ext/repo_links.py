"""Links written for the repository, made to work on the site.

The README, the guides and the files the site includes (``benchmarks/RESULTS.md``,
``experiments/README.md``, ``CHANGELOG.md``) link to repository paths relative to the file that
holds the link, so that they work on GitHub and in a clone: ``docs/guides/scaling.md`` from the
README, ``../../benchmarks/RESULTS.md#scaling`` from a guide, ``quickstart_tuned.py`` from the
experiments' README. MyST resolves a link relative to the *including* page instead, finds nothing
there, and warns (``myst.xref_missing``). This extension resolves such a link relative to the file
that contains it, and then:

* a page of the site (a ``.md``/``.rst`` file under docs/), or a repository file that a page shows
  (the page at the same path under docs/, e.g. ``docs/benchmarks/RESULTS.md`` for
  ``benchmarks/RESULTS.md`` and ``docs/examples/quickstart.md`` for ``examples/quickstart.py``;
  the home page for the README), becomes a link to that page, with its ``#anchor``: MyST then
  checks the anchor and warns if the page has no such heading;
* another file (a test, a JSON result) becomes a download link, as MyST itself makes for files
  next to a page;
* a folder, which no page stands for, keeps its text without a link.

URLs, bare anchors and paths that exist nowhere are left to MyST, which still warns about the last.
tests/test_docs.py applies the same rule without building the site.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx

REPOSITORY = Path(__file__).resolve().parents[2]


def _repository_path(node: addnodes.pending_xref) -> Path | None:
  """The existing repository file or folder the link names, from its source file."""
  target = node.get('reftarget', '')
  source = node.source or ''
  if not target or not source or target.startswith('#') or '://' in target:
    return None
  path = (Path(source).parent / target.split('#', 1)[0]).resolve()
  if not path.is_relative_to(REPOSITORY) or not path.exists():
    return None
  return path


def page_of(app: Sphinx, path: Path) -> str | None:
  """The docname of the page that is ``path`` or shows it, if the site has one."""
  srcdir = Path(app.srcdir).resolve()
  if path == REPOSITORY / 'README.md':
    return str(app.config.root_doc)
  if path.is_relative_to(srcdir):
    candidates = [path]
  else:
    mirror = srcdir / path.relative_to(REPOSITORY)
    candidates = [mirror.with_suffix(suffix) for suffix in app.config.source_suffix]
  for candidate in candidates:
    docname = app.env.path2doc(str(candidate))
    if docname is not None and docname in app.env.found_docs:
      return docname
  return None


def _outside_document(app: Sphinx, node: addnodes.pending_xref) -> Path | None:
  """The repository file of a document link that MyST made to a file outside docs/.

  A guide's ``../../benchmarks/RESULTS.md`` is a Markdown file that exists, so MyST makes it a
  document link whose docname, the file's path without its suffix, is no page of the site.
  """
  target = node.get('reftarget', '')
  if target in app.env.found_docs:
    return None
  base = Path(target) if Path(target).is_absolute() else Path(app.srcdir) / target
  for suffix in app.config.source_suffix:
    path = base.parent.resolve() / (base.name + suffix)
    if path.is_file() and path.is_relative_to(REPOSITORY):
      return path
  return None


def _link_repository_files(app: Sphinx, doctree: nodes.document) -> None:
  docdir = Path(app.env.doc2path(app.env.docname)).parent
  for node in list(doctree.findall(addnodes.pending_xref)):
    if node.get('reftype') != 'myst':
      continue
    if node.get('refdomain') == 'doc':
      outside = _outside_document(app, node)
      page = page_of(app, outside) if outside is not None else None
      if page is not None:
        node['reftarget'] = page
      continue
    if node.get('refdomain'):
      continue
    path = _repository_path(node)
    if path is None:
      continue
    page = page_of(app, path) if path.is_file() else None
    if page is not None:
      anchor = node['reftarget'].partition('#')[2]
      node['refdomain'] = 'doc'
      node['reftarget'] = page
      node['reftargetid'] = anchor or None
      continue
    if path.is_file():
      new: nodes.Element = addnodes.download_reference(
        '',
        '',
        *node.children,
        refdomain=None,
        reftype='myst',
        reftarget=os.path.relpath(path, docdir),
        refdoc=app.env.docname,
        refexplicit=True,
        classes=['xref', 'download', 'myst'],
      )
    else:
      new = nodes.inline('', '', *node.children)
    new.source, new.line = node.source, node.line
    node.replace_self(new)


def setup(app: Sphinx) -> dict[str, Any]:
  # Before the environment collectors (priority 500) copy downloads and images.
  app.connect('doctree-read', _link_repository_files, priority=400)
  return {'version': '2', 'parallel_read_safe': True, 'parallel_write_safe': True}
