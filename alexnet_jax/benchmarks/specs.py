"""What every benchmark worker builds from its spec: the paper recipe's config
on fake data, and a random batch. No JAX and no torch here (a PyTorch worker
imports no JAX, a JAX worker no torch)."""

import numpy as np

from alexnet_jax.configs import paper

DTYPES = ('float32', 'bfloat16')  # what --dtype accepts


def config_for(spec):
  """The paper recipe's config for a spec, on fake data and one device.

  spec: model (variant), dtype, batch, image_size, width_scale; parallel
  specs also set the mesh. No dataset is read: the step gets placed random
  batches (fake_batch), so the input pipeline is not part of the figure.
  """
  c = paper.get_config()
  c.data.name = 'fake'
  c.data.image_size = spec['image_size']
  c.model.variant = spec['model']
  c.model.towers = 2 if spec['model'] == 'paper' else 1
  c.model.dtype = spec.get('dtype', 'float32')
  c.model.width_scale = spec['width_scale']
  c.model.precision = spec.get('precision', 'default')
  c.optim.batch_size = spec['batch']
  c.parallel.mesh.data = 1
  return c


def fake_batch(config, seed=1):
  """One global batch of random NHWC images and labels (NumPy)."""
  rng = np.random.default_rng(seed)
  b, size = config.optim.batch_size, config.data.image_size
  return dict(
      image=rng.standard_normal((b, size, size, 3), np.float32),
      label=rng.integers(0, config.model.num_classes, b).astype(np.int32),
  )
