"""Prepares ImageNet (ILSVRC-2012) for TFDS from its two hand-placed archives.

    python -m alexnet_jax.prepare_imagenet --data_dir=DATA_DIR \
        --manual_dir=MANUAL_DIR

MANUAL_DIR must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
(default: DATA_DIR/downloads/manual). This runs TFDS's own `imagenet2012`
builder (which converts the CMYK and PNG files to RGB JPEG and labels the
validation images). It refuses to start with only one archive: TFDS would
build whichever split it finds and leave a half-prepared dataset, and it
rebuilds a half-prepared one. Then train with
`--config.data.name=imagenet2012:5.*.* --config.data.data_dir=DATA_DIR`.
"""

import logging
import os
import sys

from absl import flags

from alexnet_jax import cli
from alexnet_jax.core import console

console.setup()  # before anything imports TensorFlow

from alexnet_jax.core import tfds_source  # pylint: disable=g-import-not-at-top,wrong-import-position


def prepare(data_dir='', manual_dir='', name='imagenet2012:5.*.*'):
  """Builds the TFDS dataset; returns {split: number of examples}."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = tfds_source.default_data_dir(data_dir)
  manual_dir = tfds_source.default_manual_dir(data_dir, manual_dir)
  missing = [
      archive
      for archive, _ in tfds_source.IMAGENET_ARCHIVES.values()
      if not os.path.isfile(os.path.join(manual_dir, archive))
  ]
  if missing:
    raise tfds_source.DataNotReadyError(
        f'{", ".join(missing)} not found in {manual_dir}.\n'
        + tfds_source.imagenet_instructions(data_dir, manual_dir)
    )
  # The code builder (a versioned name would open existing data read-only).
  builder = tfds.builder(tfds_source.base_name(name), data_dir=data_dir)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared():
    try:
      tfds_source.check_prepared(builder, name, data_dir, manual_dir)
      logging.info('ImageNet is already prepared in %s', builder.data_dir)
    except tfds_source.DataNotReadyError:
      logging.warning('Rebuilding the half-prepared %s', builder.data_dir)
      mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, download_mode=mode
      )
  )
  builder = tfds.builder(name, data_dir=data_dir)
  tfds_source.check_prepared(builder, name, data_dir, manual_dir)
  return {s: info.num_examples for s, info in builder.info.splits.items()}


def define_flags(fv):
  """The command's flags, defined in the FlagValues `fv`."""
  flags.DEFINE_string(
      'data_dir',
      '',
      "TFDS data_dir ('' = TFDS's default, ~/tensorflow_datasets).",
      flag_values=fv,
  )
  flags.DEFINE_string(
      'manual_dir',
      '',
      'Folder with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
      '(default: DATA_DIR/downloads/manual).',
      flag_values=fv,
  )


def main(argv=None):
  """The command (`argv`: its flags; None: sys.argv, as a program)."""
  return cli.run_command(__name__, define_flags, _prepare, argv)


def _prepare(args, extra):
  cli.no_arguments(extra)
  logging.basicConfig(level=logging.INFO)
  try:
    sizes = prepare(args.data_dir, args.manual_dir)
  except tfds_source.DataNotReadyError as e:
    print(e, file=sys.stderr)
    return 2
  print(
      'ImageNet prepared:',
      ', '.join(f'{k} {v:,}' for k, v in sorted(sizes.items())),
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
