"""OS errors writing a run's outputs: one line naming the path, its role and
the OS's reason; nothing half-written (core/outputs.py)."""

import os
import pathlib

import jax
import numpy as np
import pytest

from alexnet_jax.configs import smoke
from alexnet_jax.core import checkpoint
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import outputs
from alexnet_jax.core import train
from helpers import repo

REPO = pathlib.Path(__file__).resolve().parents[1]


def _workdirs(tmp_path):
  """(error class, workdir) for each way a workdir cannot be created."""
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  cases = [
      (FileExistsError, a_file, f'File exists: {a_file} is a file'),
      (
          NotADirectoryError,
          a_file / 'below',
          f'Not a directory: {a_file} is a file',
      ),
  ]
  if pathlib.Path('/proc/self').is_dir():  # procfs: no new directories
    cases.append((FileNotFoundError, pathlib.Path('/proc/x'), 'No such file'))
  if pathlib.Path('/sys/kernel').is_dir():  # sysfs: not even for root
    cases.append(
        (PermissionError, pathlib.Path('/sys/alexnet_jax_x'), 'not permitted')
    )
  return cases


def test_every_workdir_error_class_is_one_line_naming_it(tmp_path):
  cases = _workdirs(tmp_path)
  assert {c for c, _, _ in cases} >= {FileExistsError, NotADirectoryError}
  config = smoke.get_config()
  for error_class, workdir, reason in cases:
    with pytest.raises(outputs.OutputError) as e:
      train.train_and_evaluate(config, workdir)
    assert isinstance(e.value.__cause__, error_class), workdir
    text = str(e.value)
    assert text.startswith(f'cannot create the workdir {workdir}: '), text
    assert reason in text and '\n' not in text, text


def test_workdir_error_from_the_command_is_one_error_line(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  proc = repo.run(
      '-m',
      'alexnet_jax.main',
      '--config=configs/smoke.py',
      f'--workdir={a_file / "below"}',
      check=False,
  )
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert errors == [
      f'error: cannot create the workdir {a_file / "below"}: Not a '
      f'directory: {a_file} is a file, not a directory'
  ], proc.stderr[-2000:]


def test_checkpoint_directory_that_is_a_file(tmp_path):
  (tmp_path / checkpoint.CHECKPOINTS_DIR).write_text('x')
  with pytest.raises(outputs.OutputError) as e:
    train.train_and_evaluate(smoke.get_config(), tmp_path)
  text = str(e.value)
  assert text.startswith('cannot create the checkpoint directory ')
  assert str(tmp_path / checkpoint.CHECKPOINTS_DIR) in text


def test_results_file_is_whole_or_untouched(tmp_path, monkeypatch):
  results = tmp_path / 'results.json'
  outputs.write_text(results, '{"old": 1}', 'results file')
  assert results.read_text() == '{"old": 1}'

  def failing_replace(src, dst):
    raise OSError(28, 'No space left on device', str(src))

  monkeypatch.setattr(os, 'replace', failing_replace)
  with pytest.raises(
      outputs.OutputError,
      match=f'^cannot write the results file {results}: No space left on '
      'device$',
  ):
    outputs.write_text(results, '{"new": 2}', 'results file')
  assert results.read_text() == '{"old": 1}'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json']
  monkeypatch.undo()
  (tmp_path / 'dir.json').mkdir()
  with pytest.raises(
      outputs.OutputError, match='results file .*dir.json: Is a directory$'
  ):
    outputs.write_text(tmp_path / 'dir.json', '{}', 'results file')


def test_export_below_a_file_leaves_nothing(tmp_path):
  config = smoke.get_config()
  config.model.width_scale = 0.0625
  module = model_lib.from_config(config.model)
  variables = jax.eval_shape(
      lambda: module.init(
          jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32), train=False
      )
  )
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  with pytest.raises(outputs.OutputError) as e:
    checkpoint.save_model(
        a_file / 'export',
        config=config,
        variables=variables,
        preprocessing=dict(image_size=64, resize_size=72, mean=[0] * 3),
        class_names=[str(i) for i in range(10)],
    )
  assert str(e.value).startswith(f'cannot write the export {a_file / "export"}')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file']
