"""The mean image and the PCA colour constants of any dataset.

    python -m alexnet_jax.data_stats --data=folder:/path/to/root --out=DIR
    python -m alexnet_jax.data_stats --data=imagenet2012:5.*.* \
        --data_dir=~/tensorflow_datasets --out=DIR

Every image of the split is prepared as the paper's training images are
before cropping (shorter side to resize_size, centre square), in [0, 1] RGB.
Writes DIR/mean_image.npy (float32[resize_size, resize_size, 3], the paper's
per-pixel mean, for `data.normalization='image'`) and DIR/stats.json: the
per-channel mean and std and the eigen-decomposition of the 3x3 covariance of
all RGB pixel values (the paper's "PCA on the set of RGB pixel values"),
eigenvalues descending, eigenvectors as columns, ready for
config.data.lighting.eigval / eigvec.
"""

import json
import os
import sys

from absl import flags

from alexnet_jax import cli
from alexnet_jax.core import console

console.setup()  # before anything imports TensorFlow

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf

from alexnet_jax.configs import paper
from alexnet_jax.core import config_checks
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import preprocess

# pylint: enable=g-import-not-at-top,wrong-import-position


class Moments:
  """Running sums of images in [0, 1] for the mean image and the PCA of RGB
  pixel values; `add` batches (or other Moments, e.g. per shard), then
  `result`."""

  def __init__(self, size):
    self.image_sum = np.zeros((size, size, 3), np.float64)
    self.pixel_sum = np.zeros(3, np.float64)
    self.outer_sum = np.zeros((3, 3), np.float64)
    self.n = 0

  def add(self, images):
    """images: float[b, size, size, 3] in [0, 1]."""
    images = np.asarray(images, np.float64)
    self.image_sum += images.sum(0)
    pixels = images.reshape(-1, 3)
    self.pixel_sum += pixels.sum(0)
    self.outer_sum += pixels.T @ pixels
    self.n += len(images)

  def merge(self, other):
    self.image_sum += other.image_sum
    self.pixel_sum += other.pixel_sum
    self.outer_sum += other.outer_sum
    self.n += other.n

  def state(self):
    return dict(
        image_sum=self.image_sum,
        pixel_sum=self.pixel_sum,
        outer_sum=self.outer_sum,
        n=np.int64(self.n),
    )

  @classmethod
  def from_state(cls, state):
    out = cls(state['image_sum'].shape[0])
    out.image_sum = np.array(state['image_sum'], np.float64)
    out.pixel_sum = np.array(state['pixel_sum'], np.float64)
    out.outer_sum = np.array(state['outer_sum'], np.float64)
    out.n = int(state['n'])
    return out

  def result(self, skipped=()):
    """dict(mean_image, channel_mean, channel_std, eigval, eigvec,
    num_images, skipped)."""
    n = self.n
    size = self.image_sum.shape[0]
    count = n * size * size
    mean = self.pixel_sum / count
    cov = self.outer_sum / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    # Sign is arbitrary; make each eigenvector's largest entry positive so
    # reruns print the same numbers.
    eigvec *= np.sign(eigvec[np.abs(eigvec).argmax(0), range(3)])
    return dict(
        mean_image=(self.image_sum / n).astype(np.float32),
        channel_mean=mean,
        channel_std=np.sqrt(np.diag(cov)),
        eigval=np.maximum(eigval, 0.0),
        eigvec=eigvec,
        num_images=n,
        skipped=list(skipped),
    )


