"""The documentation site holds every page and section that the README and the guides point to.

A link in the README, in a guide or in a file the site shows, to a Markdown file or one of its
sections, must land on a page of the site: a document under docs/ that a toctree lists, or a
repository file that such a page includes whole, and the section must be one of that page's
headings. The rule that finds the page is docs/_ext/repo_links.py's: a repository file outside
docs/ is shown by the page at the same path under docs/ (``benchmarks/RESULTS.md`` by
``docs/benchmarks/RESULTS.md``, ``examples/sharded.py`` by ``docs/examples/sharded.md``), the
README by the home page. Checked on the sources, without Sphinx (CI's ``sphinx-build -W`` fails
on such links too, but only where the docs extra is installed).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / 'docs'
SUFFIXES = ('.md', '.rst')
_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_DOC_ROLE = re.compile(r'\{doc\}`(?:[^`<]*<)?([^`>]+)>?`')
_CODE_SPAN = re.compile(r'(`+).*?\1')


def _fences(text: str) -> list[tuple[str, list[str], int, int]]:
  """(info string, body lines, first line, last line) of each fenced block, 0-based lines."""
  lines = text.split('\n')
  found, start, info = [], -1, ''
  for i, line in enumerate(lines):
    if start < 0 and line.startswith('```'):
      start, info = i, line[3:].strip()
    elif start >= 0 and line.strip() == '```':
      found.append((info, lines[start + 1 : i], start, i))
      start = -1
  return found


def outside_fences(text: str) -> str:
  """The text with its fenced blocks blanked, line structure kept."""
  lines = text.split('\n')
  for _, _, first, last in _fences(text):
    for i in range(first, last + 1):
      lines[i] = ''
  return '\n'.join(lines)


def prose(text: str) -> str:
  """The text outside fenced blocks and code spans: where links are links."""
  return '\n'.join(_CODE_SPAN.sub('', line) for line in outside_fences(text).split('\n'))


def slug(heading: str) -> str:
  """A heading's anchor as GitHub and MyST make it: lower case, punctuation dropped, '-' for ' '."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # A link's text only.
  return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


@functools.cache
def headings(path: Path) -> set[str]:
  """The anchors of a Markdown file's headings (a repeated one as '-1', '-2', ... as GitHub)."""
  seen: dict[str, int] = {}
  anchors = set()
  for line in outside_fences(path.read_text()).split('\n'):
    match = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
    if not match:
      continue
    base = slug(match.group(1).replace('`', ''))
    anchors.add(base if base not in seen else f'{base}-{seen[base]}')
    seen[base] = seen.get(base, 0) + 1
  return anchors


@functools.cache
def pages() -> dict[str, Path]:
  """Every document of the site, by docname."""
  return {
    str(p.relative_to(DOCS).with_suffix('')): p
    for p in sorted(DOCS.rglob('*'))
    if p.suffix in SUFFIXES
    and not {'_build', '_ext', '_snippets', '_static'} & set(p.relative_to(DOCS).parts)
  }


@functools.cache
def includes(page: Path) -> list[tuple[Path, bool]]:
  """The files a page includes ({include}, {literalinclude}), each with whether it is whole."""
  found = []
  for info, body, _, _ in _fences(page.read_text()):
    match = re.match(r'\{(literal)?include\}\s+(\S+)', info)
    if match:
      options = [line for line in body if line.startswith(':')]
      partial = any(
        re.match(r':(start-after|end-before|lines|start-line|end-line):', o) for o in options
      )
      found.append(((page.parent / match.group(2)).resolve(), not partial))
  return found


def listed() -> set[str]:
  """The docnames the site's toctrees list, and the home page."""
  entries = {'index'}
  for docname, path in pages().items():
    for info, body, _, _ in _fences(path.read_text()):
      if info.startswith('{toctree}'):
        folder = str(Path(docname).parent)
        for line in body:
          if line.strip() and not line.startswith(':'):
            entries.add(str((Path(folder) / line.strip()).as_posix()).removeprefix('./'))
  return entries


def page_of(path: Path) -> str | None:
  """The docname of the page that is ``path`` or includes it whole, by repo_links' rule."""
  if path == ROOT / 'README.md':
    candidates = [DOCS / 'index.md']
  elif path.is_relative_to(DOCS):
    candidates = [path]
  else:
    mirror = DOCS / path.relative_to(ROOT)
    candidates = [mirror.with_suffix(s) for s in SUFFIXES]
  all_pages = pages()
  for candidate in candidates:
    docname = str(candidate.relative_to(DOCS).with_suffix(''))
    if all_pages.get(docname) != candidate:
      continue
    if candidate == path or (path, True) in includes(candidate):
      return docname
  return None


def shown_files() -> dict[Path, str]:
  """The Markdown files a reader of the site reads, each with its page's docname."""
  shown = {}
  for docname, path in pages().items():
    if path.suffix == '.md':
      shown[path] = docname
    for included, _ in includes(path):
      if included.suffix == '.md':
        shown[included] = docname
  return shown


def anchors_of(docname: str) -> set[str]:
  """The section anchors of a page: its own headings and those of the files it includes."""
  path = pages()[docname]
  found = headings(path) if path.suffix == '.md' else set()
  for included, _ in includes(path):
    if included.suffix == '.md' and included.exists():
      found |= headings(included)
  return found


def is_documentation(path: Path) -> bool:
  """A page of prose: a docs page, a README, the changelog, the benchmark results.

  Other Markdown files (the full tables a benchmark writes under ``results/``) are data: the site
  offers them as downloads, like a JSON file.
  """
  return path.is_relative_to(DOCS) or path.name in ('README.md', 'CHANGELOG.md', 'RESULTS.md')


