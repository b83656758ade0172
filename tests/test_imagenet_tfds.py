"""The real TFDS `imagenet2012` builder, offline, on a tiny ILSVRC-2012-layout
archive made from the shared imagenet-samples photos (conftest)."""

import io
import os
import pathlib
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import prepare_data
from alexnet_jax import prepare_imagenet
from alexnet_jax.configs import paper
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import preprocess
from alexnet_jax.core import tfds_source

WNIDS = (
    (
        pathlib.Path(input_pipeline.__file__).parents[1]
        / 'assets'
        / 'imagenet_wnids.txt'
    )
    .read_text()
    .split()
)
TRAIN_WNIDS = ('n01440764', 'n01443537', 'n15075141')
NUM_VAL = 4
# TFDS pairs the sorted validation file names, by position, with this file.
VAL_LABELS = (
    (
        pathlib.Path(tfds.__file__).parent
        / 'datasets'
        / 'imagenet2012'
        / 'validation_labels.txt'
    )
    .read_text()
    .split()
)


def _photo(samples, wnid):
  (path,) = (samples / wnid).iterdir()
  return path.read_bytes()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _train_tar(manual, samples):
  """ILSVRC2012_img_train.tar: one tar per class, WNID_N.JPEG inside."""
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as outer:
    for wnid in TRAIN_WNIDS:
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode='w') as inner:
        for i in (1, 2):
          _add(inner, f'{wnid}_{i}.JPEG', _photo(samples, wnid))
      _add(outer, f'{wnid}.tar', buf.getvalue())


def _val_tar(manual, samples):
  """ILSVRC2012_img_val.tar: ILSVRC2012_val_0000000K.JPEG, flat; photo K is
  of the class on line K of TFDS's validation label file."""
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as tar:
    for k in range(NUM_VAL):
      _add(
          tar,
          f'ILSVRC2012_val_{k + 1:08d}.JPEG',
          _photo(samples, VAL_LABELS[k]),
      )


def _config(data_dir, **data):
  c = paper.get_config()
  c.data.data_dir = str(data_dir)
  c.data.threads = 2
  c.data.shuffle_buffer = 8
  c.data.image_size, c.data.resize_size = 64, 72  # small and fast
  for k, v in data.items():
    c.data[k] = v
  c.optim.batch_size = 3
  return c


@pytest.fixture(scope='module')
def prepared(shared_datasets, tmp_path_factory):
  samples = shared_datasets / 'imagenet-samples' / 'val'
  root = tmp_path_factory.mktemp('imagenet')
  manual = root / 'manual'
  manual.mkdir()
  _train_tar(manual, samples)
  _val_tar(manual, samples)
  sizes = prepare_imagenet.prepare(str(root / 'data'), str(manual))
  return root / 'data', sizes, samples


def test_builder_prepares_both_splits(prepared):
  data_dir, sizes, _ = prepared
  assert sizes['train'] == 2 * len(TRAIN_WNIDS)
  assert sizes['validation'] == NUM_VAL
  info = input_pipeline.get_info(_config(data_dir))
  assert info.class_names == tuple(WNIDS)
  assert info.num_classes == 1000


@pytest.mark.parametrize('cache', [False, True])
def test_labels_and_images_match_the_photos(prepared, cache):
  data_dir, _, samples = prepared
  c = _config(data_dir, cache=cache)
  batches = list(input_pipeline.eval_iterator(c, 'validation'))
  assert len(batches) == 2  # 4 examples at batch 3: the last padded
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[mask]
  images = np.concatenate([b['image'] for b in batches])[mask]
  want = sorted(WNIDS.index(w) for w in VAL_LABELS[:NUM_VAL])
  assert sorted(labels.tolist()) == want
  # Each image is the photo of its label's class.
  params = input_pipeline._params(c)
  for label, image in zip(labels, images):
    photo = _photo(samples, WNIDS[label])
    want = preprocess.eval_image(tf.constant(photo), params).numpy()
    np.testing.assert_allclose(image, want, atol=1e-5)
  # Training sees every example once per epoch, exactly resumable.
  train = input_pipeline.train_iterator(c)
  epoch = np.concatenate([next(train)['label'] for _ in range(2)])
  assert sorted(epoch.tolist()) == sorted(
      WNIDS.index(w) for w in TRAIN_WNIDS for _ in (1, 2)
  )
  more = [next(train) for _ in range(3)]
  resumed = next(input_pipeline.train_iterator(c, start_step=3))
  np.testing.assert_array_equal(resumed['image'], more[1]['image'])


