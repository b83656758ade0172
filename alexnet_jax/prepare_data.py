"""Prepares a dataset once at the paper's geometry, for fast training input.

    python -m alexnet_jax.prepare_data --data=imagenet2012:5.*.* \
        --data_dir=~/tensorflow_datasets --out=DIR
    python -m alexnet_jax.prepare_data --data=folder:/path/to/ROOT \
        --splits='train=val[:800],validation=val[800:]' --out=DIR
    then train with --config.data.name=prepared:DIR

Each image of each split is decoded once, its shorter side resized to
--resize_size (the config's data.resize_size: 256 for ImageNet, 72 for the
CIFAR configs) with --resize_method, and its centre square stored, as a
JPEG (--storage=jpeg, --quality) or as raw uint8 (--storage=raw), in
sharded ArrayRecord files read by index (core/prepared_source.py has the
layout). Training then only crops, flips and adds lighting.

--splits lists OUT or OUT=SOURCE_SPLIT items: `train,validation` keeps the
source's names; `train=val[:800]` renames and slices (NAME, NAME[a:b],
NAME[a%:b%]). The mean image and the RGB PCA of the `train` split are
computed on the way (DIR/mean_image.npy, DIR/stats.json, as
`alexnet_jax.data_stats` writes them).

Safety: a killed run resumes where it stopped when run again with the same
arguments (finished shards are kept, checked against their checksums); a
finished dataset is never overwritten; the last step checks the record
count of every shard and its SHA-256, and counts per split and class.
--process_index/--process_count split the shards across processes or hosts
sharing DIR (shard i goes to process i % count); whichever finishes last
writes dataset.json. Unreadable images are skipped and named (in the log and
in dataset.json).
"""

import hashlib
import json
import logging
import os
import sys
import time

from alexnet_jax.core import console

console.setup()  # before anything imports TensorFlow

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np
import tensorflow as tf
import tqdm

from alexnet_jax import cli
from alexnet_jax import data_stats
from alexnet_jax.configs import paper
from alexnet_jax.core import config_checks
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import prepared_source
from alexnet_jax.core import preprocess
from alexnet_jax.core import splits as splits_lib

# pylint: enable=g-import-not-at-top,wrong-import-position

# JPEG quality 90 (4:2:0 chroma): on the 1,000 ImageNet sample photos at
# 256x256, decoded as training decodes them, it is 34.9 dB PSNR against the
# raw squares (mean error 3.0 levels) at 21.5 KB per image, 1/9 of raw. The
# error is the size of the paper's own PCA lighting noise (alpha ~ N(0, 0.1)
# on the first component moves pixels about 3 levels), and the next step,
# 95, costs 1.42x the bytes (and decode time) for 0.4 levels less; 85 saves
# 20% of the bytes for 0.5 levels more
# (experiments/results/prepared/jpeg_quality.jsonl, docs/data.md).
DEFAULT_QUALITY = 90
STATS_SPLIT = 'train'
_SETTINGS = (
    'data',
    'data_dir',
    'splits',
    'storage',
    'quality',
    'resize_size',
    'resize_method',
    'images_per_shard',
)


class PrepareError(ValueError):
  """Bad arguments or a folder that cannot take this dataset."""


def parse_splits(text, sizes):
  """'train,validation' / 'train=val[:800],validation=val[800:]' ->
  [(out_name, source split name, lo, hi)]."""
  out = []
  for item in [t.strip() for t in text.split(',') if t.strip()]:
    name, _, spec = item.partition('=')
    spec = spec or name
    if not name.replace('_', '').replace('-', '').isalnum():
      raise PrepareError(
          f'--splits: {name!r} is not a split name (letters, digits, _ and -)'
      )
    try:
      src, lo, hi = splits_lib.parse_split(spec, sizes)
    except ValueError as e:
      raise PrepareError(f'--splits: {e}') from None
    out.append((name, src, lo, hi))
  if not out:
    raise PrepareError("--splits is empty; e.g. 'train,validation'")
  names = [o[0] for o in out]
  if len(set(names)) != len(names):
    raise PrepareError(f'--splits names a split twice: {names}')
  return out


