"""Caffe's binary .caffemodel: files written here with random weights in both
layouts (the 2014 `layers` V1 messages with legacy dims and the newer `layer`
messages with BlobShape), imported through the CLI and compared with an
independent PyTorch model run Caffe's way; bad files refused.

The writer below is this test's own, from caffe.proto's field numbers, so it
shares no code with the reader in alexnet_jax/core/convert.py.
"""

import time

import numpy as np
import pytest

from alexnet_jax import convert as convert_cli
from alexnet_jax.core import checkpoint
from alexnet_jax.core import config_checks
from alexnet_jax.core import convert
from helpers import caffe
from helpers import eval_reference as ref

TINY = 1 / 16

# --- The PyTorch reference ----------------------------------------------------


def caffe_net(width_scale, *, seed=3, **kwargs):
  """helpers.caffe's PyTorch net with Caffe's semantics, seeded for here."""
  return caffe.caffe_net(width_scale, seed=seed, **kwargs)


# --- Import through the CLI, both layouts -------------------------------------


@pytest.mark.parametrize(
    'v1, pool_first, packed',
    [
        (True, False, True),  # bvlc_alexnet (2014): layers, legacy dims
        (False, True, True),  # CaffeNet, newer layer/BlobShape layout
        (True, True, False),  # unpacked floats (repeated fixed32)
    ],
)
def test_cli_export_matches_caffe_semantics(tmp_path, v1, pool_first, packed):
  net = caffe_net(TINY, pool_first=pool_first)
  path = caffe.write_caffemodel(
      tmp_path / 'net.caffemodel',
      caffe.net_blobs(net),
      v1=v1,
      pool_first=pool_first,
      packed=packed,
  )
  out = tmp_path / 'export'
  assert _convert(path, out) == 0
  model, variables, config = checkpoint.load(out)
  config_checks.validate(config)
  assert config.model.lrn.order == ('pool_lrn' if pool_first else 'lrn_pool')
  assert (config.model.towers, config.data.image_size) == (2, 227)
  images = caffe.images(2, 227, scale=60.0)
  expected = caffe.torch_logits(net, images)
  assert caffe.rel_err(model.apply(variables, images), expected) < 1e-4
  # The order matters: the other one gives measurably different logits.
  other = 'lrn_pool' if pool_first else 'pool_lrn'
  wrong = model.clone(lrn_order=other).apply(variables, images)
  assert caffe.rel_err(wrong, expected) > 1e-3
  meta = checkpoint.load_metadata(out)
  assert meta['preprocessing']['channel_order'] == 'BGR'
  assert meta['class_names'] == convert.imagenet_class_names()


def test_caffemodel_and_npy_give_the_same_model(tmp_path):
  """One mapping: the .npy port of the same weights imports identically."""
  net = caffe_net(TINY)
  blobs = caffe.net_blobs(net)
  path = caffe.write_caffemodel(tmp_path / 'a.caffemodel', blobs, v1=False)
  model, variables = convert.from_caffemodel(path, width_scale=TINY)
  c5 = blobs['conv5'][0].shape[0]
  npy = {
      k: [w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T, b]
      for k, (w, b) in blobs.items()
  }
  w6 = blobs['fc6'][0].T
  npy['fc6'][0] = (
      w6.reshape(c5, 6, 6, -1).transpose(1, 2, 0, 3).reshape(w6.shape[0], -1)
  )
  np.save(tmp_path / 'a.npy', npy, allow_pickle=True)
  model2, variables2 = convert.from_caffe_npy(
      tmp_path / 'a.npy', width_scale=TINY
  )
  assert model == model2
  import jax  # pylint: disable=g-import-not-at-top

  same = jax.tree.map(
      lambda a, b: bool(np.array_equal(a, b)), variables, variables2
  )
  assert all(jax.tree.leaves(same))


def test_fine_tuned_head_and_renamed_layers(tmp_path):
  net = caffe_net(TINY, num_classes=20)
  blobs = caffe.net_blobs(net)
  blobs['fc8_flickr'] = blobs.pop('fc8')
  seq = [
      (n + '_flickr' if n == 'fc8' else n, k)
      for n, k in caffe.caffe_sequence(False)
  ]
  path = caffe.write_caffemodel(
      tmp_path / 'ft.caffemodel', blobs, v1=False, seq=seq
  )
  model, variables = convert.from_caffemodel(path, width_scale=TINY)
  assert model.num_classes == 20
  images = caffe.images(1, 227, scale=60.0)
  assert (
      caffe.rel_err(
          model.apply(variables, images), caffe.torch_logits(net, images)
      )
      < 1e-4
  )


def _convert(path, out, *flags):
  """`alexnet_jax.convert` of the tiny .caffemodel `path` into `out`."""
  argv = ['--format=caffemodel', f'--input={path}', f'--output={out}']
  return convert_cli.main([*argv, f'--width_scale={TINY}', *flags])


# --- Bad files ----------------------------------------------------------------


