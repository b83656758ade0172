"""The tiny model the formulation tests compare (CPU-tuned vs plain XLA):
its config, parameters and batch, and the relative error of two results.
test_formulations and test_on_accelerator use it."""

import functools

import jax
import numpy as np

from alexnet_jax.configs import paper
from alexnet_jax.core import model as model_lib
from helpers import tiny_model

BATCH = 4
SIZE = 67  # Caffe's unpadded conv1: 15 -> pool 7 -> 7 -> 3 -> 3 -> 1
SCALE = 1 / 16
CLASSES = 10
# bfloat16 keeps 8 significant bits (relative rounding 2**-9 = 0.2%); two
# formulations that sum in different orders drift apart through eight
# layers by a few of those. Stated bound, relative to each tensor's largest
# entry: 2% for loss, logits and gradients (the worst measured here was
# 0.55%, in a kernel gradient; a wrong gradient is off by order 100%).
BF16_TOLERANCE = 2e-2


def model_config(formulation, dtype='float32', **overrides):
  m = paper.get_config().model
  m.width_scale = SCALE
  m.num_classes = CLASSES
  m.conv1_padding = 'caffe'
  m.dtype = dtype
  m.formulation = formulation
  m.update_from_flattened_dict(overrides)
  return m


@functools.cache
def params(seed=0):
  """He-scaled NumPy parameters (no jitted init to compile)."""
  module = model_lib.from_config(model_config('auto'))
  return tiny_model.he_params(module, SIZE, seed)['params']


def batch(seed=1):
  rng = np.random.default_rng(seed)
  return (
      rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
      rng.integers(0, CLASSES, BATCH).astype(np.int32),
  )


def relative_errors(got, want):
  """max |got - want| / max |want|, per leaf."""
  return jax.tree.map(
      lambda a, b: float(
          np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30)
      ),
      got,
      want,
  )
