"""What the commands print: third-party notices off, one line per error.

Every command calls `setup()` before TensorFlow or JAX is imported, then
`filter_logs()` once logging is set up, and turns the errors a user can
fix into one `error: ...` line with `exit_on()`. `--verbose` keeps the
third-party INFO logs and shows the traceback of an error.

TensorFlow 2.21 writes its start-up notices from C++ through its own copies
of absl (so twice, and TF_CPP_MIN_LOG_LEVEL does not reach them), before
any Python logging exists; the only way to drop them is to catch what the
process writes to stderr while `import tensorflow` runs. Lines that are not
known notices are passed on, so a real problem at import still shows.
Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import traceback

# Printed on every `import tensorflow` (CPU builds), telling a user nothing
# they can act on.
TF_NOTICES = (
    'All log messages before absl::InitializeLog() is called',
    'oneDNN custom operations are on',
    'This TensorFlow binary is optimized to use available CPU instructions',
    'To enable the following instructions:',
)
# INFO records from these files are dropped (their warnings are kept):
# Orbax logs a dozen lines per save or load, TFDS a few per dataset (and a
# 'Failed to load dataset' before its own not-found error), and JAX one
# 'Unable to initialize backend' per missing accelerator plugin.
QUIET_INFO_PATHS = (
    '/orbax/',
    '/tensorflow_datasets/',
    '/jax/_src/xla_bridge.py',
)


def setup(environ=os.environ):
  """Silences TensorFlow's start-up notices; call before it is imported.

  Idempotent. Does nothing to an already imported TensorFlow.
  """
  environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if environ.get('TF_CPP_MIN_LOG_LEVEL') == '0' or 'tensorflow' in sys.modules:
    return
  if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport('tensorflow', TF_NOTICES))


def is_notice(line: str, notices=TF_NOTICES) -> bool:
  return any(n in line for n in notices)


@contextlib.contextmanager
def stderr_without(notices):
  """Holds back what is written to file descriptor 2 (C++ and Python alike)
  inside the block, then writes the lines that contain none of `notices`."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no stderr to capture
    yield
    return
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      try:
        sys.stderr.flush()
      except (OSError, ValueError):
        pass
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      text = held.read().decode('utf-8', 'replace')
      kept = [
          line
          for line in text.splitlines(keepends=True)
          if not is_notice(line, notices)
      ]
      if kept:
        os.write(2, ''.join(kept).encode())


class _QuietImport(importlib.abc.MetaPathFinder):
  """Runs the import of one top-level module inside stderr_without.

  Stays in sys.meta_path until that import has run: a library may look the
  module up (importlib.util.find_spec) long before anything imports it.
  """

  def __init__(self, name, notices):
    self._name = name
    self._notices = notices
    self._finding = False

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if fullname != self._name or self._finding:
      return None
    self._finding = True  # let the other finders find the real module
    try:
      spec = importlib.util.find_spec(fullname)
    finally:
      self._finding = False
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader, self)
    return spec


class _QuietLoader(importlib.abc.Loader):

  def __init__(self, loader, finder):
    self._loader = loader
    self._finder = finder

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with stderr_without(self._finder._notices):  # pylint: disable=protected-access
      self._loader.exec_module(module)
    if self._finder in sys.meta_path:
      sys.meta_path.remove(self._finder)

  def __getattr__(self, name):  # resource readers and the like
    return getattr(self._loader, name)


class _QuietInfo(logging.Filter):
  """Drops the INFO records of QUIET_INFO_PATHS (warnings pass)."""

  def filter(self, record):
    if 'tracked_metric' in str(record.msg):
      return False  # Orbax: steps saved between evaluations carry no metrics
    return record.levelno >= logging.WARNING or not any(
        p in record.pathname.replace(os.sep, '/') for p in QUIET_INFO_PATHS
    )


def filter_logs(verbose=False):
  """Adds the INFO filter to the handlers that print (absl's and root's)."""
  if verbose:
    return
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  handlers = list(logging.getLogger().handlers)
  handlers.append(absl_logging.get_absl_handler())
  for handler in handlers:
    if not any(isinstance(f, _QuietInfo) for f in handler.filters):
      handler.addFilter(_QuietInfo())


def message(error: BaseException) -> str:
  """An exception as shown to a user: its text, or its type if empty."""
  text = str(error).strip()
  if isinstance(error, KeyError) and text.startswith("'"):
    text = text.strip("'")
  return text or type(error).__name__


@contextlib.contextmanager
def exit_on(*errors, verbose=False):
  """`error: MESSAGE` and exit status 1 for `errors` raised in the block
  (with the traceback before it when verbose); Ctrl-C outside the training
  loop exits 130 with one line."""
  try:
    yield
  except errors as e:
    if verbose:
      traceback.print_exc()
    raise SystemExit(f'error: {message(e)}') from None
  except KeyboardInterrupt:
    if verbose:
      traceback.print_exc()
    print('interrupted', file=sys.stderr)
    raise SystemExit(130) from None
