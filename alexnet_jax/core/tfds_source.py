"""TFDS datasets as an input source: prepared-data checks, per-host splits,
the per-epoch seeded stream, and the ImageNet-specific messages.

Images stay encoded (`tfds.decode.SkipDecoding`) so preprocess.py decodes
only the crop window. Training streams a host's `tfds.even_splits` share:
epoch e reads the shards in an order keyed by (seed, e), interleaved, then
through a shuffle buffer seeded by (seed, e); a resumed run starts at its
epoch and skips (reads without decoding) to its position in it.
"""

import difflib
import os
import types

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.core import config_checks

IMAGENET = 'imagenet2012'
_plain = tf.autograph.experimental.do_not_convert  # see input_pipeline._plain
IMAGENET_ARCHIVES = {
    'train': (
        'ILSVRC2012_img_train.tar',
        '138 GB; 1,000 per-class tars n01440764.tar ... n15075141.tar',
    ),
    'validation': (
        'ILSVRC2012_img_val.tar',
        '6.3 GB; 50,000 JPEGs ILSVRC2012_val_00000001.JPEG ...',
    ),
}


def default_data_dir(data_dir=''):
  return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def default_manual_dir(data_dir='', manual_dir=''):
  return (
      os.path.expanduser(manual_dir)
      if manual_dir
      else os.path.join(default_data_dir(data_dir), 'downloads', 'manual')
  )


def imagenet_instructions(data_dir='', manual_dir=''):
  """The manual_dir layout and the one command that prepares ImageNet."""
  data_dir = default_data_dir(data_dir)
  manual_dir = default_manual_dir(data_dir, manual_dir)
  lines = [
      'ImageNet (ILSVRC-2012) cannot be downloaded automatically. Place '
      'its two archives by hand:'
  ]
  for name, what in IMAGENET_ARCHIVES.values():
    lines.append(f'  {os.path.join(manual_dir, name)}   ({what})')
  lines += [
      'then prepare it once (about 150 GB of TFRecords, hours):',
      f'  python -m alexnet_jax.prepare_imagenet --data_dir={data_dir} '
      f'--manual_dir={manual_dir}',
  ]
  return '\n'.join(lines)


class DataNotReadyError(RuntimeError):
  """A TFDS dataset is missing or only partly prepared."""


def unknown_dataset(name) -> config_checks.ConfigError:
  """The error for a name TFDS does not know, with the closest it does.

  (TFDS's own error lists its whole catalogue, 450 names.)
  """
  known = tfds.list_builders(with_community_datasets=False)
  close = difflib.get_close_matches(base_name(name), known, n=4, cutoff=0.6)
  return config_checks.ConfigError(
      f'config.data.name={name!r} is not a TFDS dataset'
      + (f' (close: {", ".join(close)})' if close else '')
      + "; use a TFDS name (tfds.list_builders()), 'folder:/path' or 'fake'"
  )


def base_name(name):
  return name.split(':')[0].split('/')[0]


