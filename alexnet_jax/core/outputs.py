"""Writing a run's outputs: an OS error becomes one line, nothing half-written.

Creating the workdir or writing a checkpoint, a results file or an export
can fail for reasons the user must fix (a read-only or pseudo file system
such as /sys or /proc, a file where a directory should be, a full disk).
`writing(role, path)` turns any OSError inside it into an `OutputError`
whose message names the path, what it is for ("workdir", "checkpoint",
"results file", "export") and the OS's reason; the commands print it as
their one `error:` line (console.exit_on). `write_text` writes a file
whole or not at all.
"""

import contextlib
import os
import pathlib


class OutputError(OSError):
  """An output could not be written; the message is one line."""


def _file_above(path) -> pathlib.Path | None:
  """The nearest existing ancestor of `path` (or itself) that is no
  directory, if any."""
  for p in (pathlib.Path(path), *pathlib.Path(path).parents):
    if os.path.lexists(p):
      return None if p.is_dir() else p
  return None


def describe(role: str, path, error: OSError, verb: str = 'write') -> str:
  """'cannot VERB the ROLE PATH: REASON', with what is in the way when a
  file stands where a directory must be, or the failing path when it is
  another one."""
  reason = error.strerror or str(error) or type(error).__name__
  blocker = _file_above(path)
  failing = error.filename
  if isinstance(error, (FileExistsError, NotADirectoryError)) and blocker:
    reason = f'{reason}: {blocker} is a file, not a directory'
  elif failing is not None and os.fspath(failing) != os.fspath(path):
    reason = f'{reason} (at {os.fspath(failing)})'
  return f'cannot {verb} the {role} {path}: {reason}'


@contextlib.contextmanager
def writing(role: str, path, verb: str = 'write'):
  """Raises OutputError(describe(...)) for an OSError inside the block."""
  try:
    yield
  except OutputError:
    raise
  except OSError as e:
    raise OutputError(describe(role, path, e, verb)) from e


def make_dir(path, role: str) -> pathlib.Path:
  """mkdir -p `path`; an existing directory is fine."""
  path = pathlib.Path(path)
  with writing(role, path, 'create'):
    path.mkdir(parents=True, exist_ok=True)
  return path


def write_text(path, text: str, role: str):
  """Writes `text` to a temporary sibling and renames it over `path`, so
  readers see the old file or the new one, never a part."""
  path = pathlib.Path(path)
  with writing(role, path):
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
      tmp.write_text(text)
      os.replace(tmp, path)
    except OSError as e:
      e.filename = os.fspath(path)  # the temporary name means nothing
      raise
    finally:
      with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
