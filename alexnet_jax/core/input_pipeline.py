"""tf.data input: TFDS datasets, image folders and fake data, per host.

Sources, chosen by `config.data.name`:
  'imagenet2012:5.*.*', 'cifar10', ...   a prepared TFDS dataset in
                                         config.data.data_dir
  'prepared:/path/to/DIR'                a prepared dataset (prepare_data.py,
                                         prepared_source.py): the paper's
                                         squares, stored once
  'folder:/path/to/root'                 ROOT/SPLIT/CLASS/IMAGE, images
                                         .jpg/.jpeg/.png in any case; class
                                         index = position in sorted names;
                                         '$ALEXNET_JAX_DATA/...' = under
                                         the data root (paths.py)
  'fake'                                 random images, for throughput only

Determinism: example number p of a host's endless training stream (p =
step * per_host_batch + i) is a pure function of (seed, process_index, p):
epoch p // n shuffles the host's n examples with a key folded from (seed,
epoch) and p's augmentation uses a key folded from (seed, p). A run resumed
at step k starts the stream at p = k * batch, so it sees exactly the batches
an uninterrupted run would. Image folders (and any source with
`data.cache=True`) are read by index, so resuming costs nothing; a TFDS
stream shuffles shard order and a seeded buffer per epoch and skips
(reading, not decoding) to the position within the epoch.

Unreadable files (truncated, empty, not an image) never stop a run: each is
named once in the log and listed by `skipped_files()`. In training, an
unreadable image is replaced by another drawn with a key folded from (seed,
p), so batch k stays a pure function of (seed, k); in evaluation it is left
out, and the eval batches are padded with `mask=False` so every readable
example counts exactly once.
"""

import collections
import dataclasses
import functools
import logging
import os
import re
import threading

import numpy as np
import tensorflow as tf

from alexnet_jax.core import paths as paths_lib
from alexnet_jax.core import preprocess

# tf.data must never take an accelerator from JAX.
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF already initialised its devices; nothing to do
  pass

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
FAKE_SPLIT_SIZES = {'train': 1_281_167, 'validation': 50_000, 'test': 50_000}
# In training, attempts to replace an unreadable image before giving up.
_MAX_ATTEMPTS = 8

_skipped = {}  # file name -> None, in the order first seen
_skipped_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  class_names: tuple
  split_sizes: dict  # split name -> number of files/records listed


def skipped_files():
  """Names of the unreadable files skipped so far (in this process)."""
  with _skipped_lock:
    return list(_skipped)


def _note_skipped(names):
  """py_function: logs each unreadable file once. Runs only on failures."""
  for name in names.numpy():
    name = name.decode('utf-8', 'replace')
    if not name:
      continue
    with _skipped_lock:
      if name in _skipped:
        continue
      _skipped[name] = None
    logging.warning(
        'Skipping unreadable image %s (truncated, empty or not ' 'an image)',
        name,
    )
  return True


# ------------------------------------------------------------------ config


def preprocessing_from_config(config):
  """The `preprocessing` dict a checkpoint carries, from config.data."""
  d = config.data
  out = dict(
      channel_order='RGB',
      pixel_scale=float(d.pixel_scale),
      mean=list(d.mean),
      std=list(d.std),
      image_size=d.image_size,
      resize_size=d.resize_size,
      resize_method=d.resize_method,
  )
  if d.normalization == 'image':
    # A consumer that ignores 'mean_image' still gets its channel means.
    try:
      image = preprocess.load_mean_image(d.mean_image, d.resize_size)
    except ValueError as e:
      raise ValueError(f'config.data.mean_image: {e}') from e
    # The mean image is stored in [0, 1]; the record's mean is in
    # pixel_scale units, as every other record's.
    scale = float(d.pixel_scale)
    out['mean'] = [float(m) * scale for m in image.mean(axis=(0, 1))]
    out['std'] = [1.0, 1.0, 1.0]
    out['mean_image'] = os.path.abspath(d.mean_image)
  return out


def _params(config, preprocessing=None):
  """preprocess.Params of config.data, for a checkpoint's `preprocessing`
  record when given (evaluation), else the config's own."""
  d = config.data
  if preprocessing is None:
    preprocessing = preprocessing_from_config(config)
  return preprocess.params_from_record(
      preprocessing,
      train_crop=d.train_crop,
      flip=d.flip,
      lighting_std=float(d.lighting.std),
      lighting_scale=d.lighting.scale,
      eigval=tuple(d.lighting.eigval),
      eigvec=tuple(map(tuple, d.lighting.eigvec)),
      resize_method=d.resize_method,
  )  # for records that predate the field


