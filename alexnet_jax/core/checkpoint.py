"""Checkpoints: model exports, training checkpoints, and loading either.

Three kinds of directory hold weights, and `load` takes any of them:

  model export (`save_model`, used by the convert CLI):
      DIR/metadata.json            format_version, config, preprocessing,
                                   class_names
      DIR/variables/               Orbax checkpoint of the Flax variables
      DIR/mean_image.npy           (optional) the mean image the weights
                                   expect; preprocessing.mean_image names it
                                   relative to DIR
  training workdir (`train.py`):
      WORKDIR/checkpoints/<step>/state/     Orbax: params, opt_state, ...
      WORKDIR/checkpoints/<step>/metadata/  JSON: the same four keys + step
      WORKDIR/checkpoints/<step>/metrics/   JSON: validation metrics (if any)
  a step directory: WORKDIR/checkpoints/<step>.

Every checkpoint carries its config, the preprocessing its weights expect and
its class names, so evaluate/predict need nothing but the directory.
"""

import json
import os
import pathlib
import shutil
from typing import Any
import uuid

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.core import config_checks
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import outputs

FORMAT_VERSION = 1
METADATA_FILE = 'metadata.json'  # in a model export
MEAN_IMAGE_FILE = 'mean_image.npy'  # in a model export (optional)
VARIABLES_DIR = 'variables'  # in a model export
CHECKPOINTS_DIR = 'checkpoints'  # in a training workdir
STATE_ITEM = 'state'  # items of a training step directory
METADATA_ITEM = 'metadata'
METRICS_ITEM = 'metrics'  # written by Orbax's CheckpointManager
BEST_METRIC = 'val_top1_error'  # lower is better
# Orbax writes a step into `<step>.orbax-checkpoint-tmp...` and renames it
# when complete: such a directory is a save that never finished.
_ORBAX_TMP = '.orbax-checkpoint-tmp'
# Config fields (or sections) that decide the shape and meaning of the
# weights: resuming is refused when any of these differ.
MODEL_FIELDS = ('model', 'data.image_size')


class CheckpointError(ValueError):
  """A checkpoint cannot be used: missing, corrupt, or for another model."""


# ---------------------------------------------------------------- configs --


def config_to_dict(config) -> dict:
  """A JSON-able plain dict of a ConfigDict (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config))


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A full config: the schema's defaults overlaid with `saved`.

  Fields added to the schema after the checkpoint was written get their
  defaults; a field the schema does not know is an error naming it.
  """
  from alexnet_jax.configs import paper  # the schema

  config = paper.get_config()

  def merge(node, values, prefix):
    for key, value in values.items():
      name = prefix + key
      if key not in node:
        raise CheckpointError(
            f'checkpoint config has field {name!r}, which this version of '
            f'alexnet_jax does not know (known here: {sorted(node.keys())})'
        )
      if isinstance(node[key], ml_collections.ConfigDict):
        merge(node[key], value, name + '.')
      else:
        if isinstance(node[key], tuple) and isinstance(value, list):
          value = _to_tuple(value)
        node[key] = value

  merge(config, saved, '')
  _legacy_defaults(config, saved)
  return config


def _legacy_defaults(config, saved):
  """Fields whose schema default differs from what configs saved before the
  field existed meant: such a config gets the old behaviour, not the new
  default (an old run resumed at another input scale would diverge)."""
  data, model = saved.get('data', {}), saved.get('model', {})
  if data and 'pixel_scale' not in data:
    config.data.pixel_scale = 1.0  # [0, 1] pixels, before the field
  if model and 'fc_init_std' not in model and 'weight_init_std' in model:
    config.model.fc_init_std = model['weight_init_std']


def _to_tuple(value):
  return tuple(_to_tuple(v) if isinstance(v, list) else v for v in value)


