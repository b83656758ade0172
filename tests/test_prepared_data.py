"""prepare_data.py and prepared_source.py: the prepared dataset, its crops
against a NumPy/PIL reference, exact resume, hosts, safety."""

import io
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax import prepare_data
from alexnet_jax.configs import paper
from alexnet_jax.core import config_checks
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import prepared_source
from alexnet_jax.core import preprocess

SIZE, RESIZE = 48, 64  # crop and stored square of these tests
BAD = ('truncated.jpg', 'empty.jpeg')


def _photo(seed, shape):
  """A smooth random photo (JPEG-friendly, so decode paths agree)."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
  return np.asarray(
      Image.fromarray(small).resize(shape[::-1], Image.BILINEAR), np.uint8
  )


def _jpeg(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'JPEG', quality=95)
  return buf.getvalue()


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """ROOT/{train,test}/{cat,dog}/: photos of several shapes (landscape,
  portrait, square) and, in train, a truncated and an empty JPEG."""
  root = tmp_path_factory.mktemp('photos')
  shapes = [(150, 200), (210, 140), (130, 130), (97, 181)]
  for split, count in (('train', 5), ('test', 3)):
    for c, cls in enumerate(('cat', 'dog')):
      (root / split / cls).mkdir(parents=True)
      for i in range(count):
        photo = _photo(100 * c + i, shapes[(i + c) % len(shapes)])
        (root / split / cls / f'{i}.jpg').write_bytes(_jpeg(photo))
  good = _jpeg(_photo(99, (120, 160)))
  (root / 'train' / 'dog' / 'truncated.jpg').write_bytes(good[: len(good) // 3])
  (root / 'train' / 'cat' / 'empty.jpeg').write_bytes(b'')
  return root


def _prepare(root, out, *extra):
  argv = [
      f'--data=folder:{root}',
      f'--out={out}',
      '--splits=train,test',
      f'--resize_size={RESIZE}',
      '--images_per_shard=4',
      '--threads=2',
      *extra,
  ]
  return prepare_data.main(argv)


@pytest.fixture(scope='module')
def raw(photos, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'raw'
  assert _prepare(photos, out, '--storage=raw') == 0
  return out


@pytest.fixture(scope='module')
def jpeg(photos, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'jpeg'
  assert _prepare(photos, out, '--storage=jpeg', '--quality=95') == 0
  return out


def _config(out, lighting=0.0, **data):
  c = paper.get_config()
  c.data.name = f'prepared:{out}'
  c.data.image_size = SIZE
  c.data.resize_size = RESIZE
  c.data.eval_split = 'test'
  c.data.threads = 2
  c.data.lighting.std = lighting
  c.data.mean = (0.0, 0.0, 0.0)
  for k, v in data.items():
    c.data[k] = v
  c.optim.batch_size = 4
  c.model.num_classes = 2
  return c


# ---------------------------------------------------------------- reference


def _area_weights(n_in, n_out):
  """[n_out, n_in]: each output pixel's share of every input pixel (a box
  filter over its footprint, what tf.image.resize's 'area' computes)."""
  scale = n_in / n_out
  w = np.zeros((n_out, n_in))
  for i in range(n_out):
    lo, hi = i * scale, (i + 1) * scale
    for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
      w[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
  return w


def reference_square(path, size):
  """The paper's preparation in NumPy and PIL: decode, centre square of the
  shorter side, area-resize to size x size, round to uint8."""
  image = np.asarray(Image.open(path).convert('RGB'), np.float64)
  h, w = image.shape[:2]
  s = min(h, w)
  square = image[
      (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s
  ]
  weights = _area_weights(s, size)
  out = np.einsum('ij,jkc->ikc', weights, square)  # rows, then columns
  out = np.einsum('lk,ikc->ilc', weights, out)
  return np.clip(np.round(out), 0, 255)


def _records(out, split):
  meta = prepared_source.read_metadata(str(out))
  source = prepared_source.PreparedSource(str(out))
  read, indices, labels, names, _ = source.host_records(split, 0, 1, True)
  images, got = read(tf.constant(indices))
  return meta, images.numpy(), got.numpy(), labels, names


# -------------------------------------------------------------------- tests


def test_prepared_dataset_counts_names_checksums(raw, photos):
  meta = json.loads((raw / 'dataset.json').read_text())
  assert meta['storage'] == 'raw' and meta['resize_size'] == RESIZE
  train = meta['splits']['train']
  assert train['num_examples'] == 10 and train['class_counts'] == [5, 5]
  assert sorted(os.path.basename(n) for n in train['skipped']) == sorted(BAD)
  assert len(train['shards']) == 3  # 12 source images, 4 per shard
  assert meta['splits']['test']['class_counts'] == [3, 3]
  assert (raw / 'mean_image.npy').exists()
  stats = json.loads((raw / 'stats.json').read_text())
  assert stats['num_images'] == 10
  assert prepare_data.verify(str(raw))['splits'] == meta['splits']
  # The records hold labels and file names, in the index's order.
  _, images, labels, index_labels, names = _records(raw, 'train')
  assert labels.tolist() == index_labels.tolist()
  assert len(set(names.tolist())) == 10
  assert images.shape == (10, RESIZE, RESIZE, 3) and images.dtype == np.uint8
  assert (raw / 'train-00000-of-00003.raw').stat().st_size == 4 * RESIZE**2 * 3


def test_stored_squares_match_numpy_pil_reference(raw):
  _, images, _, _, names = _records(raw, 'test')
  for stored, name in zip(images, names):
    want = reference_square(name, RESIZE)
    assert np.abs(stored.astype(float) - want).max() <= 1, name


def test_ten_and_centre_crops_match_reference(raw):
  params = preprocess.Params(
      image_size=SIZE, resize_size=RESIZE, mean=(0.0, 0.0, 0.0)
  )
  _, images, _, _, names = _records(raw, 'test')
  for stored, name in zip(images[:3], names[:3]):
    want = reference_square(name, RESIZE) / 255.0
    crops = preprocess.eval_stored(tf.constant(stored), params, 'raw', 10)
    offsets = preprocess.ten_crop_offsets(RESIZE, SIZE)
    for k, (y, x) in enumerate(offsets):
      ref = want[y : y + SIZE, x : x + SIZE]
      assert np.abs(crops[k].numpy() - ref).max() <= 1 / 255 + 1e-6
      assert np.abs(crops[k + 5].numpy() - ref[:, ::-1]).max() <= 1 / 255 + 1e-6
    # The 10 crops are today's ten_crop of the same square.
    today = preprocess.ten_crop(tf.constant(stored, tf.float32), params, 255.0)
    np.testing.assert_array_equal(crops.numpy(), today.numpy())
    centre = preprocess.eval_stored(tf.constant(stored), params, 'raw', 1)
    np.testing.assert_array_equal(centre.numpy(), crops[4].numpy())


def test_training_crops_match_reference(raw):
  params = preprocess.Params(
      image_size=SIZE, resize_size=RESIZE, mean=(0.0, 0.0, 0.0), lighting_std=0
  )
  _, images, _, _, names = _records(raw, 'test')
  for i, (stored, name) in enumerate(zip(images, names)):
    seed = tf.constant([7, i], tf.int64)
    crop_seed, flip_seed, _ = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    y, x = preprocess.train_crop_offset(crop_seed, params).numpy()
    ref = reference_square(name, RESIZE)[y : y + SIZE, x : x + SIZE] / 255.0
    if tf.random.stateless_uniform([], flip_seed) < 0.5:
      ref = ref[:, ::-1]
    got = preprocess.train_stored(tf.constant(stored), seed, params, 'raw')
    assert np.abs(got.numpy() - ref).max() <= 1 / 255 + 1e-6
    uint8 = preprocess.train_stored_uint8(
        tf.constant(stored), seed, params, 'raw'
    )
    np.testing.assert_allclose(uint8.numpy() / 255.0, got.numpy(), atol=1e-6)


def test_jpeg_storage_within_jpeg_error_of_raw(jpeg, raw):
  _, jpegs, jl, _, _ = _records(jpeg, 'test')
  _, raws, rl, _, _ = _records(raw, 'test')
  assert jl.tolist() == rl.tolist()
  params = preprocess.Params(image_size=SIZE, resize_size=RESIZE)
  for j, r in zip(jpegs, raws):
    a = preprocess.eval_stored(tf.constant(j), params, 'jpeg', 10).numpy()
    b = preprocess.eval_stored(tf.constant(r), params, 'raw', 10).numpy()
    # JPEG's error in levels (2.6 at quality 95 on ImageNet photos; these
    # small, saturated squares lose more to 4:2:0 chroma).
    assert np.abs(a - b).mean() * 255 < 4


@pytest.mark.parametrize('cache', [True, False])
def test_exact_resume_and_hosts(raw, cache):
  config = _config(raw, lighting=0.1, cache=cache)
  it = input_pipeline.train_iterator(config)
  run = [next(it) for _ in range(6)]  # 24 images: over two epochs of 10
  resumed = input_pipeline.train_iterator(config, start_step=4)
  for k in (4, 5):
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], run[k]['image'])
    np.testing.assert_array_equal(got['label'], run[k]['label'])
  # Each epoch is a permutation of the 10 records.
  epoch = np.concatenate([b['image'] for b in run])[:10]
  assert len({e.tobytes() for e in epoch}) == 10
  # Two hosts: half batches of disjoint records.
  hosts = [
      next(
          input_pipeline.train_iterator(
              config, process_index=h, process_count=2
          )
      )
      for h in (0, 1)
  ]
  assert all(len(h['label']) == 2 for h in hosts)
  source = prepared_source.PreparedSource(str(raw))
  blocks = [source.host_records('train', h, 3, cache)[1] for h in range(3)]
  np.testing.assert_array_equal(np.concatenate(blocks), np.arange(10))
  # Evaluation: every example once over the hosts, each host padded alike.
  per_host = [
      list(
          input_pipeline.eval_iterator(
              config, 'test', process_index=h, process_count=2
          )
      )
      for h in (0, 1)
  ]
  assert len(per_host[0]) == len(per_host[1])
  assert sum(b['mask'].sum() for h in per_host for b in h) == 6


