"""preprocess.py against NumPy references, eagerly and inside tf.data."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax.core import preprocess

P = preprocess.Params()


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'PNG')
  return buf.getvalue()


def _jpeg(array, **kw):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'JPEG', quality=95, **kw)
  return buf.getvalue()


def _ramp(h, w):
  """A smooth, asymmetric test image: R = column, G = row, B = mixed."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  rgb = np.stack(
      [x / w * 200 + 20, y / h * 180 + 40, (x + y) / (h + w) * 150 + 60], -1
  )
  return rgb.round().astype(np.uint8)


def np_resize(image, out_h, out_w):
  """Reference antialiased bilinear resize (PIL's triangle filter): each
  output pixel averages the inputs under a triangle as wide as the scale."""
  image = np.asarray(image, np.float64)

  def weights(n_in, n_out):
    scale = n_in / n_out
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for j in range(n_out):
      centre = (j + 0.5) * scale
      i = np.arange(n_in)
      w[j] = np.maximum(0.0, 1.0 - np.abs(i + 0.5 - centre) / support)
      w[j] /= w[j].sum()
    return w

  out = np.einsum('oh,hwc->owc', weights(image.shape[0], out_h), image)
  return np.einsum('ow,hwc->hoc', weights(image.shape[1], out_w), out)


def np_area(image, out_h, out_w):
  """Reference box-filter resize: each output pixel averages the input area
  it covers (fractional pixels weighted by their overlap)."""
  image = np.asarray(image, np.float64)

  def weights(n_in, n_out):
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for j in range(n_out):
      lo, hi = j * scale, (j + 1) * scale
      i = np.arange(n_in)
      w[j] = np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0, None)
      w[j] /= w[j].sum()
    return w

  out = np.einsum('oh,hwc->owc', weights(image.shape[0], out_h), image)
  return np.einsum('ow,hwc->hoc', weights(image.shape[1], out_w), out)