def flatten(tree, prefix='') -> dict:
  """{'a.b': value} of a nested dict (or a config via config_to_dict)."""
  if not isinstance(tree, dict):
    tree = config_to_dict(tree)
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def config_differences(saved, current, sections=MODEL_FIELDS) -> list[str]:
  """'field: checkpoint X, config Y' for each differing field in `sections`
  (None: every field)."""
  saved = flatten(saved)
  current = flatten(current)
  out = []
  for name in sorted(set(saved) | set(current)):
    if sections is not None and not any(
        name == s or name.startswith(s + '.') for s in sections
    ):
      continue
    a, b = saved.get(name, '<absent>'), current.get(name, '<absent>')
    if a != b:
      out.append(f'{name}: checkpoint {a!r}, config {b!r}')
  return out


def check_compatible(saved_config, config, where):
  """Raises CheckpointError naming the fields if the models differ."""
  diffs = config_differences(saved_config, config)
  if diffs:
    raise CheckpointError(
        f'checkpoint {where} is for a different model; differing config '
        f'fields: {"; ".join(diffs)}. Use another --workdir, or override '
        'these fields to match the checkpoint.'
    )


# --------------------------------------------------------------- metadata --


def make_metadata(*, config, preprocessing, class_names, **extra) -> dict:
  meta = dict(
      format_version=FORMAT_VERSION,
      config=config_to_dict(config),
      preprocessing=_plain(dict(preprocessing)),
      class_names=[str(c) for c in class_names],
  )
  meta.update(extra)
  return meta


def _plain(value):
  """numpy/tuple values in a metadata dict as JSON types."""
  return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist()))


def _check_metadata(meta: Any, where) -> dict:
  if not isinstance(meta, dict) or 'format_version' not in meta:
    raise CheckpointError(
        f'{where} holds no alexnet_jax checkpoint metadata '
        '(no format_version)'
    )
  version = meta['format_version']
  if version != FORMAT_VERSION:
    raise CheckpointError(
        f'{where} has checkpoint format_version={version!r}; this version of '
        f'alexnet_jax reads format_version={FORMAT_VERSION} only'
    )
  missing = [
      k for k in ('config', 'preprocessing', 'class_names') if k not in meta
  ]
  if missing:
    raise CheckpointError(f'{where} metadata lacks {", ".join(missing)}')
  return meta


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f'cannot read {path}: {e}') from e


# ------------------------------------------------------------ model export --


def save_model(
    directory,
    *,
    config,
    variables,
    preprocessing,
    class_names,
    overwrite=False,
    mean_image=None,
):
  """Writes a standalone model export (weights + metadata) atomically.

  mean_image: float32[resize_size, resize_size, 3] RGB in [0, 1] (e.g.
  Caffe's mean, convert.read_mean_binaryproto), stored in the export so it
  travels with it; `load_metadata` hands its path back in
  preprocessing['mean_image'].

  Everything is written into a temporary sibling directory that is renamed
  to `directory` only when complete, so a failure leaves nothing
  half-written there. An existing `directory` is replaced only with
  `overwrite=True`.
  """
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and not overwrite:
    raise FileExistsError(
        f'{directory} exists; pass overwrite=True (or '
        '--overwrite) to replace it, or choose a new path'
    )
  config_checks.validate(config)
  preprocessing = dict(preprocessing)
  if mean_image is not None:
    size = int(preprocessing['resize_size'])
    mean_image = np.asarray(mean_image, np.float32)
    if mean_image.shape != (size, size, 3):
      raise ValueError(
          f'mean_image has shape {mean_image.shape}; the '
          f'preprocessing wants ({size}, {size}, 3)'
      )
    preprocessing['mean_image'] = MEAN_IMAGE_FILE
  meta = make_metadata(
      config=config, preprocessing=preprocessing, class_names=class_names
  )
  if len(meta['class_names']) != config.model.num_classes:
    raise ValueError(
        f'{len(meta["class_names"])} class names for '
        f'config.model.num_classes={config.model.num_classes}'
    )
  with outputs.writing('export', directory):
    _write_export(directory, variables, mean_image, meta)
  logging.info('Saved model export to %s', directory)
  return directory


