"""The tiny two-tower model the parallel tests run in every mode.

Its config in each mode, batches, variables, the trainer's step and a
one-device reference of it, tolerances, and the collectives its model
parallel step must contain. test_parallel, test_multihost (and its worker),
test_accelerator_export, test_on_accelerator and test_onednn use it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax.configs import paper
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import train

BATCH = 8
CLASSES = 10
# 99x99 with Caffe's unpadded conv1: 23 -> pool 11 -> 11 -> pool 5 -> 5 ->
# pool 2, so fc6 reads a 2x2 map and the flatten order across towers counts.
SIZE = 99
SCALE = 1 / 16  # widths 6, 16, 24, 24, 16, 256, 256 (half per tower)

MODES = {  # name: (mesh.data, mesh.model, data_parallel)
    'single': (1, 1, 'jit'),
    'model': (1, 2, 'jit'),
    'jit': (2, 1, 'jit'),
    'pmap': (2, 1, 'pmap'),
    'hybrid': (2, 2, 'jit'),
}


def config(mode='single', *, classes=CLASSES, dropout=0.5):
  c = paper.get_config()
  c.model.width_scale = SCALE
  c.model.num_classes = classes
  c.model.conv1_padding = 'caffe'
  c.model.dropout = dropout
  c.data.name = 'fake'  # no dataset: the step needs only its sizes
  c.data.image_size = SIZE
  c.optim.batch_size = BATCH
  data, model, dp = MODES[mode]
  c.parallel.mesh.data = data
  c.parallel.mesh.model = model
  c.parallel.data_parallel = dp
  return c


def batch(seed, size=SIZE, classes=CLASSES):
  rng = np.random.default_rng(seed)
  return dict(
      image=rng.normal(size=(BATCH, size, size, 3)).astype(np.float32),
      label=rng.integers(0, classes, BATCH).astype(np.int32),
  )


def close(a, b, **kw):
  kw = dict(rtol=1e-5, atol=1e-6) | kw
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(
          np.asarray(x), np.asarray(y), **kw
      ),
      a,
      b,
  )


def close_grads(a, b):
  """Gradients equal up to float32 rounding, relative to each tensor's scale.

  Entries that cancel to about zero carry rounding noise of the tensor's
  magnitude (ops.conv2d sums kernel gradients image by image, in another
  order than XLA), so the absolute tolerance scales with the tensor.
  """
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(
          np.asarray(x),
          np.asarray(y),
          rtol=1e-4,
          atol=1e-5 * np.abs(np.asarray(y)).max(),
      ),
      a,
      b,
  )


def he_params(module, size, seed=0):
  """He-scaled NumPy parameters of `module` at size x size inputs, shaped by
  jax.eval_shape.

  He-scaled so gradients reach every layer (the paper's std 0.01 leaves the
  early layers' gradients near zero in a tiny net), and made without
  compiling JAX's random-number kernels, which is slow on XLA:CPU.
  """
  shapes = jax.eval_shape(
      lambda: model_lib.init(module, jax.random.PRNGKey(0), size)
  )
  rng = np.random.default_rng(seed)

  def make(path, x):
    if path[-1].key == 'bias':
      return (0.1 * rng.normal(size=x.shape)).astype(np.float32)
    fan_in = np.prod(x.shape[1:-1]) if x.ndim > 2 else x.shape[0]
    return (rng.normal(size=x.shape) * np.sqrt(2 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(make, shapes)


@functools.cache
def variables(classes=CLASSES, size=SIZE, seed=0):
  """NumPy variables of the tiny model (he_params)."""
  return he_params(
      model_lib.from_config(config(classes=classes).model), size, seed
  )


DROPOUT_SEED = 7  # (no device work at import: multihost_worker imports this)


def loss_and_logits(apply, variables, images, labels, *, train):
  logits = apply(
      variables,
      images,
      train=train,
      rngs={'dropout': jax.random.PRNGKey(DROPOUT_SEED)},
  )
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return ce.mean(), logits


STEP_SIZE = 67  # smaller images for the step tests (fc6 reads 1x1)
# Cosine over four steps: the lr changes every step, so the lr each mode's
# step writes into its optimiser state is compared too.
SIZES = train.Plan(
    num_train_examples=4 * BATCH, steps_per_epoch=4.0, total_steps=4
)
# Modes whose data shards each draw their own dropout masks (the key folded
# with the shard's index), unlike one device drawing them for the batch.
DATA_SHARDS = {'single': 1, 'model': 1, 'jit': 2, 'pmap': 2, 'hybrid': 2}


def step_config(mode, *, dropout=0.5):
  c = config(mode, dropout=dropout)
  c.optim.lr = 0.05
  c.optim.schedule = 'cosine'
  return c


def make_step(mode, *, dropout=0.5, config=None):
  """The trainer's step (train.make_train_step) for the tiny model."""
  c = config or step_config(mode, dropout=dropout)
  return train.make_train_step(c, model_lib.from_config(c.model), sizes=SIZES)


def initial_state(step):
  """The trainer's initial state on the host, with variables' params."""
  return step.init_state(variables(size=STEP_SIZE)['params'])


def reference_step(step, shards):
  """`step`'s update on one device, with `shards` data shards' dropout.

  Shard i of the batch (its i-th 1/shards) gets dropout key fold_in(key, i),
  as parallel.py and train_step's pmap path give each data shard; the loss
  is the mean over the whole batch, as theirs.
  """
  model = step.par.model

  def apply(variables, images, *, train, rngs):
    return jnp.concatenate(
        [
            model.apply(
                variables,
                x,
                train=train,
                rngs={k: jax.random.fold_in(r, i) for k, r in rngs.items()},
            )
            for i, x in enumerate(jnp.split(images, shards))
        ]
    )

  return jax.jit(
      functools.partial(
          train.train_step, apply_fn=apply, tx=step.tx, lr_fn=step.lr_fn
      )
  )


def run_steps(step, fn, host_state, batches):
  """(final host state, [host metrics of each step]) of fn from host_state."""
  par = step.par
  state = par.place_state(host_state)
  metrics = []
  for b in batches:
    state, m = fn(state, par.shard_batch(b))
    metrics.append(par.to_host(m.compute()))
  return par.to_host(state), metrics


# Per-tower widths of the tiny model (SCALE = 1/16): conv2 8, conv5 8,
# fc6/fc7 128, fc8 5 of 10 classes. 67x67 input: conv2 pooled 3x3, conv5
# pooled 1x1.
MODEL_GATHERS = [
    # (result shape per device for B examples on it, reason)
    (lambda b: (b, 3, 3, 16), "conv3 reads both towers' conv2 maps"),
    (lambda b: (b, 1, 1, 16), "fc6 reads both towers' conv5 maps"),
    (lambda b: (b, 256), "fc7 reads both towers' fc6 units"),
    (lambda b: (b, 256), "fc8 reads both towers' fc7 units"),
    (lambda b: (b, 10), 'the logits: each tower computed 5 of 10 classes'),
]
MODEL_SCATTERS = [
    # The backward of the first four gathers: each tower receives the sum
    # of both towers' gradients for its own channels. The logits' gather
    # needs none: its gradient is equal on both towers (invariant gather),
    # so each takes its slice locally.
    (lambda b: (b, 128), "d fc7 units, from both towers' fc8 halves"),
    (lambda b: (b, 128), "d fc6 units, from both towers' fc7 halves"),
    (lambda b: (b, 1, 1, 8), "d conv5 maps, from both towers' fc6 halves"),
    (lambda b: (b, 3, 3, 8), "d conv2 maps, from both towers' conv3 halves"),
]
