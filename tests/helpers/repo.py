"""The checkout the tests run in."""

import subprocess
import sys

from conftest import REPO


def tracked_files() -> set[str] | None:
  """Paths git tracks in this checkout, or None outside a git checkout."""
  try:
    out = subprocess.run(
        ['git', 'ls-files', '-z'],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return {f for f in out.decode().split('\0') if f}


def run(*args, check=True, timeout=300) -> subprocess.CompletedProcess:
  """`python ARGS` from the checkout's root, output captured as text."""
  return subprocess.run(
      [sys.executable, *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=check,
      timeout=timeout,
  )