def _options(config, deterministic=True):
  options = tf.data.Options()
  options.deterministic = deterministic
  threads = config.data.get('threads', 0)
  if threads:
    options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = True
  return options


_SLICE = re.compile(
    r'^(?P<name>[\w-]+)(\[(?P<lo>-?\d+%?)?:(?P<hi>-?\d+%?)?\])?$'
)


def check_split(split, sizes):
  """The split's name; ValueError if `split` is not NAME, NAME[a:b] or
  NAME[a%:b%] of a split in `sizes` (which is not asked for a size)."""
  match = _SLICE.match(split)
  if not match:
    raise ValueError(
        f'split {split!r} is not accepted; use NAME, NAME[a:b] '
        'or NAME[a%:b%] (e.g. train[:90%])'
    )
  name = match['name']
  if name not in sizes:
    raise ValueError(
        f'split {name!r} does not exist; the dataset has ' f'{sorted(sizes)}'
    )
  return match


def parse_split(split, sizes):
  """'train', 'train[:1000]' or 'train[10%:]' -> (name, start, stop), as
  TFDS slices splits (percentages round to the closest example)."""
  match = check_split(split, sizes)
  name = match['name']
  n = sizes[name]

  def bound(text, default):
    if text is None:
      return default
    if text.endswith('%'):
      value = round(int(text[:-1]) * n / 100)
    else:
      value = int(text)
    return max(0, min(n, value + n if value < 0 else value))

  return name, bound(match['lo'], 0), bound(match['hi'], n)


# ------------------------------------------------------------------ sources


@dataclasses.dataclass
class _Table:
  """A host's part of a split, readable by index."""

  size: int
  labels: tf.Tensor  # int32[n]
  names: tf.Tensor  # string[n]
  read: callable  # int64 index -> encoded bytes


class FolderSource:
  """ROOT/SPLIT/CLASS/IMAGE; no preparation step."""

  def __init__(self, root):
    self.root = paths_lib.expand(root)
    if not os.path.isdir(self.root):
      raise FileNotFoundError(
          f"data.name='folder:{root}': {self.root!r} is not a directory "
          '(expected ROOT/SPLIT/CLASS/IMAGE, e.g. ROOT/train/cat/1.jpg)'
      )
    self.splits = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
    classes = set()
    for split in self.splits:
      classes.update(
          e.name
          for e in os.scandir(os.path.join(self.root, split))
          if e.is_dir()
      )
    if not classes:
      raise FileNotFoundError(
          f'{self.root!r} has no ROOT/SPLIT/CLASS/ folders (found splits '
          f'{self.splits}); expected e.g. {self.root}/train/cat/1.jpg'
      )
    self.class_names = tuple(sorted(classes))
    self._files = {}

  def files(self, split):
    """(paths, labels) of a whole split, classes interleaved.

    Files are sorted by class then name, then interleaved: the first file of
    every class (in class order), then the second of every class, ... So a
    slice such as 'train[:90%]' / 'train[90%:]' holds every class in
    proportion (a held-out validation split), and 'val[:6]' of a folder with
    one image per class is classes 0..5.
    """
    if split not in self._files:
      directory = os.path.join(self.root, split)
      if split not in self.splits:
        raise ValueError(
            f'split {split!r} is not in {self.root!r}; it has ' f'{self.splits}'
        )
      index = {name: i for i, name in enumerate(self.class_names)}
      paths, labels, ignored = [], [], 0
      for cls in sorted(e.name for e in os.scandir(directory) if e.is_dir()):
        for entry in sorted(
            os.scandir(os.path.join(directory, cls)), key=lambda e: e.name
        ):
          if entry.name.lower().endswith(IMAGE_EXTENSIONS):
            paths.append(entry.path)
            labels.append(index[cls])
          else:
            ignored += 1
      if ignored:
        logging.info(
            '%s: ignored %d files without an image extension %s',
            directory,
            ignored,
            IMAGE_EXTENSIONS,
        )
      if not paths:
        raise FileNotFoundError(
            f'{directory!r} has no images '
            f'{IMAGE_EXTENSIONS} in class folders'
        )
      labels = np.array(labels, np.int32)  # ascending: listed by class
      # Position within its class (O(n): ImageNet has 1.28M files).
      rank = np.arange(len(labels)) - np.searchsorted(labels, labels)
      order = np.lexsort((labels, rank))
      self._files[split] = (np.array(paths)[order], labels[order])
    return self._files[split]

  def split_sizes(self):
    return {s: len(self.files(s)[0]) for s in self.splits}

  def table(self, split, process_index, process_count, cache):
    """(_Table of this host's share of `split`, total size)."""
    name, lo, hi = parse_split(split, _LazySizes(self))
    paths, labels = self.files(name)
    paths, labels = paths[lo:hi], labels[lo:hi]
    total = len(paths)
    # A contiguous block per host: classes are interleaved (see `files`),
    # so every host sees every class.
    start = process_index * total // process_count
    stop = (process_index + 1) * total // process_count
    paths, labels = paths[start:stop], labels[start:stop]
    names = tf.constant(paths)
    if cache:
      contents = tf.constant([_read_bytes(p) for p in paths])
      read = lambda i: tf.gather(contents, i)
    else:
      read = lambda i: tf.io.read_file(tf.gather(names, i))
    return _Table(len(paths), tf.constant(labels), names, read), total


