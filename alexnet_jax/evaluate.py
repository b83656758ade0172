r"""Top-1 / top-5 error of a checkpoint on a dataset split.

    python -m alexnet_jax.evaluate --checkpoint=DIR \
        [--dataset='folder:$ALEXNET_JAX_DATA/cifar10' --split=test --crops=10]

DIR is a training workdir (its latest checkpoint; --best for the lowest
validation error), one of its step directories, or a model export from
`alexnet_jax.convert`. Images are preprocessed the way the checkpoint says
its weights expect (its `preprocessing` metadata); the dataset defaults to
the one the checkpoint was trained on.
"""

import json
import sys

from absl import flags
from absl import logging

from alexnet_jax import cli
from alexnet_jax.core import console

console.setup()  # before anything imports TensorFlow

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program, so the
  module can be imported beside the other CLIs)."""
  cli.define_checkpoint_flags(
      'For a workdir: the checkpoint with the '
      'lowest validation top-1 error instead of the latest.',
  )
  flags.DEFINE_string(
      'dataset',
      None,
      'Dataset (config.data.name form: a '
      "TFDS name, 'folder:/path' or 'fake'); default: the "
      "checkpoint's.",
  )
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir.')
  flags.DEFINE_string(
      'split',
      None,
      "Split, e.g. 'test', 'validation', "
      "'train[90%:]'; default: the checkpoint's evaluation "
      'split.',
  )
  flags.DEFINE_enum(
      'crops',
      None,
      ['1', '10'],
      '1 = centre crop, 10 = the '
      "paper's 10-crop testing; default: the checkpoint's "
      'config.data.eval_crops.',
  )
  flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
  flags.DEFINE_integer(
      'max_batches', -1, 'Stop after this many batches (-1: all).'
  )
  flags.DEFINE_string(
      'output', None, 'Also write the metrics to this JSON file.'
  )
  flags.DEFINE_enum(
      'precision',
      'highest',
      ['default', 'high', 'highest'],
      'Matmul/convolution precision (config.model.precision); '
      "'highest' reproduces float32 accuracy on GPUs and TPUs, "
      "whose 'default' is TF32 / bf16 passes.",
  )
  flags.DEFINE_bool(
      'verbose',
      False,
      'Show tracebacks of errors and the '
      'INFO logs of Orbax, TFDS and JAX start-up.',
  )


def eval_config(
    config,
    *,
    dataset=None,
    data_dir=None,
    split=None,
    crops=None,
    batch_size=64,
):
  """The checkpoint's config adapted for evaluation on this machine."""
  import jax  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  d = config.data
  if dataset:
    d.name = dataset
  if data_dir is not None:
    d.data_dir = data_dir
  if split:
    d.eval_split = split
  if crops:
    d.eval_crops = int(crops)
  # Plain data parallelism over this machine's devices.
  config.parallel.mesh.data = -1
  config.parallel.mesh.model = 1
  config.parallel.data_parallel = 'jit'
  n = jax.device_count()
  config.optim.batch_size = max(n, -(-batch_size // n) * n)
  return config


def run_evaluation(
    path,
    *,
    best=False,
    dataset=None,
    data_dir=None,
    split=None,
    crops=None,
    batch_size=64,
    max_batches=-1,
    progress=True,
    precision='highest',
) -> dict:
  """Loads `path` and returns its metrics on the split (see module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top

  from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import parallel  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import splits  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import train  # pylint: disable=g-import-not-at-top

  model, variables, config = checkpoint.load(path, best=best)
  model = model_lib.with_precision(model, precision)
  config.model.precision = precision
  meta = checkpoint.load_metadata(path, best=best)
  config = eval_config(
      config,
      dataset=dataset,
      data_dir=data_dir,
      split=split,
      crops=crops,
      batch_size=batch_size,
  )
  info = input_pipeline.get_info(config)
  if info.num_classes != config.model.num_classes:
    raise ValueError(
        f'dataset {config.data.name!r} has {info.num_classes} classes but '
        f'the checkpoint predicts {config.model.num_classes}'
    )
  if list(info.class_names) != list(meta['class_names']):
    logging.warning(
        "Dataset class names differ from the checkpoint's (e.g. "
        '%r vs %r): labels are matched by index',
        info.class_names[:3],
        meta['class_names'][:3],
    )
  split = config.data.eval_split
  crops = config.data.eval_crops
  par = parallel.Parallel(config, model)
  params = par.place_state(variables['params'])
  eval_fn = train.make_eval_fn(par)
  try:
    _, lo, hi = splits.parse_split(split, info.split_sizes)
    total = hi - lo  # for the progress bar only
  except ValueError:
    total = None
  bar = tqdm.tqdm(
      total=total,
      unit='img',
      desc=f'{split} ({crops} crop{"s" if crops > 1 else ""})',
      disable=not progress,
      file=sys.stderr,
  )
  result = train.evaluate(
      par,
      eval_fn,
      params,
      config,
      split,
      crops=crops,
      preprocessing=meta['preprocessing'],
      max_batches=max_batches,
      progress=bar.update,
  )
  bar.close()
  result.update(
      checkpoint=str(path),
      dataset=config.data.name,
      split=split,
      crops=crops,
      devices=jax.device_count(),
      precision=precision,
  )
  return result


def main(argv):
  if len(argv) > 1:
    sys.exit(
        f'error: unexpected arguments: {" ".join(argv[1:])} (flags '
        'take the form --name=value)'
    )
  if not FLAGS.checkpoint:
    sys.exit(
        'error: --checkpoint=DIR is required (a training workdir, a '
        'step directory or a model export)'
    )
  console.filter_logs(FLAGS.verbose)
  from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import tfds_source  # pylint: disable=g-import-not-at-top

  with console.exit_on(
      checkpoint.CheckpointError,
      tfds_source.DataNotReadyError,
      ValueError,
      FileNotFoundError,
      verbose=FLAGS.verbose,
  ):
    result = run_evaluation(
        FLAGS.checkpoint,
        best=FLAGS.best,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        split=FLAGS.split,
        crops=FLAGS.crops,
        batch_size=FLAGS.batch_size,
        max_batches=FLAGS.max_batches,
        precision=FLAGS.precision,
    )
  print(
      f'{result["dataset"]} {result["split"]}, {result["examples"]} '
      f'images, {result["crops"]} crop(s): top-1 error '
      f'{100 * result["top1_error"]:.2f}%, top-5 error '
      f'{100 * result["top5_error"]:.2f}%, loss {result["loss"]:.4f}'
  )
  print(json.dumps(result))
  if FLAGS.output:
    with open(FLAGS.output, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)


def run():
  cli.run_absl(__name__, main, define_flags)


if __name__ == '__main__':
  run()
