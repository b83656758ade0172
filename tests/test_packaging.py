"""Packaging: the wheel, the console scripts and what importing pulls in.

The wheel is built without build isolation from a copy of the sources, so
the test is offline and leaves the checkout alone; it needs the setuptools
pinned in requirements-test.txt (the installed one builds it).
"""

import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest

from conftest import REPO
from helpers import repo

PYPROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())
SCRIPTS = PYPROJECT['project']['scripts']

# A flag each command's --help must list.
HELP_FLAG = {
    'alexnet-train': '--workdir',
    'alexnet-evaluate': '--checkpoint',
    'alexnet-predict': '--top_k',
    'alexnet-convert': '--format',
    'alexnet-benchmark': '--quick',
    'alexnet-prepare-imagenet': '--manual_dir',
    'alexnet-data-stats': '--resize_method',
    'alexnet-prepare-data': '--images_per_shard',
}

# Modules that compare against PyTorch or PIL by design; everything else in
# the package must import with neither installed.
MAY_IMPORT_TORCH_OR_PIL = (
    'alexnet_jax.reference',
    'alexnet_jax.benchmark',  # the command and its benchmarks/ package
)


def _source_copy(dest):
  """The files a build reads, without caches and the editable install's
  egg-info (setuptools would reuse its SOURCES.txt)."""
  skip = shutil.ignore_patterns('__pycache__', '*.egg-info', 'build')
  for name in ('pyproject.toml', 'README.md', 'LICENSE'):
    shutil.copy2(REPO / name, dest / name)
  for name in ('alexnet_jax',):  # configs/ links to alexnet_jax/configs
    shutil.copytree(REPO / name, dest / name, ignore=skip)
  return dest


_WARNING = re.compile(r'(?i)warning\b|would be ignored')
_FILE_LINE = re.compile(r'\s*(copying|adding|creating) ')


def _build_env():
  env = dict(os.environ)
  # This machine's pip.conf names index folders that may not exist, and
  # PYTHONDONTWRITEBYTECODE makes distutils warn that it skips byte-compiling:
  # neither is the project's. PIP_CONFIG_FILE=os.devnull ignores pip.conf.
  env['PIP_CONFIG_FILE'] = os.devnull
  env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
  env.pop('PYTHONDONTWRITEBYTECODE', None)
  return env


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """(path of the built wheel, the verbose build log)."""
  src = _source_copy(tmp_path_factory.mktemp('src'))
  out = tmp_path_factory.mktemp('dist')
  pip = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-index']
  r = subprocess.run(
      pip + ['--no-build-isolation', '-v', '-w', str(out), str(src)],
      capture_output=True,
      text=True,
      env=_build_env(),
      timeout=600,
  )
  log = r.stdout + r.stderr
  assert r.returncode == 0, (
      f'{log[-3000:]}\n(pip wheel failed: is the setuptools of '
      'requirements-test.txt installed?)'
  )
  (path,) = out.glob('alexnet_jax-*.whl')
  return path, log


def test_wheel_builds_without_warnings(wheel):
  _, log = wheel
  # Not the file list: a file named warning.py is no warning.
  lines = [l for l in log.splitlines() if not _FILE_LINE.match(l)]
  noise = [l for l in lines if _WARNING.search(l)]
  assert not noise, '\n'.join(noise[:40])


def test_wheel_has_the_package_data(wheel):
  path, _ = wheel
  names = set(zipfile.ZipFile(path).namelist())
  data = ('assets/*.txt', 'assets/cifar10_mini/*/*/*.jpg', 'core/csrc/*.cc')
  want = {
      'alexnet_jax/' + p.relative_to(REPO / 'alexnet_jax').as_posix()
      for pattern in data
      for p in (REPO / 'alexnet_jax').glob(pattern)
  }
  want |= {
      f'alexnet_jax/configs/{p.name}' for p in (REPO / 'configs').glob('*.py')
  }
  suffixes = {pathlib.PurePath(n).suffix for n in want}
  assert suffixes == {'.txt', '.jpg', '.cc', '.py'}  # the globs found files
  assert sorted(want - names) == []


def test_wheel_declares_the_console_scripts(wheel):
  path, _ = wheel
  with zipfile.ZipFile(path) as z:
    (ep,) = [n for n in z.namelist() if n.endswith('/entry_points.txt')]
    text = z.read(ep).decode()
  lines = text.split('[console_scripts]\n', 1)[1].splitlines()
  declared = dict(line.split(' = ') for line in lines if ' = ' in line)
  assert declared == SCRIPTS


def test_every_script_is_tested():
  assert set(SCRIPTS) == set(HELP_FLAG)


# The arguments before --help (the benchmark's flags are its modes').
HELP_ARGS = {'alexnet-benchmark': ['train']}


