"""Test-wide set-up: simulated CPU devices, before anything imports jax.

`pytest -m accelerator` (experiments/accelerator/run.sh) is the exception:
those tests need the host's GPU or TPU, so the CPU forcing below is left
out for that run. Every other run sees 4 simulated CPU devices only, even
on a GPU or TPU host.
"""

import os
import re

import pytest


def _accelerator_run(markexpr: str) -> bool:
  """True when the -m expression selects `accelerator` tests."""
  return bool(re.search(r'(?<!not )\baccelerator\b', markexpr or ''))


def pytest_configure(config):
  # Runs before any test module (and so jax) is imported.
  if _accelerator_run(config.option.markexpr):
    return
  # Four simulated CPU devices for the parallelism tests (2 towers x 2 data
  # shards). Must happen before jax initialises its backend.
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
  # CPU only: tf.data must not grab a GPU, nor the tests a GPU or TPU.
  os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pathlib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
DATA_ENV = 'ALEXNET_JAX_DATA'  # alexnet_jax.core.paths.DATA_ENV

# The one place tests find the shared data: the data root is
# $ALEXNET_JAX_DATA when set, else ../shared/datasets beside this checkout
# (set here for this process and those the tests start: trainers, the
# notebook's kernel). No test needs the variable set by hand.
if DATA_ENV not in os.environ and (SHARED / 'datasets').is_dir():
  os.environ[DATA_ENV] = str(SHARED / 'datasets')


def pytest_collection_modifyitems(config, items):
  """`accelerator` tests are skipped unless a GPU or TPU is the backend."""
  marked = [item for item in items if 'accelerator' in item.keywords]
  if not marked:
    return
  reason = None
  if not _accelerator_run(config.option.markexpr):
    reason = (
        'needs a GPU or TPU: run `pytest -m accelerator` there '
        '(experiments/accelerator/run.sh)'
    )
  else:
    import jax  # pylint: disable=g-import-not-at-top

    if jax.default_backend() == 'cpu':
      reason = 'no GPU or TPU here (jax.default_backend() is cpu)'
  if reason:
    for item in marked:
      item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope='session')
def shared_datasets():
  """The data root (see above), or skip when there is none."""
  path = pathlib.Path(os.environ.get(DATA_ENV, SHARED / 'datasets'))
  if not path.is_dir():
    pytest.skip(
        f'no datasets: set {DATA_ENV} or put ../shared/datasets '
        'beside this checkout'
    )
  return path