class _LazySizes(dict):
  """Split name -> size, listing a split's files only when asked."""

  def __init__(self, source):
    super().__init__()
    self._source = source

  def __contains__(self, split):
    return split in self._source.splits

  def __getitem__(self, split):
    return len(self._source.files(split)[0])

  def __iter__(self):
    return iter(self._source.splits)


def _read_bytes(path):
  with open(path, 'rb') as f:
    return f.read()


def _source(config):
  name = config.data.name
  if name == 'fake':
    return None
  if name.startswith('folder:'):
    spelled = name[len('folder:') :]
    try:
      # Resolved here, so a changed data root is never served from the cache.
      return _folder_source(paths_lib.expand(spelled))
    except FileNotFoundError as e:
      if paths_lib.expand(spelled) == spelled:
        raise
      raise FileNotFoundError(
          f'{e}. In data.name={name!r}, {paths_lib.DATA_TOKEN} is '
          f'{paths_lib.data_root()}: set {paths_lib.DATA_ENV} (or --data_root '
          'where a command has it) to the folder that holds your datasets'
      ) from None
  if name.startswith('prepared:'):
    from alexnet_jax.core import prepared_source  # pylint: disable=g-import-not-at-top

    source = prepared_source.from_name(name)
    source.check_geometry(config)
    return source
  from alexnet_jax.core import tfds_source  # pylint: disable=g-import-not-at-top

  return tfds_source.TfdsSource(config)


def source(config):
  """The source object of config.data.name (None for 'fake'): a
  FolderSource, TfdsSource or prepared_source.PreparedSource."""
  return _source(config)


@functools.lru_cache(maxsize=8)
def _folder_source(root):
  return FolderSource(root)


def get_info(config):
  """DatasetInfo(num_classes, class_names, split_sizes) of config.data.name."""
  source = _source(config)
  if source is None:
    n = config.model.num_classes
    return DatasetInfo(
        n, tuple(f'class_{i}' for i in range(n)), dict(FAKE_SPLIT_SIZES)
    )
  return DatasetInfo(
      len(source.class_names), source.class_names, source.split_sizes()
  )


# ------------------------------------------------------ unreadable images
#
# The decode-and-preprocess map runs in parallel behind `ignore_errors`, so
# an unreadable file only drops its own element. Every element carries its
# stream `position`; a `scan` right after sees the gap, names the files at
# the missing positions (once each, in the log and in skipped_files()) and,
# in training from an indexable source, inserts a keyed replacement so that
# batch k stays a pure function of (seed, k). Catching errors per element
# instead (a small dataset per element) cost ~0.9 ms of CPU per image.


def _plain(fn):
  """fn as tf.data traces it, without AutoGraph: our functions use tf.cond
  explicitly, and AutoGraph re-reads source files (slow, and fragile when a
  file changes under a running job)."""
  return tf.autograph.experimental.do_not_convert(fn)


def _map_tolerantly(ds, fn, threads):
  """ds.map(fn) in parallel, in order, dropping elements whose fn fails."""
  return ds.map(
      _plain(fn), num_parallel_calls=threads, deterministic=True
  ).ignore_errors()


def _note(names):
  """Logs names (string[m]) once each; returns a tensor to depend on."""
  return tf.py_function(_note_skipped, [names], tf.bool)


