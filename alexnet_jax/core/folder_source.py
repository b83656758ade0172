"""Image folders as a data source: ROOT/SPLIT/CLASS/IMAGE, no preparation.

`config.data.name='folder:/path/to/root'` (input_pipeline picks this source;
tfds_source.py is the other one). Images are .jpg/.jpeg/.png in any case;
a class's index is its position among the sorted class folder names; the
files of a split are listed once and interleaved by class (`files`).
"""

import dataclasses
import functools
import logging
import os

import numpy as np
import tensorflow as tf

from alexnet_jax.core import paths as paths_lib
from alexnet_jax.core import splits

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


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
            f'split {split!r} is not in {self.root!r}; it has {self.splits}'
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
    name, lo, hi = splits.parse_split(split, _LazySizes(self))
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


@functools.lru_cache(maxsize=8)
def cached(root):
  """The FolderSource of `root` (an expanded path), listed once per process."""
  return FolderSource(root)
