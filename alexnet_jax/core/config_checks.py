"""One place that validates a config and says what is accepted.

Every check names the field, the value it got and what it accepts, so a typo
on the command line fails before any work starts. `configs/paper.py` is the
schema: a field it does not have is unknown.
"""

from collections.abc import Mapping
import math

import ml_collections


class ConfigError(ValueError):
  """A config field holds a value the project cannot use."""


def _schema():
  from alexnet_jax.configs import (
      paper,  # configs/ is installed as this package.
  )

  return paper.get_config()


def _unknown_fields(cfg, schema, prefix=''):
  """Yields dotted names present in `cfg` but not in `schema`."""
  for key in cfg.keys():
    name = f'{prefix}{key}'
    if key not in schema:
      yield name, sorted(schema.keys())
    elif _is_dict(schema[key]):
      if not _is_dict(cfg[key]):
        continue  # type errors are reported by the value checks
      yield from _unknown_fields(cfg[key], schema[key], name + '.')


def _is_dict(value):
  return isinstance(value, (Mapping, ml_collections.ConfigDict))


def check_unknown(config):
  problems = [
      f'unknown config field {name!r} (fields here: {", ".join(known)})'
      for name, known in _unknown_fields(config, _schema())
  ]
  if problems:
    raise ConfigError('; '.join(problems))


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(
          f'config.{dotted} is missing (configs/paper.py lists every field)'
      ) from None
  return node


def _one_of(config, dotted, accepted):
  value = _get(config, dotted)
  if value not in accepted:
    raise ConfigError(
        f'config.{dotted}={value!r} is not accepted; '
        f'use one of {", ".join(map(repr, accepted))}'
    )
  return value


def _number(
    config, dotted, *, low=None, high=None, integer=False, low_open=False
):
  value = _get(config, dotted)
  kind = 'an integer' if integer else 'a number'
  ok = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok or (not integer and math.isnan(value)):
    raise ConfigError(f'config.{dotted}={value!r} must be {kind}')
  if low is not None and (value <= low if low_open else value < low):
    bound = f'> {low}' if low_open else f'>= {low}'
    raise ConfigError(f'config.{dotted}={value!r} must be {bound}')
  if high is not None and value > high:
    raise ConfigError(f'config.{dotted}={value!r} must be <= {high}')
  return value


def _bool(config, dotted):
  value = _get(config, dotted)
  if not isinstance(value, bool):
    raise ConfigError(f'config.{dotted}={value!r} must be True or False')
  return value


def _string(config, dotted, *, empty_ok=True):
  value = _get(config, dotted)
  if not isinstance(value, str) or not (empty_ok or value):
    kind = 'a string' if empty_ok else 'a non-empty string'
    raise ConfigError(f'config.{dotted}={value!r} must be {kind}')
  return value


def _numbers(config, dotted, *, count=None, low=None, increasing=False):
  """A tuple/list of finite numbers (> low when low is given)."""
  value = _get(config, dotted)
  is_num = lambda v: (
      isinstance(v, (int, float))
      and not isinstance(v, bool)
      and math.isfinite(v)
      and (low is None or v > low)
  )
  ok = (
      isinstance(value, (tuple, list))
      and all(map(is_num, value))
      and (count is None or len(value) == count)
      and (not increasing or list(value) == sorted(set(value)))
  )
  if not ok:
    what = f'{count} numbers' if count else 'a tuple of numbers'
    what += f' > {low}' if low is not None else ''
    what += ', strictly increasing' if increasing else ''
    raise ConfigError(f'config.{dotted}={value!r} must be {what}')
  return value


def check_model(config):
  m = 'model.'
  variant = _one_of(
      config, m + 'variant', ('paper', 'torchvision', 'cifar4', 'cifar_local')
  )
  _number(config, m + 'num_classes', low=1, integer=True)
  towers = _one_of(config, m + 'towers', (1, 2))
  _one_of(config, m + 'activation', ('relu', 'tanh'))
  _bool(config, m + 'lrn.enabled')
  _number(config, m + 'lrn.k', low=0)
  n = _number(config, m + 'lrn.n', low=1, integer=True)
  if n % 2 == 0:
    raise ConfigError(
        f'config.model.lrn.n={n} must be odd (a window centred '
        'on each channel, e.g. 5)'
    )
  _number(config, m + 'lrn.alpha', low=0)
  _number(config, m + 'lrn.beta', low=0)
  _bool(config, m + 'lrn.alpha_over_n')
  _bool(config, m + 'lrn.across_towers')
  _one_of(config, m + 'lrn.order', ('lrn_pool', 'pool_lrn'))
  _number(config, m + 'pool.window', low=1, integer=True)
  _number(config, m + 'pool.stride', low=1, integer=True)
  _number(config, m + 'dropout', low=0, high=0.99)
  _one_of(config, m + 'conv1_padding', ('paper', 'torchvision', 'caffe'))
  _number(config, m + 'weight_init_std', low=0, low_open=True)
  _number(config, m + 'fc_init_std', low=0, low_open=True)
  _number(config, m + 'bias_init')
  _number(config, m + 'width_scale', low=0, high=1, low_open=True)
  _one_of(config, m + 'dtype', ('float32', 'bfloat16'))
  _one_of(config, m + 'precision', ('default', 'high', 'highest'))
  _one_of(config, m + 'formulation', ('auto', 'accelerator'))
  if variant == 'torchvision' and towers != 1:
    raise ConfigError(
        'config.model.variant=torchvision has no towers: set '
        'config.model.towers=1'
    )
  if variant in ('cifar4', 'cifar_local') and towers != 1:
    raise ConfigError(
        f'config.model.variant={variant} has no towers: set '
        'config.model.towers=1'
    )


