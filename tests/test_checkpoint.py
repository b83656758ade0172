"""checkpoint.py: exports, workdirs, step dirs, refusals and fallbacks.

Parameters are random NumPy arrays of the model's shapes (no model init or
training here); test_train.py covers checkpoints written by real runs.
"""

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax.configs import paper
from alexnet_jax.core import checkpoint

CLASSES = [f'class_{i}' for i in range(10)]
PRE = dict(
    channel_order='RGB',
    pixel_scale=1.0,
    mean=[0.5, 0.4, 0.3],
    std=[1.0, 1.0, 1.0],
    image_size=64,
    resize_size=72,
)


def _config(width=0.0625):
  c = paper.get_config()
  c.model.num_classes = 10
  c.model.width_scale = width
  c.data.image_size, c.data.resize_size = 64, 72
  return c


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(s.dtype),
      checkpoint.abstract_params(config),
  )


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A training workdir with steps 10..50; 20 and 40 carry val metrics."""
  config = _config()
  wd = tmp_path_factory.mktemp('wd')
  mgr = checkpoint.manager(wd, keep=2)
  meta = checkpoint.make_metadata(
      config=config, preprocessing=PRE, class_names=CLASSES
  )
  states = {}
  for step, err in [(10, None), (20, 0.5), (30, None), (40, 0.6), (50, None)]:
    params = _random_params(config, seed=step)
    state = dict(
        step=np.int32(step), params=params, opt_state=dict(trace=params)
    )
    states[step] = state
    metrics = None if err is None else {checkpoint.BEST_METRIC: err}
    checkpoint.save_train_state(mgr, step, state, meta, metrics)
  mgr.wait_until_finished()
  mgr.close()
  return wd, config, states


def test_export_round_trip_and_metadata(tmp_path):
  config = _config()
  variables = {'params': _random_params(config)}
  out = tmp_path / 'export'
  checkpoint.save_model(
      out,
      config=config,
      variables=variables,
      preprocessing=PRE,
      class_names=CLASSES,
  )
  model, loaded, loaded_config = checkpoint.load(out)
  _assert_tree_equal(loaded, variables)
  assert loaded_config.model.width_scale == config.model.width_scale
  assert type(model).__name__ == 'AlexNet'
  meta = checkpoint.load_metadata(out)
  assert meta['format_version'] == checkpoint.FORMAT_VERSION
  assert meta['preprocessing'] == PRE
  assert meta['class_names'] == CLASSES
  assert meta['config'].data.mean == tuple(config.data.mean)  # tuples back
  # Nothing else left beside it (the temporary directory was renamed).
  assert sorted(p.name for p in tmp_path.iterdir()) == ['export']


def test_export_refuses_to_overwrite_unless_asked(tmp_path):
  config = _config()
  out = tmp_path / 'export'
  kw = dict(config=config, preprocessing=PRE, class_names=CLASSES)
  checkpoint.save_model(out, variables={'params': _random_params(config)}, **kw)
  with pytest.raises(FileExistsError, match='overwrite'):
    checkpoint.save_model(
        out, variables={'params': _random_params(config)}, **kw
    )
  new = {'params': _random_params(config, seed=1)}
  checkpoint.save_model(out, variables=new, overwrite=True, **kw)
  _assert_tree_equal(checkpoint.load(out)[1], new)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['export']


def test_failed_export_leaves_nothing(tmp_path):
  config = _config()
  bad = {'params': {'conv1': {'kernel': object()}}}  # not an array
  with pytest.raises(ValueError):  # orbax: unsupported dtype "object"
    checkpoint.save_model(
        tmp_path / 'export',
        config=config,
        variables=bad,
        preprocessing=PRE,
        class_names=CLASSES,
    )
  assert list(tmp_path.iterdir()) == []


def _export_with_metadata(tmp_path, edit):
  """A model export whose metadata `edit(meta)` has changed afterwards."""
  config = _config()
  out = tmp_path / 'export'
  checkpoint.save_model(
      out,
      config=config,
      variables={'params': _random_params(config)},
      preprocessing=PRE,
      class_names=CLASSES,
  )
  meta = json.loads((out / checkpoint.METADATA_FILE).read_text())
  edit(meta)
  (out / checkpoint.METADATA_FILE).write_text(json.dumps(meta))
  return out


def test_unknown_format_version_is_refused(tmp_path):
  out = _export_with_metadata(
      tmp_path, lambda meta: meta.update(format_version=99)
  )
  with pytest.raises(
      checkpoint.CheckpointError,
      match='format_version=99.*reads format_version=1',
  ):
    checkpoint.load(out)


def test_export_whose_weights_do_not_match_its_config(tmp_path):
  out = _export_with_metadata(
      tmp_path, lambda meta: meta['config']['model'].update(width_scale=0.125)
  )
  with pytest.raises(checkpoint.CheckpointError, match=r"conv1'\]\['bias"):
    checkpoint.load(out)


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
    checkpoint.load(tmp_path / 'nope')
  with pytest.raises(checkpoint.CheckpointError, match='not a checkpoint'):
    checkpoint.load(tmp_path)


def test_workdir_latest_best_and_step_dir(workdir):
  wd, _, states = workdir
  # LatestN(2) + BestN(1): 40, 50 are the latest; 20 has the best error.
  steps = [s for s, _ in checkpoint.step_dirs(wd / 'checkpoints')]
  assert steps == [20, 40, 50]
  _assert_tree_equal(checkpoint.load(wd)[1]['params'], states[50]['params'])
  _assert_tree_equal(
      checkpoint.load(wd, best=True)[1]['params'], states[20]['params']
  )
  _assert_tree_equal(
      checkpoint.load(wd / 'checkpoints' / '40')[1]['params'],
      states[40]['params'],
  )
  assert checkpoint.load_metadata(wd)['step'] == 50
  assert checkpoint.load_metadata(wd, best=True)['step'] == 20


def test_relative_paths_load(workdir, monkeypatch):
  # Orbax refuses relative paths; `evaluate --checkpoint=runs/wd` must work.
  wd, _, states = workdir
  monkeypatch.chdir(wd.parent)
  _assert_tree_equal(
      checkpoint.load(wd.name)[1]['params'], states[50]['params']
  )
  step_dir = pathlib.Path(wd.name) / 'checkpoints' / '40'
  _assert_tree_equal(
      checkpoint.load(step_dir)[1]['params'], states[40]['params']
  )


def test_half_written_step_is_ignored(workdir, tmp_path):
  wd = tmp_path / 'wd'
  shutil.copytree(workdir[0], wd)
  shutil.copytree(
      wd / 'checkpoints' / '50',
      wd / 'checkpoints' / '60.orbax-checkpoint-tmp-123',
  )
  assert checkpoint.load_metadata(wd)['step'] == 50


def _corrupt(step_dir):
  """Truncates every data file of the state item."""
  for path in (step_dir / checkpoint.STATE_ITEM).rglob('*'):
    if path.is_file():
      path.write_bytes(b'')


def test_corrupt_latest_falls_back_to_previous(workdir, tmp_path):
  wd = tmp_path / 'wd'
  shutil.copytree(workdir[0], wd)
  _, config, states = workdir
  _corrupt(wd / 'checkpoints' / '50')
  _assert_tree_equal(checkpoint.load(wd)[1]['params'], states[40]['params'])

  mgr = checkpoint.manager(wd, keep=2)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
      states[50],
  )
  step, state, meta = checkpoint.restore_train_state(mgr, target, config)
  assert step == 40 and meta['step'] == 40
  _assert_tree_equal(state['params'], states[40]['params'])
  # Moved aside, so the resumed run can save step 50 again.
  assert mgr.all_steps() == [20, 40]
  assert any(
      p.name.startswith('50.unreadable') for p in (wd / 'checkpoints').iterdir()
  )
  mgr.close()


def test_no_readable_checkpoint_is_an_error(workdir, tmp_path):
  wd = tmp_path / 'wd'
  shutil.copytree(workdir[0], wd)
  _, config, states = workdir
  for step in (20, 40, 50):
    _corrupt(wd / 'checkpoints' / str(step))
  mgr = checkpoint.manager(wd, keep=2)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
      states[50],
  )
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint in'):
    checkpoint.restore_train_state(mgr, target, config)
  mgr.close()


def test_resume_into_a_different_model_is_refused(workdir):
  wd, config, states = workdir
  other = _config(width=0.125)
  other.data.image_size = 96
  mgr = checkpoint.manager(wd, keep=2, read_only=True)
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.restore_train_state(mgr, states[50], other)
  assert 'model.width_scale: checkpoint 0.0625, config 0.125' in str(e.value)
  assert 'data.image_size: checkpoint 64, config 96' in str(e.value)
  mgr.close()


def test_config_from_dict_fills_new_fields_and_rejects_unknown():
  saved = checkpoint.config_to_dict(_config())
  del saved['train']['seed']  # a field added later
  config = checkpoint.config_from_dict(saved)
  assert config.train.seed == paper.get_config().train.seed
  saved['model']['shiny'] = 1  # a field from the future
  with pytest.raises(checkpoint.CheckpointError, match="'model.shiny'"):
    checkpoint.config_from_dict(saved)


def test_metadata_files_are_plain_json(workdir):
  wd = workdir[0]
  meta = json.loads(
      (wd / 'checkpoints' / '50' / 'metadata' / 'metadata').read_text()
  )
  assert meta['format_version'] == 1 and meta['step'] == 50
  assert os.path.exists(wd / 'checkpoints' / '20' / 'metrics' / 'metrics')
  assert pathlib.Path(wd / 'checkpoints' / '50').is_dir()
