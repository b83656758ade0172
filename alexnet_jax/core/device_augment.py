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

Where the crop and flip run is config.data.augment ('host' | 'device' |
'auto', see `place`); lighting and normalisation always run here, in the
jitted train step (steps.train_step's `prepare`, made by `prepare_fn`).
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


PLACES = ('auto', 'host', 'device')


def place(setting, platform):
  """Where crop and flip run for config.data.augment=`setting`.

  'auto': on GPU and TPU the device. There the host's input pipeline sets
  the speed (hosts have 12-28 cores per chip; one core delivers ~8,000
  raw or ~2,800 JPEG prepared images per second, while the chip takes
  ~11,000 img/s in bfloat16 on a TPU v5e, more on an H100), and the crop
  of the square is a cheap slice for the chip. On CPU the host: the
  "device" is the same cores, and XLA:CPU's batched crop and flip cost
  ~260 us per image more than lighting and normalisation alone (285 vs 24
  us), against ~7 us for tf.data's slice on the host (raw256, 7,637 vs
  8,065 img per CPU-second; experiments/results/prepared/table.md).
  """
  if setting not in PLACES:
    raise ValueError(f'config.data.augment={setting!r} is not one of {PLACES}')
  if setting != 'auto':
    return setting
  return 'device' if platform in ('gpu', 'tpu', 'cuda', 'rocm') else 'host'


def augment(images, params, *, seed, step, crop=True, first=0, window=None):
  """uint8[B, S, S, 3] -> float32[B, image_size, image_size, 3].

  crop=True: S is resize_size, cut at a random offset and flipped with p=1/2;
  crop=False: S is image_size (cut on the host). PCA lighting when
  params.lighting_std > 0. `first`: the global index of images[0].
  window: int32[B, 3] (y, x, flipped) of crops the host cut (crop=False),
  so a per-pixel mean image is cut (and mirrored) where the crop was; by
  default the centre, unflipped.
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
  elif window is not None:
    offsets = window[:, :2]
  else:
    offsets = jnp.full((b, 2), (params.resize_size - size) // 2)
  host_flipped = None
  if not crop and window is not None and params.mean_image is not None:
    # The host normalised before it flipped (preprocess.train_stored): undo
    # the flip, subtract the mean's crop, flip back below.
    host_flipped = window[:, 2] > 0
    images = jnp.where(
        host_flipped[:, None, None, None], images[:, :, ::-1], images
    )
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
  if host_flipped is not None:
    x = jnp.where(host_flipped[:, None, None, None], x[:, :, ::-1], x)
  return x


def prepare_fn(params, *, seed, crop):
  """steps.train_step's `prepare`: (batch, step, first) -> the model input
  of a uint8 batch (its 'window' when the host cut the crops)."""

  def prepare(batch, step, first):
    return augment(
        batch['image'],
        params,
        seed=seed,
        step=step,
        crop=crop,
        first=first,
        window=None if crop else batch.get('window'),
    )

  return prepare
