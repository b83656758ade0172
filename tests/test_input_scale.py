"""The paper's input scale: raw 0-255 pixels minus the mean, where LRN acts.

The paper trains "on the (centered) raw RGB values of the pixels"; its LRN
constants (k=2, alpha=1e-4) and initialisation are sized for activations of
that size. At [0, 1] pixels every activation is 255x smaller and LRN's
denominator (k + alpha * sum a^2)^beta is the constant k^beta. These tests
run the configs' own models at initialisation on real photos and read
alpha * sum(a^2) / k at conv1, where the paper's LRN first acts.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.configs import cifar10
from alexnet_jax.configs import paper
from alexnet_jax.core import checkpoint
from alexnet_jax.core import config_checks
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import lrn as lrn_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import preprocess
from conftest import REPO

# The default config's training loss after LEARN_STEPS steps of batch 32
# (its last log record, the mean over 20 steps) must be below
# LEARN_THRESHOLD: measured 1.99 with the default biases of 0.1 at step 200
# (2.03 with Caffe's init), while the paper's biases of 1 stay at 2.30
# (experiments/results/init_scale-cifar10/).
LEARN_STEPS = 200
LEARN_THRESHOLD = 2.2


def _lrn_terms(config, files, layer='conv1'):
  """alpha * window_sum(relu(layer)^2) / k over every position and channel
  of `layer` for the photos `files`, preprocessed as the config's
  checkpoint record says (the centre crop), weights at initialisation."""
  record = input_pipeline.preprocessing_from_config(config)
  params = preprocess.params_from_record(record)
  x = np.stack(
      [
          preprocess.eval_image(tf.io.read_file(str(f)), params).numpy()
          for f in files
      ]
  )
  net = model_lib.from_config(config.model)
  variables = model_lib.init(net, jax.random.PRNGKey(0), x.shape[1])
  _, state = net.apply(
      variables,
      jnp.asarray(x),
      capture_intermediates=True,
      mutable=['intermediates'],
  )
  towers = state['intermediates'][layer]['__call__'][0]
  a = jnp.concatenate([jax.nn.relu(t) for t in towers], axis=-1)
  lrn = config.model.lrn
  term = lrn.alpha * lrn_lib._window_sum(jnp.square(a), lrn.n) / lrn.k
  return np.asarray(term)


def _unit_scale(config, mean):
  """The config moved to [0, 1] pixels (the project's old scale)."""
  config.data.pixel_scale = 1.0
  config.data.mean = mean
  return config


@pytest.fixture(scope='module')
def imagenet_photos(shared_datasets):
  files = sorted((shared_datasets / 'imagenet-samples' / 'val').glob('*/*'))
  if len(files) < 1000:
    pytest.skip('needs the 1,000 ImageNet sample photos')
  return files[::31][:32]  # 32 classes spread over the label range


@pytest.fixture(scope='module')
def cifar_photos(shared_datasets):
  files = sorted((shared_datasets / 'cifar10' / 'test').glob('*/*.jpg'))
  if not files:
    pytest.skip('needs the CIFAR-10 JPEGs')
  return files[:: len(files) // 64][:64]


def test_paper_config_lrn_normalises_at_raw_pixel_scale(imagenet_photos):
  config = paper.get_config()
  assert config.data.pixel_scale == 255.0
  term = _lrn_terms(config, imagenet_photos)
  # Measured: median 0.008, 99th percentile 0.19 of k. The denominator
  # (1 + term)^0.75 * k^0.75 then ranges over about 1.68-2.2.
  assert np.percentile(term, 99) > 0.03
  assert np.median(term) > 1e-3


def test_paper_config_at_unit_scale_makes_lrn_a_constant(imagenet_photos):
  # The negative control: the project's old [0, 1] inputs.
  config = _unit_scale(paper.get_config(), (0.485, 0.456, 0.406))
  term = _lrn_terms(config, imagenet_photos)
  # Measured: 99th percentile 3e-6 of k: LRN divides by k^0.75 everywhere.
  assert np.percentile(term, 99) < 1e-4


def test_ablation_base_lrn_normalises(cifar_photos):
  # configs/cifar10.py is the ablation sweep's base: lrn_on vs lrn_off
  # must compare a normalisation with none, not a constant with none. Its
  # inputs are standardised [0, 1] pixels, with LRN's alpha rescaled so
  # that conv1's term is the paper's (measured: median 0.008, 99th
  # percentile 0.16 of k).
  config = cifar10.get_config()
  term = _lrn_terms(config, cifar_photos)
  assert np.percentile(term, 99) > 0.03
  assert np.median(term) > 1e-3
  # The paper's alpha at this scale (the config before): a constant.
  config.model.lrn.alpha = 1e-4
  assert np.percentile(_lrn_terms(config, cifar_photos), 99) < 3e-3


def test_model_input_is_raw_pixels_minus_mean(imagenet_photos):
  config = paper.get_config()
  record = input_pipeline.preprocessing_from_config(config)
  assert record['pixel_scale'] == 255.0
  assert record['mean'] == list(config.data.mean)
  params = preprocess.params_from_record(record)
  encoded = tf.io.read_file(str(imagenet_photos[0]))
  x = preprocess.eval_image(encoded, params).numpy()
  unit = _unit_scale(paper.get_config(), (0.485, 0.456, 0.406))
  y = preprocess.eval_image(
      encoded,
      preprocess.params_from_record(
          input_pipeline.preprocessing_from_config(unit)
      ),
  ).numpy()
  # (x - mean) with x in 0-255 is 255 x the [0, 1] input, to rounding.
  np.testing.assert_allclose(x, 255.0 * y, atol=0.05)
  assert 20 < x.std() < 120  # raw pixel values, not [0, 1]


def test_mean_image_record_is_in_pixel_scale_units(tmp_path):
  config = paper.get_config()
  image = np.full((256, 256, 3), 0.5, np.float32)
  np.save(tmp_path / 'mean.npy', image)
  config.data.normalization = 'image'
  config.data.mean_image = str(tmp_path / 'mean.npy')
  record = input_pipeline.preprocessing_from_config(config)
  assert record['mean'] == [127.5, 127.5, 127.5]
  assert record['pixel_scale'] == 255.0


@pytest.mark.parametrize(
    'scale, mean, words',
    [
        (255.0, (0.485, 0.456, 0.406), '[0, 1] pixel units'),
        (1.0, (123.675, 116.28, 103.53), '0-255 pixel units'),
        (2.0, (0.5, 0.5, 0.5), 'use one of 1.0, 255.0'),
    ],
)
def test_scale_and_mean_in_other_units_are_refused(scale, mean, words):
  config = paper.get_config()
  config.data.pixel_scale = scale
  config.data.mean = mean
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate(config)
  assert 'config.data.' in str(e.value) and words in str(e.value)


def test_every_config_states_a_consistent_scale():
  from alexnet_jax.configs import smoke  # pylint: disable=g-import-not-at-top

  for get_config in (paper.get_config, cifar10.get_config, smoke.get_config):
    config_checks.validate(get_config())
  for path in (REPO / 'configs').glob('*.py'):
    text = path.read_text()
    if 'get_config' in text and path.name not in ('paper.py', 'ablations.py'):
      assert 'pixel_scale' in text, f'{path.name} does not state its scale'


def test_old_checkpoint_configs_keep_their_scale():
  # A config saved before the field existed trained at [0, 1]: resuming it
  # must not switch to 0-255 (its mean is in [0, 1] units).
  saved = checkpoint.config_to_dict(paper.get_config())
  del saved['data']['pixel_scale']
  del saved['model']['fc_init_std']
  saved['data']['mean'] = [0.485, 0.456, 0.406]
  saved['model']['weight_init_std'] = 0.05
  config = checkpoint.config_from_dict(saved)
  assert config.data.pixel_scale == 1.0
  assert config.model.fc_init_std == 0.05
  config_checks.validate(config)
  # A current config keeps what it says.
  assert (
      checkpoint.config_from_dict(
          checkpoint.config_to_dict(paper.get_config())
      ).data.pixel_scale
      == 255.0
  )


@pytest.mark.slow
def test_paper_config_leaves_the_chance_loss(shared_datasets, tmp_path):
  """configs/paper.py's network and defaults, full width on 224 crops of
  CIFAR-10 (configs/paper_cifar224.py, the init_scale sweep's
  base): the training loss leaves ln(10) = 2.303 within 200 steps. With the
  paper's exact biases of 1 it stays there (docs/experiments.md)."""
  if not (shared_datasets / 'cifar10' / 'train').is_dir():
    pytest.skip('needs the CIFAR-10 JPEGs')
  workdir = tmp_path / 'run'
  subprocess.run(
      [
          sys.executable,
          '-m',
          'alexnet_jax.main',
          '--config=configs/paper_cifar224.py',
          f'--workdir={workdir}',
          f'--config.train.num_train_steps={LEARN_STEPS}',
          # configs/paper.py's default init (paper_cifar224 pins the
          # paper's biases of 1, which stay at ln(10)).
          f'--config.model.bias_init={paper.get_config().model.bias_init}',
          '--config.train.max_eval_batches=1',
      ],
      cwd=REPO,
      check=True,
      timeout=3600,
  )
  losses = [
      r['train_loss']
      for r in map(json.loads, (workdir / 'metrics.jsonl').open())
      if 'train_loss' in r
  ]
  assert losses[-1] < LEARN_THRESHOLD, losses