@pytest.mark.parametrize('storage', ['raw', 'jpeg'])
def test_cached_and_streamed_reads_agree(raw, jpeg, storage):
  out = raw if storage == 'raw' else jpeg
  a = next(input_pipeline.train_iterator(_config(out, cache=True)))
  b = next(input_pipeline.train_iterator(_config(out, cache=False)))
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  e = list(input_pipeline.eval_iterator(_config(out, cache=False), 'test'))
  assert sum(b['mask'].sum() for b in e) == 6


def test_eval_visits_each_example_once(raw):
  config = _config(raw)
  batches = list(input_pipeline.eval_iterator(config, 'test'))
  assert sum(b['mask'].sum() for b in batches) == 6
  ten = list(input_pipeline.eval_iterator(config, 'test', crops=10))
  assert ten[0]['image'].shape == (4, 10, SIZE, SIZE, 3)
  info = input_pipeline.get_info(config)
  assert info.class_names == ('cat', 'dog')
  assert info.split_sizes == {'train': 10, 'test': 6}


def test_refuses_to_overwrite_and_checks_settings(raw, photos, tmp_path):
  with pytest.raises(SystemExit, match='already holds a finished'):
    _prepare(photos, raw, '--storage=raw')
  out = tmp_path / 'split'
  # Two processes: the first leaves the dataset unfinished...
  assert _prepare(photos, out, '--process_count=2', '--process_index=0') == 0
  assert not (out / 'dataset.json').exists()
  with pytest.raises(prepared_source.NotPreparedError, match='resume'):
    prepared_source.read_metadata(str(out))
  # ... other settings are refused ...
  with pytest.raises(SystemExit, match='other settings'):
    _prepare(
        photos, out, '--quality=80', '--process_count=2', '--process_index=1'
    )
  # ... a killed shard (a .tmp file, a corrupt finished shard) is redone ...
  done = sorted(out.glob('*.done.json'))
  shard = out / json.loads(done[0].read_text())['file']
  shard.write_bytes(b'corrupt')
  (out / 'test-00000-of-00002.array_record.tmp').write_bytes(b'partial')
  assert _prepare(photos, out, '--process_count=2', '--process_index=1') == 0
  assert not (out / 'dataset.json').exists()  # process 0's shard is corrupt
  assert _prepare(photos, out, '--process_count=2', '--process_index=0') == 0
  meta = prepare_data.verify(str(out))
  assert meta['splits']['train']['num_examples'] == 10
  shard.write_bytes(b'corrupt')
  with pytest.raises(prepare_data.PrepareError, match='SHA-256'):
    prepare_data.verify(str(out))