def _refused(tmp_path, path, *patterns, capsys):
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as e:  # console.exit_on: one error line
    _convert(path, out)
  err = str(e.value.code)
  assert err.startswith('error: ') and 'Traceback' not in err
  assert '\n' not in err and not capsys.readouterr().err
  assert str(path) in err
  for pattern in patterns:
    assert pattern in err, err
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out')]
  return err


def test_truncated_files_are_refused(tmp_path, capsys):
  blobs = caffe.net_blobs(caffe_net(TINY))
  good = caffe.write_caffemodel(tmp_path / 'good.caffemodel', blobs, v1=True)
  data = good.read_bytes()
  # A cut between layers parses: it shows as missing layers.
  cut = tmp_path / 'cut.caffemodel'
  seq = caffe.caffe_sequence(False)
  caffe.write_caffemodel(
      cut, blobs, v1=True, seq=seq[: seq.index(('fc6', 'InnerProduct'))]
  )
  _refused(
      tmp_path,
      cut,
      'holds only 5 layers with weights',
      'truncated',
      capsys=capsys,
  )
  # A cut inside a layer does not.
  half = tmp_path / 'half.caffemodel'
  half.write_bytes(data[: len(data) // 2])
  _refused(tmp_path, half, 'is not a Caffe .caffemodel', capsys=capsys)


def test_other_files_are_refused(tmp_path, capsys):
  text = tmp_path / 'notes.caffemodel'
  text.write_text('name: "AlexNet"\nlayer { name: "conv1" }\n')
  _refused(tmp_path, text, '.caffemodel', capsys=capsys)
  jpeg = tmp_path / 'photo.caffemodel'
  jpeg.write_bytes(b'\xff\xd8\xff\xe0' + bytes(range(256)) * 4)
  _refused(tmp_path, jpeg, 'is not a Caffe .caffemodel', capsys=capsys)
  empty = tmp_path / 'empty.caffemodel'
  empty.write_bytes(b'')
  _refused(tmp_path, empty, 'holds no Caffe layers', capsys=capsys)
  _refused(
      tmp_path, tmp_path / 'absent.caffemodel', 'does not exist', capsys=capsys
  )


def _conv(o, i, k):
  return [np.zeros((o, i, k, k), np.float32), np.zeros(o, np.float32)]


def test_other_networks_are_refused(tmp_path, capsys):
  # GoogLeNet-like: many convolutions and one classifier.
  seq = [
      ('conv1/7x7_s2', 'Convolution'),
      ('pool1/3x3_s2', 'Pooling'),
      ('pool1/norm1', 'LRN'),
      ('conv2/3x3_reduce', 'Convolution'),
      ('conv2/3x3', 'Convolution'),
      ('conv2/norm2', 'LRN'),
  ]
  seq += [
      (f'inception_3a/{b}', 'Convolution')
      for b in ('1x1', '3x3_reduce', '3x3', '5x5_reduce', '5x5', 'pool_proj')
  ]
  seq += [('loss3/classifier', 'InnerProduct')]
  blobs = {name: _conv(4, 4, 1) for name, _ in seq if 'Conv' in _}
  blobs['loss3/classifier'] = [np.zeros((10, 4)), np.zeros(10)]
  g = caffe.write_caffemodel(
      tmp_path / 'googlenet.caffemodel', blobs, v1=False, seq=seq
  )
  _refused(
      tmp_path,
      g,
      'not an AlexNet or CaffeNet caffemodel',
      'conv1/7x7_s2 (Convolution)',
      '10 in all',
      capsys=capsys,
  )
  # VGG-like: 13 convolutions.
  seq = [
      (f'conv{i}_{j}', 'Convolution') for i in range(1, 6) for j in range(1, 4)
  ] + [(f'fc{i}', 'InnerProduct') for i in (6, 7, 8)]
  blobs = {name: _conv(2, 2, 3) for name, _ in seq}
  v = caffe.write_caffemodel(
      tmp_path / 'vgg.caffemodel', blobs, v1=True, seq=seq
  )
  _refused(tmp_path, v, 'not an AlexNet or CaffeNet', capsys=capsys)
  # conv1 with 64 kernels (torchvision's widths) at full size.
  blobs = caffe.net_blobs(caffe_net(TINY))
  blobs['conv1'] = _conv(64, 3, 11)
  c = caffe.write_caffemodel(tmp_path / 'c64.caffemodel', blobs, v1=True)
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as e:
    convert_cli.main(['--format=caffemodel', f'--input={c}', f'--output={out}'])
  err = str(e.value.code)
  assert "'conv1/W' has shape (64, 3, 11, 11), expected (96, 3, 11, 11)" in err
  assert str(c) in err and not out.exists()


def test_shapes_and_constants_that_do_not_fit(tmp_path, capsys):
  blobs = caffe.net_blobs(caffe_net(TINY))
  w, b = blobs['conv2']
  blobs['conv2'] = [np.concatenate([w, w], axis=1), b]  # ungrouped conv2
  p = caffe.write_caffemodel(tmp_path / 'g1.caffemodel', blobs, v1=False)
  _refused(
      tmp_path,
      p,
      "'conv2/W' has shape (16, 6, 5, 5), expected (16, 3, 5, 5)",
      capsys=capsys,
  )
  blobs = caffe.net_blobs(caffe_net(TINY))
  blobs['fc7'] = blobs['fc7'][:1]
  p = caffe.write_caffemodel(tmp_path / 'nobias.caffemodel', blobs, v1=True)
  _refused(tmp_path, p, "layer 'fc7' has 1 blobs", capsys=capsys)
  p = caffe.write_caffemodel(
      tmp_path / 'lrn.caffemodel',
      caffe.net_blobs(caffe_net(TINY)),
      v1=True,
      lrn=caffe.lrn_param(alpha=1.0),
  )
  _refused(tmp_path, p, "LRN layer 'norm1'", capsys=capsys)


def test_reading_never_runs_code(tmp_path):
  """The reader only slices bytes: a pickle payload in a layer name or blob
  is data, never executed (here it is just a wrong name/network)."""
  import os  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top

  sentinel = tmp_path / 'pwned'

  class Evil:

    def __reduce__(self):
      return (os.system, (f'touch {sentinel}',))

  payload = pickle.dumps(Evil())
  p = tmp_path / 'evil.caffemodel'
  p.write_bytes(
      caffe.length_delimited(
          100,
          caffe.length_delimited(1, payload)
          + caffe.length_delimited(2, b'Convolution'),
      )
  )
  with pytest.raises(convert.WeightFileError):
    convert.from_caffemodel(p)
  assert not sentinel.exists()


# --- Mean image ---------------------------------------------------------------


def _export_with_mean(tmp_path, bgr):
  """(export directory, mean file): the tiny net's .caffemodel converted by
  the command with `bgr` (3x256x256) as its mean .binaryproto."""
  path = caffe.write_caffemodel(
      tmp_path / 'a.caffemodel', caffe.net_blobs(caffe_net(TINY)), v1=True
  )
  mean = tmp_path / 'mean.binaryproto'
  mean.write_bytes(caffe.blob_proto(bgr[None], legacy=True))
  out = tmp_path / 'export'
  assert _convert(path, out, f'--mean_file={mean}') == 0
  return out, mean


def test_mean_binaryproto_is_stored_in_the_export(tmp_path):
  bgr = (
      np.random.RandomState(0).uniform(0, 255, (3, 256, 256)).astype(np.float32)
  )
  out, mean = _export_with_mean(tmp_path, bgr)
  mean.unlink()  # the export must not depend on it
  moved = tmp_path / 'moved'
  out.rename(moved)
  meta = checkpoint.load_metadata(moved)
  stored = np.load(meta['preprocessing']['mean_image'])
  assert meta['preprocessing']['mean_image'].startswith(str(moved))
  # HWC RGB in [0, 1]: pixel (y, x) channel R = BGR plane 2 / 255.
  np.testing.assert_allclose(stored[5, 7], bgr[::-1, 5, 7] / 255, rtol=1e-6)
  from alexnet_jax.core import preprocess  # pylint: disable=g-import-not-at-top

  params = preprocess.params_from_record(meta['preprocessing'])
  assert params.mean_image.shape == (256, 256, 3)
  # A wrong-size mean is refused clearly.
  small = tmp_path / 'small.binaryproto'
  small.write_bytes(caffe.blob_proto(bgr[None, :, :100, :100], legacy=False))
  with pytest.raises(
      convert.WeightFileError, match=r'small.binaryproto is not a Caffe mean'
  ):
    convert.read_mean_binaryproto(small)


# --- Full size: parse speed ---------------------------------------------------


@pytest.mark.slow
def test_full_size_caffemodel_parses_in_seconds(tmp_path):
  net = caffe_net(1.0)
  path = caffe.write_caffemodel(
      tmp_path / 'bvlc_alexnet.caffemodel', caffe.net_blobs(net), v1=True
  )
  start = time.perf_counter()
  model, variables = convert.from_caffemodel(path)
  seconds = time.perf_counter() - start
  assert seconds < 30, seconds
  images = caffe.images(1, 227, scale=60.0)
  assert (
      caffe.rel_err(
          model.apply(variables, images), caffe.torch_logits(net, images)
      )
      < 1e-4
  )


def test_export_applies_caffes_transform_and_mean(tmp_path):
  """features/predict/evaluate read the export's record: Caffe's warp and
  the stored mean image, checked against the OpenCV reference."""
  from alexnet_jax.analysis import features  # pylint: disable=g-import-not-at-top

  bgr = np.random.RandomState(0).uniform(0, 255, (3, 256, 256))
  out, _ = _export_with_mean(tmp_path, bgr)
  name, data = ref.generated_photos()[0]
  photo = tmp_path / 'photo.jpg'
  photo.write_bytes(data)
  record = checkpoint.load_metadata(out)['preprocessing']
  got = features.load_images([photo], record)[0]
  want = ref.caffe_reference(data, mean_image=np.load(record['mean_image']))
  assert np.abs(got - want).max() <= ref.LEVELS_MAX, name
  from alexnet_jax import predict  # pylint: disable=g-import-not-at-top

  predictor = predict.Predictor(out)
  assert predictor.params.eval_resize == 'warp'
  assert np.abs(predictor.image(photo)[0] - want).max() <= ref.LEVELS_MAX
