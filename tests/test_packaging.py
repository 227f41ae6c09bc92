"""What a new user gets: the package builds, installs from its wheel, and says what it needs."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def dist(tmp_path_factory) -> Path:
  """The sdist and wheel, built from this checkout (with the installed setuptools)."""
  out = tmp_path_factory.mktemp('dist')
  subprocess.run(
    [sys.executable, '-m', 'build', '--sdist', '--wheel', '--no-isolation', '--outdir', str(out)],
    cwd=ROOT,
    check=True,
    capture_output=True,
    timeout=300,
  )
  return out


def test_sdist_is_the_library_without_half_a_test_tree(dist):
  """The tests need the examples, benchmarks and oracle of a clone: none ships, rather than
  test files that cannot run."""
  (sdist,) = dist.glob('*.tar.gz')
  with tarfile.open(sdist) as archive:
    names = [name.split('/', 1)[1] for name in archive.getnames() if '/' in name]
  assert 'LICENSE' in names and 'adabelief_jax/transform.py' in names
  assert not [n for n in names if n.startswith(('tests', 'benchmarks', 'examples', 'docs'))]


def test_wheel_installs_and_imports(dist, tmp_path):
  (wheel,) = dist.glob('*.whl')
  assert any(n.endswith('licenses/LICENSE') for n in zipfile.ZipFile(wheel).namelist())
  target = tmp_path / 'site'
  subprocess.run(
    [
      sys.executable,
      '-m',
      'pip',
      'install',
      '--no-deps',
      '--quiet',
      '--target',
      str(target),
      str(wheel),
    ],
    check=True,
    timeout=300,
  )
  probe = 'import adabelief_jax; print(adabelief_jax.__file__, adabelief_jax.__version__)'
  out = subprocess.run(
    [sys.executable, '-c', probe],
    cwd=tmp_path,
    env={'PYTHONPATH': str(target), 'JAX_PLATFORMS': 'cpu'},
    check=True,
    capture_output=True,
    text=True,
    timeout=120,
  ).stdout
  assert out.startswith(str(target)), out


def test_license_and_python_version_agree_across_the_metadata():
  """The license is LICENSE's, and every tool targets the minimum Python that pip enforces."""
  config = tomllib.loads((ROOT / 'pyproject.toml').read_text())
  project = config['project']
  assert project['license'] == 'Apache-2.0' and project['license-files'] == ['LICENSE']
  license_text = (ROOT / 'LICENSE').read_text()
  assert 'Apache License' in license_text and 'Version 2.0' in license_text
  match = re.fullmatch(r'>=(\d+)\.(\d+)', project['requires-python'])
  assert match, project['requires-python']
  minimum = tuple(map(int, match.groups()))
  assert minimum == (3, 11)
  assert config['tool']['ruff']['target-version'] == f'py{minimum[0]}{minimum[1]}'
  assert config['tool']['mypy']['python_version'] == f'{minimum[0]}.{minimum[1]}'
  assert sys.version_info[:2] >= minimum