def _name_gaps(ds, start, names_of, end=None):
  """Names the positions missing from ds (increasing from `start`); with
  `end`, ds is finite and a sentinel at `end` catches a gap at its end."""
  if end is not None:
    sentinel = {
        k: tf.zeros(spec.shape, spec.dtype)
        for k, spec in ds.element_spec.items()
    }
    sentinel['position'] = tf.constant(end, tf.int64)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(sentinel))

  def step(expected, ex):
    missing = tf.range(expected, ex['position'])
    noted = tf.cond(
        tf.size(missing) > 0,
        lambda: _note(names_of(missing)),
        lambda: tf.constant(True),
    )
    with tf.control_dependencies([noted]):
      following = ex['position'] + 1
    return following, ex

  ds = ds.scan(tf.constant(start, tf.int64), _plain(step))
  if end is not None:
    ds = ds.filter(_plain(lambda ex: ex['position'] < end))
  return ds


def _fill_gaps(ds, start, replace):
  """Inserts replace(q) for each position q missing from ds, in place;
  drops the `position` key."""
  spec = {
      k: tf.TensorSpec(v.shape, v.dtype) for k, v in ds.element_spec.items()
  }

  def step(expected, ex):
    missing = tf.range(expected, ex['position'])

    def with_replacements():
      new = tf.map_fn(replace, missing, fn_output_signature=spec)
      return {k: tf.concat([new[k], ex[k][None]], 0) for k in keep}

    out = tf.cond(
        tf.size(missing) > 0,
        with_replacements,
        lambda: {k: ex[k][None] for k in keep},
    )
    return ex['position'] + 1, out

  # The output drops `position` here: a separate map costs ~0.1 ms/image.
  keep = [k for k in spec if k != 'position']
  return ds.scan(tf.constant(start, tf.int64), _plain(step)).unbatch()


def _without(ds, *keys):
  return ds.map(
      _plain(lambda ex: {k: v for k, v in ex.items() if k not in keys})
  )


def _base_key(seed, *data):
  """A stateless int64[2] key folded from a seed and Python ints, computed
  eagerly once and held as a constant (a graph then folds in one tensor)."""
  with tf.init_scope():
    key = tf.constant([seed, 0x5EED], tf.int64)
    for x in data:
      key = _fold(key, x)
    return tf.constant(key.numpy())


def _fold(key, x):
  return tf.random.experimental.stateless_fold_in(key, tf.cast(x, tf.int64))


def _threads(config):
  return config.data.get('threads', 0) or os.cpu_count() or 1


# --------------------------------------------------------------- training


def train_dataset(config, *, start_step=0, process_index=0, process_count=1):
  """The endless, batched training tf.data.Dataset of one host."""
  batch = _host_batch(config, process_count)
  start = start_step * batch
  params = _params(config)
  seed, host = config.train.seed, process_index
  threads = _threads(config)
  source = _source(config)
  example_key = lambda p: _fold(_base_key(seed, host, 3), p)
  if source is None:
    ds = _fake(config, params, start, process_index, crops=None, train=True)
  elif getattr(source, 'prepared', False):
    ds = _prepared_train(
        config, source, params, start, process_index, process_count, example_key
    )
  elif getattr(source, 'streaming', False) and not config.data.cache:
    # A stream cannot fetch a replacement: an unreadable record is dropped.
    ds = source.train_stream(
        config.data.train_split, seed, start, process_index, process_count
    )
    ds = _map_tolerantly(
        ds,
        lambda ex: dict(
            image=preprocess.train_image(
                ex['encoded'], example_key(ex['position']), params
            ),
            label=ex['label'],
            position=ex['position'],
        ),
        threads,
    )
    ds = _name_gaps(
        ds,
        start,
        lambda m: tf.strings.join(
            [
                f'{config.data.name} {config.data.train_split} record at training '
                f'stream position ',
                tf.strings.as_string(m),
                f' of host {host}',
            ]
        ),
    )
    ds = _without(ds, 'position')
  else:
    table, _ = source.table(
        config.data.train_split, process_index, process_count, config.data.cache
    )

    def load(p, idx):
      return dict(
          image=preprocess.train_image(table.read(idx), example_key(p), params),
          label=tf.gather(table.labels, idx),
          position=p,
      )

    def replace(p):
      """The first readable of p's keyed replacement draws."""
      candidates = _candidates(table, seed, host, p)
      tries = (
          tf.data.Dataset.range(1, _MAX_ATTEMPTS)
          .map(_plain(lambda j: dict(load(p, candidates[j]), tried=j)))
          .ignore_errors()
      )
      failed = tf.data.Dataset.from_tensors(p).map(
          _plain(
              lambda p: _all_unreadable(
                  tf.gather(table.names, candidates),
                  dict(load(p, candidates[0]), tried=p),
              )
          )
      )
      ex = tries.concatenate(failed).take(1).get_single_element()
      names = tf.gather(table.names, candidates[: ex['tried']])
      with tf.control_dependencies([_note(names)]):
        return {k: tf.identity(v) for k, v in ex.items() if k != 'tried'}

    positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
    ds = _map_tolerantly(
        positions,
        lambda p: load(p, _candidates(table, seed, host, p, 1)[0]),
        threads,
    )
    ds = _fill_gaps(ds, start, replace)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.prefetch(config.data.prefetch or tf.data.AUTOTUNE)
  return ds.with_options(_options(config))


