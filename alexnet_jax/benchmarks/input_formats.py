"""Host cost of training input per storage format: `benchmark input --formats`.

    python -m alexnet_jax.benchmark input --formats=original,jpeg256,raw256 \
        [--data=ROOT] [--workers=1,2] [--augment=device,host,host_float]

Formats: `original` reads the photos of ROOT/SPLIT as they are; `jpeg256`
and `raw256` are ROOT prepared by `alexnet_jax.prepare_data` (JPEG at its
default quality, or raw uint8; --resize_size squares) into a temporary
folder before any timing. Each measurement runs the training stream of
input_pipeline's order (index_shuffle per epoch, keys from (seed, p)) on
tf.data with `workers` threads and counts the CPU-seconds of the whole
process (tf.data's threads; the main thread only takes the batches) per
image delivered:

  device      uint8 batches ready to copy, crop and flip left to the device:
              the prepared square (original: the photo's centre square,
              decoded at the smallest DCT scale and resized);
  host        uint8 batches of the random image_size crop, flipped (original:
              the crop window decoded and resized, as training does);
  host_float  crop, flip, PCA lighting and normalisation all on the host,
              float32 batches: what training feeds from the original images
              (a prepared dataset's training now feeds `host` or `device`).

`device_us_per_img` is measured apart: the jitted crop, flip, lighting and
normalisation of a uint8 batch on this process's first JAX device
(core/device_augment.py), per image. Each JSON line has format, augment,
workers, img_per_cpu_s, vs_original (same augment and workers, same run),
cores_per_1000_img_s and bytes_per_img (stored) and batch_bytes_per_img
(what crosses to the device).
"""

import os
import shutil
import tempfile
import time

import numpy as np

from alexnet_jax.benchmarks import harness
from alexnet_jax.configs import paper
from alexnet_jax.core import paths as paths_lib

FORMATS = ('original', 'jpeg256', 'raw256')
AUGMENTS = ('device', 'host', 'host_float')


def _prepare(args, fmt, tmp):
  """Prepares args.data's split into tmp (untimed); returns the folder."""
  from alexnet_jax import prepare_data  # pylint: disable=g-import-not-at-top

  out = os.path.join(tmp, fmt)
  storage = 'jpeg' if fmt.startswith('jpeg') else 'raw'
  code = prepare_data.main(
      [
          f'--data=folder:{args.data}',
          f'--out={out}',
          f'--splits=train={args.split}',
          f'--storage={storage}',
          f'--resize_size={args.resize_size}',
      ]
  )
  if code:
    raise RuntimeError(f'prepare_data failed for {fmt}')
  return out


def _stored_bytes(folder):
  from alexnet_jax.core import prepared_source  # pylint: disable=g-import-not-at-top

  meta = prepared_source.read_metadata(folder)
  split = meta['splits']['train']
  size = sum(
      os.path.getsize(os.path.join(folder, s['file'])) for s in split['shards']
  )
  return size / split['num_examples']


def _config(args, fmt, workers, folder):
  c = paper.get_config()
  c.data.name = f'prepared:{folder}' if folder else f'folder:{args.data}'
  c.data.train_split = 'train' if folder else args.split
  c.data.image_size = args.image_size
  c.data.resize_size = args.resize_size
  c.data.threads = workers
  c.optim.batch_size = args.batch
  return c