class TfdsSource:
  """A prepared TFDS image-classification dataset."""

  streaming = True

  def __init__(self, config):
    d = config.data
    self.name = d.name
    self.data_dir = default_data_dir(d.data_dir)
    self.manual_dir = d.manual_dir
    self.shuffle_buffer = d.shuffle_buffer
    try:
      self.builder = tfds.builder(d.name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise unknown_dataset(d.name) from e
    check_prepared(self.builder, d.name, self.data_dir, d.manual_dir)
    info = self.builder.info
    self.image_key, self.label_key = info.supervised_keys or ('image', 'label')
    self.class_names = tuple(info.features[self.label_key].names)
    self.has_file_name = 'file_name' in info.features

  def split_sizes(self):
    splits = self.builder.info.splits
    return {name: s.num_examples for name, s in splits.items()}

  def _host_split(self, split, process_index, process_count):
    base = split.split('[')[0]
    if base not in self.builder.info.splits:
      raise ValueError(
          f'split {split!r} is not in {self.name!r} (it has '
          f'{sorted(self.builder.info.splits)})'
      )
    if process_count == 1:
      return split
    return tfds.even_splits(split, n=process_count)[process_index]

  @staticmethod
  def _read_shard(filename, skip, take):
    """(record, 'SHARD#INDEX') of one file instruction; the name is used
    when the dataset has no file_name feature."""
    ds = tf.data.TFRecordDataset(filename).skip(skip).take(take)
    return ds.enumerate(skip).map(
        _plain(
            lambda i, r: (
                r,
                tf.strings.join([filename, tf.strings.as_string(i)], '#'),
            )
        )
    )

  def _instruction_tensors(self, split):
    if self.builder.info.file_format.value != 'tfrecord':
      raise ValueError(
          f'{self.name!r} is stored as {self.builder.info.file_format.value}; '
          "streaming reads TFRecord (TFDS's default format). Set "
          'config.data.cache=True to read it into memory, or prepare it '
          'with file_format=tfrecord'
      )
    instructions = self.builder.info.splits[split].file_instructions
    return (
        tf.constant([i.filename for i in instructions]),
        tf.constant([i.skip for i in instructions], tf.int64),
        tf.constant([i.take for i in instructions], tf.int64),
    )

  def _example(self, record, fallback_name):
    ex = self.builder.info.features.deserialize_example(
        record, decoders={self.image_key: tfds.decode.SkipDecoding()}
    )
    name = ex['file_name'] if self.has_file_name else fallback_name
    return dict(
        encoded=ex[self.image_key],
        label=tf.cast(ex[self.label_key], tf.int32),
        name=name,
    )

  def train_stream(self, split, seed, start, process_index, process_count):
    """dict(encoded, label, name, position) from stream position `start`."""
    host_split = self._host_split(split, process_index, process_count)
    n = self.builder.info.splits[host_split].num_examples
    files, skips, takes = self._instruction_tensors(host_split)
    num_files = int(files.shape[0])
    buffer = self.shuffle_buffer

    def epoch(e):
      key = tf.random.experimental.stateless_fold_in(
          tf.constant([seed, process_index], tf.int64), e
      )
      order = tf.random.experimental.index_shuffle(
          tf.range(num_files, dtype=tf.int64), key, num_files - 1
      )
      shards = tf.data.Dataset.from_tensor_slices(
          (
              tf.gather(files, order),
              tf.gather(skips, order),
              tf.gather(takes, order),
          )
      )
      records = shards.interleave(
          _plain(self._read_shard),
          cycle_length=min(16, num_files),
          block_length=1,
          num_parallel_calls=min(16, num_files),
          deterministic=True,
      )
      # A key's first word does not depend on the folded data: draw from it.
      shuffle_seed = tf.random.stateless_uniform(
          [], key, 0, 2**31 - 1, dtype=tf.int64
      )
      return records.shuffle(buffer, seed=shuffle_seed)

    ds = tf.data.Dataset.range(start // n, np.iinfo(np.int64).max // n)
    ds = ds.flat_map(_plain(epoch)).skip(start % n).enumerate(start)
    return ds.map(_plain(lambda p, rec: dict(self._example(*rec), position=p)))

  def eval_stream(self, split, process_index, process_count):
    """(dataset of dict(encoded, label, name) in order, names_of(positions)
    -> 'SHARD#INDEX' names, host's size, whole split's size)."""
    total = self.builder.info.splits[split].num_examples
    host_split = self._host_split(split, process_index, process_count)
    files, skips, takes = self._instruction_tensors(host_split)
    ds = tf.data.Dataset.from_tensor_slices((files, skips, takes))
    ds = ds.flat_map(_plain(self._read_shard))
    ds = ds.map(_plain(self._example))
    ends = tf.cumsum(takes)

    def names_of(positions):
      shard = tf.searchsorted(ends, positions, side='right')
      index = (
          tf.gather(skips, shard)
          + positions
          - tf.gather(ends, shard)
          + tf.gather(takes, shard)
      )
      return tf.strings.join(
          [tf.gather(files, shard), '#', tf.strings.as_string(index)]
      )

    return ds, names_of, int(tf.reduce_sum(takes)), total

  def table(self, split, process_index, process_count, cache):
    """Reads a host's share into memory (config.data.cache=True), for
    random access: exact, free resumes, full per-epoch shuffles."""
    del cache
    total = self.builder.info.splits[split].num_examples
    host_split = self._host_split(split, process_index, process_count)
    ds = self.builder.as_dataset(
        split=host_split,
        shuffle_files=False,
        decoders={self.image_key: tfds.decode.SkipDecoding()},
    )
    encoded, labels, names = [], [], []
    for i, ex in enumerate(ds.as_numpy_iterator()):
      encoded.append(ex[self.image_key])
      labels.append(ex[self.label_key])
      names.append(
          ex['file_name'] if self.has_file_name else f'{host_split}#{i}'
      )
    contents = tf.constant(encoded)
    # The fields input_pipeline reads of its tables.
    table = types.SimpleNamespace(
        size=len(encoded),
        labels=tf.constant(np.asarray(labels, np.int32)),
        names=tf.constant(names),
        read=lambda i: tf.gather(contents, i),
    )
    return table, total


def check_prepared(builder, name, data_dir, manual_dir=''):
  """Raises DataNotReadyError, naming what to do, unless `builder`'s data is
  prepared (for ImageNet: with both the train and validation splits)."""
  is_imagenet = base_name(name) == IMAGENET
  if not builder.is_prepared():
    if is_imagenet:
      raise DataNotReadyError(
          f'config.data.name={name!r}: ImageNet is not prepared in '
          f'{data_dir}.\n' + imagenet_instructions(data_dir, manual_dir)
      )
    raise DataNotReadyError(
        f'config.data.name={name!r} is not prepared in {data_dir}. This '
        'machine may have no internet; prepare it where there is '
        f'(`tfds build {name.split(":")[0]} --data_dir={data_dir}`) and '
        'copy the directory here, or point config.data.data_dir at it. For '
        "your own images use data.name='folder:/path' instead."
    )
  if is_imagenet:
    have = set(builder.info.splits)
    missing = [s for s in IMAGENET_ARCHIVES if s not in have]
    if missing:
      raise DataNotReadyError(
          f'ImageNet in {builder.data_dir} is half-prepared: it has the '
          f'{sorted(have)} split(s) but not {missing} (TFDS builds whichever '
          'archive it finds). Prepare it again with both archives.\n'
          + imagenet_instructions(data_dir, manual_dir)
      )