def _write_export(directory, variables, mean_image, meta):
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = directory.parent / f'.{directory.name}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    tmp.mkdir()
    host = jax.tree.map(np.asarray, jax.device_get(variables))
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / VARIABLES_DIR, host)
      ckptr.wait_until_finished()
    if mean_image is not None:
      np.save(tmp / MEAN_IMAGE_FILE, mean_image)
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))
    if directory.exists():
      old = directory.parent / f'.{directory.name}.old-{uuid.uuid4().hex[:8]}'
      os.rename(directory, old)
      os.rename(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------- path resolution --


def _is_export(path):
  return (path / METADATA_FILE).is_file() and (path / VARIABLES_DIR).is_dir()


def _is_step_dir(path):
  return (path / STATE_ITEM).is_dir() and (path / METADATA_ITEM).is_dir()


def _checkpoints_root(path):
  """WORKDIR/checkpoints for a workdir or the checkpoints dir itself."""
  if (path / CHECKPOINTS_DIR).is_dir():
    return path / CHECKPOINTS_DIR
  if path.name == CHECKPOINTS_DIR and path.is_dir():
    return path
  return None


def step_dirs(root) -> list[tuple[int, pathlib.Path]]:
  """Finished step directories under a checkpoints root, oldest first.

  Half-written saves (Orbax's temporary directories) are reported and
  skipped.
  """
  root = pathlib.Path(root)
  steps = []
  for child in root.iterdir() if root.is_dir() else ():
    if _ORBAX_TMP in child.name:
      logging.warning(
          'Ignoring half-written checkpoint %s (a save that did not finish)',
          child,
      )
      continue
    if child.is_dir() and child.name.isdigit():
      steps.append((int(child.name), child))
  return sorted(steps)


def step_metrics(step_dir) -> dict | None:
  path = pathlib.Path(step_dir) / METRICS_ITEM / METRICS_ITEM
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def best_step(root) -> int | None:
  """The step with the lowest validation top-1 error, or None."""
  scored = [
      (m[BEST_METRIC], step)
      for step, d in step_dirs(root)
      if (m := step_metrics(d)) and BEST_METRIC in m
  ]
  return min(scored)[1] if scored else None


def _candidates(path: pathlib.Path, best: bool):
  """(kind, directory) to try, preferred first: later ones are fallbacks."""
  path = path.absolute()  # Orbax refuses relative paths.
  if not path.exists():
    raise CheckpointError(f'checkpoint path {path} does not exist')
  if _is_export(path):
    return [('export', path)]
  if _is_step_dir(path):
    return [('step', path)]
  root = _checkpoints_root(path)
  if root is None:
    raise CheckpointError(
        f'{path} is not a checkpoint: expected a training workdir (with '
        f'{CHECKPOINTS_DIR}/), a step directory ({CHECKPOINTS_DIR}/<step> '
        f'with {STATE_ITEM}/ and {METADATA_ITEM}/) or a model export (with '
        f'{METADATA_FILE} and {VARIABLES_DIR}/)'
    )
  steps = step_dirs(root)
  if not steps:
    raise CheckpointError(f'{path} holds no finished checkpoint yet')
  ordered = [d for _, d in reversed(steps)]
  if best:
    b = best_step(root)
    if b is None:
      logging.warning(
          'No checkpoint in %s has validation metrics; using the latest',
          root,
      )
    else:
      ordered = [root / str(b)] + [d for d in ordered if d.name != str(b)]
  return [('step', d) for d in ordered]


def _read_metadata(kind, directory):
  if kind == 'export':
    where = directory / METADATA_FILE
    return _check_metadata(_read_json(where), where)
  where = directory / METADATA_ITEM / METADATA_ITEM
  return _check_metadata(_read_json(where), where)


def load_metadata(path, *, best=False) -> dict:
  """dict(format_version, config, preprocessing, class_names[, step, ...]).

  `config` is returned as a ConfigDict (schema defaults filled in).
  """
  kind, directory = _candidates(pathlib.Path(path), best)[0]
  meta = dict(_read_metadata(kind, directory))
  meta['config'] = config_from_dict(meta['config'])
  mean = meta['preprocessing'].get('mean_image')
  if kind == 'export' and mean and not os.path.isabs(mean):
    # Stored inside the export: resolved here so readers need no base dir.
    meta['preprocessing'] = dict(
        meta['preprocessing'], mean_image=str(directory.absolute() / mean)
    )
  return meta


# ------------------------------------------------------------------ load --


def abstract_params(config):
  """ShapeDtypeStructs of the parameters `config.model` describes."""
  module = model_lib.from_config(config.model)
  size = config.data.image_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  variables = jax.eval_shape(
      lambda r, x: module.init({'params': r}, x, train=False),
      jax.random.key(0),
      x,
  )
  return variables['params']


def _shape_differences(expected, got) -> list[str]:
  exp = {
      jax.tree_util.keystr(k): v.shape
      for k, v in jax.tree_util.tree_leaves_with_path(expected)
  }
  have = {
      jax.tree_util.keystr(k): np.shape(v)
      for k, v in jax.tree_util.tree_leaves_with_path(got)
  }
  out = []
  for name in sorted(set(exp) | set(have)):
    a, b = have.get(name, '<absent>'), exp.get(name, '<absent>')
    if a != b:
      out.append(f'{name}: checkpoint {a}, model {b}')
  return out


def _numpy_target(tree):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


def _restore_params(kind, directory, config):
  """Parameters as numpy arrays (only params are read from a train state)."""
  target = abstract_params(config)
  restore_args = jax.tree.map(
      lambda s: ocp.RestoreArgs(restore_type=np.ndarray), target
  )
  with ocp.PyTreeCheckpointer() as ckptr:
    if kind == 'export':
      got = ckptr.restore(directory / VARIABLES_DIR)
      params = got.get('params') if isinstance(got, dict) else None
      if params is None:
        raise CheckpointError(f'{directory / VARIABLES_DIR} holds no params')
    else:
      item = {'params': _numpy_target(target)}
      got = ckptr.restore(
          directory / STATE_ITEM,
          args=ocp.args.PyTreeRestore(
              item=item,
              restore_args={'params': restore_args},
              partial_restore=True,
          ),
      )
      params = got['params']
  params = jax.tree.map(np.asarray, params)
  diffs = _shape_differences(target, params)
  if diffs:
    raise CheckpointError(
        f'{directory} does not match the model its config describes: '
        + '; '.join(diffs[:10])
    )
  return params


def load(path, *, best=False):
  """(model, variables, config) from an export, a step dir or a workdir.

  For a workdir the latest finished step is used (best=True: the lowest
  validation top-1 error); a latest step that cannot be read is reported and
  the previous one is used.
  """
  errors = []
  for kind, directory in _candidates(pathlib.Path(path), best):
    try:
      meta = _read_metadata(kind, directory)
      config = config_from_dict(meta['config'])
      config_checks.validate(config)
      params = _restore_params(kind, directory, config)
    except CheckpointError as e:
      if (
          kind == 'export'
          or 'different model' in str(e)
          or 'does not match' in str(e)
          or 'format_version' in str(e)
      ):
        raise
      errors.append(e)
      logging.warning(
          'Checkpoint %s is unreadable (%s); trying the previous one',
          directory,
          e,
      )
      continue
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
      if kind == 'export':
        raise CheckpointError(
            f'cannot read model export {directory}: {e}'
        ) from e
      errors.append(e)
      logging.warning(
          'Checkpoint %s is unreadable (%s: %s); trying the previous one',
          directory,
          type(e).__name__,
          e,
      )
      continue
    if errors:
      logging.warning(
          'Loaded %s instead of the unreadable newer checkpoint', directory
      )
    logging.info('Loaded checkpoint %s', directory)
    return model_lib.from_config(config.model), {'params': params}, config
  raise CheckpointError(
      f'no readable checkpoint in {path}: ' + '; '.join(map(str, errors))
  )


# ------------------------------------------------------ training manager --


def manager(
    workdir, *, keep: int, async_save: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
  """The workdir's CheckpointManager: latest `keep` plus the best by error.

  A plain `max_to_keep` with a `best_fn` keeps only the best few, deleting
  the latest and breaking resume; the preservation policies keep both.
  `best_fn` is still given so Orbax writes each step's metrics.
  """
  root = pathlib.Path(workdir).absolute() / CHECKPOINTS_DIR
  step_dirs(root)  # reports half-written saves left by a killed run
  policy = ocp.checkpoint_managers.AnyPreservationPolicy(
      [
          ocp.checkpoint_managers.LatestN(n=keep),
          ocp.checkpoint_managers.BestN(
              get_metric_fn=lambda m: m[BEST_METRIC],
              reverse=True,
              n=1,
              keep_checkpoints_without_metrics=False,
          ),
      ]
  )
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      best_fn=lambda m: m[BEST_METRIC],
      best_mode='min',
      enable_async_checkpointing=async_save,
      read_only=read_only,
      create=not read_only,
      cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(
      root, options=options, item_names=(STATE_ITEM, METADATA_ITEM)
  )


def save_train_state(
    mgr, step, state, metadata, metrics=None, *, force=False
) -> bool:
  """Saves a training state (any pytree of arrays) with its metadata."""
  args = ocp.args.Composite(
      **{
          STATE_ITEM: ocp.args.StandardSave(state),
          METADATA_ITEM: ocp.args.JsonSave(
              _plain(dict(metadata, step=int(step)))
          ),
      }
  )
  return mgr.save(int(step), args=args, metrics=metrics, force=force)


def restore_train_state(mgr, target, config):
  """(step, state, metadata) from the newest readable step, or None.

  `target` is a pytree of arrays or ShapeDtypeStructs the state is restored
  into. A step that cannot be read while an older one can is reported and
  moved aside (to `<step>.unreadable`, so the run can save that step again);
  if no step can be read, CheckpointError says why rather than silently
  starting over. A checkpoint of another model is refused.
  """
  mgr.reload()
  root = pathlib.Path(mgr.directory)
  unreadable = []
  for step in sorted(mgr.all_steps(), reverse=True):
    directory = root / str(step)
    try:
      meta = _read_metadata('step', directory)
    except CheckpointError as e:
      if 'format_version' in str(e):
        raise
      logging.error(
          'Checkpoint at step %d is unreadable (%s); trying the '
          'previous one',
          step,
          e,
      )
      unreadable.append((step, str(e)))
      continue
    check_compatible(meta['config'], config, directory)
    try:
      restored = mgr.restore(
          step,
          args=ocp.args.Composite(
              **{STATE_ITEM: ocp.args.StandardRestore(target)}
          ),
      )
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
      logging.error(
          'Checkpoint at step %d is unreadable (%s: %s); trying '
          'the previous one',
          step,
          type(e).__name__,
          e,
      )
      unreadable.append((step, f'{type(e).__name__}: {e}'))
      continue
    if unreadable:
      _move_aside(root, [s for s, _ in unreadable])
      mgr.reload()
      logging.warning(
          'Resuming from step %d instead of the unreadable step(s) %s',
          step,
          [s for s, _ in unreadable],
      )
    return step, restored[STATE_ITEM], meta
  if unreadable:
    raise CheckpointError(
        f'no checkpoint in {root} can be read: '
        + '; '.join(f'step {s}: {e}' for s, e in unreadable)
        + '. Move them away to '
        'start over in this workdir, or use another --workdir.'
    )
  return None


def _move_aside(root, steps):
  if jax.process_index() != 0:
    return
  for step in steps:
    src = root / str(step)
    dst = root / f'{step}.unreadable-{uuid.uuid4().hex[:6]}'
    os.rename(src, dst)
    logging.warning('Moved the unreadable checkpoint %s to %s', src, dst)