def _dataset(config, augment, fmt):
  """The host's training stream for one setting, batched."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from alexnet_jax.core import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import prepared_source  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import preprocess  # pylint: disable=g-import-not-at-top

  if augment == 'host_float' and fmt == 'original':
    return input_pipeline.train_dataset(config)  # what training feeds
  # pylint: disable=protected-access
  params = input_pipeline._params(config)
  seed, threads = config.train.seed, config.data.threads
  key = lambda p: input_pipeline._fold(input_pipeline._base_key(seed, 0, 3), p)
  shuffle = lambda e: input_pipeline._fold(
      input_pipeline._base_key(seed, 0, 1), e
  )
  source = input_pipeline.source(config)
  if fmt == 'original':
    table, _ = source.table(config.data.train_split, 0, 1, False)
    n = table.size

    def locate(p):
      i = tf.random.experimental.index_shuffle(p % n, shuffle(p // n), n - 1)
      return dict(image=table.read(tf.cast(i, tf.int64)), position=p)

    ds = tf.data.Dataset.range(np.iinfo(np.int64).max).map(
        input_pipeline._plain(locate)
    )
    size, big = params.image_size, params.resize_size

    def original(ex):
      if augment == 'device':
        square, _, _ = preprocess.decode_window(
            ex['image'], preprocess.centre_square, min_size=big
        )
        image = preprocess.resize(square, big, params.resize_method)
      else:
        crop_seed, flip_seed, _ = tf.unstack(
            tf.random.experimental.stateless_split(key(ex['position']), 3)
        )
        crop, _, _ = preprocess.decode_window(
            ex['image'],
            lambda s: preprocess.paper_window(s, size, big, crop_seed),
            min_size=size,
        )
        image = preprocess.flip(
            preprocess.resize(crop, size, params.resize_method), flip_seed
        )
      return tf.cast(tf.round(image), tf.uint8)

    fn = original
  else:
    ds = prepared_source.train_examples(
        source, 'train', shuffle, 0, 0, 1, False, threads
    )

    def fn(ex):
      if augment == 'host_float':  # all on the host, float32 (the old way)
        return preprocess.train_stored(
            ex['image'], key(ex['position']), params, source.storage
        )
      if augment == 'device':
        return preprocess.stored_square(
            ex['image'], source.storage, params.resize_size
        )
      return preprocess.train_stored_uint8(
          ex['image'], key(ex['position']), params, source.storage
      )

  ds = ds.map(
      input_pipeline._plain(fn), num_parallel_calls=threads, deterministic=True
  )
  options = input_pipeline._options(config)
  # pylint: enable=protected-access
  return ds.batch(config.optim.batch_size).prefetch(2).with_options(options)


def _measure(args, fmt, augment, workers, folder, n_images):
  config = _config(args, fmt, workers, folder)
  it = _dataset(config, augment, fmt).as_numpy_iterator()
  first = next(it)
  next(it)  # start-up: tracing, first reads and decodes
  images = first['image'] if isinstance(first, dict) else first
  steps = max(1, round(n_images / args.batch))
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  n = steps * args.batch
  return dict(
      img_per_s=n / wall,
      img_per_cpu_s=n / cpu,
      batch_bytes_per_img=int(images[0].nbytes),
      batch_dtype=str(images.dtype),
  )


def _device_us_per_img(args):
  """Device time per image of the augmentation left to the device."""
  import jax  # pylint: disable=g-import-not-at-top

  from alexnet_jax.core import device_augment  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import input_pipeline  # pylint: disable=g-import-not-at-top

  config = _config(args, 'raw256', 1, None)
  params = input_pipeline._params(config)  # pylint: disable=protected-access
  out = {}
  big, size = args.resize_size, args.image_size
  for augment, side in (('device', big), ('host', size)):
    fn = jax.jit(
        lambda x, step: device_augment.augment(
            x, params, seed=0, step=step, crop=augment == 'device'
        )
    )
    x = jax.device_put(
        np.random.default_rng(0).integers(
            0, 256, (args.batch, side, side, 3), np.uint8
        )
    )
    fn(x, 0).block_until_ready()
    best = float('inf')
    for step in range(1, 6):
      t = time.perf_counter()
      fn(x, step).block_until_ready()
      best = min(best, time.perf_counter() - t)
    out[augment] = best / args.batch * 1e6
  return out


def run(args, formats):
  paths_lib.set_data_root(args.data_root)
  rows = []
  tmp = tempfile.mkdtemp(prefix='alexnet_input_formats_')
  try:
    folders, stored = {}, {}
    for fmt in formats:
      if fmt == 'original':
        folders[fmt] = None
        files = [
            os.path.join(d, f)
            for d, _, fs in os.walk(os.path.join(args.data, args.split))
            for f in fs
        ]
        stored[fmt] = sum(os.path.getsize(f) for f in files) / len(files)
      else:
        folders[fmt] = _prepare(args, fmt, tmp)
        stored[fmt] = _stored_bytes(folders[fmt])
    n_sources = len(
        [
            f
            for _, _, fs in os.walk(os.path.join(args.data, args.split))
            for f in fs
        ]
    )
    n_images = int(n_sources * args.epochs)
    try:
      device_us = _device_us_per_img(args)
    except ImportError:
      device_us = {}
    augments = args.augment.split(',')
    load_before = harness.load()
    for workers in [int(w) for w in str(args.workers).split(',')]:
      best = {}
      for _ in range(args.repeats):  # interleaved: load drifts on a shared host
        for fmt in formats:
          for augment in augments:
            m = _measure(args, fmt, augment, workers, folders[fmt], n_images)
            b = best.setdefault((fmt, augment), dict(m, runs=[]))
            b['runs'].append(round(m['img_per_cpu_s'], 1))
            for k in ('img_per_s', 'img_per_cpu_s'):
              b[k] = max(b[k], m[k])
      for (fmt, augment), m in best.items():
        rows.append(
            dict(
                bench='input_formats',
                format=fmt,
                augment=augment,
                workers=workers,
                img_per_cpu_s=round(m['img_per_cpu_s'], 1),
                img_per_cpu_s_runs=m['runs'],
                img_per_s=round(m['img_per_s'], 1),
                cores_per_1000_img_s=round(1000 / m['img_per_cpu_s'], 3),
                bytes_per_img=round(stored[fmt]),
                batch_bytes_per_img=m['batch_bytes_per_img'],
                batch_dtype=m['batch_dtype'],
                device_us_per_img=(
                    None
                    if augment == 'host_float'
                    else round(device_us.get(augment, float('nan')), 1)
                ),
                images=n_images,
                repeats=args.repeats,
                batch=args.batch,
                image_size=args.image_size,
                resize_size=args.resize_size,
                data=paths_lib.portable(args.data),
            )
        )
    for row in rows:
      peer = [
          r
          for r in rows
          if r['format'] == 'original'
          and r['augment'] == row['augment']
          and r['workers'] == row['workers']
      ]
      if peer:
        row['vs_original'] = round(
            row['img_per_cpu_s'] / peer[0]['img_per_cpu_s'], 2
        )
      row['load_avg'] = [load_before, harness.load()]
      harness.emit(
          harness.stamp(
              row,
              getattr(
                  args,
                  'command_line',
                  'python -m alexnet_jax.benchmark input --formats',
              ),
          ),
          args.json or getattr(args, 'out', ''),
      )
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(table(rows))
  return rows


def table(rows):
  lines = [
      '| format | augment | workers | img per CPU-s | vs original | cores per '
      '1,000 img/s | stored bytes/img | batch bytes/img | device us/img |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(
        f"| {r['format']} | {r['augment']} | {r['workers']} | "
        f"{r['img_per_cpu_s']:,.0f} | {r.get('vs_original', '')} | "
        f"{r['cores_per_1000_img_s']} | {r['bytes_per_img']:,} | "
        f"{r['batch_bytes_per_img']:,} | {r['device_us_per_img'] or ''} |"
    )
  return '\n'.join(lines)
