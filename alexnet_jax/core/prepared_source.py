"""A prepared dataset (`python -m alexnet_jax.prepare_data`) as an input source.

    config.data.name = 'prepared:/path/to/DIR'   ($ALEXNET_JAX_DATA/... too)

DIR holds each image once at the paper's geometry, the shorter side resized
to `resize_size` and the centre square kept, so training only crops: a
random `image_size` window and its flip (PCA lighting and normalisation as
today), evaluation the centre crop or the 10 crops of the square. Layout:

    DIR/dataset.json                       what, how, splits, shard checksums
    DIR/SPLIT-00000-of-00008.array_record  jpeg: records (ArrayRecord,
                                           group_size 1, uncompressed)
    DIR/SPLIT-00000-of-00008.raw           raw: uint8[n, R, R, 3] pixels,
                                           image i at byte i * R * R * 3
    DIR/SPLIT.index.npz                    labels and file names, in order
    DIR/mean_image.npy, DIR/stats.json     the training split's mean image and
                                           PCA (as data_stats writes them)

A JPEG record is a tf.train.Example: `image` (the square as a baseline
JPEG), `label` (int64) and `file_name` (the source's name for the image).
Raw squares are fixed-size records in plain files, their labels and names in
the split's index: read through a memory map they cost one copy, where an
ArrayRecord read of 196 KB cost several (about 3x the CPU time per image,
measured). Both read any record by index, so the training stream is read by
index as image folders are: example p of a host's stream is the epoch's
shuffled index (the same `index_shuffle` of (seed, epoch) as
input_pipeline) and its augmentation key is folded from (seed, p), so batch
k is a pure function of (seed, k) and a resume reads nothing it does not
use. Reads go through one Python call per chunk of records (neither format
has a TensorFlow op); `data.cache=True` holds a host's records in memory.

Every record was decoded when the dataset was prepared (unreadable source
images were skipped there, and named in dataset.json), so this reader needs
no replacement of unreadable images.
"""

import functools
import json
import os

import numpy as np
import tensorflow as tf

from alexnet_jax.core import paths as paths_lib
from alexnet_jax.core import splits

PREFIX = 'prepared:'
FORMAT_VERSION = 1
STORAGES = ('jpeg', 'raw')
DATASET_FILE = 'dataset.json'
# Records read per Python call: large enough that the call's overhead
# vanishes per image, small enough to keep the pipeline's memory low.
_CHUNK = 32
_plain = tf.autograph.experimental.do_not_convert
_FEATURES = {
    'image': tf.io.FixedLenFeature([], tf.string),
    'label': tf.io.FixedLenFeature([], tf.int64),
    'file_name': tf.io.FixedLenFeature([], tf.string),
}


class NotPreparedError(FileNotFoundError):
  """The folder holds no finished prepared dataset."""


def shard_name(split, shard, num_shards, storage='jpeg'):
  ext = 'raw' if storage == 'raw' else 'array_record'
  return f'{split}-{shard:05d}-of-{num_shards:05d}.{ext}'


def index_name(split):
  return f'{split}.index.npz'


def encode_example(image_bytes, label, file_name):
  """The serialized tf.train.Example of one record."""
  feature = {
      'image': tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[image_bytes])
      ),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      'file_name': tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[file_name.encode('utf-8')])
      ),
  }
  return tf.train.Example(
      features=tf.train.Features(feature=feature)
  ).SerializeToString()


def read_metadata(root):
  """dataset.json of a finished prepared dataset; NotPreparedError if none."""
  path = os.path.join(root, DATASET_FILE)
  if not os.path.isfile(path):
    partial = os.path.isfile(os.path.join(root, 'prepare.json'))
    raise NotPreparedError(
        f'{root!r} holds no finished prepared dataset (no {DATASET_FILE}'
        + (
            '; its preparation has not finished: run the same '
            '`python -m alexnet_jax.prepare_data` command again to resume it)'
            if partial
            else '; make one with `python -m alexnet_jax.prepare_data`)'
        )
    )
  with open(path) as f:
    meta = json.load(f)
  if meta.get('format_version') != FORMAT_VERSION:
    raise ValueError(
        f'{path}: format_version {meta.get("format_version")!r}; this '
        f'version of alexnet_jax reads {FORMAT_VERSION}'
    )
  return meta


