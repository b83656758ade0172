"""config_checks: every bad value fails naming the field and what it accepts."""

import importlib.util
import pathlib
import re

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

from alexnet_jax.configs import paper
from alexnet_jax.core import config_checks
from alexnet_jax.core.config_checks import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def _with(**dotted):
  """The paper config (as a freshly built, unlocked ConfigDict) with values
  set by dotted name; built from a dict so any type can be set, as in a
  config read back from a checkpoint."""
  d = paper.get_config().to_dict()
  for name, value in dotted.items():
    node = d
    *parents, leaf = name.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return ml_collections.ConfigDict(d)


def _dotted(**kw):
  return _with(**{k.replace('__', '.'): v for k, v in kw.items()})


def _leaves(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def test_paper_config_validates():
  config = paper.get_config()
  assert config_checks.validate(config) is config


@pytest.mark.parametrize(
    'path',
    sorted(p for p in CONFIGS.glob('*.py') if p.name != '__init__.py'),
    ids=lambda p: p.name,
)
def test_every_shipped_config_validates(path):
  spec = importlib.util.spec_from_file_location(f'_cfg_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_checks.validate(module.get_config())


BAD = [
    ('model.variant', 'vgg', ["'paper'", "'torchvision'", "'cifar4'"]),
    ('model.num_classes', 0, ['>= 1']),
    ('model.num_classes', 10.0, ['an integer']),
    ('model.towers', 3, ['1, 2']),
    ('model.activation', 'gelu', ["'relu', 'tanh'"]),
    ('model.lrn.enabled', 'yes', ['True or False']),
    ('model.lrn.k', -1.0, ['>= 0']),
    ('model.lrn.n', 4, ['odd']),
    ('model.lrn.n', 0, ['>= 1']),
    ('model.lrn.alpha', -1e-4, ['>= 0']),
    ('model.lrn.beta', float('nan'), ['a number']),
    ('model.lrn.alpha_over_n', 1, ['True or False']),
    ('model.lrn.across_towers', 'caffe', ['True or False']),
    ('model.lrn.order', 'pool_first', ["'lrn_pool', 'pool_lrn'"]),
    ('model.pool.window', 0, ['>= 1']),
    ('model.pool.stride', 1.5, ['an integer']),
    ('model.dropout', 1.0, ['<= 0.99']),
    ('model.dropout', -0.5, ['>= 0']),
    ('model.conv1_padding', 'same', ["'paper', 'torchvision', 'caffe'"]),
    ('model.weight_init_std', 0.0, ['> 0']),
    ('model.bias_init', 'one', ['a number']),
    ('model.width_scale', 1.5, ['<= 1']),
    ('model.width_scale', 0.0, ['> 0']),
    ('model.dtype', 'float16', ["'float32', 'bfloat16'"]),
    ('data.name', '', ['TFDS name', "'folder:/path'", "'fake'"]),
    ('data.name', 'folder:', ["'folder:/path/to/root'"]),
    ('data.data_dir', None, ['a string']),
    ('data.train_split', '', ['a non-empty string']),
    ('data.eval_split', 3, ['a non-empty string']),
    ('data.image_size', 4, ['>= 8']),
    ('data.image_size', 224.0, ['an integer']),
    ('data.resize_size', 200, ['>= config.data.image_size=224']),
    ('data.train_crop', 'random', ["'paper', 'inception'"]),
    ('data.flip', 'yes', ['True or False']),
    ('data.lighting.std', -0.1, ['>= 0']),
    ('data.lighting.scale', 'sqrt', ["'lambda', 'sqrt_lambda'"]),
    ('data.lighting.eigval', (1.0, 2.0), ['3 numbers']),
    ('data.normalization', 'batch', ["'channel', 'image'"]),
    ('data.normalization', 'image', ['config.data.mean_image=FILE.npy']),
    ('data.mean', (0.5, 0.5), ['3 numbers']),
    ('data.std', (0.2, 0.0, 0.2), ['3 numbers > 0']),
    ('data.eval_crops', 5, ['1, 10']),
    ('data.shuffle_buffer', 0, ['>= 1']),
    ('data.cache', 'no', ['True or False']),
    ('data.prefetch', -1, ['>= 0']),
    ('parallel.mesh.data', 0, ['-1']),
    ('parallel.mesh.model', 4, ['1, 2']),
    ('parallel.data_parallel', 'pjit', ["'jit', 'pmap'"]),
    ('parallel.cpu_devices', -1, ['>= 0']),
    ('parallel.coordinator_address', 1234, ['a string']),
    ('parallel.num_processes', 0, ['>= 1']),
    ('parallel.process_id', -1, ['>= 0']),
    ('optim.batch_size', 0, ['>= 1']),
    ('optim.lr', -0.01, ['>= 0']),
    ('optim.momentum', 1.5, ['<= 1']),
    ('optim.weight_decay', -5e-4, ['>= 0']),
    ('optim.decay_biases', 0, ['True or False']),
    ('optim.bias_lr_mult', -2.0, ['>= 0']),
    ('optim.schedule', 'linear', ["'plateau', 'step', 'cosine', 'constant'"]),
    ('optim.step_epochs', (60, 30), ['strictly increasing']),
    ('optim.step_epochs', (-1, 30), ['> 0']),
    ('optim.plateau.factor', 0.0, ['> 0']),
    ('optim.plateau.factor', 2.0, ['<= 1']),
    ('optim.plateau.patience', -1, ['>= 0']),
    ('optim.plateau.max_drops', -1, ['>= 0']),
    ('optim.plateau.min_delta', -1.0, ['>= 0']),
    ('optim.warmup_epochs', -1.0, ['>= 0']),
    ('optim.num_epochs', 0.0, ['> 0']),
    ('train.seed', -1, ['>= 0']),
    ('train.num_train_steps', 0, ['positive step count', '-1']),
    ('train.num_train_steps', -2, ['>= -1']),
    ('train.num_train_examples', -2, ['>= -1']),
    ('train.log_every_steps', 0, ['>= 1']),
    ('train.eval_every_steps', 0, ['>= 1']),
    ('train.checkpoint_every_steps', 0, ['>= 1']),
    ('train.keep_checkpoints', 0, ['>= 1']),
    ('train.max_eval_batches', -2, ['>= -1']),
    ('train.profile', 'yes', ['True or False']),
]


@pytest.mark.parametrize(
    'field,value,accepted', BAD, ids=[f'{f}={v!r}' for f, v, _ in BAD]
)
def test_bad_value_names_field_and_accepted_values(field, value, accepted):
  with pytest.raises(ConfigError) as err:
    config_checks.validate(_with(**{field: value}))
  message = str(err.value)
  assert f'config.{field}' in message
  for text in accepted:
    assert text in message


@pytest.mark.parametrize(
    'dotted,needs',
    [
        ({'model.variant': 'torchvision'}, 'config.model.towers=1'),
        ({'model.variant': 'cifar4'}, 'config.model.towers=1'),
        (
            {'parallel.data_parallel': 'pmap', 'parallel.mesh.model': 2},
            'config.parallel.mesh.model=1',
        ),
        (
            {'parallel.mesh.model': 2, 'model.towers': 1},
            'config.model.towers=2',
        ),
        (
            {'parallel.mesh.model': 2, 'model.lrn.across_towers': True},
            'use config.parallel.mesh.model=1 for such weights',
        ),
        (
            {'parallel.mesh.data': 3},
            'config.optim.batch_size=128 is not '
            'divisible by the data axis (config.parallel.mesh.data=3)',
        ),
    ],
)
def test_inconsistent_fields_say_what_to_set(dotted, needs):
  with pytest.raises(ConfigError, match=re.escape(needs)):
    config_checks.validate(_with(**dotted))


def test_every_field_is_validated():
  """A value of the wrong type in ANY schema field is refused by name: a
  field added to configs/paper.py without a check fails here."""
  bad_by_type = {
      bool: 'maybe',
      int: 'abc',
      float: 'abc',
      str: 12345,
      tuple: 'abc',
      list: 'abc',
  }
  for name, default in _leaves(paper.get_config()):
    with pytest.raises(ConfigError, match=f'config\\.{name}\\b'):
      config_checks.validate(_with(**{name: bad_by_type[type(default)]}))


@pytest.mark.parametrize(
    'dotted,name',
    [
        ({'foo': 1}, "'foo'"),
        ({'model.lrn.size': 5}, "'model.lrn.size'"),
        ({'parallel.mesh.pipeline': 2}, "'parallel.mesh.pipeline'"),
    ],
)
def test_unknown_fields_are_rejected(dotted, name):
  with pytest.raises(ConfigError) as err:
    config_checks.validate(_with(**dotted))
  assert f'unknown config field {name}' in str(err.value)
  if name == "'model.lrn.size'":  # and the fields that do exist are listed
    assert 'alpha, alpha_over_n, beta' in str(err.value)


def test_missing_field_is_named():
  config = paper.get_config()
  del config.model.lrn['k']
  with pytest.raises(ConfigError, match=r'config\.model\.lrn\.k is missing'):
    config_checks.validate(config)


def test_locked_config_rejects_new_fields():
  config = paper.get_config()
  config.lock()
  with pytest.raises(AttributeError):
    config.model.lrn.size = 5
  config.model.lrn.n = 3  # existing fields still take new values


def _parse_flags(*overrides):
  """What main.py's `--config=configs/paper.py --config.X=...` does."""
  argv = ['prog', f'--config={CONFIGS / "paper.py"}', *overrides]
  values = flags.FlagValues()
  # sys_argv: config_flags pre-scans the command line for --config.X flags.
  config_flags.DEFINE_config_file(
      'config', flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return values.config


def test_command_line_override_of_unknown_field_fails():
  # ml_collections raises AttributeError or KeyError naming the field.
  with pytest.raises((flags.Error, AttributeError, KeyError), match='size'):
    _parse_flags('--config.model.lrn.size=3')
  with pytest.raises((flags.Error, AttributeError, KeyError), match='lrm'):
    _parse_flags('--config.model.lrm.n=3')


def test_command_line_override_with_bad_value_fails_validation():
  config = _parse_flags('--config.model.towers=3')
  with pytest.raises(ConfigError, match=r'config\.model\.towers=3'):
    config_checks.validate(config)
  good = _parse_flags('--config.model.towers=1', '--config.model.lrn.n=3')
  assert config_checks.validate(good).model.lrn.n == 3
