"""Command line: published AlexNet weights -> an alexnet_jax model export.

    python -m alexnet_jax.convert --format=torchvision --input=alexnet.pth \\
        --output=/tmp/alexnet_torchvision
    python -m alexnet_jax.convert --format=caffemodel \\
        --input=bvlc_alexnet.caffemodel \\
        --mean_file=ilsvrc_2012_mean.binaryproto --output=/tmp/bvlc_alexnet

The readers live in `alexnet_jax.core.convert`; the export is written with
`checkpoint.save_model` and read back with `checkpoint.load`.
"""

import pathlib
import sys

from absl import flags

from alexnet_jax import cli
from alexnet_jax.core import console

console.setup()  # before anything imports TensorFlow

from alexnet_jax.core import convert  # pylint: disable=g-import-not-at-top,wrong-import-position


def _output_is_free(output: pathlib.Path, overwrite: bool):
  if output.exists() and not output.is_dir():
    raise FileExistsError(f'--output={output} is a file, not a directory')
  if output.is_dir() and any(output.iterdir()) and not overwrite:
    raise FileExistsError(
        f'--output={output} exists and is not empty; pass '
        '--overwrite to replace it'
    )


def define_flags(fv):
  """The command's flags, defined in the FlagValues `fv`."""
  flags.DEFINE_enum(
      'format',
      None,
      convert.FORMATS,
      "The weight file's format.",
      flag_values=fv,
  )
  flags.DEFINE_string('input', None, 'The weight file.', flag_values=fv)
  flags.DEFINE_string(
      'output', None, 'The export directory to write.', flag_values=fv
  )
  flags.DEFINE_bool(
      'overwrite',
      False,
      'Replace an existing non-empty --output.',
      flag_values=fv,
  )
  flags.DEFINE_string(
      'mean_file',
      None,
      "Caffe's mean image (.binaryproto, e.g. ilsvrc_2012_mean.binaryproto), "
      'stored in the export and subtracted instead of the per-channel mean.',
      flag_values=fv,
  )
  flags.DEFINE_float(
      'width_scale',
      1.0,
      'Read a proportionally narrower model (tests).',
      flag_values=fv,
  )
  flags.mark_flags_as_required(['format', 'input', 'output'], flag_values=fv)


def main(argv=None):
  """The command (`argv`: its flags; None: sys.argv, as a program)."""
  return cli.run_command(__name__, define_flags, _convert, argv)


def _convert(args, extra):
  cli.no_arguments(extra)
  output = pathlib.Path(args.output)
  with console.exit_on(OSError, ValueError, ImportError):
    _output_is_free(output, args.overwrite)
    imported = convert.load(
        args.format,
        args.input,
        width_scale=args.width_scale,
        mean_file=args.mean_file,
    )
    from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top
    # Writes into a temporary sibling and renames it when complete.
    checkpoint.save_model(
        output,
        config=imported.config,
        variables=imported.variables,
        preprocessing=imported.preprocessing,
        class_names=imported.class_names,
        mean_image=imported.mean_image,
        overwrite=args.overwrite or output.is_dir(),
    )
  print(
      f'Wrote {args.format} weights from {args.input} to {output} '
      f'({imported.model.num_classes} classes, input '
      f'{imported.preprocessing["image_size"]}x'
      f'{imported.preprocessing["image_size"]} '
      f'{imported.preprocessing["channel_order"]}).'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
