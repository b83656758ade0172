"""device_augment.py: the in-step augmentation and normalisation of uint8
batches against the host's (preprocess.py), and its keys."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.core import device_augment
from alexnet_jax.core import preprocess

SIZE, BIG = 8, 12


def _params(**fields):
  base = dict(image_size=SIZE, resize_size=BIG, lighting_std=0.0)
  base.update(fields)
  return preprocess.Params(**base)


def _batch(n, side, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (n, side, side, 3), np.uint8
  )


@pytest.mark.parametrize(
    'fields',
    [
        dict(),
        dict(pixel_scale=255.0, mean=(123.7, 116.3, 103.5)),
        dict(
            pixel_scale=255.0, channel_order='BGR', mean=(104.0, 117.0, 123.0)
        ),
        dict(std=(0.229, 0.224, 0.225)),
        dict(
            pixel_scale=255.0,
            mean_image=np.random.default_rng(1)
            .uniform(0, 1, (BIG, BIG, 3))
            .astype(np.float32),
        ),
    ],
)
def test_normalisation_matches_host(fields):
  """crop=False (crops cut on the host): the model input equals the host's
  preprocess.normalize of the same crop, per the preprocessing record."""
  params = _params(**fields)
  x = _batch(3, SIZE)
  got = np.asarray(
      device_augment.augment(x, params, seed=0, step=0, crop=False)
  )
  mid = (BIG - SIZE) // 2
  for i in range(3):
    mean_crop = (
        None
        if params.mean_image is None
        else tf.constant(params.mean_image[mid : mid + SIZE, mid : mid + SIZE])
    )
    want = preprocess.normalize(
        tf.constant(x[i], tf.float32), params, mean_crop, input_scale=255.0
    )
    np.testing.assert_allclose(got[i], want.numpy(), rtol=1e-5, atol=1e-4)


def test_lighting_is_the_host_shift():
  params = _params(lighting_std=0.1, pixel_scale=255.0, mean=(0.0, 0.0, 0.0))
  x = np.zeros((4, SIZE, SIZE, 3), np.uint8)
  got = np.asarray(
      device_augment.augment(x, params, seed=3, step=5, crop=False)
  )
  shifts = got[:, 0, 0] / 255.0  # a constant image: every pixel is the shift
  np.testing.assert_allclose(
      got, np.broadcast_to(got[:, :1, :1], got.shape), atol=1e-4
  )
  # Along the eigenvectors, with the paper's eigenvalue scaling.
  eigvec = np.asarray(params.eigvec)
  alpha = shifts @ eigvec / (np.asarray(params.eigval) * 0.1)
  assert np.all(np.abs(alpha) < 5) and np.std(alpha) > 0.1
  assert len({tuple(np.round(s, 6)) for s in shifts}) == 4


def test_crops_flips_keys_and_sharding():
  params = _params()
  x = _batch(6, BIG, seed=2)
  out = np.asarray(device_augment.augment(x, params, seed=0, step=7))
  assert out.shape == (6, SIZE, SIZE, 3)
  # Each output is some crop of its square, maybe mirrored.
  for i in range(6):
    found = False
    for y in range(BIG - SIZE + 1):
      for xo in range(BIG - SIZE + 1):
        crop = x[i, y : y + SIZE, xo : xo + SIZE] / 255.0 - np.asarray(
            params.mean
        )
        found |= np.allclose(out[i], crop, atol=1e-5)
        found |= np.allclose(out[i], crop[:, ::-1], atol=1e-5)
    assert found
  # A device holding images 2..5 of the batch computes the same images.
  part = np.asarray(
      device_augment.augment(x[2:], params, seed=0, step=7, first=2)
  )
  np.testing.assert_array_equal(part, out[2:])
  # Deterministic per (seed, step); another step draws other crops.
  again = np.asarray(device_augment.augment(x, params, seed=0, step=7))
  np.testing.assert_array_equal(again, out)
  other = np.asarray(device_augment.augment(x, params, seed=0, step=8))
  assert not np.array_equal(other, out)


@pytest.mark.parametrize('mean_image', [False, True])
def test_host_crops_with_their_window_equal_the_host_float_path(mean_image):
  """augment='host': the host cuts and flips a uint8 crop of the square and
  sends its window; the step's lighting-free model input equals the one
  preprocess.train_stored (all on the host, float32) gives for that seed,
  a per-pixel mean image cut and mirrored where the crop was."""
  fields = dict(pixel_scale=255.0, mean=(120.0, 110.0, 100.0))
  if mean_image:
    fields['mean_image'] = (
        np.random.default_rng(4).uniform(0, 1, (BIG, BIG, 3)).astype(np.float32)
    )
  params = _params(**fields)
  squares = _batch(6, BIG, seed=3)
  crops, windows, want = [], [], []
  for i, square in enumerate(squares):
    seed = tf.constant([9, i], tf.int64)
    crop, window = preprocess.train_stored_window(square, seed, params, 'raw')
    crops.append(crop.numpy())
    windows.append(window.numpy())
    want.append(preprocess.train_stored(square, seed, params, 'raw').numpy())
  windows = np.stack(windows)
  assert 0 < windows[:, 2].sum() < 6  # some flipped, some not
  got = device_augment.augment(
      np.stack(crops), params, seed=0, step=0, crop=False, window=windows
  )
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-3)


def test_place():
  assert device_augment.place('auto', 'tpu') == 'device'
  assert device_augment.place('auto', 'gpu') == 'device'
  assert device_augment.place('auto', 'cpu') == 'host'
  assert device_augment.place('device', 'cpu') == 'device'
  with pytest.raises(ValueError, match="'sideways'.*'auto', 'host', 'device'"):
    device_augment.place('sideways', 'cpu')