def broken_links(source: Path, text: str, in_site: set[str] | None = None) -> list[str]:
  """What is wrong with each link of ``text``, written in the file ``source``.

  ``in_site``: the docnames the toctrees list (by default, what they list now).
  """
  problems = []
  in_site = listed() if in_site is None else in_site
  for role_target in _DOC_ROLE.findall(outside_fences(text)):
    folder = DOCS if role_target.startswith('/') else source.parent
    path = (folder / role_target.lstrip('/')).resolve()
    docname = str(path.relative_to(DOCS)) if path.is_relative_to(DOCS) else None
    if docname not in in_site or docname not in pages():
      problems.append(f'{source.relative_to(ROOT)}: {{doc}}`{role_target}` is no listed page')
  for target in _LINK.findall(prose(text)):
    if '://' in target or target.startswith('mailto:'):
      continue
    file_part, _, anchor = target.partition('#')
    path = (source.parent / file_part).resolve() if file_part else source
    where = f'{source.relative_to(ROOT)}: ({target})'
    if not path.exists():
      problems.append(f'{where}: no such file')
      continue
    shown = is_documentation(path) or (path.suffix == '.py' and path.parent == ROOT / 'examples')
    if not shown:
      continue  # A download or a folder on the site; it exists.
    docname = page_of(path)
    if docname is None or docname not in in_site:
      problems.append(f'{where}: {path.relative_to(ROOT)} is on no page that a toctree lists')
    elif anchor and anchor not in anchors_of(docname):
      problems.append(f'{where}: page {docname} has no section #{anchor}')
  return problems


def test_every_page_is_listed_and_every_entry_is_a_page():
  all_pages, entries = set(pages()), listed()
  assert all_pages - entries == set(), 'pages no toctree lists'
  assert entries - all_pages == set(), 'toctree entries that are no page'


def test_every_included_file_exists():
  missing = [
    f'{path.relative_to(ROOT)} includes {included}'
    for path in pages().values()
    for included, _ in includes(path)
    if not included.is_file()
  ]
  assert missing == []


def test_links_land_on_pages_and_sections_of_the_site():
  files = shown_files()
  assert {ROOT / 'README.md', ROOT / 'CHANGELOG.md', ROOT / 'benchmarks' / 'RESULTS.md'} <= set(
    files
  )
  problems = [p for path in files for p in broken_links(path, path.read_text())]
  assert problems == [], '\n'.join(problems)


def test_every_guide_and_example_is_linked_from_the_readme():
  readme = ROOT / 'README.md'
  targets = {
    (ROOT / t.partition('#')[0]).resolve() for t in _LINK.findall(prose(readme.read_text()))
  }
  guides = set((DOCS / 'guides').glob('*.md'))
  examples = {p for p in (ROOT / 'examples').glob('*.py') if not p.name.startswith('_')}
  assert len(guides) >= 6 and guides - targets == set()
  assert len(examples) >= 4 and examples - targets == set()
  assert all(page_of(p) in listed() for p in examples), 'an example without its page'


@pytest.mark.parametrize(
  'text, problem',
  [
    ('[results](benchmarks/RESULTS.md#no-such-section)', 'has no section #no-such-section'),
    ('[guide](docs/guides/no_such_guide.md)', 'no such file'),
    ('[design](shared/DESIGN.md)', 'no such file'),
    ('[license](LICENSE)', None),
    ('[tests](tests/test_docs.py)', None),
    ('[a table](benchmarks/results/cpu/mixed_precision_long.md)', None),
    ('[stray](adabelief_jax/README.md)', 'no such file'),
    ('see `[not a link](nowhere.md)` and\n```\n[nor](nowhere.md)\n```', None),
    ('[a guide](docs/guides/scaling.md#checkpoints)', None),
  ],
)
def test_the_check_finds_what_it_must(text, problem):
  """broken_links on a file of the repository root: it reports exactly the bad link."""
  found = broken_links(ROOT / 'README.md', text)
  if problem is None:
    assert found == []
  else:
    assert len(found) == 1 and problem in found[0], found


def test_a_guide_left_out_of_the_toctrees_is_reported():
  text = '[scaling](docs/guides/scaling.md#checkpoints) and [results](benchmarks/RESULTS.md)'
  found = broken_links(ROOT / 'README.md', text, in_site={'index', 'benchmarks/RESULTS'})
  assert len(found) == 1 and 'docs/guides/scaling.md is on no page' in found[0], found


def test_page_of_follows_the_rule_of_repo_links():
  assert page_of(ROOT / 'README.md') == 'index'
  assert page_of(DOCS / 'guides' / 'scaling.md') == 'guides/scaling'
  assert page_of(ROOT / 'benchmarks' / 'RESULTS.md') == 'benchmarks/RESULTS'
  assert page_of(ROOT / 'examples' / 'sharded.py') == 'examples/sharded'
  assert page_of(ROOT / 'adabelief_jax' / 'alias.py') is None  # No docs/adabelief_jax/alias.md.
  assert page_of(ROOT / 'pyproject.toml') is None


@pytest.mark.parametrize(
  'text, problem',
  [
    ('{doc}`guides/scaling` and {doc}`the API <api>`', None),
    ('{doc}`/guides/low_memory`', None),
    ('{doc}`guides/no_such_guide`', 'is no listed page'),
  ],
)
def test_the_check_finds_bad_cross_references(text, problem):
  """A MyST {doc} role in a docs page names a listed page, relative to the page or absolute."""
  found = broken_links(DOCS / 'index.md', text)
  if problem is None:
    assert found == []
  else:
    assert len(found) == 1 and problem in found[0], found
