"""The data root and runs root (alexnet_jax.core.paths) and their use."""

import os
import subprocess
import sys

import pytest

from alexnet_jax.configs import paper
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import paths
from conftest import REPO


@pytest.fixture
def home(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.delenv(paths.DATA_ENV, raising=False)
  monkeypatch.delenv(paths.RUNS_ENV, raising=False)
  return tmp_path / 'home'


def test_data_root_flag_then_environment_then_default(
    home, tmp_path, monkeypatch
):
  assert paths.data_root() == home / 'alexnet_jax_data'
  assert paths.runs_root() == home / 'alexnet_jax_runs'
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / 'env'))
  assert paths.data_root() == tmp_path / 'env'
  assert paths.data_root(tmp_path / 'flag') == tmp_path / 'flag'
  assert paths.dataset_dir('cifar10') == tmp_path / 'env' / 'cifar10'
  # A relative flag is made absolute, so processes started elsewhere agree.
  monkeypatch.chdir(tmp_path)
  assert paths.set_data_root('rel') == tmp_path / 'rel'
  assert os.environ[paths.DATA_ENV] == str(tmp_path / 'rel')
  assert paths.set_data_root(None) == tmp_path / 'rel'  # kept


def test_expand_and_portable(home, tmp_path, monkeypatch):
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / 'd'))
  for spelled in ('$ALEXNET_JAX_DATA/cifar10', '${ALEXNET_JAX_DATA}/cifar10'):
    assert paths.expand(spelled) == str(tmp_path / 'd' / 'cifar10')
  assert paths.expand('$ALEXNET_JAX_DATAX/a') == '$ALEXNET_JAX_DATAX/a'
  assert paths.expand('~/x') == str(home / 'x')
  assert paths.expand('/abs/x') == '/abs/x'
  assert paths.portable(tmp_path / 'd' / 'cifar10' / 'test') == (
      '$ALEXNET_JAX_DATA/cifar10/test'
  )
  assert paths.portable(tmp_path / 'd') == '$ALEXNET_JAX_DATA'
  assert paths.portable('/elsewhere/x') == '/elsewhere/x'
  assert paths.in_data_root('cifar10') == '$ALEXNET_JAX_DATA/cifar10'


def _config(name):
  c = paper.get_config()
  c.data.name = name
  return c


def test_folder_source_under_the_data_root(tmp_path, monkeypatch):
  for split, cls in (('train', 'cat'), ('train', 'dog'), ('val', 'cat')):
    (tmp_path / 'root' / 'mini' / split / cls).mkdir(parents=True)
    (tmp_path / 'root' / 'mini' / split / cls / '1.jpg').touch()  # listed only
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / 'root'))
  info = input_pipeline.get_info(_config('folder:$ALEXNET_JAX_DATA/mini'))
  assert info.class_names == ('cat', 'dog')
  # Resolved at read time: another data root is another folder.
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / 'elsewhere'))
  with pytest.raises(FileNotFoundError) as e:
    input_pipeline.get_info(_config('folder:$ALEXNET_JAX_DATA/mini'))
  message = str(e.value)
  assert str(tmp_path / 'elsewhere' / 'mini') in message
  assert 'set ALEXNET_JAX_DATA' in message


def test_experiment_configs_name_data_through_the_root():
  import importlib.util

  for name in ('figure1', 'lrn_cifar'):
    path = REPO / 'configs' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.get_config().data.name == 'folder:$ALEXNET_JAX_DATA/cifar10'


def test_sweep_passes_data_root_to_its_trainers(tmp_path):
  """--data_root reaches the trainers a sweep starts (through the
  environment), and a missing dataset is named with the root."""
  (tmp_path / 'data' / 'cifar10').mkdir(parents=True)
  fake = tmp_path / 'fake_main.py'
  fake.write_text(
      'import os, pathlib, sys\n'
      'args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])\n'
      'wd = pathlib.Path(args["workdir"])\n'
      'wd.mkdir(parents=True, exist_ok=True)\n'
      '(wd / "seen").write_text(os.environ["ALEXNET_JAX_DATA"] + " " + '
      'args["config.data.name"])\n'
  )
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
  env.pop(paths.DATA_ENV, None)
  subprocess.run(
      [
          sys.executable,
          '-m',
          'experiments.sweep',
          'lrn',
          '--only',
          'lrn_on',
          '--main',
          'fake_main',
          '--root',
          str(tmp_path / 'runs'),
          '--data_root',
          str(tmp_path / 'data'),
          '--results',
          str(tmp_path / 'res'),
      ],
      cwd=REPO,
      env=env,
      check=True,
      capture_output=True,
      text=True,
  )
  seen = tmp_path / 'runs' / 'lrn' / 'cifar10' / 'lrn_on' / 'seen'
  assert seen.read_text() == (
      f'{tmp_path / "data"} folder:$ALEXNET_JAX_DATA/cifar10'
  )