def test_not_prepared_names_the_archives_and_command(tmp_path):
  with pytest.raises(tfds_source.DataNotReadyError) as e:
    input_pipeline.get_info(_config(tmp_path / 'none'))
  text = str(e.value)
  for needle in (
      'ILSVRC2012_img_train.tar',
      'ILSVRC2012_img_val.tar',
      'python -m alexnet_jax.prepare_imagenet',
      os.path.join(str(tmp_path / 'none'), 'downloads', 'manual'),
  ):
    assert needle in text


def test_half_prepared_is_one_clear_error(shared_datasets, tmp_path):
  samples = shared_datasets / 'imagenet-samples' / 'val'
  manual = tmp_path / 'manual'
  manual.mkdir()
  _val_tar(manual, samples)
  # Our command refuses to build from one archive...
  with pytest.raises(
      tfds_source.DataNotReadyError, match='ILSVRC2012_img_train.tar not found'
  ):
    prepare_imagenet.prepare(str(tmp_path / 'data'), str(manual))
  # ...but TFDS itself builds whichever split it finds.
  tfds.builder(
      'imagenet2012', data_dir=str(tmp_path / 'data')
  ).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
  )
  with pytest.raises(tfds_source.DataNotReadyError) as e:
    input_pipeline.get_info(_config(tmp_path / 'data', manual_dir=str(manual)))
  text = str(e.value)
  assert 'half-prepared' in text and "['train']" in text
  assert f'--manual_dir={manual}' in text
  assert 'ILSVRC2012_img_train.tar' in text
  # With both archives, the command rebuilds it whole.
  _train_tar(manual, samples)
  sizes = prepare_imagenet.prepare(str(tmp_path / 'data'), str(manual))
  assert sizes['train'] == 2 * len(TRAIN_WNIDS)
  assert sizes['validation'] == NUM_VAL
  info = input_pipeline.get_info(_config(tmp_path / 'data'))
  assert info.split_sizes['train'] == 2 * len(TRAIN_WNIDS)


def test_stream_record_names(prepared):
  """Unreadable records of a TFDS stream are named SHARD#INDEX."""
  data_dir, _, _ = prepared
  source = tfds_source.TfdsSource(_config(data_dir))
  _, names_of, size, total = source.eval_stream('validation', 0, 1)
  assert size == total == NUM_VAL
  names = [
      n.decode() for n in names_of(tf.range(NUM_VAL, dtype=tf.int64)).numpy()
  ]
  shards = source.builder.info.splits['validation'].filenames
  want = (
      [
          f'{os.path.join(source.builder.data_dir, shards[0])}#{i}'
          for i in range(NUM_VAL)
      ]
      if len(shards) == 1
      else None
  )
  if want is not None:
    assert names == want
  assert all('validation.tfrecord' in n for n in names)


def test_prepare_data_from_tfds(prepared, tmp_path):
  """prepare_data reads a TFDS dataset: both splits, labels and file names
  kept, and training reads the result."""
  data_dir, sizes, _ = prepared
  out = tmp_path / 'prepared'
  argv = [
      '--data=imagenet2012:5.*.*',
      f'--data_dir={data_dir}',
      f'--out={out}',
      '--resize_size=72',
      '--storage=raw',
  ]
  assert prepare_data.main(argv) == 0
  c = _config(data_dir, name=f'prepared:{out}')
  info = input_pipeline.get_info(c)
  assert info.split_sizes == {
      'train': sizes['train'],
      'validation': sizes['validation'],
  }
  assert info.class_names == tuple(WNIDS)
  batches = list(input_pipeline.eval_iterator(c, 'validation'))
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[mask]
  want = sorted(WNIDS.index(w) for w in VAL_LABELS[:NUM_VAL])
  assert sorted(labels.tolist()) == want
  with np.load(out / 'validation.index.npz') as index:
    assert all(n.endswith('.JPEG') for n in index['names'])
  assert next(input_pipeline.train_iterator(c))['image'].shape == (3, 64, 64, 3)