def check_data(config):
  d = 'data.'
  name = _get(config, d + 'name')
  if not isinstance(name, str) or not name:
    raise ConfigError(
        f'config.data.name={name!r} must be a TFDS name (e.g. '
        "'imagenet2012:5.*.*', 'cifar10'), 'folder:/path', "
        "'prepared:/path' or 'fake'"
    )
  if name.startswith('folder:') and not name[len('folder:') :]:
    raise ConfigError(
        "config.data.name='folder:' needs a path: "
        "'folder:/path/to/root' with ROOT/SPLIT/CLASS/IMAGE"
    )
  if name.startswith('prepared:') and not name[len('prepared:') :]:
    raise ConfigError(
        "config.data.name='prepared:' needs a path: 'prepared:/path/to/DIR' "
        'made by `python -m alexnet_jax.prepare_data --out=DIR`'
    )
  if name.startswith('prepared:') and _get(config, d + 'train_crop') != 'paper':
    raise ConfigError(
        f"config.data.train_crop={_get(config, d + 'train_crop')!r} needs the "
        "full photo; a prepared dataset (data.name='prepared:...') holds the "
        "paper's centre squares: use train_crop='paper' or the original images"
    )
  for field in ('data_dir', 'manual_dir', 'test_split', 'mean_image'):
    _string(config, d + field)
  for field in ('train_split', 'eval_split'):
    _string(config, d + field, empty_ok=False)
  _number(config, d + 'image_size', low=8, high=1024, integer=True)
  _number(config, d + 'resize_size', low=1, integer=True)
  if _get(config, d + 'resize_size') < _get(config, d + 'image_size'):
    raise ConfigError(
        f'config.data.resize_size={_get(config, d + "resize_size")} must be '
        f'>= config.data.image_size={_get(config, d + "image_size")}'
    )
  _one_of(config, d + 'train_crop', ('paper', 'inception'))
  _one_of(config, d + 'resize_method', ('area', 'antialias', 'bilinear'))
  _bool(config, d + 'flip')
  _one_of(config, d + 'augment', ('auto', 'host', 'device'))
  _number(config, d + 'lighting.std', low=0)
  _one_of(config, d + 'lighting.scale', ('lambda', 'sqrt_lambda'))
  norm = _one_of(config, d + 'normalization', ('channel', 'image'))
  if norm == 'image' and not _get(config, d + 'mean_image'):
    raise ConfigError(
        "config.data.normalization='image' needs "
        'config.data.mean_image=FILE.npy (make one with '
        '`python -m alexnet_jax.data_stats`)'
    )
  _numbers(config, d + 'mean', count=3)
  _numbers(config, d + 'std', count=3, low=0)
  _check_pixel_scale(config)
  _one_of(config, d + 'eval_crops', (1, 10))
  _number(config, d + 'shuffle_buffer', low=1, integer=True)
  _bool(config, d + 'cache')
  _number(config, d + 'prefetch', low=0, integer=True)
  _number(config, d + 'threads', low=0, integer=True)
  _check_lighting(
      _get(config, d + 'lighting.eigval'), _get(config, d + 'lighting.eigvec')
  )


def _check_pixel_scale(config):
  """pixel_scale is 1 ([0, 1] pixels) or 255 (raw 0-255 values), and a
  per-channel mean must be in the same units: the usual slip is changing
  one without the other, which trains on inputs offset by ~0.5 or ~120."""
  scale = _one_of(config, 'data.pixel_scale', (1.0, 255.0))
  if _get(config, 'data.normalization') != 'channel':
    return
  mean = tuple(_get(config, 'data.mean'))
  if scale == 255.0 and max(mean) <= 1.0 and any(mean):
    raise ConfigError(
        f'config.data.mean={mean} looks like [0, 1] pixel units but '
        'config.data.pixel_scale=255.0: give the mean in 0-255 units '
        '(e.g. 123.675, 116.28, 103.53), or set pixel_scale=1.0'
    )
  if scale == 1.0 and max(mean) > 1.0:
    raise ConfigError(
        f'config.data.mean={mean} looks like 0-255 pixel units but '
        'config.data.pixel_scale=1.0: give the mean in [0, 1] units '
        '(e.g. 0.485, 0.456, 0.406), or set pixel_scale=255.0'
    )


