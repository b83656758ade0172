"""Test-wide set-up: simulated CPU devices, before anything imports jax."""

import os

# Four simulated CPU devices for the parallelism tests (2 towers x 2 data
# shards). Must happen before jax initialises its backend.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# tf.data must not grab the GPU on a machine that has one, nor all the memory.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
DATA_ENV = 'ALEXNET_JAX_DATA'   # alexnet_jax.core.paths.DATA_ENV

# The one place tests find the shared data: the data root is
# $ALEXNET_JAX_DATA when set, else ../shared/datasets beside this checkout
# (set here for this process and those the tests start: trainers, the
# notebook's kernel). No test needs the variable set by hand.
if DATA_ENV not in os.environ and (SHARED / 'datasets').is_dir():
  os.environ[DATA_ENV] = str(SHARED / 'datasets')


@pytest.fixture(scope='session')
def shared_datasets():
  """The data root (see above), or skip when there is none."""
  path = pathlib.Path(os.environ.get(DATA_ENV, SHARED / 'datasets'))
  if not path.is_dir():
    pytest.skip(f'no datasets: set {DATA_ENV} or put ../shared/datasets '
                'beside this checkout')
  return path