def _prepared_train(config, source, params, start, host, count, example_key):
  """A prepared dataset's training examples (prepared_source.py): read by
  index in the order _candidates gives, augmented from the stored square."""
  from alexnet_jax.core import prepared_source  # pylint: disable=g-import-not-at-top

  seed, threads = config.train.seed, _threads(config)
  ds = prepared_source.train_examples(
      source,
      config.data.train_split,
      lambda epoch: _fold(_base_key(seed, host, 1), epoch),
      start,
      host,
      count,
      config.data.cache,
      threads,
  )
  return ds.map(
      _plain(
          lambda ex: dict(
              image=preprocess.train_stored(
                  ex['image'],
                  example_key(ex['position']),
                  params,
                  source.storage,
              ),
              label=ex['label'],
          )
      ),
      num_parallel_calls=threads,
      deterministic=True,
  )


def train_iterator(config, *, start_step=0, process_index=0, process_count=1):
  """Endless iterator of dict(image=f32[b, H, W, 3], label=i32[b]) with
  b = config.optim.batch_size // process_count; batch k depends only on
  (config.train.seed, k)."""
  ds = train_dataset(
      config,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
  )
  return ds.as_numpy_iterator()


def _host_batch(config, process_count):
  batch = config.optim.batch_size
  if batch % process_count:
    raise ValueError(
        f'config.optim.batch_size={batch} is not divisible by '
        f'the {process_count} processes'
    )
  return batch // process_count


def _candidates(table, seed, host, p, count=_MAX_ATTEMPTS):
  """int64[count]: the image read for stream position p (from the epoch's
  shuffled order), then keyed draws that replace it if unreadable."""
  n = table.size
  epoch, i = p // n, p % n
  first = tf.random.experimental.index_shuffle(
      i, _fold(_base_key(seed, host, 1), epoch), n - 1
  )
  replace = _fold(_base_key(seed, host, 2), p)
  others = [
      tf.random.stateless_uniform([], _fold(replace, j), 0, n, dtype=tf.int64)
      for j in range(1, count)
  ]
  return tf.stack([tf.cast(first, tf.int64)] + others)


def _all_unreadable(names, like):
  """Fails the pipeline: none of a position's draws could be read."""
  check = tf.debugging.Assert(
      False,
      [
          f'{_MAX_ATTEMPTS} images in a row could not be read (truncated, empty '
          'or not images); is the dataset corrupt? Tried:',
          names,
      ],
      summarize=_MAX_ATTEMPTS,
  )
  with tf.control_dependencies([check]):
    return {k: tf.identity(v) for k, v in like.items()}


# ------------------------------------------------------------- evaluation


