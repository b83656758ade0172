r"""Trains and evaluates AlexNet: flags, process facts, then train.py.

    python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR \
        [--config.optim.lr=0.02 ...]

Running the same command again resumes from the workdir's latest
checkpoint. `--config=configs/NAME.py` also works from an installed copy
(the configs ship as the package `alexnet_jax.configs`). A run ends with a
summary of where its outputs went; Ctrl-C or SIGTERM save a checkpoint and
exit with status 130 or 143 (docs/training.md).
"""

import difflib
import os
import pathlib
import signal
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax.core import console
from alexnet_jax.core import xla_flags

console.setup()  # before anything imports TensorFlow
xla_flags.set_defaults()  # before anything starts JAX's backend

FLAGS = flags.FLAGS


def define_flags():
  """--config and --workdir (defined only when run as a program, so the
  module can be imported beside other absl programs)."""
  flags.DEFINE_string(
      'workdir',
      None,
      'Directory for checkpoints, metrics '
      '(metrics.jsonl, TensorBoard) and config.json; a run '
      'resumes from it.',
  )
  config_flags.DEFINE_config_file(
      'config',
      None,
      'Config file, e.g. configs/paper.py; override fields '
      'with --config.FIELD=VALUE.',
      lock_config=True,
  )
  flags.DEFINE_bool(
      'verbose',
      False,
      'Show tracebacks of errors and the '
      'INFO logs of Orbax, TFDS and JAX start-up.',
  )
  flags.mark_flags_as_required(['config', 'workdir'])


def resolve_config_path(path: str) -> str:
  """`path`, or the installed alexnet_jax/configs copy of configs/NAME.py.

  Accepts config_flags' 'FILE:ARG' form (the ARG part is kept).
  """
  file, sep, arg = path.partition(':')
  if os.path.exists(file):
    return path
  parts = pathlib.PurePath(file).parts
  if len(parts) >= 2 and parts[-2] == 'configs':
    import importlib.resources  # pylint: disable=g-import-not-at-top

    installed = importlib.resources.files('alexnet_jax.configs') / parts[-1]
    if installed.is_file():
      return str(installed) + sep + arg
  return path


def _resolve_argv(argv):
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith('--config='):
      a = '--config=' + resolve_config_path(a[len('--config=') :])
    elif a == '--config' and i + 1 < len(argv):
      out.append(a)
      i += 1
      a = resolve_config_path(argv[i])
    out.append(a)
    i += 1
  return out


def main(argv):
  if len(argv) > 1:
    sys.exit(
        f'error: unexpected arguments: {" ".join(argv[1:])} (flags '
        'take the form --name=value)'
    )
  console.filter_logs(FLAGS.verbose)
  config = FLAGS.config
  # Imports are deferred so that a bad config fails in a second.
  from alexnet_jax.core import config_checks  # pylint: disable=g-import-not-at-top

  with console.exit_on(config_checks.ConfigError, verbose=FLAGS.verbose):
    config_checks.validate(config)
    from alexnet_jax.core import parallel  # pylint: disable=g-import-not-at-top

    parallel.setup_devices(config)  # before anything touches a device
    import jax  # pylint: disable=g-import-not-at-top

    parallel.mesh_shape(config, jax.device_count())  # before data and model
  logging.info(
      'JAX %s, process %d of %d, %d local / %d global devices: %s',
      jax.__version__,
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      ', '.join(str(d) for d in jax.local_devices()),
  )
  logging.info('Workdir: %s', FLAGS.workdir)

  from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import input_guard  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import outputs  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import tfds_source  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import train  # pylint: disable=g-import-not-at-top

  with console.exit_on(
      config_checks.ConfigError,
      checkpoint.CheckpointError,
      train.NonFiniteError,
      tfds_source.DataNotReadyError,
      input_guard.UnreadableDataError,
      outputs.OutputError,
      FileNotFoundError,
      ValueError,
      verbose=FLAGS.verbose,
  ):
    results = train.train_and_evaluate(config, FLAGS.workdir)
  if results.get('signal'):  # preempted: saved, but not finished
    sys.exit(128 + signal.Signals[results['signal']].value)


def _unknown_override(argv):
  """'config.a.b' of the first --config.a.b=... naming no schema field."""
  from alexnet_jax.configs import paper  # pylint: disable=g-import-not-at-top

  schema = paper.get_config()
  for a in argv:
    if not a.startswith('--config.'):
      continue
    node, seen = schema, 'config'
    for part in a[2:].split('=', 1)[0].split('.')[1:]:
      if not hasattr(node, 'keys') or part not in node:
        known = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else ''
        return f'{seen}.{part}', seen, known
      node, seen = node[part], f'{seen}.{part}'
  return None


def _config_files(directory) -> list[str]:
  return sorted(
      p.name
      for p in pathlib.Path(directory).glob('*.py')
      if not p.name.startswith('_')
  )


def _check_config_file(argv):
  """Exits with one line if --config names a file that does not exist."""
  paths = [
      b[len('--config=') :] if b.startswith('--config=') else c
      for b, c in zip(argv, argv[1:] + [''])
      if b.startswith('--config=') or b == '--config'
  ]
  if not paths:
    return
  path = paths[-1]
  file = path.partition(':')[0]
  if os.path.isfile(file):
    return
  folder = pathlib.Path(file).parent
  shown = str(folder)
  if not folder.is_dir() or not _config_files(folder):
    import importlib.resources  # pylint: disable=g-import-not-at-top

    folder = pathlib.Path(str(importlib.resources.files('alexnet_jax.configs')))
    shown = 'configs'
  names = _config_files(folder)
  close = difflib.get_close_matches(pathlib.Path(file).name, names, n=1)
  guess = f'; did you mean {shown}/{close[0]}?' if close else ''
  sys.exit(
      f'error: --config={path}: no such file ({shown}/ has '
      f'{", ".join(names)}){guess}'
  )


def _parse_flags(argv):
  _check_config_file(argv)
  try:
    return cli.parse_flags(argv)
  except (AttributeError, KeyError):
    # ml_collections raises these for overrides of fields that don't exist.
    unknown = _unknown_override(argv)
    if unknown is None:
      raise
    name, parent, known = unknown
    sys.exit(
        f'error: {name} does not exist (fields of {parent}: {known}); '
        'configs/paper.py lists every field'
    )


def run():
  cli.run_absl(
      __name__,
      main,
      define_flags,
      argv=_resolve_argv(sys.argv),
      flags_parser=_parse_flags,
  )


if __name__ == '__main__':
  run()
