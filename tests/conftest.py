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


@pytest.fixture(scope='session')
def shared_datasets():
  """../shared/datasets, or skip when this checkout has none beside it."""
  path = SHARED / 'datasets'
  if not path.is_dir():
    pytest.skip('../shared/datasets is not beside this checkout')
  return path