def compute(config, split, max_images=-1, log_every=0):
  """Returns dict(mean_image, channel_mean, channel_std, eigval, eigvec,
  num_images, skipped) over `split` of config.data.name."""
  size = config.data.resize_size
  method = config.data.resize_method

  def square(encoded):
    crop, _, _ = preprocess.decode_window(
        encoded, preprocess.centre_square, min_size=size
    )
    return preprocess.resize(crop, size, method) / 255.0

  ds, _ = input_pipeline.map_readable(config, split, square)
  if max_images > 0:
    ds = ds.take(max_images)
  moments = Moments(size)
  for batch in ds.batch(64).prefetch(2).as_numpy_iterator():
    moments.add(batch['image'])
    n = moments.n
    if log_every and n % log_every < len(batch['image']):
      print(f'{n} images', file=sys.stderr, flush=True)
  if not moments.n:
    raise ValueError(
        f'no readable images in split {split!r} of {config.data.name!r}'
    )
  return moments.result(input_pipeline.skipped_files())


def write(stats, out):
  """Writes mean_image.npy and stats.json under `out`; returns their paths."""
  os.makedirs(out, exist_ok=True)
  image_path = os.path.join(out, 'mean_image.npy')
  np.save(image_path, stats['mean_image'])
  summary = {
      k: np.round(np.asarray(v), 6).tolist()
      for k, v in stats.items()
      if k not in ('mean_image', 'skipped')
  }
  summary['skipped'] = list(stats['skipped'])
  summary['mean_image'] = os.path.abspath(image_path)
  summary['config_overrides'] = [
      f"--config.data.lighting.eigval='{tuple(summary['eigval'])}'",
      f"--config.data.lighting.eigvec='{tuple(map(tuple, summary['eigvec']))}'",
      '--config.data.normalization=image',
      f'--config.data.mean_image={summary["mean_image"]}',
  ]
  json_path = os.path.join(out, 'stats.json')
  with open(json_path, 'w') as f:
    json.dump(summary, f, indent=1)
  return image_path, json_path


def define_flags(fv):
  """The command's flags, defined in the FlagValues `fv`."""
  flags.DEFINE_string(
      'data',
      None,
      "config.data.name: a TFDS name or 'folder:/path'.",
      flag_values=fv,
  )
  flags.DEFINE_string('split', 'train', 'The split to read.', flag_values=fv)
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir.', flag_values=fv)
  flags.DEFINE_integer(
      'resize_size',
      256,
      'Shorter side before the centre crop.',
      flag_values=fv,
  )
  flags.DEFINE_enum(
      'resize_method',
      'area',
      preprocess.RESIZE_METHODS,
      'How images are resized.',
      flag_values=fv,
  )
  flags.DEFINE_integer(
      'max_images',
      -1,
      'Use only the first N images (-1: all).',
      flag_values=fv,
  )
  flags.DEFINE_string('out', None, 'Output directory.', flag_values=fv)
  flags.DEFINE_bool(
      'verbose', False, 'Show the traceback of an error.', flag_values=fv
  )
  flags.mark_flags_as_required(['data', 'out'], flag_values=fv)


def main(argv=None):
  """The command (`argv`: its flags; None: sys.argv, as a program)."""
  return cli.run_command(__name__, define_flags, _data_stats, argv)


def _data_stats(args, extra):
  cli.no_arguments(extra)
  try:  # host-side work only: keep TensorFlow off any GPU JAX may want
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow has started (main() called in-process)
    pass
  config = paper.get_config()
  config.data.name = args.data
  config.data.data_dir = args.data_dir
  config.data.resize_size = args.resize_size
  config.data.resize_method = args.resize_method
  from alexnet_jax.core import tfds_source  # pylint: disable=g-import-not-at-top

  with console.exit_on(
      config_checks.ConfigError,
      ValueError,
      FileNotFoundError,
      tfds_source.DataNotReadyError,
      verbose=args.verbose,
  ):
    stats = compute(config, args.split, args.max_images, log_every=5000)
  image_path, json_path = write(stats, args.out)
  print(
      f"{stats['num_images']} images ({len(stats['skipped'])} unreadable "
      f'skipped); wrote {image_path} and {json_path}'
  )
  print('eigval', np.round(stats['eigval'], 4).tolist())
  print('eigvec (columns)', np.round(stats['eigvec'], 4).tolist())
  return 0


if __name__ == '__main__':
  sys.exit(main())