def plan(args, sizes):
  """[(split, shard, num_shards, source split, lo, hi)] of every shard."""
  shards = []
  for name, src, lo, hi in parse_splits(args.splits, sizes):
    n = hi - lo
    count = max(1, -(-n // args.images_per_shard))
    for s in range(count):
      shards.append(
          (name, s, count, src, lo + s * n // count, lo + (s + 1) * n // count)
      )
  return shards


def _settings(args):
  return {k: getattr(args, k) for k in _SETTINGS}


def _write_json(path, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)  # atomic: a kill leaves the old file or the new


def sha256(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _claim(out, args):
  """Creates or reopens DIR for these settings; PrepareError if DIR holds a
  finished dataset or one prepared with other settings."""
  done = os.path.join(out, prepared_source.DATASET_FILE)
  if os.path.exists(done):
    raise PrepareError(
        f'{out!r} already holds a finished prepared dataset; it is never '
        'overwritten (delete the folder, or choose another --out)'
    )
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, 'prepare.json')
  settings = _settings(args)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    changed = {
        k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v
    }
    if changed:
      raise PrepareError(
          f'{out!r} holds a preparation with other settings '
          + ', '.join(
              f'{k}: {a!r} there, {b!r} now' for k, (a, b) in changed.items()
          )
          + '; run it with its settings to resume, or choose another --out'
      )
  elif os.listdir(out):
    raise PrepareError(
        f'{out!r} is not empty and holds no preparation; choose an empty '
        'or new --out'
    )
  else:
    _write_json(path, settings)


def _marker(out, split, shard, count):
  return os.path.join(out, f'{split}-{shard:05d}-of-{count:05d}.done.json')


def _finished(out, split, shard, count):
  """The shard's marker, if the shard is finished and intact."""
  path = _marker(out, split, shard, count)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    marker = json.load(f)
  data = os.path.join(out, marker['file'])
  if not os.path.exists(data) or sha256(data) != marker['sha256']:
    logging.warning('%s does not match its checksum; preparing it again', data)
    os.remove(path)
    return None
  return marker


def prepare_shard(source, args, split, shard, count, src, lo, hi, bar):
  """Writes one shard; returns its marker dict."""
  out = args.out
  table, _ = source.table(f'{src}[{lo}:{hi}]', 0, 1, False)
  names = [n.decode('utf-8', 'replace') for n in table.names.numpy()]
  labels = table.labels.numpy()
  size, method, storage = args.resize_size, args.resize_method, args.storage

  def load(i):
    square = preprocess.prepare_square(table.read(i), size, method)
    if storage == 'raw':  # the writer takes the square's bytes
      data = tf.constant(b'')
    else:
      data = tf.io.encode_jpeg(square, quality=args.quality)
    return dict(square=square, data=data, index=i)

  ds = tf.data.Dataset.range(table.size)
  ds = ds.map(
      input_pipeline._plain(load),  # pylint: disable=protected-access
      num_parallel_calls=args.threads or os.cpu_count(),
      deterministic=True,
  ).ignore_errors()
  ds = ds.batch(16).prefetch(2)
  file = prepared_source.shard_name(split, shard, count, storage)
  path = os.path.join(out, file)
  tmp = path + '.tmp'
  if storage == 'raw':  # fixed-size records: image i at i * R * R * 3
    raw_file = open(tmp, 'wb')  # pylint: disable=consider-using-with
    write = lambda square, data, label, name: raw_file.write(square.tobytes())
    close = raw_file.close
  else:
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    # One record per chunk (group_size:1): read by index. Uncompressed:
    # JPEGs gain nothing from a second compression.
    writer = array_record_module.ArrayRecordWriter(
        tmp, 'group_size:1,uncompressed'
    )
    write = lambda square, data, label, name: writer.write(
        prepared_source.encode_example(data, label, name)
    )
    close = writer.close
  moments = data_stats.Moments(size) if split == STATS_SPLIT else None
  kept, seen = [], 0
  try:
    for batch in ds.as_numpy_iterator():
      for square, data, i in zip(
          batch['square'], batch['data'], batch['index']
      ):
        write(square, data, int(labels[i]), names[i])
        kept.append(int(i))
      if moments is not None:
        moments.add(batch['square'] / 255.0)
      bar.update(int(batch['index'][-1]) + 1 - seen)
      seen = int(batch['index'][-1]) + 1
  finally:
    close()
  bar.update(table.size - seen)
  skipped = sorted(set(range(table.size)) - set(kept))
  for i in skipped:
    logging.warning(
        'Skipping unreadable image %s (truncated, empty or not an image)',
        names[i],
    )
  os.replace(tmp, path)
  marker = dict(
      file=file,
      num_records=len(kept),
      sha256=sha256(path),
      labels=[int(labels[i]) for i in kept],
      names=[names[i] for i in kept],
      skipped=[names[i] for i in skipped],
  )
  if moments is not None:
    moments_file = file + '.moments.npz'
    np.savez(os.path.join(out, moments_file), **moments.state())
    marker['moments'] = moments_file
  _write_json(_marker(out, split, shard, count), marker)
  return marker


def count_records(path, storage, size):
  """The number of records in a shard file (PrepareError if it is cut)."""
  if storage == 'raw':
    record = size * size * 3
    n, rest = divmod(os.path.getsize(path), record)
    if rest:
      raise PrepareError(f'{path}: not a whole number of {size}x{size} images')
    return n
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  reader = array_record_module.ArrayRecordReader(path)
  n = reader.num_records()
  reader.close()
  return n


def finalize(out, shards, info, args):
  """Verifies every shard and writes the index, the statistics and, last,
  dataset.json. Returns the dataset.json dict, or None if a shard is
  corrupt (its marker is removed, so running its process again redoes it)."""
  markers = [_finished(out, *s[:3]) for s in shards]
  if any(m is None for m in markers):
    return None  # a corrupt shard (named in the log): its process redoes it
  splits = {}
  moments = None
  for (split, _, _, src, lo, hi), marker in zip(shards, markers):
    records = count_records(
        os.path.join(out, marker['file']), args.storage, args.resize_size
    )
    if records != marker['num_records'] or records + len(marker['skipped']) != (
        hi - lo
    ):
      raise PrepareError(
          f"{marker['file']}: {records} records; expected "
          f"{marker['num_records']} ({hi - lo} source images, "
          f"{len(marker['skipped'])} unreadable)"
      )
    s = splits.setdefault(
        split,
        dict(
            source_split=f'{src}[{lo}:',
            num_examples=0,
            shards=[],
            labels=[],
            names=[],
            skipped=[],
        ),
    )
    s['source_hi'] = hi
    s['num_examples'] += records
    s['shards'].append(
        dict(file=marker['file'], num_records=records, sha256=marker['sha256'])
    )
    s['labels'] += marker['labels']
    s['names'] += marker['names']
    s['skipped'] += marker['skipped']
    if marker.get('moments'):
      with np.load(os.path.join(out, marker['moments'])) as state:
        m = data_stats.Moments.from_state(state)
      if moments is None:
        moments = m
      else:
        moments.merge(m)
  num_classes = len(info.class_names)
  for split, s in splits.items():
    labels = np.asarray(s.pop('labels'), np.int32)
    names = np.asarray(s.pop('names'))
    np.savez(
        os.path.join(out, prepared_source.index_name(split)),
        labels=labels,
        names=names,
    )
    s['source_split'] += f"{s.pop('source_hi')}]"
    s['class_counts'] = np.bincount(labels, minlength=num_classes).tolist()
  meta = dict(
      format_version=prepared_source.FORMAT_VERSION,
      storage=args.storage,
      quality=args.quality if args.storage == 'jpeg' else None,
      resize_size=args.resize_size,
      resize_method=args.resize_method,
      source=args.data,
      class_names=list(info.class_names),
      splits=splits,
  )
  if moments is not None and moments.n:
    skipped = splits[STATS_SPLIT]['skipped']
    image_path, json_path = data_stats.write(moments.result(skipped), out)
    meta['stats'] = dict(
        split=STATS_SPLIT,
        mean_image=os.path.basename(image_path),
        stats=os.path.basename(json_path),
    )
  _write_json(os.path.join(out, prepared_source.DATASET_FILE), meta)
  for split, shard, count, *_ in shards:  # the markers did their job
    marker = _marker(out, split, shard, count)
    with open(marker) as f:
      moments_file = json.load(f).get('moments')
    if moments_file:
      os.remove(os.path.join(out, moments_file))
    os.remove(marker)
  return meta


def verify(out):
  """Re-checks a finished dataset's shards (count and SHA-256) and counts."""
  meta = prepared_source.read_metadata(out)
  for split, s in meta['splits'].items():
    total = 0
    for shard in s['shards']:
      path = os.path.join(out, shard['file'])
      if sha256(path) != shard['sha256']:
        raise PrepareError(f'{path}: SHA-256 does not match dataset.json')
      records = count_records(path, meta['storage'], meta['resize_size'])
      if records != shard['num_records']:
        raise PrepareError(f'{path}: record count does not match dataset.json')
      total += shard['num_records']
    with np.load(os.path.join(out, prepared_source.index_name(split))) as ix:
      counts = np.bincount(ix['labels'], minlength=len(meta['class_names']))
    if total != s['num_examples'] or counts.tolist() != s['class_counts']:
      raise PrepareError(f'{split!r}: counts do not match dataset.json')
  return meta


def prepare(args):
  """Prepares this process's shards; finalizes when all are done. Returns
  dataset.json's dict, or None when other processes' shards remain."""
  config = paper.get_config()
  config.data.name = args.data
  config.data.data_dir = args.data_dir
  config.data.resize_size = args.resize_size
  config.data.image_size = min(config.data.image_size, args.resize_size)
  config.data.resize_method = args.resize_method
  config_checks.check_data(config)
  if args.data.startswith(prepared_source.PREFIX):
    raise PrepareError('--data is already a prepared dataset')
  if args.storage == 'jpeg' and not 1 <= args.quality <= 100:
    raise PrepareError(f'--quality={args.quality} must be in 1..100')
  if not 0 <= args.process_index < args.process_count:
    raise PrepareError(
        f'--process_index={args.process_index} must be in '
        f'0..{args.process_count - 1} (--process_count)'
    )
  info = input_pipeline.get_info(config)
  shards = plan(args, info.split_sizes)
  _claim(args.out, args)
  source = input_pipeline.source(config)
  mine = [
      s
      for i, s in enumerate(shards)
      if i % args.process_count == args.process_index
      and _finished(args.out, *s[:3]) is None
  ]
  total = sum(hi - lo for *_, lo, hi in mine)
  start = time.time()
  with tqdm.tqdm(
      total=total,
      unit='img',
      desc='prepare',
      file=sys.stderr,
      smoothing=0.1,
      # A log file (not a terminal) gets a line every 30 s, not a stream.
      mininterval=0.1 if sys.stderr.isatty() else 30,
  ) as bar:
    for split, shard, count, src, lo, hi in mine:
      prepare_shard(source, args, split, shard, count, src, lo, hi, bar)
  logging.info('prepared %d images in %.1f s', total, time.time() - start)
  done = os.path.join(args.out, prepared_source.DATASET_FILE)
  try:
    # Markers only here: finalize checks every shard's checksum, once.
    if any(not os.path.exists(_marker(args.out, *s[:3])) for s in shards):
      return None
    return finalize(args.out, shards, info, args)
  except (PrepareError, FileNotFoundError):
    # Another process finished at the same time: it finalized (and removed
    # the shard markers) first.
    if os.path.exists(done):
      return prepared_source.read_metadata(args.out)
    raise


def define_flags(fv):
  """The command's flags, defined in the FlagValues `fv`."""
  flags.DEFINE_string(
      'data',
      None,
      "The source, as config.data.name: a TFDS name or 'folder:/path'.",
      flag_values=fv,
  )
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir.', flag_values=fv)
  flags.DEFINE_string(
      'out', None, 'Output folder (new or empty).', flag_values=fv
  )
  flags.DEFINE_string(
      'splits',
      'train,validation',
      'OUT or OUT=SOURCE_SPLIT items, comma-separated (e.g. '
      "'train=val[:800],validation=val[800:]').",
      flag_values=fv,
  )
  flags.DEFINE_enum(
      'storage',
      'jpeg',
      prepared_source.STORAGES,
      'How the squares are stored.',
      flag_values=fv,
  )
  flags.DEFINE_integer(
      'quality',
      DEFAULT_QUALITY,
      'JPEG quality (--storage=jpeg).',
      flag_values=fv,
  )
  flags.DEFINE_integer(
      'resize_size', 256, 'Side of the stored squares.', flag_values=fv
  )
  flags.DEFINE_enum(
      'resize_method',
      'area',
      preprocess.RESIZE_METHODS,
      'The resize filter (config.data.resize_method).',
      flag_values=fv,
  )
  flags.DEFINE_integer(
      'images_per_shard', 5000, 'Images per shard file.', flag_values=fv
  )
  flags.DEFINE_integer(
      'threads', 0, 'Decoding threads; 0 = all cores.', flag_values=fv
  )
  flags.DEFINE_integer('process_index', 0, 'This process.', flag_values=fv)
  flags.DEFINE_integer(
      'process_count', 1, 'Processes sharing --out.', flag_values=fv
  )
  flags.DEFINE_bool(
      'verify',
      False,
      'Only re-check the finished dataset in --out.',
      flag_values=fv,
  )
  flags.DEFINE_bool(
      'verbose', False, 'Show the traceback of an error.', flag_values=fv
  )
  flags.mark_flags_as_required(['out'], flag_values=fv)


def main(argv=None):
  """The command (`argv`: its flags; None: sys.argv, as a program)."""
  return cli.run_command(__name__, define_flags, _prepare_data, argv)


def _prepare_data(args, extra):
  cli.no_arguments(extra)
  try:  # host-side work only: keep TensorFlow off any GPU
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  console.filter_logs()
  args.out = os.path.abspath(os.path.expanduser(args.out))
  from alexnet_jax.core import tfds_source  # pylint: disable=g-import-not-at-top

  with console.exit_on(
      PrepareError,
      config_checks.ConfigError,
      ValueError,
      FileNotFoundError,
      tfds_source.DataNotReadyError,
      verbose=args.verbose,
  ):
    if not args.verify and not args.data:
      raise PrepareError('--data is required (the source to prepare)')
    meta = verify(args.out) if args.verify else prepare(args)
  if meta is None:
    print(
        f'process {args.process_index}: its shards are done; the last '
        'process to finish writes dataset.json'
    )
    return 0
  sizes = ', '.join(
      f"{k} {s['num_examples']:,} ({len(s['skipped'])} unreadable skipped)"
      for k, s in meta['splits'].items()
  )
  print(f'{"verified" if args.verify else "prepared"} {args.out}: {sizes}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
