"""input_pipeline.py: folder/fake sources, bad files, determinism, hosts."""

import io
import logging
import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from alexnet_jax.configs import paper
from alexnet_jax.core import folder_source
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import splits
from helpers import cifar10

MINI = (
    pathlib.Path(input_pipeline.__file__).parents[1] / 'assets' / 'cifar10_mini'
)
CIFAR10 = cifar10.CLASSES


def _config(name, batch=8, size=24, resize=32, **data):
  c = paper.get_config()
  # [0, 1] pixels: these tests compare with PIL's [0, 1] arrays
  # (tests/test_input_scale.py covers the paper's 0-255 default).
  c.data.pixel_scale = 1.0
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.name = name
  c.data.image_size = size
  c.data.resize_size = resize
  c.data.eval_split = 'test'
  c.data.threads = 2
  for k, v in data.items():
    c.data[k] = v
  c.optim.batch_size = batch
  c.model.num_classes = 10
  return c


def _image(seed, mode='RGB', size=(40, 48)):
  rgb = np.random.default_rng(seed).integers(0, 255, size + (3,), np.uint8)
  return Image.fromarray(rgb).convert(mode)


def _save(path, image, fmt='JPEG'):
  buf = io.BytesIO()
  image.save(buf, fmt)
  path.write_bytes(buf.getvalue())
  return buf.getvalue()


