"""Each source's evaluation transform against an independent reference.

* Caffe (`eval_resize='warp'`): the whole photo resized to 256x256 ignoring
  its aspect ratio, as convert_imageset does with OpenCV's INTER_LINEAR (the
  reference below is a NumPy transcription of OpenCV's fixed-point uint8
  bilinear: 11-bit coefficients, half-pixel centres, clamped borders), the
  centre 227 crop, BGR 0..255 minus the mean (per channel or mean image).
* torchvision (`eval_resize='shorter_side'`): PIL itself -
  `Image.resize(..., BILINEAR)` (antialiased) to shorter side 256 with
  torchvision's size rule, CenterCrop(224) with its rounding, then /255 and
  mean/std.

Both are compared on the pipeline's output in pixel levels (0..255 units).
Tolerance: every value within 1 level; mean absolute difference under 0.01
level for Caffe and 0.25 for torchvision (measured, 2026-12-01, on the
generated photos and 40 shared samples: Caffe max 1, worst mean 0.0016;
torchvision max 1, worst mean 0.185). The residue is rounding: OpenCV rounds
fixed-point sums, PIL rounds its horizontal pass to uint8 before the
vertical one, the pipeline resizes in float32 and rounds once. JPEGs are
decoded with libjpeg's accurate DCT, as OpenCV and PIL do (TF's default
DCT alone differs by up to 12 levels).

Photos: generated ones here (JPEG and PNG, landscape, portrait, smaller than
256) so the default suite always checks something, plus the first of the
shared ImageNet samples when the data root has them.
"""

import io
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax.core import convert
from alexnet_jax.core import preprocess
from helpers import eval_reference as ref


def _shared_photos(root, n=12):
  files = sorted(pathlib.Path(root, 'imagenet-samples', 'val').glob('*/*'))
  return [(f.name, f.read_bytes()) for f in files[:: max(1, len(files) // n)]][
      :n
  ]


def _levels(got, want, scale):
  diff = np.abs(np.asarray(got, np.float64) - want) * scale
  return float(diff.max()), float(diff.mean())


def _check_caffe(photos, mean_image=None):
  record = convert.preprocessing('caffemodel')
  params = preprocess.params_from_record(record)
  if mean_image is not None:
    params = preprocess.Params(**{**params.__dict__, 'mean_image': mean_image})
  worst = []
  for name, data in photos:
    got = preprocess.eval_image(tf.constant(data), params).numpy()
    want = ref.caffe_reference(data, record['mean'], mean_image)
    assert got.shape == want.shape == (227, 227, 3), name
    most, mean = _levels(got, want, 1.0)
    worst.append((most, mean, name))
  return worst


def _check_torchvision(photos):
  record = convert.preprocessing('torchvision')
  params = preprocess.params_from_record(record)
  worst = []
  for name, data in photos:
    got = preprocess.eval_image(tf.constant(data), params).numpy()
    want = ref.torchvision_reference(data, record['mean'], record['std'])
    assert got.shape == want.shape == (224, 224, 3), name
    scale = np.asarray(record['std']) * 255  # back to pixel levels
    most, mean = _levels(got, want, scale)
    worst.append((most, mean, name))
  return worst


def _assert_within(worst, source):
  for most, mean, name in worst:
    assert most <= ref.LEVELS_MAX and mean < ref.LEVELS_MEAN[source], (
        name,
        most,
        mean,
    )


# --- Tests --------------------------------------------------------------------


def test_caffe_transform_matches_opencv_reference():
  _assert_within(_check_caffe(ref.generated_photos()), 'caffe')


def test_caffe_transform_with_mean_image():
  mean = (
      np.random.RandomState(1)
      .uniform(0.2, 0.8, (256, 256, 3))
      .astype(np.float32)
  )
  _assert_within(
      _check_caffe(ref.generated_photos()[:2], mean_image=mean), 'caffe'
  )


def test_torchvision_transform_matches_pil():
  _assert_within(_check_torchvision(ref.generated_photos()), 'torchvision')


def test_transforms_on_shared_imagenet_samples(shared_datasets):
  photos = _shared_photos(shared_datasets)
  if not photos:
    pytest.skip('no imagenet-samples under the data root')
  _assert_within(_check_caffe(photos), 'caffe')
  _assert_within(_check_torchvision(photos), 'torchvision')


def test_references_catch_the_wrong_transform():
  """The tolerance tells the transforms apart: the crop-first path (this
  module's own) misses either reference by many levels."""
  photos = ref.generated_photos()[:1]
  record = convert.preprocessing('caffemodel')
  wrong = preprocess.params_from_record(dict(record, eval_resize='crop_first'))
  got = preprocess.eval_image(tf.constant(photos[0][1]), wrong).numpy()
  want = ref.caffe_reference(photos[0][1], record['mean'])
  assert _levels(got, want, 1.0)[0] > 20
  tv = convert.preprocessing('torchvision')
  wrong = preprocess.params_from_record(
      dict(tv, resize_method='bilinear', eval_resize='crop_first')
  )
  got = preprocess.eval_image(tf.constant(photos[0][1]), wrong).numpy()
  want = ref.torchvision_reference(photos[0][1], tv['mean'], tv['std'])
  assert _levels(got, want, np.asarray(tv['std']) * 255)[0] > 20


def test_opencv_reference_is_opencv():
  """Spot values of the reference against hand-worked OpenCV results."""
  src = np.array([[0, 100], [200, 255]], np.uint8)[..., None].repeat(3, -1)
  up = ref.opencv_bilinear_u8(src, 4, 4)[..., 0]
  # dst x=1 -> src 0.25: 0.75*0 + 0.25*100 = 25 on row 0; clamped corners.
  assert up[0].tolist() == [0, 25, 75, 100]
  assert up[:, 0].tolist() == [0, 50, 150, 200]
  half = ref.opencv_bilinear_u8(
      np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, -1), 2, 2
  )[..., 0]
  assert half.tolist() == [[3, 5], [11, 13]]  # 2x2 averages, rounded


def test_caffe_ten_crops_cut_the_warped_image():
  """--crops=10 with Caffe's transform: the 227 crops of the 256x256 warp
  (Caffe's oversample), centre = the single crop."""
  name, data = ref.generated_photos()[0]
  record = convert.preprocessing('caffemodel')
  params = preprocess.params_from_record(record)
  crops = preprocess.eval_image(tf.constant(data), params, crops=10).numpy()
  single = preprocess.eval_image(tf.constant(data), params).numpy()
  np.testing.assert_array_equal(crops[4], single)
  rgb = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  warped = ref.opencv_bilinear_u8(rgb[..., ::-1], 256, 256).astype(np.float32)
  warped -= np.asarray(record['mean'], np.float32)
  assert np.abs(crops[0] - warped[:227, :227]).max() <= ref.LEVELS_MAX, name
  assert np.abs(crops[3] - warped[29:, 29:]).max() <= ref.LEVELS_MAX, name
  np.testing.assert_array_equal(crops[5], crops[0][:, ::-1])
  with pytest.raises(ValueError, match='only 1 is implemented'):
    preprocess.eval_image(
        tf.constant(data),
        preprocess.params_from_record(convert.preprocessing('torchvision')),
        crops=10,
    )
