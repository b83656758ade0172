"""Style: the linter (ruff) and the formatter (pyink) pass on the code.

Their settings live in pyproject.toml; requirements-test.txt pins both. To
fix what these report (in this order; see pyproject.toml):

    ruff check --fix --exit-zero alexnet_jax configs tests experiments
    pyink alexnet_jax configs tests experiments
"""

import subprocess
import sys

from conftest import REPO

PATHS = ['alexnet_jax', 'configs', 'tests', 'experiments']


def _run(*args):
  r = subprocess.run(
      [sys.executable, '-m', *args, *PATHS],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  return r.returncode, (r.stdout + r.stderr).strip()


def test_ruff_check():
  status, out = _run('ruff', 'check', '--no-fix', '--output-format=concise')
  fix = 'ruff check --fix --exit-zero ' + ' '.join(PATHS)
  assert status == 0, f'{out[-4000:]}\n(fix: {fix})'


def test_pyink_check():
  status, out = _run('pyink', '--check')
  fix = 'pyink ' + ' '.join(PATHS)
  assert status == 0, f'{out[-4000:]}\n(fix: {fix})'
