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
import logging
import os
import threading

import numpy as np
import tensorflow as tf

from alexnet_jax.core import folder_source
from alexnet_jax.core import input_guard
from alexnet_jax.core import paths as paths_lib
from alexnet_jax.core import preprocess

# tf.data must never take an accelerator from JAX.
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF already initialised its devices; nothing to do
  pass

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
        'Skipping unreadable image %s (truncated, empty or not an image)',
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
    out['mean'] = [
        float(m) * out['pixel_scale'] for m in image.mean(axis=(0, 1))
    ]
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


# ------------------------------------------------------------------ sources


def _source(config):
  name = config.data.name
  if name == 'fake':
    return None
  if name.startswith('folder:'):
    spelled = name[len('folder:') :]
    try:
      # Resolved here, so a changed data root is never served from the cache.
      return folder_source.cached(paths_lib.expand(spelled))
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
  """The endless, batched training tf.data.Dataset of one host.

  It ends only if its files cannot be read (input_guard): iterate it
  through `train_iterator`, which says why in one line.
  """
  return _train_dataset(config, start_step, process_index, process_count)[0]


def _train_dataset(config, start_step, process_index, process_count):
  """(train_dataset, its input_guard.ReadGuard or None for fake data)."""
  batch = _host_batch(config, process_count)
  start = start_step * batch
  params = _params(config)
  seed, host = config.train.seed, process_index
  threads = _threads(config)
  source = _source(config)
  example_key = lambda p: _fold(_base_key(seed, host, 3), p)
  guard = None
  dataset = f'{config.data.name} {config.data.train_split}'
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
    names_of = lambda m: tf.strings.join(
        [
            f'{config.data.name} {config.data.train_split} record at training '
            f'stream position ',
            tf.strings.as_string(m),
            f' of host {host}',
        ]
    )
    guard = input_guard.ReadGuard(dataset, names_of, slack=threads)
    ds = _map_tolerantly(
        guard.watch(ds),
        guard.counted(
            lambda ex: dict(
                image=preprocess.train_image(
                    ex['encoded'], example_key(ex['position']), params
                ),
                label=ex['label'],
                position=ex['position'],
            ),
            lambda ex: ex['position'],
        ),
        threads,
    )
    ds = _name_gaps(ds, start, names_of)
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
      # Zeros of the draws' structure, not another decode: a decode here
      # could fail before the assert, with TensorFlow's own error instead of
      # the one line (the two ops are unordered).
      like = {
          k: tf.zeros(spec.shape, spec.dtype)
          for k, spec in tries.element_spec.items()
      }
      failed = tf.data.Dataset.from_tensors(p).map(
          _plain(
              lambda p: _all_unreadable(
                  tf.gather(table.names, candidates), like
              )
          )
      )
      ex = tries.concatenate(failed).take(1).get_single_element()
      names = tf.gather(table.names, candidates[: ex['tried']])
      with tf.control_dependencies([_note(names)]):
        return {k: tf.identity(v) for k, v in ex.items() if k != 'tried'}

    guard = input_guard.ReadGuard(
        dataset,
        lambda m: tf.gather(
            table.names,
            tf.map_fn(lambda p: _candidates(table, seed, host, p, 1)[0], m),
        ),
        slack=threads,
        files=table.size,
    )
    positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
    ds = _map_tolerantly(
        guard.watch(positions),
        guard.counted(
            lambda p: load(p, _candidates(table, seed, host, p, 1)[0]),
            lambda p: p,
        ),
        threads,
    )
    ds = _fill_gaps(ds, start, replace)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.prefetch(config.data.prefetch or tf.data.AUTOTUNE)
  return ds.with_options(_options(config)), guard


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
  storage, big = source.storage, params.resize_size

  def host_crop(ex):
    image, window = preprocess.train_stored_window(
        ex['image'], example_key(ex['position']), params, storage
    )
    return dict(image=image, label=ex['label'], window=window)

  def square(ex):
    return dict(
        image=preprocess.stored_square(ex['image'], storage, big),
        label=ex['label'],
    )

  fn = square if augment_place(config) == 'device' else host_crop
  return ds.map(_plain(fn), num_parallel_calls=threads, deterministic=True)


def augment_place(config):
  """Where training's crop and flip run for a prepared dataset: 'host' or
  'device' (config.data.augment, 'auto' by platform: device_augment.place)."""
  import jax  # pylint: disable=g-import-not-at-top

  from alexnet_jax.core import device_augment  # pylint: disable=g-import-not-at-top

  return device_augment.place(config.data.augment, jax.default_backend())


def device_prepare(config):
  """The train step's `prepare` (steps.train_step) for the batches
  train_iterator yields: None when they are float32 (the original images
  and fake data, normalised on the host), else the in-step augmentation
  and normalisation of the uint8 batches of a prepared dataset."""
  source = _source(config)
  if not getattr(source, 'prepared', False):
    return None
  from alexnet_jax.core import device_augment  # pylint: disable=g-import-not-at-top

  return device_augment.prepare_fn(
      _params(config),
      seed=config.train.seed,
      crop=augment_place(config) == 'device',
  )