def eval_dataset(
    config,
    split,
    *,
    preprocessing=None,
    crops=None,
    process_index=0,
    process_count=1,
):
  """(unbatched tf.data.Dataset of readable examples, number of batches)."""
  params = _params(config, preprocessing)
  crops = crops or config.data.eval_crops
  batch = _host_batch(config, process_count)
  source = _source(config)
  if source is None:
    n = FAKE_SPLIT_SIZES.get(split.split('[')[0], 1000)
    ds = _fake(config, params, 0, process_index, crops=crops, train=False).take(
        len(range(process_index, n, process_count))
    )
    total = n
  elif getattr(source, 'prepared', False):
    from alexnet_jax.core import prepared_source  # pylint: disable=g-import-not-at-top

    ds, _, total = prepared_source.eval_examples(
        source,
        split,
        process_index,
        process_count,
        config.data.cache,
        _threads(config),
    )
    ds = ds.map(
        _plain(
            lambda ex: dict(
                image=preprocess.eval_stored(
                    ex['image'], params, source.storage, crops
                ),
                label=ex['label'],
            )
        ),
        num_parallel_calls=_threads(config),
        deterministic=True,
    )
  else:
    ds, total = map_readable(
        config,
        split,
        lambda e: preprocess.eval_image(e, params, crops),
        process_index=process_index,
        process_count=process_count,
    )
  # Every host yields the same number of batches (hosts may hold one more
  # example than others).
  per_host = -(-total // process_count)
  num_batches = -(-per_host // batch)
  return ds.with_options(_options(config)), num_batches


def map_readable(config, split, fn, *, process_index=0, process_count=1):
  """(dataset of dict(image=fn(encoded), label) over a host's readable
  examples of `split` in order, size of the whole split). Unreadable files
  are skipped and named."""
  source = _source(config)
  if source is None:
    raise ValueError("data.name='fake' has no files to read")
  if getattr(source, 'streaming', False) and not config.data.cache:
    records, names_of, size, total = source.eval_stream(
        split, process_index, process_count
    )
    ds = _map_tolerantly(
        records.enumerate(),
        lambda i, ex: dict(
            image=fn(ex['encoded']), label=ex['label'], position=i
        ),
        _threads(config),
    )
  else:
    table, total = source.table(
        split, process_index, process_count, config.data.cache
    )
    size = table.size
    names_of = lambda m: tf.gather(table.names, m)
    ds = _map_tolerantly(
        tf.data.Dataset.range(size),
        lambda i: dict(
            image=fn(table.read(i)),
            label=tf.gather(table.labels, i),
            position=i,
        ),
        _threads(config),
    )
  ds = _name_gaps(ds, 0, names_of, end=size)
  return _without(ds, 'position').with_options(_options(config)), total


def eval_iterator(config, split, **options):
  """Finite iterator of dict(image, label, mask); the last batch (and any
  batch a host has no examples left for) is padded, mask marking real
  examples. `options`: eval_dataset's keyword arguments."""
  ds, num_batches = eval_dataset(config, split, **options)
  batch = _host_batch(config, options.get('process_count', 1))
  ds = ds.batch(batch).prefetch(config.data.prefetch or tf.data.AUTOTUNE)
  return _padded(
      ds.as_numpy_iterator(),
      batch,
      num_batches,
      ds.element_spec['image'].shape[1:],
  )


def _padded(batches, batch, num_batches, image_shape):
  produced = 0
  for ex in batches:
    n = len(ex['label'])
    mask = np.arange(batch) < n
    if n < batch:
      pad = batch - n
      ex = dict(
          image=np.concatenate(
              [
                  ex['image'],
                  np.zeros((pad,) + ex['image'].shape[1:], np.float32),
              ]
          ),
          label=np.concatenate([ex['label'], np.zeros(pad, np.int32)]),
      )
    yield dict(image=ex['image'], label=ex['label'].astype(np.int32), mask=mask)
    produced += 1
  for _ in range(num_batches - produced):
    yield dict(
        image=np.zeros((batch,) + tuple(image_shape), np.float32),
        label=np.zeros(batch, np.int32),
        mask=np.zeros(batch, bool),
    )


def device_prefetch(batches, place, size=2):
  """Yields place(batch) for each host batch, keeping `size` placed batches
  in flight: `place` (e.g. Parallel.shard_batch) starts asynchronous copies
  to the devices, so the next batches' transfers overlap the current step."""
  queue = collections.deque()
  for batch in batches:
    queue.append(place(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


# ------------------------------------------------------------------- fake


def _fake(config, params, start, host, *, crops, train):
  """Random images (a bank of 16, cycled) and labels p % num_classes."""
  size = params.image_size
  shape = [size, size, 3] if crops in (None, 1) else [crops, size, size, 3]
  bank = tf.random.stateless_normal([16] + shape, [config.train.seed, host])
  classes = config.model.num_classes
  positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
  del train
  return positions.map(
      _plain(
          lambda p: dict(
              image=tf.gather(bank, p % 16),
              label=tf.cast(p % classes, tf.int32),
          )
      )
  )