def np_bilinear(image, out_h, out_w):
  """Reference plain bilinear (half-pixel centres, no antialiasing)."""
  image = np.asarray(image, np.float64)

  def weights(n_in, n_out):
    w = np.zeros((n_out, n_in))
    for j in range(n_out):
      x = np.clip((j + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
      i0 = int(np.floor(x))
      i1 = min(i0 + 1, n_in - 1)
      w[j, i0] += 1 - (x - i0)
      w[j, i1] += x - i0
    return w

  out = np.einsum('oh,hwc->owc', weights(image.shape[0], out_h), image)
  return np.einsum('ow,hwc->hoc', weights(image.shape[1], out_w), out)


NP_RESIZE = {'antialias': np_resize, 'area': np_area, 'bilinear': np_bilinear}


@pytest.mark.parametrize('method', preprocess.RESIZE_METHODS)
@pytest.mark.parametrize('sizes', [(37, 16), (10, 16), (16, 16)])
def test_resize_methods_match_numpy(method, sizes):
  n_in, n_out = sizes
  image = np.random.default_rng(3).integers(0, 256, (n_in, n_in, 3), np.uint8)
  got = preprocess.resize(tf.constant(image), n_out, method).numpy()
  ref = NP_RESIZE[method]
  if method == 'area' and n_in <= n_out:
    ref = np_bilinear  # 'area' enlarges bilinearly
  np.testing.assert_allclose(got, ref(image, n_out, n_out), atol=1e-3)
  ds_got = in_tf_data(
      lambda x: preprocess.resize(x, n_out, method), tf.constant(image)
  )
  np.testing.assert_allclose(ds_got, got, atol=1e-4)


def test_dct_scaled_decode_of_large_jpeg():
  """A window >= 2x the output is decoded at 1/2 scale (like PIL's draft),
  and still matches the full-resolution reference closely."""
  image = _ramp(900, 1100)
  encoded = tf.constant(_jpeg(image))
  p = preprocess.Params(resize_method='antialias')
  crop, window, shape = preprocess.decode_window(
      encoded, lambda s: preprocess.paper_window(s, 224, 256), min_size=224
  )
  assert shape.numpy().tolist() == [900, 1100]
  y, x, c = np_window(900, 1100)
  assert window.numpy().tolist() == [y, x, c, c] and c == 788
  assert crop.shape == (394, 394, 3)  # 788 / 2; 788 / 4 would be < 224
  got = preprocess.eval_image(encoded, p).numpy()
  want = np_normalize(np_resize(image[y : y + c, x : x + c], 224, 224) / 255)
  assert np.abs(got - want).max() < 4 / 255


def np_window(h, w, image_size=224, resize_size=256, offset=None):
  s = min(h, w)
  c = max(1, min(s, int(np.floor(s * image_size / resize_size + 0.5))))
  oy, ox = ((s - c) // 2,) * 2 if offset is None else offset
  return (h - s) // 2 + oy, (w - s) // 2 + ox, c


def np_normalize(x, p=P):
  x = x * p.pixel_scale
  if p.channel_order == 'BGR':
    x = x[..., ::-1]
  return (x - np.asarray(p.mean)) / np.asarray(p.std)


def in_tf_data(fn, *args):
  """Runs fn(*args) as a tf.data map: graph mode, as the pipeline does."""
  ds = tf.data.Dataset.from_tensors(tuple(args)).map(fn)
  return next(iter(ds)).numpy()


@pytest.mark.parametrize(
    'shape', [(300, 400), (400, 300), (256, 256), (57, 90), (1000, 333)]
)
def test_paper_window_geometry(shape):
  h, w = shape
  y, x, c = np_window(h, w)
  assert preprocess.paper_window(
      tf.constant(shape), 224, 256
  ).numpy().tolist() == [y, x, c, c]
  s = min(h, w)
  seen = set()
  for i in range(40):
    wy, wx, wh, ww = preprocess.paper_window(
        tf.constant(shape), 224, 256, tf.constant([i, 7])
    ).numpy()
    assert wh == ww == c
    assert (h - s) // 2 <= wy <= (h - s) // 2 + s - c
    assert (w - s) // 2 <= wx <= (w - s) // 2 + s - c
    seen.add((wy, wx))
  if s - c >= 4:
    assert len(seen) > 10  # offsets vary with the seed


@pytest.mark.parametrize('shape', [(200, 260), (150, 100)])
@pytest.mark.parametrize('mode', ['eager', 'tf.data'])
def test_eval_centre_crop_matches_numpy(shape, mode):
  image = _ramp(*shape)
  p = preprocess.Params(
      image_size=64, resize_size=80, resize_method='antialias'
  )
  encoded = tf.constant(_png(image))
  fn = lambda e: preprocess.eval_image(e, p)
  got = fn(encoded).numpy() if mode == 'eager' else in_tf_data(fn, encoded)
  y, x, c = np_window(*shape, 64, 80)
  want = np_normalize(np_resize(image[y : y + c, x : x + c], 64, 64) / 255, p)
  assert got.shape == (64, 64, 3)
  np.testing.assert_allclose(got, want, atol=2e-3)


def test_window_decode_equals_paper_resize_then_crop():
  """Cropping the window and resizing it ~= resizing the shorter side to 256
  and cropping 224 (the paper's order), away from the window's edge."""
  image = _ramp(300, 420)
  p = preprocess.Params(resize_method='antialias')
  got = preprocess.eval_image(tf.constant(_png(image)), p).numpy()
  big = np_resize(image, 256, round(420 * 256 / 300)) / 255
  y0, x0 = (256 - 224) // 2, (big.shape[1] - 224) // 2
  want = np_normalize(big[y0 : y0 + 224, x0 : x0 + 224])
  # The window's integer origin and side shift it by under a pixel.
  diff = np.abs(got - want)[4:-4, 4:-4]
  assert diff.max() < 2 / 255 and diff.mean() < 0.5 / 255, diff.max()


def test_jpeg_window_decode_matches_full_decode():
  image = _ramp(240, 320)
  encoded = _jpeg(image)
  full = tf.io.decode_jpeg(encoded, channels=3).numpy()
  crop, window, shape = preprocess.decode_window(
      tf.constant(encoded), lambda s: tf.constant([16, 40, 100, 120])
  )
  assert shape.numpy().tolist() == [240, 320]
  assert window.numpy().tolist() == [16, 40, 100, 120]
  # Chroma upsampling at the window's edge may differ by a level or two.
  diff = np.abs(crop.numpy().astype(int) - full[16:116, 40:160])
  assert diff.max() <= 4 and diff.mean() < 0.1, (diff.max(), diff.mean())


def test_ten_crop_order_and_flips():
  image = np.random.default_rng(5).integers(0, 256, (90, 120, 3), np.uint8)
  p = preprocess.Params(image_size=48, resize_size=64)
  got = preprocess.eval_image(tf.constant(_png(image)), p, crops=10).numpy()
  s = 90
  square = image[:, (120 - s) // 2 : (120 - s) // 2 + s]
  big = np_area(square, 64, 64) / 255
  far, mid = 64 - 48, (64 - 48) // 2
  offsets = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  assert got.shape == (10, 48, 48, 3)
  for i, (y, x) in enumerate(offsets):
    want = np_normalize(big[y : y + 48, x : x + 48], p)
    np.testing.assert_allclose(
        got[i], want, atol=2e-3, err_msg=preprocess.TEN_CROP_ORDER[i]
    )
    np.testing.assert_allclose(
        got[i + 5],
        want[:, ::-1],
        atol=2e-3,
        err_msg=preprocess.TEN_CROP_ORDER[i + 5],
    )


@pytest.mark.parametrize('mode', ['eager', 'tf.data'])
def test_train_crop_is_a_random_window(mode):
  image = np.random.default_rng(6).integers(0, 256, (120, 160, 3), np.uint8)
  p = preprocess.Params(
      image_size=48, resize_size=64, flip=False, lighting_std=0.0
  )
  encoded = tf.constant(_png(image))
  for i in range(3):
    seed = tf.constant([i, 3], tf.int64)
    fn = lambda e, s: preprocess.train_image(e, s, p)
    got = (
        fn(encoded, seed).numpy()
        if mode == 'eager'
        else in_tf_data(fn, encoded, seed)
    )
    crop_seed = tf.random.experimental.stateless_split(seed, 3)[0]
    y, x, c, _ = preprocess.paper_window(
        tf.constant([120, 160]), 48, 64, crop_seed
    ).numpy()
    want = np_normalize(np_area(image[y : y + c, x : x + c], 48, 48) / 255, p)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_flip_is_a_fair_mirror():
  image = tf.constant(np.random.default_rng(0).random((5, 7, 3)), tf.float32)
  flips = 0
  for i in range(200):
    out = preprocess.flip(image, tf.constant([i, 1])).numpy()
    if np.array_equal(out, image.numpy()[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, image.numpy())
  assert 70 < flips < 130
  ds_out = in_tf_data(lambda x: preprocess.flip(x, tf.constant([0, 1])), image)
  np.testing.assert_array_equal(
      ds_out, preprocess.flip(image, tf.constant([0, 1])).numpy()
  )


@pytest.mark.parametrize('scale', ['lambda', 'sqrt_lambda'])
def test_pca_lighting_statistics(scale):
  p = preprocess.Params(lighting_std=0.1, lighting_scale=scale)
  n = 4000
  seeds = tf.stack([tf.range(n), tf.fill([n], 5)], 1)
  ds = (
      tf.data.Dataset.from_tensor_slices(seeds)
      .map(lambda s: preprocess.lighting_shift(s, p))
      .batch(n)
  )
  shifts = next(iter(ds)).numpy()  # inside tf.data
  eigval = np.array(p.eigval)
  eigvec = np.array(p.eigvec)  # columns are eigenvectors
  weight = eigval if scale == 'lambda' else np.sqrt(eigval)
  # Exact formula for one seed: shift = V (alpha * w), alpha ~ N(0, 0.1).
  alpha = tf.random.stateless_normal([3], seeds[0]).numpy() * 0.1
  np.testing.assert_allclose(
      shifts[0], eigvec @ (alpha * weight), rtol=1e-5, atol=1e-7
  )
  np.testing.assert_allclose(  # eagerly, the same
      preprocess.lighting_shift(seeds[0], p).numpy(), shifts[0], rtol=1e-6
  )
  # Statistics: mean 0, covariance 0.01 * V diag(w^2) V^T.
  want_cov = 0.01 * eigvec @ np.diag(weight**2) @ eigvec.T
  np.testing.assert_allclose(
      shifts.mean(0), 0, atol=4 * np.sqrt(np.diag(want_cov).max() / n)
  )
  np.testing.assert_allclose(
      np.cov(shifts.T), want_cov, rtol=0.1, atol=0.05 * np.abs(want_cov).max()
  )
  # Along each eigenvector the shift has std 0.1 * w_i.
  proj = shifts @ eigvec
  np.testing.assert_allclose(proj.std(0), 0.1 * weight, rtol=0.06)


def test_lighting_in_train_image_is_per_image_constant():
  image = np.full((64, 64, 3), 128, np.uint8)
  p0 = preprocess.Params(
      image_size=32, resize_size=64, flip=False, lighting_std=0.0
  )
  p1 = preprocess.Params(image_size=32, resize_size=64, flip=False)
  seed = tf.constant([4, 2], tf.int64)
  enc = tf.constant(_png(image))
  diff = (
      preprocess.train_image(enc, seed, p1)
      - preprocess.train_image(enc, seed, p0)
  ).numpy()
  light_seed = tf.random.experimental.stateless_split(seed, 3)[2]
  want = preprocess.lighting_shift(light_seed, p1).numpy()
  np.testing.assert_allclose(diff, np.broadcast_to(want, diff.shape), atol=1e-6)


def test_normalize_channel_order_scale_mean_std():
  x = np.random.default_rng(1).random((4, 4, 3)).astype(np.float32)
  p = preprocess.Params(
      channel_order='BGR',
      pixel_scale=255.0,
      mean=(104.0, 117.0, 123.0),
      std=(1.0, 2.0, 4.0),
  )
  got = preprocess.normalize(tf.constant(x), p).numpy()
  want = (x[..., ::-1] * 255 - [104, 117, 123]) / [1, 2, 4]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mean_image_subtracts_the_matching_crop():
  image = _ramp(64, 64)
  mean = np.random.default_rng(2).random((64, 64, 3)).astype(np.float32)
  p = preprocess.Params(
      image_size=48, resize_size=64, mean_image=mean, mean=(0, 0, 0)
  )
  enc = tf.constant(_png(image))
  got = preprocess.eval_image(enc, p).numpy()
  y, x, c = np_window(64, 64, 48, 64)
  want = np_area(image[y : y + c, x : x + c], 48, 48) / 255 - mean[8:56, 8:56]
  np.testing.assert_allclose(got, want, atol=2e-3)
  ten = preprocess.eval_image(enc, p, crops=10).numpy()
  np.testing.assert_allclose(
      ten[1], image[:48, 16:] / 255 - mean[:48, 16:], atol=2e-3
  )  # top-right; 64 -> 64 is identity
  np.testing.assert_allclose(
      ten[6], (image[:48, 16:] / 255 - mean[:48, 16:])[:, ::-1], atol=2e-3
  )


def test_decode_colour_modes_to_rgb():
  rgb = _ramp(40, 60)
  cases = {
      'grey': (_jpeg(rgb[..., 1]), np.repeat(rgb[..., 1:2], 3, -1)),
      'cmyk': (_jpeg_cmyk(rgb), rgb),
      'rgba png': (_rgba_png(rgb), rgb),
      'rgb jpeg': (_jpeg(rgb), rgb),
  }
  for name, (encoded, want) in cases.items():
    for mode in ('eager', 'tf.data'):
      fn = preprocess.decode_rgb
      got = (
          fn(tf.constant(encoded)).numpy()
          if mode == 'eager'
          else (in_tf_data(fn, tf.constant(encoded)))
      )
      assert got.shape == (40, 60, 3), name
      assert np.abs(got.astype(int) - want).mean() < 4, (name, mode)


def _jpeg_cmyk(rgb):
  buf = io.BytesIO()
  Image.fromarray(rgb).convert('CMYK').save(buf, 'JPEG', quality=95)
  return buf.getvalue()


def _rgba_png(rgb):
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], -1)
  return _png(rgba)


def test_inception_window_inside_image():
  for i in range(20):
    y, x, h, w = preprocess.inception_window(
        tf.constant([100, 150]), tf.constant([i, 9])
    ).numpy()
    assert 0 <= y and 0 <= x and y + h <= 100 and x + w <= 150
    assert h * w >= 0.08 * 100 * 150 - 150
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05 or (h, w) == (100, 150)


def test_params_from_record(tmp_path):
  """The one builder of Params from a checkpoint's preprocessing record:
  the record's fields win, `fields` fill the rest and missing keys."""
  record = dict(
      channel_order='BGR',
      pixel_scale=255.0,
      mean=[1, 2, 3],
      std=[4, 5, 6],
      image_size=48,
      resize_size=64,
      resize_method='antialias',
  )
  p = preprocess.params_from_record(record, flip=False, resize_method='area')
  assert p == preprocess.Params(
      image_size=48,
      resize_size=64,
      flip=False,
      resize_method='antialias',
      channel_order='BGR',
      pixel_scale=255.0,
      mean=(1.0, 2.0, 3.0),
      std=(4.0, 5.0, 6.0),
  )
  # A record from before resize_method existed (or from convert.py).
  old = {k: v for k, v in record.items() if k != 'resize_method'}
  assert (
      preprocess.params_from_record(old, resize_method='bilinear').resize_method
      == 'bilinear'
  )
  assert preprocess.params_from_record(old).resize_method == P.resize_method
  np.save(tmp_path / 'mean.npy', np.full((64, 64, 3), 0.5, np.float32))
  p = preprocess.params_from_record(
      dict(record, mean_image=str(tmp_path / 'mean.npy'))
  )
  assert p.mean_image.shape == (64, 64, 3)
  with pytest.raises(
      ValueError, match=r'shape \(64, 64, 3\); it must be \(32, 32, 3\)'
  ):
    preprocess.params_from_record(
        dict(record, resize_size=32, mean_image=str(tmp_path / 'mean.npy'))
    )
  with pytest.raises(ValueError, match='lacks mean, std'):
    preprocess.params_from_record(dict(image_size=48, resize_size=64))
  with pytest.raises(TypeError, match='no Params field'):
    preprocess.params_from_record(record, flipp=True)


def test_lighting_defaults_are_configs_paper_constants():
  from alexnet_jax.configs import paper

  assert P.eigval == paper.IMAGENET_EIGVAL
  assert P.eigvec == paper.IMAGENET_EIGVEC
  c = paper.get_config()
  assert tuple(c.data.lighting.eigval) == paper.IMAGENET_EIGVAL