def _help(script):
  """(exit status, output) of `script --help`, as pip's wrapper runs it.

  absl's flags are process-wide (evaluate and predict both define
  --checkpoint): one process per command."""
  module_name, attr = SCRIPTS[script].split(':')
  module = importlib.import_module(module_name)
  assert callable(getattr(module, attr))
  argv = [script, *HELP_ARGS.get(script, []), '--help']
  code = textwrap.dedent(f"""
      import sys
      from {module_name} import {attr}
      sys.argv = {argv!r}
      sys.exit({attr}())
  """)
  r = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      timeout=300,
  )
  return r.returncode, r.stdout + r.stderr


# From a console script __main__ is pip's wrapper: cli.adopt_main gives
# absl's --help the command's docstring, and cli.run_absl files the
# command's flags under the program's name, so --help lists them.
@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_console_script_help(script):
  status, out = _help(script)
  assert status == 0, out  # asking for help is no error (absl's says 1)
  assert 'Try --helpfull' in out
  assert HELP_FLAG[script] in out
  module = importlib.import_module(SCRIPTS[script].split(':')[0])
  assert module.__doc__.strip().splitlines()[0] in out


def test_library_imports_without_torch_or_pil():
  """Every module but the benchmarks and the PyTorch twins imports with
  torch and PIL unavailable, and none of ours even tries to import them.

  (PIL still gets imported where it is installed: TensorFlow's Keras and
  tensorflow_datasets import it, guarded, when TensorFlow is imported.)
  """
  code = textwrap.dedent(f"""
      import importlib, json, os, pkgutil, sys

      PACKAGE = os.path.dirname(importlib.util.find_spec(
          'alexnet_jax').origin) + os.sep
      IMPORTLIB = os.path.join('importlib', '__init__.py')
      tried = []

      class Absent:
        def find_spec(self, name, path=None, target=None):
          if name.partition('.')[0] not in ('torch', 'PIL'):
            return None
          frame = sys._getframe(1)
          while frame.f_code.co_filename.startswith('<frozen') or (
              frame.f_code.co_filename.endswith(IMPORTLIB)):
            frame = frame.f_back
          tried.append((name, frame.f_code.co_filename))
          raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)

      sys.meta_path.insert(0, Absent())
      import alexnet_jax
      names = ['alexnet_jax'] + [
          m.name for m in pkgutil.walk_packages(alexnet_jax.__path__,
                                                'alexnet_jax.')
          if not m.name.startswith({MAY_IMPORT_TORCH_OR_PIL!r})]
      failed = {{}}
      for name in names:
        try:
          importlib.import_module(name)
        except Exception as e:
          failed[name] = repr(e)
      ours = [t for t in tried if t[1].startswith(PACKAGE)]
      torch = [t for t in tried if t[0].partition('.')[0] == 'torch']
      print(json.dumps(dict(names=names, failed=failed, ours=ours,
                            torch=torch)))
  """)
  r = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      timeout=600,
      cwd=REPO,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.splitlines()[-1])
  assert 'alexnet_jax.core.train' in result['names']
  assert 'alexnet_jax.main' in result['names']
  assert result['failed'] == {}
  assert result['ours'] == []
  assert result['torch'] == []


def _third_party_imports(paths):
  import ast  # pylint: disable=g-import-not-at-top

  found = set()
  for path in paths:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found |= {a.name.split('.')[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        found.add(node.module.split('.')[0])
  return found - set(sys.stdlib_module_names) - {'alexnet_jax', 'experiments'}


def test_experiments_extra_covers_what_experiments_import():
  """What experiments/ imports beyond the package's own dependencies is
  in the one `experiments` extra."""
  project = PYPROJECT['project']
  names = lambda reqs: {re.split(r'[<>=;\[ ]', r)[0].lower() for r in reqs}
  have = names(project['dependencies']) | names(
      project['optional-dependencies']['experiments']
  )
  # Import names that differ from their distributions' names.
  dist = {'PIL': 'pillow', 'numpy': 'jax', 'tensorflow': 'tensorflow-cpu'}
  code = sorted((REPO / 'experiments').rglob('*.py'))
  assert 'torch' in _third_party_imports(code)  # the benchmarks' peer
  for module in _third_party_imports(code):
    assert dist.get(module, module).lower() in have, module


def test_missing_experiments_extra_is_one_line():
  """Without matplotlib, the sweep command names the extra to install."""
  blocked = textwrap.dedent("""
      import importlib.abc, runpy, sys
      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] == 'matplotlib':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
      sys.meta_path.insert(0, Block())
      sys.argv = ['sweep', '--list']
      runpy.run_module('experiments.sweep', run_name='__main__')
  """)
  proc = repo.run('-c', blocked, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      'error: matplotlib is not installed; the experiments need the '
      "'experiments' extra: pip install -e '.[experiments]'"
  ], proc.stderr