def test_renamed_and_sliced_splits(photos, tmp_path):
  out = tmp_path / 'renamed'
  argv = [
      f'--data=folder:{photos}',
      f'--out={out}',
      '--splits=train=test[:4],validation=test[4:]',
      f'--resize_size={RESIZE}',
      '--storage=raw',
  ]
  assert prepare_data.main(argv) == 0
  meta = prepared_source.read_metadata(str(out))
  assert {k: v['num_examples'] for k, v in meta['splits'].items()} == {
      'train': 4,
      'validation': 2,
  }
  assert meta['splits']['train']['class_counts'] == [2, 2]
  with pytest.raises(SystemExit, match='does not exist'):
    prepare_data.main(argv[:1] + [f'--out={tmp_path}/x', '--splits=a=nope'])


def test_config_errors(raw):
  config = _config(raw)
  config.data.name = 'prepared:'
  with pytest.raises(config_checks.ConfigError, match='needs a path'):
    config_checks.check_data(config)
  config = _config(raw, train_crop='inception')
  with pytest.raises(config_checks.ConfigError, match='full photo'):
    config_checks.check_data(config)
  with pytest.raises(ValueError, match='resize_size=72 must match'):
    input_pipeline.get_info(_config(raw, resize_size=72))
  with pytest.raises(FileNotFoundError, match='prepare_data'):
    input_pipeline.get_info(_config(str(raw) + '_missing'))


