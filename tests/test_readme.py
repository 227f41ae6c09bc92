"""The documentation runs as written: every Python block of README.md and examples/README.md.

The blocks of a file run in order in one namespace, as a reader pastes them: a
block may use what the blocks above it defined (the README says so where a
section builds on one model). They run in the 8-device child (tests/devices.py)
because the sharding snippets build a mesh. Where a block is followed by an
unlabelled block (printed output), what the Python block prints must be that.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

from tests import devices

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ['README.md', 'examples/README.md']
_FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.MULTILINE | re.DOTALL)


def blocks(document: str) -> list[tuple[int, str, str]]:
  """(line number, language, code) of each fenced block of a Markdown file."""
  text = (ROOT / document).read_text()
  return [
    (text[: match.start()].count('\n') + 1, match.group(1), match.group(2))
    for match in _FENCE.finditer(text)
  ]


def run_document(document: str) -> dict[str, Any]:
  """Runs the document's Python blocks in order; checks shown output; a summary."""
  namespace: dict[str, Any] = {'__name__': f'readme_{Path(document).stem}'}
  found = blocks(document)
  ran = checked = 0
  for i, (line, language, code) in enumerate(found):
    if language != 'python':
      continue
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      try:
        exec(compile(code, f'{document}:{line}', 'exec'), namespace)
      except Exception as error:
        raise AssertionError(f'{document}, the block at line {line} failed: {error!r}') from error
    ran += 1
    following = found[i + 1] if i + 1 < len(found) else None
    if printed.getvalue() and following and following[1] == '':
      assert printed.getvalue().strip() == following[2].strip(), (
        f'{document}:{following[0]} shows other output than the block at line {line} prints:\n'
        f'{printed.getvalue()}'
      )
      checked += 1
  return {'python_blocks': ran, 'outputs_checked': checked}


CHECKS = devices.Checks()


@CHECKS
def check_readme() -> dict[str, Any]:
  return run_document('README.md')


@CHECKS
def check_examples_readme() -> dict[str, Any]:
  return run_document('examples/README.md')


def test_readme(device_checks):
  metrics = device_checks.metrics('check_readme')
  assert metrics['python_blocks'] == sum(lang == 'python' for _, lang, _ in blocks('README.md'))
  assert metrics['python_blocks'] >= 10 and metrics['outputs_checked'] >= 1


def test_examples_readme(device_checks):
  metrics = device_checks.metrics('check_examples_readme')
  assert metrics['python_blocks'] == sum(
    lang == 'python' for _, lang, _ in blocks('examples/README.md')
  )
