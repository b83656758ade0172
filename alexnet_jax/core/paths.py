"""Where datasets and experiment workdirs live on this machine.

Datasets live under one data root: `--data_root` where a command has that
flag, else the environment variable ALEXNET_JAX_DATA, else
~/alexnet_jax_data. It holds one folder per dataset, e.g.

    $ALEXNET_JAX_DATA/cifar10/{train,test}/CLASS/IMAGE
    $ALEXNET_JAX_DATA/imagenet-samples/val/CLASS/IMAGE

In `data.name='folder:PATH'` the text `$ALEXNET_JAX_DATA` (or
`${ALEXNET_JAX_DATA}`) stands for the data root and is resolved when the
data is read, not when the config is written. So configs, sweep overrides,
saved config.json files and the hparams row of committed logs name the data
the same way on every machine, and moving the data only means setting the
variable. (Quote it on a command line, '$ALEXNET_JAX_DATA/cifar10', or the
shell expands it first; the result is the same when the variable is set.)

Experiment drivers (`experiments.sweep`, `experiments.figure1`) put their
workdirs (checkpoints, TensorBoard events) under the runs root, outside the
repository: `--root`, else ALEXNET_JAX_RUNS, else ~/alexnet_jax_runs. The
same command run again resumes from there.
"""

import os
import pathlib
import re

DATA_ENV = 'ALEXNET_JAX_DATA'
DEFAULT_DATA_ROOT = '~/alexnet_jax_data'
RUNS_ENV = 'ALEXNET_JAX_RUNS'
DEFAULT_RUNS_ROOT = '~/alexnet_jax_runs'
DATA_TOKEN = '$' + DATA_ENV
_TOKEN = re.compile(
    r'\$(?:\{' + DATA_ENV + r'\}|' + DATA_ENV + r'(?![A-Za-z0-9_]))'
)


def _resolve(value) -> pathlib.Path:
  return pathlib.Path(os.path.abspath(os.path.expanduser(str(value))))


def data_root(override=None) -> pathlib.Path:
  """The data root: `override` (a --data_root flag), else $ALEXNET_JAX_DATA,
  else ~/alexnet_jax_data. Absolute; it need not exist."""
  return _resolve(override or os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def set_data_root(root) -> pathlib.Path:
  """Makes `root` the data root of this process and of the processes it
  starts (a sweep's trainers); None or '' keeps the current one."""
  if root:
    os.environ[DATA_ENV] = str(_resolve(root))
  return data_root()


def dataset_dir(name: str) -> pathlib.Path:
  """The folder of dataset `name` under the data root."""
  return data_root() / name


def in_data_root(name: str) -> str:
  """`name` under the data root, spelled portably: '$ALEXNET_JAX_DATA/name'."""
  return f'{DATA_TOKEN}/{name}'


def expand(path: str) -> str:
  """`path` with $ALEXNET_JAX_DATA (or ${...}) replaced by the data root
  and a leading ~ by the home directory."""
  path = _TOKEN.sub(lambda _: str(data_root()), str(path))
  return os.path.expanduser(path)


def portable(path) -> str:
  """`path` with the data root written as $ALEXNET_JAX_DATA, for records
  (logs, results) that should not hold this machine's directories."""
  text = str(path)
  resolved = _resolve(expand(text))
  root = data_root()
  try:
    rel = resolved.relative_to(root)
  except ValueError:
    return text
  return (
      DATA_TOKEN if rel == pathlib.Path('.') else in_data_root(rel.as_posix())
  )


def runs_root(override=None) -> pathlib.Path:
  """Where experiment drivers put workdirs: `override` (--root), else
  $ALEXNET_JAX_RUNS, else ~/alexnet_jax_runs."""
  return _resolve(override or os.environ.get(RUNS_ENV) or DEFAULT_RUNS_ROOT)
