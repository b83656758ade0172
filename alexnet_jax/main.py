r"""Trains and evaluates AlexNet: flags, process facts, then train.py.

    python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR \
        [--config.optim.lr=0.02 ...]

Running the same command again resumes from the workdir's latest
checkpoint. `--config=configs/NAME.py` also works from an installed copy
(the configs ship as the package `alexnet_jax.configs`).
"""

import logging as std_logging
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax.core import xla_flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
xla_flags.set_defaults()        # before anything starts JAX's backend

FLAGS = flags.FLAGS


def define_flags():
  """--config and --workdir (defined only when run as a program, so the
  module can be imported beside other absl programs)."""
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics '
                      '(metrics.jsonl, TensorBoard) and config.json; a run '
                      'resumes from it.')
  config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/paper.py; override fields '
      'with --config.FIELD=VALUE.', lock_config=True)
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
      a = '--config=' + resolve_config_path(a[len('--config='):])
    elif a == '--config' and i + 1 < len(argv):
      out.append(a)
      i += 1
      a = resolve_config_path(argv[i])
    out.append(a)
    i += 1
  return out


class _QuietOrbax(std_logging.Filter):
  """Orbax logs a dozen INFO lines per save; keep its warnings only."""

  def filter(self, record):
    if 'tracked_metric' in str(record.msg):
      return False   # steps saved between evaluations carry no metrics
    return (record.levelno >= std_logging.WARNING
            or '/orbax/' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  config = FLAGS.config
  # Imports are deferred so that a bad config fails in a second.
  from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import config_checks  # pylint: disable=g-import-not-at-top
  try:
    config_checks.validate(config)
  except config_checks.ConfigError as e:
    sys.exit(f'error: {e}')

  from alexnet_jax.core import parallel  # pylint: disable=g-import-not-at-top
  try:
    parallel.setup_devices(config)   # before anything touches a device
  except config_checks.ConfigError as e:
    sys.exit(f'error: {e}')
  import jax  # pylint: disable=g-import-not-at-top
  logging.info('JAX %s, process %d of %d, %d local / %d global devices: %s',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               ', '.join(str(d) for d in jax.local_devices()))
  logging.info('Workdir: %s', FLAGS.workdir)

  from alexnet_jax.core import tfds_source  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except (config_checks.ConfigError, checkpoint.CheckpointError,
          train.NonFiniteError, tfds_source.DataNotReadyError,
          FileNotFoundError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')


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


def _parse_flags(argv):
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for overrides of fields that don't exist.
    unknown = _unknown_override(argv)
    if unknown is None:
      raise
    name, parent, known = unknown
    sys.exit(f'error: {name} does not exist (fields of {parent}: {known}); '
             'configs/paper.py lists every field')


def run():
  define_flags()
  app.run(main, argv=_resolve_argv(sys.argv), flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
