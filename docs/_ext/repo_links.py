"""Links from included repository files to repository files that are not pages.

The guides ``{include}`` Markdown files that live outside ``docs/`` (e.g.
``examples/README.md``), whose links are relative to *their* folder:
``[quickstart.py](quickstart.py)``, ``[figures/](figures)``. MyST resolves a
link's path relative to the *including* page, finds nothing there, and warns
(``myst.xref_missing``). This extension resolves such a link relative to the
file that contains it instead, and only when that path exists inside the
repository:

* a file (a script, a PNG) becomes a download link, as MyST itself does for
  files next to a page;
* a folder, which no HTML page stands for, keeps its text without a link.

Links to pages (``.md`` files that are documents of the site), anchors,
URLs and paths that exist nowhere are left to MyST, which still warns about
the last.
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


def _link_repository_files(app: Sphinx, doctree: nodes.document) -> None:
  docdir = Path(app.env.doc2path(app.env.docname)).parent
  for node in list(doctree.findall(addnodes.pending_xref)):
    if node.get('reftype') != 'myst' or node.get('refdomain'):
      continue
    path = _repository_path(node)
    if path is None:
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
  return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
