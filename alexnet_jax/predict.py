r"""Top-5 classes of images, with readable names and probabilities.

    python -m alexnet_jax.predict --checkpoint=DIR IMAGE [IMAGE ...]

DIR is a training workdir, a step directory or a model export. Each image
is preprocessed as the checkpoint's metadata says (centre crop, or the
paper's 10 crops with --crops=10, softmax averaged). Class names come from
the checkpoint; WordNet ids (ImageNet) are shown with the readable names
that ship with the package.
"""

import importlib.resources
import json
import re
import sys

from absl import flags

from alexnet_jax import cli
from alexnet_jax.core import console

console.setup()  # before anything imports TensorFlow

FLAGS = flags.FLAGS
_WNID = re.compile(r'^n\d{8}$')


def define_flags():
  """The command-line flags (defined only when run as a program, so the
  module can be imported beside the other CLIs)."""
  cli.define_checkpoint_flags(
      'For a workdir: the checkpoint with the lowest validation error.',
  )
  flags.DEFINE_integer('top_k', 5, 'Classes to show per image.')
  flags.DEFINE_enum(
      'crops', '1', ['1', '10'], '1 = centre crop, 10 = average over 10 crops.'
  )
  flags.DEFINE_bool('json', False, 'Print one JSON object per image.')
  flags.DEFINE_enum(
      'precision',
      'highest',
      ['default', 'high', 'highest'],
      'Matmul/convolution precision (config.model.precision).',
  )
  flags.DEFINE_bool(
      'verbose',
      False,
      'Show tracebacks of errors and the '
      'INFO logs of Orbax and JAX start-up.',
  )


def readable_names(class_names) -> list[str]:
  """Class names as shown: ImageNet WordNet ids get their readable name."""
  names = list(class_names)
  if not any(_WNID.match(n) for n in names):
    return names
  data = importlib.resources.files('alexnet_jax.assets')
  wnids = (data / 'imagenet_wnids.txt').read_text().split('\n')
  readable = (data / 'imagenet_classes.txt').read_text().split('\n')
  lookup = dict(zip(wnids, readable))
  return [f'{lookup[n]} ({n})' if n in lookup else n for n in names]


class Predictor:
  """Loads a checkpoint once; `__call__(path)` -> [(name, probability)]."""

  def __init__(
      self, checkpoint_path, *, best=False, crops=1, precision='highest'
  ):
    import jax  # pylint: disable=g-import-not-at-top

    from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top
    from alexnet_jax.core import model as model_lib  # pylint: disable=g-import-not-at-top

    self.model, self.variables, self.config = checkpoint.load(
        checkpoint_path, best=best
    )
    self.model = model_lib.with_precision(self.model, precision)
    self.config.model.precision = precision
    meta = checkpoint.load_metadata(checkpoint_path, best=best)
    self.names = readable_names(meta['class_names'])
    from alexnet_jax.core import preprocess  # pylint: disable=g-import-not-at-top

    self.params = preprocess.params_from_record(meta['preprocessing'])
    self.crops = int(crops)
    model, variables = self.model, self.variables

    @jax.jit
    def probs(images):  # f32[crops, H, W, 3] -> f32[C], crops averaged
      logits = model.apply(variables, images, train=False)
      return jax.nn.softmax(logits).mean(axis=0)

    self._probs = probs

  def image(self, path):
    """The normalised crops of one image file: f32[crops, H, W, 3]."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from alexnet_jax.core import preprocess  # pylint: disable=g-import-not-at-top

    try:
      with open(path, 'rb') as f:
        encoded = f.read()
      image = preprocess.eval_image(
          tf.constant(encoded), self.params, self.crops
      ).numpy()
    except (OSError, tf.errors.OpError, ValueError) as e:
      # TF's messages carry '{{function_node ...}} ... [Op:...]' wrapping.
      message = re.sub(
          r'\{\{.*?\}\}\s*|\s*\[Op:.*$', '', str(getattr(e, 'message', e))
      )
      raise ValueError(f'cannot read image {path!r}: {message}') from e
    return image if self.crops > 1 else image[None]

  def __call__(self, path, top_k=5):
    import numpy as np  # pylint: disable=g-import-not-at-top

    p = np.asarray(self._probs(self.image(path)))
    order = np.argsort(-p, kind='stable')[:top_k]
    return [(self.names[i], float(p[i]), int(i)) for i in order]


def main(argv):
  images = argv[1:]
  if not FLAGS.checkpoint or not images:
    sys.exit(
        'error: usage: python -m alexnet_jax.predict --checkpoint=DIR '
        'IMAGE [IMAGE ...]'
    )
  console.filter_logs(FLAGS.verbose)
  from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top

  with console.exit_on(checkpoint.CheckpointError, verbose=FLAGS.verbose):
    predictor = Predictor(
        FLAGS.checkpoint,
        best=FLAGS.best,
        crops=FLAGS.crops,
        precision=FLAGS.precision,
    )
  failed = 0
  for path in images:
    try:
      top = predictor(path, FLAGS.top_k)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      failed += 1
      continue
    if FLAGS.json:
      print(
          json.dumps(
              {
                  'image': path,
                  'top': [
                      dict(name=n, probability=p, index=i) for n, p, i in top
                  ],
              }
          )
      )
    else:
      print(path)
      for rank, (name, p, i) in enumerate(top, 1):
        print(f'  {rank}. {100 * p:6.2f}%  {name}  [{i}]')
  if failed:
    sys.exit(f'error: {failed} of {len(images)} images could not be read')


def run():
  cli.run_absl(__name__, main, define_flags)


if __name__ == '__main__':
  run()
