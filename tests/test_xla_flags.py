"""Default XLA flags: added to XLA_FLAGS without overriding the user's."""

import os
import subprocess
import sys

import pytest

from alexnet_jax.core import xla_flags

FLAG = '--xla_cpu_copy_insertion_use_region_analysis'


@pytest.fixture
def tested_jaxlib(monkeypatch):
  monkeypatch.setattr(
      xla_flags.importlib.metadata,
      'version',
      lambda name: xla_flags.TESTED_JAXLIB[0],
  )


def test_defaults_are_appended_to_the_users_flags(tested_jaxlib):
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert xla_flags.set_defaults(env) == [f'{FLAG}=true']
  assert env['XLA_FLAGS'] == (
      f'--xla_force_host_platform_device_count=4 {FLAG}=true'
  )
  assert xla_flags.set_defaults(env) == []  # idempotent
  empty = {}
  xla_flags.set_defaults(empty)
  assert empty['XLA_FLAGS'] == f'{FLAG}=true'


def test_a_flag_the_user_sets_is_kept(tested_jaxlib):
  env = {'XLA_FLAGS': f'{FLAG}=false'}
  assert xla_flags.set_defaults(env) == []
  assert env['XLA_FLAGS'] == f'{FLAG}=false'


def test_untested_jaxlib_gets_no_flags(monkeypatch):
  # XLA aborts at start-up on a flag its release does not know.
  monkeypatch.setattr(
      xla_flags.importlib.metadata, 'version', lambda name: '99.0.0'
  )
  env = {}
  assert xla_flags.set_defaults(env) == [] and env == {}


def test_trainer_sets_them_before_jax_starts():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run(
      [
          sys.executable,
          '-c',
          'import os, alexnet_jax.main, jax; '
          'print(len(jax.devices())); print(os.environ["XLA_FLAGS"])',
      ],
      env=env,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.split('\n')
  assert out[0] == '2'  # the user's flag still took effect
  assert out[1] == f'--xla_force_host_platform_device_count=2 {FLAG}=true'
