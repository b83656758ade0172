"""features.extract and nearest_neighbours; visualize's colour metric.

References are independent of the capture mechanism: conv1 by a PyTorch
convolution of the same weights, fc7 by the fact that fc8's logits must be
fc7's activations times fc8's weights, neighbours by brute-force NumPy.
"""

import jax
import numpy as np
import pytest
import torch

from alexnet_jax.analysis import features
from alexnet_jax.analysis import visualize
from alexnet_jax.configs import paper
from alexnet_jax.core import model as model_lib


def _tiny(variant='paper', activation='relu', towers=2, num_classes=7):
  m = paper.get_config().model
  m.variant = variant
  m.activation = activation
  m.towers = 1 if variant != 'paper' else towers
  m.num_classes = num_classes
  m.width_scale = 1 / 16
  m.weight_init_std = 0.05  # large enough that activations are not ~0
  m.bias_init = 0.1
  return m


# Keys use the 'rbg' PRNG: XLA:CPU here takes ~10 s to compile the default
# threefry initialisers even for this tiny model, ~1 s with rbg.
@pytest.fixture(scope='module')
def alexnet():
  module = model_lib.from_config(_tiny())
  size = 67  # small but valid: 67 -> 15 -> 7 -> 3 -> 1x1 at pool5
  variables = model_lib.init(module, jax.random.key(0, impl='rbg'), size)
  images = np.random.RandomState(0).randn(5, size, size, 3).astype(np.float32)
  return module, variables, images


def _torch_conv(x, kernel, bias, padding):
  """NHWC x, HWIO kernel -> NHWC, by torch (pads as ((top, bottom), ...))."""
  (pt, pb), (pl, pr) = padding
  xt = torch.nn.functional.pad(
      torch.from_numpy(x).permute(0, 3, 1, 2), (pl, pr, pt, pb)
  )
  wt = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1)
  y = torch.nn.functional.conv2d(
      xt, wt, torch.from_numpy(np.array(bias)), stride=4
  )
  return y.permute(0, 2, 3, 1).numpy()


def test_alexnet_conv1_matches_torch(alexnet):
  module, variables, images = alexnet
  got = features.extract(module, variables, images, layer='conv1')
  k = np.asarray(variables['params']['conv1']['kernel'])  # [T,11,11,3,K]
  b = np.asarray(variables['params']['conv1']['bias'])  # [T,K]
  towers = [
      _torch_conv(images, k[t], b[t], model_lib.CONV1_PADDING['paper'])
      for t in range(k.shape[0])
  ]
  want = np.maximum(np.concatenate(towers, axis=-1), 0)
  assert got.shape == (5, 15, 15, k.shape[0] * k.shape[-1])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_alexnet_fc7_times_fc8_gives_logits(alexnet):
  module, variables, images = alexnet
  fc7 = features.extract(module, variables, images)  # layer='fc7'
  width = model_lib.widths_for('paper', 2, 1 / 16)[-1]
  assert fc7.shape == (5, width)
  assert (fc7 >= 0).all() and (fc7 > 0).any()  # after the ReLU
  fc8 = variables['params']['fc8']
  logits = np.asarray(module.apply(variables, images, train=False))
  np.testing.assert_allclose(
      fc7 @ np.asarray(fc8['kernel']) + np.asarray(fc8['bias']),
      logits,
      rtol=1e-4,
      atol=1e-5,
  )
  np.testing.assert_allclose(
      features.extract(module, variables, images, layer='fc8'),
      logits,
      rtol=1e-5,
      atol=1e-6,
  )


def test_batching_does_not_change_features(alexnet):
  module, variables, images = alexnet
  whole = features.extract(module, variables, images, layer='fc6')
  chunked = features.extract(
      module, variables, images, layer='fc6', batch_size=2
  )
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_cifar4_tanh_conv1_and_fc():
  module = model_lib.from_config(_tiny('cifar4', 'tanh', num_classes=10))
  variables = model_lib.init(module, jax.random.key(1, impl='rbg'), 32)
  images = np.random.RandomState(1).randn(3, 32, 32, 3).astype(np.float32)
  assert features.layer_names(module) == ('conv1', 'conv2', 'conv3', 'fc')
  got = features.extract(module, variables, images, layer='conv1')
  p = variables['params']['conv1']
  xt = torch.from_numpy(images).permute(0, 3, 1, 2)
  wt = torch.from_numpy(np.array(p['kernel'])).permute(3, 2, 0, 1)
  want = torch.tanh(
      torch.nn.functional.conv2d(
          xt, wt, torch.from_numpy(np.array(p['bias'])), padding=2
      )
  )
  np.testing.assert_allclose(
      got, want.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
      features.extract(module, variables, images, layer='fc'),
      np.asarray(module.apply(variables, images)),
      rtol=1e-5,
      atol=1e-6,
  )


