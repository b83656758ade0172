"""Feature extraction: the activations of any named layer, e.g. 4096-d fc7.

The paper's Figure 4 finds images whose fc7 activations ("the feature
activations induced by an image at the last, 4096-dimensional hidden layer")
are close in Euclidean distance. `extract` returns those activations for a
batch of images, and `nearest_neighbours` ranks a gallery by that distance.

`load_images` reads image files with the preprocessing a checkpoint carries.

The layer's output is captured with Flax's `capture_intermediates` (no change
to the model): tower layers return one array per tower, which are joined
along the channel axis (tower 0's channels first, as in the parameter tree),
and the model's non-linearity is applied, so 'conv1'..'fc7' give what the
next layer reads before LRN, pooling and dropout. The output layer ('fc8',
or 'fc' in the CIFAR nets) gives the logits.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.core import model as model_lib

# Layer names by model class, input to output.
ALEXNET_LAYERS = model_lib.LAYERS
CIFAR4_LAYERS = ('conv1', 'conv2', 'conv3', 'fc')
CIFAR_LOCAL_LAYERS = ('conv1', 'conv2', 'local3', 'local4', 'fc')


def layer_names(model: nn.Module) -> tuple[str, ...]:
  """The layers `extract` accepts for `model`, input to output."""
  if isinstance(model, model_lib.Cifar4):
    return CIFAR4_LAYERS
  if isinstance(model, model_lib.CifarLocal):
    return CIFAR_LOCAL_LAYERS
  if isinstance(model, model_lib.AlexNet):
    return ALEXNET_LAYERS
  raise TypeError(
      f'features.extract needs an alexnet_jax AlexNet, Cifar4 '
      f'or CifarLocal module, got {type(model).__name__}'
  )


def _check_layer(model, layer):
  names = layer_names(model)
  if layer not in names:
    raise ValueError(
        f'layer={layer!r} is not a layer of this '
        f'{type(model).__name__}; use one of {", ".join(names)}'
    )
  if getattr(model, 'tower_axis', None):
    raise ValueError(
        'features.extract runs the plain model; pass the module '
        'from model.from_config, not the shard_map one '
        f'(tower_axis={model.tower_axis!r})'
    )
  return names


def _activations(model, layer, variables, images):
  """f32 activations of `layer` for one batch (traced under jit)."""
  names = layer_names(model)
  _, state = model.apply(
      variables,
      images,
      train=False,
      mutable=['intermediates'],
      capture_intermediates=lambda mdl, method: (
          mdl.name == layer and method == '__call__'
      ),
  )
  (out,) = state['intermediates'][layer]['__call__']
  if isinstance(out, (list, tuple)):  # tower layers: one array per tower
    out = jnp.concatenate(list(out), axis=-1)
  out = out.astype(jnp.float32)
  if layer == names[-1]:  # the logits: no non-linearity
    return out
  return nn.relu(out) if model.activation == 'relu' else jnp.tanh(out)


@functools.lru_cache(maxsize=16)
def _jitted(model, layer):
  return jax.jit(functools.partial(_activations, model, layer))


def extract(
    model: nn.Module,
    variables: Any,
    images,
    layer: str = 'fc7',
    *,
    batch_size: int = 64,
) -> np.ndarray:
  """Activations of `layer` for `images`, as a NumPy array.

  Args:
    model: an AlexNet or Cifar4 module (`model.from_config` or
      `checkpoint.load`).
    variables: its variables ({'params': ...}).
    images: f32[N, H, W, 3], already preprocessed as the model expects
      (`checkpoint.load_metadata(...)['preprocessing']` says how).
    layer: a name from `layer_names(model)`; 'fc7' (default) is the paper's
      4096-d feature.
    batch_size: images per forward pass (bounds memory for large N).

  Returns:
    f32[N, ...]: [N, 4096] for fc6/fc7 of the paper model, [N, H, W, C] for
    conv layers, [N, num_classes] logits for the output layer.
  """
  _check_layer(model, layer)
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f'images must be f32[N, H, W, 3], got shape {images.shape}'
    )
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1')
  fn = _jitted(model, layer)
  outs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    n = len(chunk)
    if n < batch_size and len(images) > batch_size:
      # Pad the last chunk so it reuses the compiled full-batch shape.
      chunk = np.concatenate(
          [chunk, np.zeros((batch_size - n,) + chunk.shape[1:], np.float32)]
      )
    outs.append(np.asarray(fn(variables, chunk))[:n])
  return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def load_images(paths, preprocessing: dict) -> np.ndarray:
  """Image files -> f32[N, H, W, 3], preprocessed as a checkpoint expects.

  `preprocessing` is the dict a checkpoint carries
  (`checkpoint.load_metadata(path)['preprocessing']`): the centre crop of
  the evaluation pipeline (preprocess.eval_image), then the checkpoint's
  channel order, pixel scale, mean and std (or mean image).
  """
  import tensorflow as tf  # only needed here; keeps `extract` TF-free

  from alexnet_jax.core import preprocess

  params = preprocess.params_from_record(preprocessing)
  out = []
  for path in paths:
    try:
      data = tf.io.read_file(str(path))
      out.append(preprocess.eval_image(data, params).numpy())
    except (tf.errors.OpError, ValueError) as e:
      raise ValueError(f'cannot read image {path}: {e}') from e
  size = params.image_size
  return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)


def nearest_neighbours(queries, gallery, k: int = 5):
  """Indices and distances of the k gallery rows nearest to each query.

  Euclidean distance between flattened feature vectors, as Figure 4.

  Args:
    queries: f32[Q, ...] features.
    gallery: f32[N, ...] features (the same layer).
    k: neighbours per query (at most N).

  Returns:
    (indices int[Q, k], distances f32[Q, k]), nearest first.
  """
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  g = np.asarray(gallery, np.float64).reshape(len(gallery), -1)
  if q.shape[1] != g.shape[1]:
    raise ValueError(
        f'queries have {q.shape[1]} features but the gallery '
        f'has {g.shape[1]}: extract both from the same layer'
    )
  if not 1 <= k <= len(g):
    raise ValueError(f'k={k} must be between 1 and the gallery size {len(g)}')
  # |q - g|^2 = |q|^2 - 2 q.g + |g|^2, clipped at 0 against rounding.
  d2 = (q * q).sum(1)[:, None] - 2 * q @ g.T + (g * g).sum(1)[None, :]
  d = np.sqrt(np.maximum(d2, 0))
  idx = np.argsort(d, axis=1, kind='stable')[:, :k]
  return idx, np.take_along_axis(d, idx, axis=1).astype(np.float32)