def _check_lighting(eigval, eigvec):
  """eigval: 3 numbers >= 0; eigvec: 3x3 with unit columns (to 1e-2, as
  published constants are rounded to 4 digits)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  def as_array(value):
    try:
      return np.asarray(value, np.float64)
    except (TypeError, ValueError):
      return np.zeros(0)  # fails the shape checks below, naming the field

  val, vec = as_array(eigval), as_array(eigvec)
  if val.shape != (3,) or not np.isfinite(val).all() or (val < 0).any():
    raise ConfigError(
        f'config.data.lighting.eigval={eigval!r} must be 3 '
        'numbers >= 0 (the RGB covariance eigenvalues)'
    )
  norms = np.linalg.norm(vec, axis=0) if vec.shape == (3, 3) else None
  if norms is None or not np.allclose(norms, 1.0, atol=1e-2):
    raise ConfigError(
        f'config.data.lighting.eigvec={eigvec!r} must be a 3x3 '
        'matrix whose columns are unit eigenvectors'
    )


def check_parallel(config):
  p = 'parallel.'
  mesh = _get(config, p + 'mesh')
  if set(mesh.keys()) != {'data', 'model'}:
    raise ConfigError(
        f'config.parallel.mesh has axes {sorted(mesh.keys())}; '
        "it takes exactly 'data' and 'model'"
    )
  data = _number(config, p + 'mesh.data', low=-1, integer=True)
  if data == 0:
    raise ConfigError(
        'config.parallel.mesh.data=0 is not accepted; use a '
        'positive device count or -1 (all remaining devices)'
    )
  model = _one_of(config, p + 'mesh.model', (1, 2))
  mode = _one_of(config, p + 'data_parallel', ('jit', 'pmap'))
  if mode == 'pmap' and model != 1:
    raise ConfigError(
        'config.parallel.data_parallel=pmap cannot split the '
        'towers: use config.parallel.mesh.model=1 with pmap, or '
        "data_parallel='jit' for model parallelism"
    )
  if model == 2 and _get(config, 'model.towers') != 2:
    raise ConfigError(
        'config.parallel.mesh.model=2 puts one tower on each '
        'device and needs config.model.towers=2 (got '
        f'{_get(config, "model.towers")})'
    )
  if model == 2 and _get(config, 'model.lrn.across_towers'):
    raise ConfigError(
        'config.model.lrn.across_towers=True (Caffe-imported weights) lets '
        'LRN windows cross the tower boundary, which the model-parallel '
        'forward does not exchange: use config.parallel.mesh.model=1 for '
        'such weights'
    )
  _number(config, p + 'cpu_devices', low=0, integer=True)
  _string(config, p + 'coordinator_address')
  _number(config, p + 'num_processes', low=1, integer=True)
  _number(config, p + 'process_id', low=0, integer=True)
  batch = _number(config, 'optim.batch_size', low=1, integer=True)
  if data > 0:
    check_batch_splits(batch, data, f'config.parallel.mesh.data={data}')


def check_batch_splits(batch: int, data: int, axis: str):
  """The global batch splits evenly over the `data` shards (`axis` says
  where that number came from); parallel.mesh_shape checks the one it
  derives from the devices present with this too."""
  if batch % data:
    raise ConfigError(
        f'config.optim.batch_size={batch} is not divisible by the data axis '
        f'({axis}): use a multiple of {data}'
    )


def check_optim(config):
  o = 'optim.'
  _number(config, o + 'batch_size', low=1, integer=True)
  _number(config, o + 'lr', low=0)
  _number(config, o + 'momentum', low=0, high=1)
  _number(config, o + 'weight_decay', low=0)
  _bool(config, o + 'decay_biases')
  _number(config, o + 'bias_lr_mult', low=0)
  _one_of(config, o + 'schedule', ('plateau', 'step', 'cosine', 'constant'))
  _numbers(config, o + 'step_epochs', low=0, increasing=True)
  _number(config, o + 'plateau.factor', low=0, high=1, low_open=True)
  _number(config, o + 'plateau.patience', low=0, integer=True)
  _number(config, o + 'plateau.max_drops', low=0, integer=True)
  _number(config, o + 'plateau.min_delta', low=0)
  _number(config, o + 'warmup_epochs', low=0)
  _number(config, o + 'num_epochs', low=0, low_open=True)


def check_train(config):
  t = 'train.'
  _number(config, t + 'seed', low=0, integer=True)
  steps = _number(config, t + 'num_train_steps', low=-1, integer=True)
  if steps == 0:
    raise ConfigError(
        'config.train.num_train_steps=0: use a positive step '
        'count, or -1 to derive it from config.optim.num_epochs'
    )
  _number(config, t + 'num_train_examples', low=-1, integer=True)
  for field in (
      'log_every_steps',
      'eval_every_steps',
      'checkpoint_every_steps',
      'keep_checkpoints',
  ):
    _number(config, t + field, low=1, integer=True)
  _number(config, t + 'max_eval_batches', low=-1, integer=True)
  _bool(config, t + 'profile')


def validate(config: ml_collections.ConfigDict):
  """Raises ConfigError naming the first bad field; returns the config."""
  check_unknown(config)
  for check in (
      check_model,
      check_data,
      check_parallel,
      check_optim,
      check_train,
  ):
    check(config)
  return config