def test_bad_layer_and_images_are_named(alexnet):
  module, variables, images = alexnet
  with pytest.raises(ValueError, match=r"layer='fc9'.*fc7"):
    features.extract(module, variables, images, layer='fc9')
  with pytest.raises(ValueError, match=r'f32\[N, H, W, 3\]'):
    features.extract(module, variables, images[..., :1])


def test_nearest_neighbours_brute_force():
  rs = np.random.RandomState(2)
  gallery = rs.randn(20, 6)
  queries = np.concatenate([gallery[[3, 11]] + 1e-3, rs.randn(2, 6)])
  idx, dist = features.nearest_neighbours(queries, gallery, k=4)
  brute = np.linalg.norm(queries[:, None] - gallery[None], axis=-1)
  np.testing.assert_array_equal(idx, np.argsort(brute, axis=1)[:, :4])
  np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :4], rtol=1e-5)
  assert list(idx[:2, 0]) == [3, 11]
  with pytest.raises(ValueError, match='same layer'):
    features.nearest_neighbours(queries, gallery[:, :5])
  with pytest.raises(ValueError, match='k=21'):
    features.nearest_neighbours(queries, gallery, k=21)


def test_colour_share_extremes_and_towers():
  grey = np.ones((2, 2, 3))
  opponent = np.stack([np.ones((2, 2)), -np.ones((2, 2)), np.zeros((2, 2))], -1)
  red = np.stack([np.ones((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))], -1)
  np.testing.assert_allclose(
      visualize.colour_share(np.stack([grey, opponent, red])),
      [0, 1, 2 / 3],
      atol=1e-6,
  )
  # A "paper-like" two-tower conv1: tower 0 grey kernels, tower 1 random.
  rs = np.random.RandomState(3)
  t0 = np.repeat(rs.randn(5, 5, 1, 4), 3, axis=2)  # [kh,kw,3,K]
  t1 = rs.randn(5, 5, 3, 4)
  variables = {'params': {'conv1': {'kernel': np.stack([t0, t1])}}}
  spec = visualize.tower_colour_specificity(variables)
  assert spec.shape == (2,) and spec[0] < 1e-6 and 0.4 < spec[1] < 0.9
  # BGR weights score the same; the mosaic is a valid image.
  np.testing.assert_allclose(
      visualize.colour_share(t1.transpose(3, 0, 1, 2)),
      visualize.colour_share(t1[:, :, ::-1].transpose(3, 0, 1, 2)),
      rtol=1e-6,
  )
  img = visualize.kernel_mosaic(
      visualize.conv1_kernels(variables)[1], columns=2
  )
  assert img.shape == (2 * 6 + 1, 2 * 6 + 1, 3)
  assert img.min() >= 0 and img.max() <= 1
  with pytest.raises(ValueError, match='no conv1'):
    visualize.conv1_kernels({'params': {'fc': {}}})


def test_load_images_centre_crop_and_normalisation(tmp_path):
  from PIL import Image

  rs = np.random.RandomState(4)
  pixels = rs.randint(0, 256, (40, 60, 3)).astype(np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'a.png')  # lossless
  prep = dict(
      channel_order='BGR',
      pixel_scale=255.0,
      mean=[10.0, 20.0, 30.0],
      std=[2.0, 4.0, 8.0],
      image_size=40,
      resize_size=40,
  )
  (got,) = features.load_images([tmp_path / 'a.png'], prep)
  # 40x60 -> its centre 40x40 square, no resizing at this size.
  want = (pixels[:, 10:50, ::-1].astype(np.float32) - [10, 20, 30]) / [2, 4, 8]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
  (tmp_path / 'bad.jpg').write_text('not an image')
  with pytest.raises(ValueError, match='bad.jpg'):
    features.load_images([tmp_path / 'bad.jpg'], prep)


def test_load_images_follows_the_records_resize_method(tmp_path):
  """The checkpoint's resize_method is used (it once was ignored here)."""
  from PIL import Image

  rs = np.random.RandomState(5)
  Image.fromarray(rs.randint(0, 256, (90, 120, 3)).astype(np.uint8)).save(
      tmp_path / 'a.png'
  )
  prep = dict(
      mean=[0.5, 0.5, 0.5], std=[1.0, 1.0, 1.0], image_size=24, resize_size=32
  )
  got = {
      m: features.load_images(
          [tmp_path / 'a.png'], dict(prep, resize_method=m)
      )[0]
      for m in ('area', 'antialias')
  }
  import tensorflow as tf

  from alexnet_jax.core import preprocess

  data = tf.io.read_file(str(tmp_path / 'a.png'))
  for method, image in got.items():
    want = preprocess.eval_image(
        data,
        preprocess.Params(
            image_size=24,
            resize_size=32,
            resize_method=method,
            mean=(0.5, 0.5, 0.5),
            std=(1.0, 1.0, 1.0),
        ),
    ).numpy()
    np.testing.assert_allclose(image, want, atol=1e-6)
  assert np.abs(got['area'] - got['antialias']).max() > 1e-3
