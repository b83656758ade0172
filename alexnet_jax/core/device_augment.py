"""The training augmentation and normalisation of uint8 batches, in JAX.

A uint8 batch is a quarter of the bytes of float32 (150 KB per 224x224
image instead of 602 KB), and PCA lighting, which is not an integer shift,
can only be added after the conversion to float. So the host may send uint8
and leave to the jitted step (on the device) either

  crop=True:  the random image_size crop and flip of the prepared square,
              then lighting and normalisation, or
  crop=False: lighting and normalisation of crops the host already cut.

The normalisation follows preprocess.Params as the host's preprocess.normalize
does (x / 255 * pixel_scale in channel_order, minus mean or the matching crop
of the mean image, over std), so both give the same model input for the same
crop, flip and lighting. Randomness: image i of step k uses a key folded from
(seed, k, i), i its index in the global batch, so the images do not depend on
how the batch is sharded across devices or hosts.
"""

import jax
import jax.numpy as jnp
import numpy as np


def image_keys(seed, step, batch, first=0):
  """uint32[batch] keys of images first..first+batch-1 of step `step`."""
  base = jax.random.fold_in(
      jax.random.fold_in(jax.random.key(seed), 0xA06), step
  )
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      first + jnp.arange(batch)
  )


def _normalize(x, params, mean_crop, shift):
  """float32[..., 3] in [0, 1] RGB -> the model's input (preprocess.normalize)."""
  std = np.asarray(params.std, np.float32)
  x = x + shift[..., None, None, :]
  if mean_crop is not None:
    x = x - mean_crop
  x = x * np.float32(params.pixel_scale)
  if params.channel_order == 'BGR':
    x = x[..., ::-1]
  if mean_crop is None:
    x = x - np.asarray(params.mean, np.float32)
  return x / std


def augment(images, params, *, seed, step, crop=True, first=0):
  """uint8[B, S, S, 3] -> float32[B, image_size, image_size, 3].

  crop=True: S is resize_size, cut at a random offset and flipped with p=1/2;
  crop=False: S is image_size (cut on the host). PCA lighting when
  params.lighting_std > 0. `first`: the global index of images[0].
  """
  b, size = images.shape[0], params.image_size
  keys = image_keys(seed, step, b, first)
  split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  crop_k, flip_k, light_k = split[:, 0], split[:, 1], split[:, 2]
  if crop:
    limit = params.resize_size - size
    offsets = jax.vmap(lambda k: jax.random.randint(k, (2,), 0, limit + 1))(
        crop_k
    )
    images = jax.vmap(
        lambda im, o: jax.lax.dynamic_slice(
            im, (o[0], o[1], 0), (size, size, 3)
        )
    )(images, offsets)
  else:
    offsets = jnp.full((b, 2), (params.resize_size - size) // 2)
  x = images.astype(jnp.float32) * np.float32(1 / 255)
  if params.lighting_std > 0:
    eigval = np.asarray(params.eigval, np.float32)
    if params.lighting_scale == 'sqrt_lambda':
      eigval = np.sqrt(eigval)
    eigvec = np.asarray(params.eigvec, np.float32)
    alpha = jax.vmap(lambda k: jax.random.normal(k, (3,)))(light_k)
    shift = (alpha * np.float32(params.lighting_std) * eigval) @ eigvec.T
  else:
    shift = jnp.zeros((b, 3), jnp.float32)
  mean_crop = None
  if params.mean_image is not None:
    mean = jnp.asarray(params.mean_image, jnp.float32)
    mean_crop = jax.vmap(
        lambda o: jax.lax.dynamic_slice(mean, (o[0], o[1], 0), (size, size, 3))
    )(offsets)
  x = _normalize(x, params, mean_crop, shift)
  if crop and params.flip:
    coin = jax.vmap(lambda k: jax.random.uniform(k) < 0.5)(flip_k)
    x = jnp.where(coin[:, None, None, None], x[:, :, ::-1], x)
  return x