class _JpegReader:
  """Random access to a split's ArrayRecord records across its shards."""

  def __init__(self, paths, counts):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    self._readers = [
        array_record_module.ArrayRecordReader(p, 'readahead_buffer_size:0')
        for p in paths
    ]
    self._ends = np.cumsum(counts)

  def read(self, indices):
    """Serialized records at global `indices` (int64 array), in order."""
    indices = np.asarray(indices, np.int64)
    shards = np.searchsorted(self._ends, indices, side='right')
    out = [None] * len(indices)
    for shard in np.unique(shards):
      where = np.nonzero(shards == shard)[0]
      start = self._ends[shard - 1] if shard else 0
      local = (indices[where] - start).tolist()
      for w, record in zip(where, self._readers[shard].read(local)):
        out[w] = record
    # A list, not a NumPy bytes array: NumPy's bytes type strips trailing NULs.
    return out


class _RawReader:
  """Random access to a split's raw pixel shards: uint8[n, R, R, 3] each,
  image i at byte i * R * R * 3, read through memory maps (one copy)."""

  def __init__(self, paths, counts, size):
    self._maps = [
        np.memmap(p, np.uint8, 'r', shape=(c, size, size, 3)) if c else None
        for p, c in zip(paths, counts)
    ]
    self._ends = np.cumsum(counts)
    self._size = size

  def read(self, indices):
    indices = np.asarray(indices, np.int64)
    shards = np.searchsorted(self._ends, indices, side='right')
    if np.all(shards == shards[0]):  # the common case: one shard, one copy
      start = self._ends[shards[0] - 1] if shards[0] else 0
      return self._maps[shards[0]][indices - start]
    out = np.empty((len(indices), self._size, self._size, 3), np.uint8)
    for shard in np.unique(shards):
      where = np.nonzero(shards == shard)[0]
      start = self._ends[shard - 1] if shard else 0
      out[where] = self._maps[shard][indices[where] - start]
    return out


class PreparedSource:
  """A finished prepared dataset, read by index."""

  prepared = True

  def __init__(self, root):
    self.root = root
    self.meta = read_metadata(root)
    self.storage = self.meta['storage']
    self.resize_size = int(self.meta['resize_size'])
    self.class_names = tuple(self.meta['class_names'])
    self._index = {}

  def split_sizes(self):
    return {
        name: int(s['num_examples']) for name, s in self.meta['splits'].items()
    }

  def check_geometry(self, config):
    """ValueError unless config.data's geometry is the one stored."""
    d = config.data
    name = d.name
    if d.resize_size != self.resize_size:
      raise ValueError(
          f'data.name={name!r} holds {self.resize_size}x{self.resize_size} '
          f'squares; config.data.resize_size={d.resize_size} must match (or '
          'prepare the data again at that size)'
      )
    if d.resize_method != self.meta['resize_method']:
      raise ValueError(
          f'data.name={name!r} was resized with '
          f"'{self.meta['resize_method']}'; config.data.resize_method="
          f"'{d.resize_method}' must match"
      )
    if d.image_size > self.resize_size:
      raise ValueError(
          f'config.data.image_size={d.image_size} is larger than the stored '
          f'{self.resize_size}x{self.resize_size} squares of {name!r}'
      )

  def _split(self, split):
    name, lo, hi = splits.parse_split(split, self.split_sizes())
    if name not in self._index:
      info = self.meta['splits'][name]
      paths = [os.path.join(self.root, s['file']) for s in info['shards']]
      counts = [int(s['num_records']) for s in info['shards']]
      with np.load(os.path.join(self.root, index_name(name))) as index:
        labels, names = index['labels'], index['names']
      self._index[name] = (paths, counts, labels, names)
    return (name, lo, hi) + self._index[name]

  def host_records(self, split, process_index, process_count, cache):
    """(read, global indices of this host's share int64[n], their labels
    int32[n], names string[n], size of the whole slice).

    read(int64[m] global indices) -> (images, int32[m] labels), a graph
    function: images are the stored squares, uint8[m, R, R, 3] (raw) or
    JPEG bytes string[m] (jpeg). Hosts take contiguous blocks: the
    preparation interleaves classes as image folders do, so every host sees
    every class.
    """
    _, lo, hi, paths, counts, labels, names = self._split(split)
    total = hi - lo
    start = lo + process_index * total // process_count
    stop = lo + (process_index + 1) * total // process_count
    indices = np.arange(start, stop, dtype=np.int64)
    size = self.resize_size
    if self.storage == 'raw':
      reader = _RawReader(paths, counts, size)
      dtype, shape = tf.uint8, [size, size, 3]
    else:
      reader = _JpegReader(paths, counts)
      dtype, shape = tf.string, []
    all_labels = tf.constant(labels.astype(np.int32))
    if cache:
      contents = tf.constant(reader.read(indices), dtype)
      fetch = lambda i: tf.gather(contents, i - start)
    else:

      def fetch_numpy(i):
        out = reader.read(i.numpy())
        # A list returned from py_function would be taken as many outputs.
        return out if self.storage == 'raw' else tf.constant(out, tf.string)

      def fetch(i):
        out = tf.py_function(fetch_numpy, [i], dtype)
        out.set_shape(i.shape.concatenate(shape))
        return out

    def read(i):
      stored = fetch(i)
      if self.storage == 'jpeg':
        stored, label = parse(stored)
      else:
        label = tf.gather(all_labels, i)
      return stored, label

    return (
        read,
        indices,
        labels[start:stop].astype(np.int32),
        names[start:stop],
        total,
    )


