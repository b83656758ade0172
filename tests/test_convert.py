"""Weight import: random PyTorch weights saved in each format, imported, and
the logits compared with PyTorch's; malicious and malformed files refused.

Default tests run at 1/16 width (the layout logic is width-independent);
`-m slow` repeats the comparison at full size.
"""

import os
import pathlib
import pickle

import jax
import numpy as np
import pytest
import torch

from alexnet_jax import convert as convert_cli
from alexnet_jax.core import checkpoint
from alexnet_jax.core import config_checks
from alexnet_jax.core import convert
from alexnet_jax.core import model as model_lib
from alexnet_jax.reference import torch_models
from helpers import caffe

TINY = 1 / 16


def _torchvision_net(width_scale, num_classes=1000):
  widths = model_lib.widths_for('torchvision', 1, width_scale)
  return caffe.randomize(
      torch_models.TorchvisionAlexNet(num_classes, widths=widths)
  )


def _caffe_npy_dict(net):
  """What the TensorFlow port of bvlc_alexnet stores, from the torch model."""
  layers = {}
  for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
    layer = getattr(net, name)
    # [out, in/group, kh, kw] -> (kh, kw, in/group, out): groups along out.
    layers[name] = [
        layer.weight.detach().numpy().transpose(2, 3, 1, 0),
        layer.bias.detach().numpy(),
    ]
  w6 = net.fc6.weight.detach().numpy().T  # rows in (C, H, W) order
  c5 = net.conv5.out_channels
  side = int(round((w6.shape[0] // c5) ** 0.5))
  w6 = (
      w6.reshape(c5, side, side, -1)
      .transpose(1, 2, 0, 3)
      .reshape(w6.shape[0], -1)
  )  # rows in (H, W, C) order
  layers['fc6'] = [w6, net.fc6.bias.detach().numpy()]
  for name in ('fc7', 'fc8'):
    layer = getattr(net, name)
    layers[name] = [
        layer.weight.detach().numpy().T,
        layer.bias.detach().numpy(),
    ]
  return layers


def _save_npy(path, layers):
  np.save(path, layers, allow_pickle=True)
  return path


@pytest.fixture(scope='module')
def torchvision_file(tmp_path_factory):
  net = _torchvision_net(TINY)
  path = tmp_path_factory.mktemp('tv') / 'alexnet.pth'
  torch.save(net.state_dict(), path)
  return net, path


@pytest.fixture(scope='module')
def caffe_file(tmp_path_factory):
  net = caffe.caffe_net(TINY)
  path = tmp_path_factory.mktemp('caffe') / 'bvlc_alexnet.npy'
  return net, _save_npy(path, _caffe_npy_dict(net))


# --- Logits against PyTorch ---------------------------------------------------


def test_torchvision_import_matches_pytorch(torchvision_file):
  net, path = torchvision_file
  model, variables = convert.from_torchvision(path, width_scale=TINY)
  assert model.variant == 'torchvision' and model.towers == 1
  images = caffe.images(2, 224)
  logits = model.apply(variables, images, train=False)
  assert logits.shape == (2, 1000)
  assert caffe.rel_err(logits, caffe.torch_logits(net, images)) < 1e-4


def test_caffe_import_matches_pytorch(caffe_file):
  net, path = caffe_file
  model, variables = convert.from_caffe_npy(path, width_scale=TINY)
  assert (model.variant, model.towers, model.conv1_padding) == (
      'paper',
      2,
      'caffe',
  )
  assert variables['params']['conv2']['kernel'].shape[0] == 2  # two towers
  # Caffe's inputs are 0..255 minus the mean: large enough for LRN to act.
  images = caffe.images(2, 227, scale=60.0)
  logits = jax.jit(model.apply)(variables, images)
  expected = caffe.torch_logits(net, images)
  assert caffe.rel_err(logits, expected) < 1e-4
  # The check is sensitive to Caffe's LRN choices: confined to a tower, or
  # alpha on the sum, the logits are measurably different.
  for wrong in (dict(lrn_across_towers=False), dict(lrn_alpha_over_n=False)):
    other = jax.jit(model.clone(**wrong).apply)(variables, images)
    assert caffe.rel_err(other, expected) > 1e-3, wrong


def test_configs_validate_and_describe_the_imports():
  tv = convert.config_for('torchvision')
  caffe = convert.config_for('caffe-npy', num_classes=10)
  config_checks.validate(tv)
  config_checks.validate(caffe)
  assert (tv.model.variant, tv.data.image_size) == ('torchvision', 224)
  assert caffe.data.image_size == 227 and caffe.model.num_classes == 10
  assert caffe.model.lrn.k == 1.0 and caffe.model.lrn.alpha_over_n
  assert caffe.model.lrn.across_towers and caffe.model.bias_init == 0.1
  tv_record = convert.preprocessing('torchvision')
  assert tv_record.pop('mean') == [0.485, 0.456, 0.406]
  assert tv_record.pop('std') == [0.229, 0.224, 0.225]
  assert tv_record == {
      'channel_order': 'RGB',
      'pixel_scale': 1.0,
      'image_size': 224,
      'resize_size': 256,
      'eval_resize': 'shorter_side',
      'resize_method': 'antialias',
  }
  for caffe_format in ('caffe-npy', 'caffemodel'):
    assert convert.preprocessing(caffe_format) == {
        'channel_order': 'BGR',
        'pixel_scale': 255.0,
        'mean': [104.0, 117.0, 123.0],
        'std': [1.0, 1.0, 1.0],
        'image_size': 227,
        'resize_size': 256,
        'eval_resize': 'warp',
        'resize_method': 'bilinear',
    }
  with pytest.raises(ValueError, match="'caffe'.*torchvision, caffe-npy"):
    convert.preprocessing('caffe')


def test_imagenet_class_names():
  names, wnids = convert.imagenet_class_names(), convert.imagenet_wnids()
  assert len(names) == len(wnids) == 1000
  assert wnids == sorted(set(wnids)) and wnids[0] == 'n01440764'
  assert names[0] == 'tench' and names[1] == 'goldfish'
  assert names[wnids.index('n04037443')] == 'racer'
  assert all(n.strip() == n and n for n in names)
  assert convert.class_names(3) == ['class 0', 'class 1', 'class 2']


def test_fine_tuned_head_size_is_read_from_the_file(tmp_path):
  net = caffe.caffe_net(TINY, num_classes=7)
  path = _save_npy(tmp_path / 'w.npy', _caffe_npy_dict(net))
  model, variables = convert.from_caffe_npy(path, width_scale=TINY)
  assert model.num_classes == 7
  assert variables['params']['fc8']['kernel'].shape == (256, 7)


# --- Refusing to run code -----------------------------------------------------


class _CreatesFile:
  """Unpickling this calls open(path, 'w'): it creates the file."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, 'w'))


class _RunsShell:

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (os.system, (f'touch {self.path}',))


@pytest.mark.parametrize('payload', [_CreatesFile, _RunsShell])
def test_malicious_npy_is_refused_without_running(tmp_path, payload):
  sentinel = tmp_path / 'pwned'
  layers = {'conv1': [np.zeros((11, 11, 3, 6), np.float32), payload(sentinel)]}
  path = _save_npy(tmp_path / 'evil.npy', layers)
  with pytest.raises(convert.WeightFileError, match='refusing to load'):
    convert.from_caffe_npy(path)
  assert not sentinel.exists()
  if payload is _CreatesFile:  # the file is live: np.load would run it
    np.load(path, allow_pickle=True)
    assert sentinel.exists()


def test_malicious_torch_file_is_refused_without_running(tmp_path):
  sentinel = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  torch.save(
      {
          'features.0.weight': torch.zeros(2),
          'features.0.bias': _CreatesFile(sentinel),
      },
      path,
  )
  with pytest.raises(convert.WeightFileError, match='weights_only=True'):
    convert.from_torchvision(path)
  assert not sentinel.exists()
  torch.load(path, weights_only=False)  # the file is live
  assert sentinel.exists()


def test_raw_pickle_is_not_an_npy_file(tmp_path):
  sentinel = tmp_path / 'pwned'
  path = tmp_path / 'weights.npy'
  path.write_bytes(pickle.dumps({'conv1': _CreatesFile(sentinel)}))
  with pytest.raises(convert.WeightFileError, match='not a .npy file'):
    convert.from_caffe_npy(path)
  assert not sentinel.exists()


# --- Wrong files, keys and shapes ---------------------------------------------


def test_missing_layer_is_named_with_its_shape(tmp_path):
  layers = _caffe_npy_dict(caffe.caffe_net(TINY))
  del layers['fc7']
  path = _save_npy(tmp_path / 'w.npy', layers)
  with pytest.raises(
      convert.WeightFileError,
      match=r"missing 'fc7/W' \(expected shape \(256, 256\)\)",
  ):
    convert.from_caffe_npy(path, width_scale=TINY)


def test_ungrouped_conv2_is_a_shape_error(tmp_path):
  layers = _caffe_npy_dict(caffe.caffe_net(TINY))
  w, b = layers['conv2']
  layers['conv2'] = [np.concatenate([w, w], axis=2), b]  # 6 inputs, not 3
  path = _save_npy(tmp_path / 'w.npy', layers)
  with pytest.raises(
      convert.WeightFileError,
      match=r"'conv2/W' has shape \(5, 5, 6, 16\), expected "
      r'\(5, 5, 3, 16\)',
  ):
    convert.from_caffe_npy(path, width_scale=TINY)


def test_full_size_shapes_are_expected_by_default(caffe_file):
  _, path = caffe_file  # a 1/16-width file read as the real model
  with pytest.raises(
      convert.WeightFileError,
      match=r"'conv1/W' has shape \(11, 11, 3, 6\), expected "
      r'\(11, 11, 3, 96\)',
  ):
    convert.from_caffe_npy(path)


def test_empty_and_truncated_torch_files_say_why(tmp_path, torchvision_file):
  empty = tmp_path / 'alexnet.pth'
  empty.write_bytes(b'')
  with pytest.raises(convert.WeightFileError) as e:
    convert.from_torchvision(str(empty), width_scale=TINY)
  assert str(e.value) == (
      f'{empty} is empty (0 bytes): not a torch.save file; an interrupted '
      'download?'
  )
  cut = tmp_path / 'cut.pth'
  data = pathlib.Path(torchvision_file[1]).read_bytes()
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(convert.WeightFileError) as e:
    convert.from_torchvision(str(cut), width_scale=TINY)
  text = str(e.value)
  assert text.startswith(f'{cut} is not a torch.save file: ')
  assert not text.endswith(': ') and '\n' not in text


def test_torchvision_wrong_and_extra_keys(tmp_path, torchvision_file):
  net, _ = torchvision_file
  sd = dict(net.state_dict())
  sd['features.3.weight'] = torch.zeros(12, 8, 5, 5)
  sd['features.2.weight'] = torch.zeros(3)
  del sd['classifier.4.bias']
  path = tmp_path / 'bad.pth'
  torch.save(sd, path)
  with pytest.raises(convert.WeightFileError) as err:
    convert.from_torchvision(path, width_scale=TINY)
  message = str(err.value)
  assert (
      "'features.3.weight' has shape (12, 8, 5, 5), expected (12, 4, 5, 5)"
  ) in message
  assert "missing 'classifier.4.bias' (expected shape (256,))" in message
  assert "unexpected keys 'features.2.weight'" in message


def test_plain_array_and_missing_file(tmp_path):
  path = tmp_path / 'plain.npy'
  np.save(path, np.zeros((3, 3)))
  with pytest.raises(convert.WeightFileError, match='shape \\(3, 3\\)'):
    convert.from_caffe_npy(path)
  with pytest.raises(FileNotFoundError, match='nothere.pth'):
    convert.from_torchvision(tmp_path / 'nothere.pth')
  (tmp_path / 'junk.pth').write_bytes(b'not a torch file')
  with pytest.raises(convert.WeightFileError, match='junk.pth'):
    convert.from_torchvision(tmp_path / 'junk.pth')


# --- The command line ---------------------------------------------------------


def test_cli_round_trip_through_checkpoint_load(tmp_path, caffe_file):
  net, path = caffe_file
  out = tmp_path / 'export'
  assert (
      convert_cli.main(
          [
              '--format=caffe-npy',
              f'--input={path}',
              f'--output={out}',
              f'--width_scale={TINY}',
          ]
      )
      == 0
  )
  model, variables, config = checkpoint.load(out)
  assert config.model.conv1_padding == 'caffe' and config.data.image_size == 227
  images = caffe.images(1, 227, scale=60.0)
  assert (
      caffe.rel_err(
          model.apply(variables, images), caffe.torch_logits(net, images)
      )
      < 1e-4
  )
  meta = checkpoint.load_metadata(out)
  assert meta['preprocessing'] == convert.preprocessing('caffe-npy')
  assert meta['class_names'] == convert.imagenet_class_names()


def test_cli_refuses_to_overwrite_and_leaves_nothing_on_failure(
    tmp_path, torchvision_file, caffe_file, capsys
):
  _, path = torchvision_file
  args = ['--format=torchvision', f'--input={path}', f'--width_scale={TINY}']
  # Failed conversions write nothing: a Caffe file read as torchvision, a
  # torchvision file read at the wrong width, a missing file.
  bad = tmp_path / 'bad'
  for wrong, reason in (
      (['--format=torchvision', f'--input={caffe_file[1]}'], 'weights_only'),
      (['--format=torchvision', f'--input={path}'], 'expected'),
      (['--format=caffe-npy', f'--input={bad}.npy'], 'does not exist'),
  ):
    with pytest.raises(SystemExit) as e:
      convert_cli.main([*wrong, f'--output={bad}'])
    assert e.value.code.startswith('error: ') and reason in e.value.code
    assert not list(tmp_path.iterdir())
  # An existing non-empty output is kept unless --overwrite.
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  with pytest.raises(SystemExit, match='^error: .*--overwrite'):
    convert_cli.main([*args, f'--output={out}'])
  assert (out / 'keep.txt').read_text() == 'mine'
  assert convert_cli.main([*args, f'--output={out}', '--overwrite']) == 0
  assert not (out / 'keep.txt').exists()
  # An existing empty directory is fine.
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert convert_cli.main([*args, f'--output={empty}']) == 0


# --- Real size (opt-in) -------------------------------------------------------


@pytest.mark.slow
def test_full_size_imports_match_pytorch(tmp_path):
  net = _torchvision_net(1.0)
  torch.save(net.state_dict(), tmp_path / 'alexnet.pth')
  model, variables = convert.from_torchvision(tmp_path / 'alexnet.pth')
  images = caffe.images(2, 224)
  assert (
      caffe.rel_err(
          model.apply(variables, images), caffe.torch_logits(net, images)
      )
      < 1e-4
  )
  del net, variables
  net = caffe.caffe_net(1.0)
  path = _save_npy(tmp_path / 'bvlc_alexnet.npy', _caffe_npy_dict(net))
  model, variables = convert.from_caffe_npy(path)
  images = caffe.images(2, 227, scale=60.0)
  assert (
      caffe.rel_err(
          model.apply(variables, images), caffe.torch_logits(net, images)
      )
      < 1e-4
  )