@pytest.fixture(scope='module')
def bad_folder(tmp_path_factory):
  """A folder with every odd kind of file; 9 readable + 3 unreadable in
  test/, good images only in train/ (plus the same odd ones)."""
  root = tmp_path_factory.mktemp('bad_folder')
  for split in ('train', 'test'):
    for cls in ('cat', 'dog'):
      (root / split / cls).mkdir(parents=True)
    for i in range(3):
      _save(root / split / 'cat' / f'good{i}.jpg', _image(i))
      _save(root / split / 'dog' / f'good{i}.JPEG', _image(10 + i))
    _save(root / split / 'cat' / 'grey.jpg', _image(20, 'L'))
    _save(root / split / 'cat' / 'cmyk.jpg', _image(21, 'CMYK'))
    _save(root / split / 'dog' / 'png_named.jpg', _image(22, 'RGBA'), 'PNG')
    full = _save(root / split / 'dog' / 'truncated.jpg', _image(23))
    (root / split / 'dog' / 'truncated.jpg').write_bytes(full[: len(full) // 2])
    (root / split / 'cat' / 'notes.jpg').write_text('not an image')
    (root / split / 'cat' / 'empty.jpeg').write_bytes(b'')
    (root / split / 'cat' / 'README.txt').write_text('ignored: not .jpg')
  return root


BAD = ('notes.jpg', 'empty.jpeg', 'truncated.jpg')


def test_info_of_embedded_sample():
  info = input_pipeline.get_info(_config(f'folder:{MINI}'))
  assert info.class_names == CIFAR10
  assert info.num_classes == 10
  assert info.split_sizes == {'train': 1700, 'test': 340}


def test_train_batches_shapes_and_labels():
  c = _config(f'folder:{MINI}')
  batch = next(input_pipeline.train_iterator(c))
  assert batch['image'].shape == (8, 24, 24, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32
  assert set(batch['label']) <= set(range(10))


def test_train_is_a_pure_function_of_seed_and_step():
  c = _config(f'folder:{MINI}', batch=4)
  run = input_pipeline.train_iterator(c)
  batches = [next(run) for _ in range(6)]
  resumed = next(input_pipeline.train_iterator(c, start_step=4))
  np.testing.assert_array_equal(resumed['image'], batches[4]['image'])
  np.testing.assert_array_equal(resumed['label'], batches[4]['label'])
  again = next(input_pipeline.train_iterator(c))
  np.testing.assert_array_equal(again['image'], batches[0]['image'])
  c.train.seed = 1
  other = next(input_pipeline.train_iterator(c))
  assert not np.array_equal(other['image'], batches[0]['image'])


def test_each_epoch_is_a_new_permutation(bad_folder):
  """Over whole epochs every readable training image appears once."""
  c = _config(f'folder:{bad_folder}', batch=1)
  it = input_pipeline.train_iterator(c)
  # 12 listed files (3 unreadable, replaced by keyed draws): count labels
  # over one epoch of positions.
  labels = [int(next(it)['label'][0]) for _ in range(24)]
  assert len(labels) == 24 and set(labels) == {0, 1}
  assert labels[:12] != labels[12:]  # epochs are shuffled differently


def test_eval_counts_every_readable_image_once(bad_folder, caplog):
  c = _config(f'folder:{bad_folder}', batch=4)
  with caplog.at_level(logging.WARNING):
    batches = list(input_pipeline.eval_iterator(c, 'test'))
  # 12 image-named files, 3 unreadable: 9 readable -> 3 batches of 4, the
  # last padded (9 does not divide by 4).
  assert len(batches) == 3
  masks = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[masks]
  assert masks.sum() == 9
  assert sorted(labels.tolist()) == [0] * 5 + [1] * 4  # cat: 3+grey+cmyk
  assert all(b['image'].shape == (4, 24, 24, 3) for b in batches)
  assert not batches[-1]['image'][~batches[-1]['mask']].any()
  skipped = input_pipeline.skipped_files()
  # Named once each in the log, even over a second pass.
  list(input_pipeline.eval_iterator(c, 'test'))
  for path in (
      bad_folder / 'test' / 'cat' / 'notes.jpg',
      bad_folder / 'test' / 'cat' / 'empty.jpeg',
      bad_folder / 'test' / 'dog' / 'truncated.jpg',
  ):
    hits = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(hits) == 1, (path, [r.getMessage() for r in caplog.records])
    assert str(path) in skipped


def test_colour_modes_decode_like_pil(bad_folder):
  """Grey, CMYK and RGBA-PNG-named-.jpg files come out as RGB."""
  c = _config(
      f'folder:{bad_folder}', batch=16, size=32, resize=32, mean=(0.0, 0.0, 0.0)
  )
  batch = next(input_pipeline.eval_iterator(c, 'test'))
  images = batch['image'][batch['mask']]
  assert images.shape == (9, 32, 32, 3)
  paths = [
      p
      for p in folder_source.cached(str(bad_folder)).files('test')[0]
      if not p.endswith(BAD)
  ]
  for path, got in zip(paths, images):
    want = Image.open(path).convert('RGB')
    w, h = want.size
    s = min(w, h)
    want = (
        np.asarray(
            want.crop(
                ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            ).resize((32, 32), Image.BILINEAR)
        )
        / 255
    )
    assert np.abs(got - want).mean() < 0.03, path


def test_training_survives_unreadable_files(bad_folder, caplog):
  c = _config(f'folder:{bad_folder}', batch=6)
  it = input_pipeline.train_iterator(c)
  with caplog.at_level(logging.WARNING):
    batches = [next(it) for _ in range(8)]  # 4 epochs of 12 listed files
  assert all(b['image'].shape == (6, 24, 24, 3) for b in batches)
  for name in BAD:
    assert any(
        s.endswith(name) and os.sep + 'train' + os.sep in s
        for s in input_pipeline.skipped_files()
    ), name
  resumed = next(input_pipeline.train_iterator(c, start_step=5))
  np.testing.assert_array_equal(resumed['image'], batches[5]['image'])


def test_hosts_read_disjoint_parts(bad_folder):
  source = folder_source.cached(str(bad_folder))
  parts = [source.table('train', i, 3, False)[0] for i in range(3)]
  names = [set(p.names.numpy().tolist()) for p in parts]
  assert sum(len(n) for n in names) == 12
  assert len(set.union(*names)) == 12
  c = _config(f'folder:{bad_folder}', batch=4)
  counts, lengths = 0, set()
  for i in range(2):
    batches = list(
        input_pipeline.eval_iterator(
            c, 'test', process_index=i, process_count=2
        )
    )
    lengths.add(len(batches))
    counts += sum(b['mask'].sum() for b in batches)
    assert all(b['image'].shape[0] == 2 for b in batches)
  assert counts == 9 and len(lengths) == 1


def test_ten_crop_eval_shapes():
  c = _config(f'folder:{MINI}', batch=8)
  batch = next(input_pipeline.eval_iterator(c, 'test', crops=10))
  assert batch['image'].shape == (8, 10, 24, 24, 3)
  np.testing.assert_allclose(
      batch['image'][:, 5], batch['image'][:, 0, :, ::-1]
  )


def test_eval_with_a_checkpoint_preprocessing_dict():
  c = _config(f'folder:{MINI}', batch=4)
  base = next(input_pipeline.eval_iterator(c, 'test'))
  pre = input_pipeline.preprocessing_from_config(c)
  assert pre == dict(
      channel_order='RGB',
      pixel_scale=1.0,
      mean=list(c.data.mean),
      std=[1.0, 1.0, 1.0],
      image_size=24,
      resize_size=32,
      resize_method='area',
  )
  caffe = dict(
      pre, channel_order='BGR', pixel_scale=255.0, mean=[104.0, 117.0, 123.0]
  )
  got = next(input_pipeline.eval_iterator(c, 'test', preprocessing=caffe))
  rgb01 = base['image'] + np.asarray(c.data.mean, np.float32)
  want = rgb01[..., ::-1] * 255 - [104.0, 117.0, 123.0]
  np.testing.assert_allclose(got['image'], want, atol=1e-3)


def test_split_slices():
  sizes = {'train': 1000}
  assert splits.parse_split('train', sizes) == ('train', 0, 1000)
  assert splits.parse_split('train[:10%]', sizes) == ('train', 0, 100)
  assert splits.parse_split('train[-5:]', sizes) == ('train', 995, 1000)
  with pytest.raises(ValueError, match="'val' does not exist"):
    splits.parse_split('val', sizes)
  with pytest.raises(ValueError, match='not accepted'):
    splits.parse_split('train[1:2:3]', sizes)
  c = _config(f'folder:{MINI}', batch=7)
  batches = list(input_pipeline.eval_iterator(c, 'test[:10%]'))
  assert sum(b['mask'].sum() for b in batches) == 34


def test_fake_source():
  c = _config('fake', batch=4)
  info = input_pipeline.get_info(c)
  assert info.num_classes == 10
  batch = next(input_pipeline.train_iterator(c))
  assert batch['image'].shape == (4, 24, 24, 3)
  assert batch['label'].tolist() == [0, 1, 2, 3]


def test_bad_names_give_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a directory'):
    input_pipeline.get_info(_config(f'folder:{tmp_path}/missing'))
  (tmp_path / 'train').mkdir()
  with pytest.raises(FileNotFoundError, match='CLASS'):
    input_pipeline.get_info(_config(f'folder:{tmp_path}'))
  with pytest.raises(ValueError, match="split 'validation'"):
    next(input_pipeline.eval_iterator(_config(f'folder:{MINI}'), 'validation'))


def test_shared_cifar10_folder(shared_datasets):
  c = _config(f'folder:{shared_datasets / "cifar10"}', batch=50)
  info = input_pipeline.get_info(c)
  assert info.class_names == CIFAR10
  assert info.split_sizes == {'train': 50000, 'test': 10000}
  batches = list(input_pipeline.eval_iterator(c, 'test[:100]'))
  assert sum(b['mask'].sum() for b in batches) == 100
  assert next(input_pipeline.train_iterator(c))['image'].shape == (
      50,
      24,
      24,
      3,
  )


def test_shared_imagenet_samples_folder(shared_datasets):
  root = shared_datasets / 'imagenet-samples'
  c = _config(f'folder:{root}', batch=4, size=224, resize=256)
  info = input_pipeline.get_info(c)
  wnids = (
      (
          pathlib.Path(input_pipeline.__file__).parents[1]
          / 'assets'
          / 'imagenet_wnids.txt'
      )
      .read_text()
      .split()
  )
  assert info.class_names == tuple(wnids)
  batches = list(input_pipeline.eval_iterator(c, 'val[:6]'))
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  assert labels.tolist() == list(range(6))  # one photo per class, sorted
  assert batches[0]['image'].shape == (4, 224, 224, 3)


def test_device_prefetch_keeps_order_and_runs_ahead():
  placed = []

  def place(batch):
    placed.append(batch)
    return batch * 10

  out = input_pipeline.device_prefetch(iter(range(5)), place, size=2)
  assert next(out) == 0
  assert placed == [0, 1, 2]  # two batches in flight beyond the one yielded
  assert list(out) == [10, 20, 30, 40]


def test_mean_image_normalisation(tmp_path):
  mean_image = np.full((32, 32, 3), 0.25, np.float32)
  mean_image[:, :16] = 0.75  # left half brighter
  np.save(tmp_path / 'mean.npy', mean_image)
  c = _config(
      f'folder:{MINI}',
      batch=4,
      normalization='image',
      mean_image=str(tmp_path / 'mean.npy'),
  )
  pre = input_pipeline.preprocessing_from_config(c)
  assert pre['mean_image'] == str(tmp_path / 'mean.npy')
  assert pre['mean'] == [0.5, 0.5, 0.5]
  got = next(input_pipeline.eval_iterator(c, 'test'))['image']
  c0 = _config(f'folder:{MINI}', batch=4, mean=(0.0, 0.0, 0.0))
  pixels = next(input_pipeline.eval_iterator(c0, 'test'))['image']
  # The centre 24x24 crop of the mean image: columns 4..27, split at 16.
  want = pixels - mean_image[4:28, 4:28]
  np.testing.assert_allclose(got, want, atol=1e-5)
  c.data.mean_image = str(tmp_path / 'missing.npy')
  with pytest.raises(ValueError, match='data_stats'):
    input_pipeline.preprocessing_from_config(c)


def test_inception_crop_training():
  c = _config(f'folder:{MINI}', batch=4, train_crop='inception')
  batch = next(input_pipeline.train_iterator(c))
  assert batch['image'].shape == (4, 24, 24, 3)
  assert np.isfinite(batch['image']).all()
