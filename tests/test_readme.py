"""The documentation runs as written: every Python block of the README and of the docs pages.

Each block runs alone, in a fresh namespace, as a reader who copies only that block runs it: a
block that needs an import or a model from another block fails here. Blocks that ask XLA for
eight CPU devices (they set ``xla_force_host_platform_device_count`` themselves, before they
import JAX, which only a fresh process honours) run in the 8-device child of tests/devices.py;
the others run in this process, on the devices its environment gives (one CPU device in CI).
Where a Python block is followed, with nothing but blank lines between, by a ``text`` (or
unlabelled) block, that is the output it shows: what the Python block prints must be exactly that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest

from tests import devices

ROOT = Path(__file__).resolve().parent.parent
EIGHT_DEVICES = 'xla_force_host_platform_device_count'


def documents() -> list[str]:
  """The Markdown files a reader runs blocks from: the READMEs and the docs pages."""
  docs = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / 'docs').rglob('*.md') if '_build' not in p.parts
  )
  return ['README.md', 'examples/README.md', 'experiments/README.md', *docs]


@dataclasses.dataclass(frozen=True)
class Block:
  """A fenced block: where it is, its info string's first word, its text, and its shown output."""

  document: str
  line: int  # Of the opening fence, 1-based.
  language: str
  code: str
  output: str | None  # The text block right after a Python block, if any.

  @property
  def name(self) -> str:
    return f'{self.document}:{self.line}'


def blocks(document: str) -> list[Block]:
  """The fenced blocks of a Markdown file, with each Python block's shown output.

  Line-based, as CommonMark reads fences: a line starting with three backticks opens a block (the
  rest of the line is its info string, e.g. ``python`` or a MyST ``{include}``) and a line of
  only three backticks closes it.
  """
  lines = (ROOT / document).read_text().splitlines()
  raw: list[tuple[int, int, str, str]] = []  # (first line, last line, language, text)
  start, info, body = -1, '', []
  for i, text in enumerate(lines):
    if start < 0 and text.startswith('```'):
      start, info, body = i, text[3:].strip(), []
    elif start >= 0 and text.strip() == '```':
      raw.append((start, i, (info.split() or [''])[0], '\n'.join(body) + '\n'))
      start = -1
    elif start >= 0:
      body.append(text)
  assert start < 0, f'{document}:{start + 1}: a fenced block is never closed'
  found = []
  for k, (first, last, language, text) in enumerate(raw):
    after = raw[k + 1] if k + 1 < len(raw) else None
    shown = (
      after is not None
      and language == 'python'
      and after[2] in ('text', '')
      and all(not lines[j].strip() for j in range(last + 1, after[0]))
    )
    found.append(Block(document, first + 1, language, text, after[3] if shown else None))
  return found


def python_blocks() -> list[Block]:
  return [b for d in documents() for b in blocks(d) if b.language == 'python']


def run_block(block: Block) -> None:
  """Runs the block in a fresh namespace; raises AssertionError naming it if it fails or misprints."""
  printed = io.StringIO()
  namespace = {'__name__': '__main__'}
  with contextlib.redirect_stdout(printed):
    try:
      exec(compile(block.code, block.name, 'exec'), namespace)
    except Exception as error:
      raise AssertionError(f'{block.name}: the block fails when run alone: {error!r}') from error
  if block.output is not None:
    assert printed.getvalue().strip() == block.output.strip(), (
      f'{block.name} prints other output than the block after it shows:\n{printed.getvalue()}'
    )


ONE_DEVICE = [b for b in python_blocks() if EIGHT_DEVICES not in b.code]
EIGHT = [b for b in python_blocks() if EIGHT_DEVICES in b.code]

CHECKS = devices.Checks()


@CHECKS
def check_eight_device_blocks() -> dict[str, str | None]:
  """Each 8-device block, alone: its name and None, or the error it raised."""
  errors: dict[str, str | None] = {}
  for block in EIGHT:
    try:
      run_block(block)
      errors[block.name] = None
    except AssertionError as error:
      errors[block.name] = str(error)
  return errors


@pytest.mark.parametrize('block', ONE_DEVICE, ids=lambda b: b.name)
def test_block_runs_alone(block):
  run_block(block)


@pytest.mark.parametrize('block', EIGHT, ids=lambda b: b.name)
def test_eight_device_block_runs_alone(block, device_checks):
  error = device_checks.metrics('check_eight_device_blocks')[block.name]
  assert error is None, error


def test_every_python_block_is_found():
  """The fence parser misses no block: its count against a plain count of opening fences."""
  for document in documents():
    fences = sum(line.startswith('```python') for line in (ROOT / document).read_text().split('\n'))
    assert sum(b.language == 'python' for b in blocks(document)) == fences, document
  assert len(ONE_DEVICE) >= 10 and len(EIGHT) >= 3
  assert any(b.output is not None for b in ONE_DEVICE) and any(b.output is not None for b in EIGHT)


def test_readme_blocks_are_one_device():
  """The landing page's blocks run on a one-device machine as they are."""
  assert all(EIGHT_DEVICES not in b.code for b in blocks('README.md'))