def test_shared_imagenet_photos_match_reference(shared_datasets, tmp_path):
  """Real ImageNet photos (colour and greyscale JPEGs of many sizes),
  prepared at 256: every stored square within 1 level of NumPy/PIL's."""
  out = tmp_path / 'imagenet'
  argv = [
      f'--data=folder:{shared_datasets / "imagenet-samples"}',
      f'--out={out}',
      '--splits=train=val[:24]',
      '--storage=raw',
      '--threads=2',
  ]
  assert prepare_data.main(argv) == 0
  source = prepared_source.PreparedSource(str(out))
  read, indices, _, names, _ = source.host_records('train', 0, 1, False)
  images, _ = read(tf.constant(indices))
  assert len(names) == 24
  for stored, name in zip(images.numpy(), names):
    want = reference_square(name, 256)
    assert np.abs(stored.astype(float) - want).max() <= 1, name


def test_benchmark_input_formats_runs(photos, tmp_path, capsys):
  """`benchmark input --formats` on a tiny folder: one JSON line per format
  and augmentation, uint8 batches for device/host, ratios to original."""
  from alexnet_jax.benchmarks import harness  # pylint: disable=g-import-not-at-top
  from alexnet_jax.benchmarks import input as input_bench  # pylint: disable=g-import-not-at-top

  args = harness.defaults(input_bench.define_flags)
  args.data, args.split = str(photos), 'test'
  args.formats = 'original,raw256,jpeg256'
  args.workers, args.repeats, args.epochs, args.batch = '1', 1, 2.0, 2
  args.image_size, args.resize_size = SIZE, RESIZE
  args.json = str(tmp_path / 'out.jsonl')
  rows = input_bench.run(args)
  assert {(r['format'], r['augment']) for r in rows} == {
      (f, a)
      for f in ('original', 'raw256', 'jpeg256')
      for a in ('device', 'host', 'host_float')
  }
  for r in rows:
    side = RESIZE if r['augment'] == 'device' else SIZE
    bytes_per_value = 4 if r['augment'] == 'host_float' else 1
    assert r['batch_bytes_per_img'] == side * side * 3 * bytes_per_value
    assert r['img_per_cpu_s'] > 0 and 'vs_original' in r
  assert len((tmp_path / 'out.jsonl').read_text().splitlines()) == 9
  assert '| raw256 | device |' in capsys.readouterr().out


@pytest.fixture(scope='module')
def smoke_raw(photos, tmp_path_factory):
  """The photos prepared at the smoke config's geometry (72, crops of 64)."""
  out = tmp_path_factory.mktemp('prepared') / 'smoke'
  argv = [
      f'--data=folder:{photos}',
      f'--out={out}',
      '--splits=train,test',
      '--resize_size=72',
      '--threads=2',
      '--storage=raw',
  ]
  assert prepare_data.main(argv) == 0
  return out


# ~2 min each (three trainer runs): the host setting runs with -m slow.
@pytest.mark.parametrize(
    'augment', [pytest.param('host', marks=pytest.mark.slow), 'device']
)
def test_training_from_uint8_batches_resumes_exactly(
    smoke_raw, augment, tmp_path
):
  """The trainer on a prepared dataset: uint8 batches (crops or squares),
  lighting and normalisation in the step; a run stopped at step 3 and
  resumed ends in the parameters of an uninterrupted run."""
  from alexnet_jax.core import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import train  # pylint: disable=g-import-not-at-top
  from helpers.smoke import tiny_config  # pylint: disable=g-import-not-at-top

  def config(steps):
    return tiny_config(
        **{
            'data.name': f'prepared:{smoke_raw}',
            'data.augment': augment,
            'data.lighting.std': 0.1,
            'model.num_classes': 2,
            'optim.batch_size': 4,
            'train.num_train_steps': steps,
            'train.eval_every_steps': 3,
            'train.checkpoint_every_steps': 3,
        }
    )

  it = input_pipeline.train_iterator(config(6))
  batch = next(it)
  side = 64 if augment == 'host' else 72
  assert batch['image'].dtype == np.uint8
  assert batch['image'].shape == (4, side, side, 3)
  assert ('window' in batch) == (augment == 'host')
  train.train_and_evaluate(config(6), tmp_path / 'straight')
  train.train_and_evaluate(config(3), tmp_path / 'resumed')
  train.train_and_evaluate(config(6), tmp_path / 'resumed')
  want = checkpoint.load(tmp_path / 'straight')[1]['params']
  got = checkpoint.load(tmp_path / 'resumed')[1]['params']
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