@functools.lru_cache(maxsize=8)
def source(root):
  return PreparedSource(root)


def from_name(name):
  """The PreparedSource of data.name='prepared:DIR'."""
  spelled = name[len(PREFIX) :]
  root = paths_lib.expand(spelled)
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'data.name={name!r}: {root!r} is not a directory (make a prepared '
        'dataset with `python -m alexnet_jax.prepare_data --out=DIR`)'
        + (
            f'; {paths_lib.DATA_TOKEN} is {paths_lib.data_root()}'
            if root != spelled
            else ''
        )
    )
  return source(root)


def parse(serialized):
  """string[m] serialized examples -> (image string[m], label int32[m])."""
  ex = tf.io.parse_example(serialized, _FEATURES)
  return ex['image'], tf.cast(ex['label'], tf.int32)


def _read_chunks(read, ds, threads):
  """ds of dict(index=int64 global index, ...) -> the same dicts with
  `image` (stored bytes) and `label`, read _CHUNK records per Python call,
  in order."""

  def fetch(ex):
    image, label = read(ex['index'])
    return dict(ex, image=image, label=label)

  ds = ds.batch(_CHUNK).map(
      _plain(fetch), num_parallel_calls=threads, deterministic=True
  )
  return ds.unbatch()


def train_examples(
    source, split, shuffle_key, start, host, count, cache, threads
):
  """The endless stream of a host's training examples from stream position
  `start`: dict(image=stored bytes, label, position). Example p is record
  index_shuffle(p % n, shuffle_key(p // n)) of the host's n records, the
  order input_pipeline gives indexable sources."""
  read, indices, _, _, _ = source.host_records(split, host, count, cache)
  n, first = len(indices), int(indices[0]) if len(indices) else 0
  if not n:
    raise ValueError(f'split {split!r} has no examples for host {host}')

  def locate(p):
    local = tf.random.experimental.index_shuffle(
        p % n, shuffle_key(p // n), n - 1
    )
    return dict(index=tf.cast(local, tf.int64) + first, position=p)

  positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
  ds = positions.map(_plain(locate))
  return _read_chunks(read, ds, threads)


def eval_examples(source, split, host, count, cache, threads):
  """(dataset of a host's dict(image=stored bytes, label) in order, the
  host's size, the whole slice's size)."""
  read, indices, _, _, total = source.host_records(split, host, count, cache)
  ds = tf.data.Dataset.from_tensor_slices(dict(index=indices))
  return _read_chunks(read, ds, threads), len(indices), total