def train_iterator(config, *, start_step=0, process_index=0, process_count=1):
  """Endless iterator of dict(image=f32[b, H, W, 3], label=i32[b]) with
  b = config.optim.batch_size // process_count; batch k depends only on
  (config.train.seed, k). From a prepared dataset the images are uint8,
  the image_size crops with window=int32[b, 3] (augment_place 'host') or
  the stored squares ('device'), for the step's `device_prepare(config)`. Raises input_guard.UnreadableDataError (one
  line) if its files cannot be read."""
  ds, guard = _train_dataset(config, start_step, process_index, process_count)
  if guard is None:
    return ds.as_numpy_iterator()
  return guard.checked(ds.as_numpy_iterator(), finite=False)


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
  """Fails the pipeline: none of a position's draws could be read
  (input_guard.ReadGuard.checked turns this into one line)."""
  check = tf.debugging.Assert(
      False,
      [
          f'{_MAX_ATTEMPTS} images drawn for one position in a row '
          f'{input_guard.ASSERT_MARK}; truncated, empty or not images?',
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
  return _eval_dataset(
      config, split, preprocessing, crops, process_index, process_count
  )[:2]


def _eval_dataset(
    config, split, preprocessing, crops, process_index, process_count
):
  """eval_dataset's pair and its input_guard.ReadGuard (None: fake data)."""
  params = _params(config, preprocessing)
  crops = crops or config.data.eval_crops
  batch = _host_batch(config, process_count)
  source = _source(config)
  if source is None:
    n = FAKE_SPLIT_SIZES.get(split.split('[')[0], 1000)
    ds = _fake(config, params, 0, process_index, crops=crops, train=False).take(
        len(range(process_index, n, process_count))
    )
    total, guard = n, None
  elif getattr(source, 'prepared', False):
    # Every record was read at preparation: nothing to guard.
    guard = None
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
    ds, total, guard = _map_readable(
        config,
        split,
        lambda e: preprocess.eval_image(e, params, crops),
        process_index,
        process_count,
    )
  # Every host yields the same number of batches (hosts may hold one more
  # example than others).
  per_host = -(-total // process_count)
  num_batches = -(-per_host // batch)
  return ds.with_options(_options(config)), num_batches, guard


def map_readable(config, split, fn, *, process_index=0, process_count=1):
  """(dataset of dict(image=fn(encoded), label) over a host's readable
  examples of `split` in order, size of the whole split). Unreadable files
  are skipped and named; after input_guard.LIMIT of them in a row the
  dataset ends early."""
  return _map_readable(config, split, fn, process_index, process_count)[:2]


def _map_readable(config, split, fn, process_index, process_count):
  """map_readable's pair and its input_guard.ReadGuard."""
  source = _source(config)
  if source is None:
    raise ValueError("data.name='fake' has no files to read")
  threads = _threads(config)
  if getattr(source, 'streaming', False) and not config.data.cache:
    records, names_of, size, total = source.eval_stream(
        split, process_index, process_count
    )
    guard = input_guard.ReadGuard(
        f'{config.data.name} {split}', names_of, slack=threads
    )
    ds = _map_tolerantly(
        guard.watch(records.enumerate()),
        guard.counted(
            lambda i, ex: dict(
                image=fn(ex['encoded']), label=ex['label'], position=i
            ),
            lambda i, ex: i,
        ),
        threads,
    )
  else:
    table, total = source.table(
        split, process_index, process_count, config.data.cache
    )
    size = table.size
    names_of = lambda m: tf.gather(table.names, m)
    guard = input_guard.ReadGuard(
        f'{config.data.name} {split}', names_of, slack=threads
    )
    ds = _map_tolerantly(
        guard.watch(tf.data.Dataset.range(size)),
        guard.counted(
            lambda i: dict(
                image=fn(table.read(i)),
                label=tf.gather(table.labels, i),
                position=i,
            ),
            lambda i: i,
        ),
        threads,
    )
  ds = _name_gaps(ds, 0, names_of, end=size)
  ds = _without(ds, 'position').with_options(_options(config))
  return ds, total, guard


def eval_iterator(config, split, **options):
  """Finite iterator of dict(image, label, mask); the last batch (and any
  batch a host has no examples left for) is padded, mask marking real
  examples. `options`: eval_dataset's keyword arguments."""
  options = dict(
      dict(preprocessing=None, crops=None, process_index=0, process_count=1),
      **options,
  )
  ds, num_batches, guard = _eval_dataset(config, split, **options)
  batch = _host_batch(config, options['process_count'])
  ds = ds.batch(batch).prefetch(config.data.prefetch or tf.data.AUTOTUNE)
  batches = ds.as_numpy_iterator()
  if guard is not None:
    batches = guard.checked(batches, finite=True)
  return _padded(
      batches,
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
