"""Input that cannot hang: unreadable streams end, waits heed signals.

Two ways a run could wait for input forever, and what stops each:

* Every file unreadable. The decode map runs behind tf.data's
  `ignore_errors()`, which drops an element whose decode fails and asks
  for the next: over an endless stream of unreadable files (a folder of
  text files named .jpg, a corrupt shard) it spins without ever yielding
  a batch. A `ReadGuard` counts, in tf.Variables updated inside the map,
  the files tried and when one was last read; a `take_while` in front of
  the map ends the stream once `limit` files in a row have failed, and
  `ReadGuard.checked` turns that end (or a finite split with nothing
  readable) into one `UnreadableDataError` line naming the dataset, how
  many files were tried and a few of them. Any source can use it: wrap
  the stream of positions or records with `watch`, the fallible map
  function with `counted`, and the iterator with `checked`.
* A read that never returns (a stalled network file system, a FIFO).
  `interruptible` reads an iterator on a thread of its own, so the main
  thread waits in Python, where signal handlers run, and gives up the
  wait when `stop()` says so (the trainer's SIGINT/SIGTERM flag).
"""

import queue
import re
import threading

import tensorflow as tf

# Files in a row that may fail before a stream is given up; decodes in
# flight (at most the map's parallelism) are allowed on top.
LIMIT = 64
# How many of the files tried the error names.
NAMED = 3


class UnreadableDataError(RuntimeError):
  """A dataset's files cannot be read; the message is one line."""


class InputWaitStopped(Exception):
  """`interruptible`'s stop() became true while waiting for input."""


class ReadGuard:
  """Counts a stream's reads and ends it when `limit` in a row fail.

  Args:
    dataset: how the error names the dataset (config.data.name and split).
    names_of: int64[m] stream positions -> string[m] names of their files.
    limit: failures in a row that end the stream (default LIMIT).
    slack: decodes that may be in flight at once (the map's parallelism).
    files: how many distinct files the stream cycles over, if known.
  """

  def __init__(self, dataset, names_of, *, limit=LIMIT, slack=0, files=None):
    self.dataset = dataset
    self.files = files
    self.limit = limit + slack
    self._names_of = names_of
    with tf.init_scope():  # eager variables even if built inside a graph
      self._tried = tf.Variable(0, dtype=tf.int64, trainable=False)
      self._read = tf.Variable(0, dtype=tf.int64, trainable=False)
      # `_tried` as it stood when the latest successful read started.
      self._read_at = tf.Variable(0, dtype=tf.int64, trainable=False)
      self._last = tf.Variable(-1, dtype=tf.int64, trainable=False)
      self._first = tf.Variable(-1, dtype=tf.int64, trainable=False)

  def watch(self, ds):
    """ds, ending once `limit` reads in a row have failed."""
    return ds.take_while(
        tf.autograph.experimental.do_not_convert(
            lambda *_: self._tried - self._read_at < self.limit
        )
    )

  def counted(self, fn, position_of):
    """fn, counting its calls and its successes (it fails when a file
    cannot be read); position_of(*args) is the element's stream position."""

    @tf.autograph.experimental.do_not_convert
    def wrapped(*args):
      p = tf.cast(position_of(*args), tf.int64)
      n = self._tried.assign_add(1)
      first = self._first.assign(
          tf.where(self._first < 0, p, tf.minimum(self._first, p))
      )
      with tf.control_dependencies([n, first, self._last.assign(p)]):
        out = fn(*args)
      flat = tf.nest.flatten(out)
      with tf.control_dependencies(flat):
        done = [
            self._read.assign_add(1),
            self._read_at.assign(tf.maximum(self._read_at, n)),
        ]
      with tf.control_dependencies(done):
        return tf.nest.pack_sequence_as(out, [tf.identity(x) for x in flat])

    return wrapped

  @property
  def tried(self) -> int:
    return int(self._tried.numpy())

  @property
  def read(self) -> int:
    return int(self._read.numpy())

  def stopped(self) -> bool:
    """True when the stream was ended for unreadable files."""
    return self.tried - int(self._read_at.numpy()) >= self.limit

  def _some_names(self):
    last, first = int(self._last.numpy()), int(self._first.numpy())
    positions = list(range(max(first, last - NAMED + 1), last + 1))
    if not positions:
      return []
    names = self._names_of(tf.constant(positions, tf.int64)).numpy()
    return list(dict.fromkeys(n.decode('utf-8', 'replace') for n in names))

  def error(self) -> UnreadableDataError:
    tried, read = self.tried, self.read
    if read:
      what = (
          f'{self.limit} files in a row could not be read ({tried} tried, '
          f'{read} read)'
      )
    elif self.files is not None and tried > self.files:
      what = f'none of its {self.files} files could be read ({tried} tries)'
    else:
      what = f'none of the {tried} files tried could be read'
    names = ', '.join(self._some_names())
    return UnreadableDataError(
        f'{self.dataset}: {what}; truncated, empty or not images? '
        f'e.g. {names}'
    )

  def checked(self, batches, *, finite):
    """Yields from `batches`; at their end raises UnreadableDataError if
    the stream was given up, or (finite) if nothing could be read.

    Also turns the training stream's own give-up (all of one position's
    replacement draws unreadable: input_pipeline._all_unreadable) into
    that one line.
    """
    try:
      yield from batches
    except tf.errors.InvalidArgumentError as e:
      match = re.search(
          r'\[([^\[\]]*' + ASSERT_MARK + r'[^\[\]]*)\]\s*\[(.*?)\]',
          str(e),
          re.S,
      )
      if not match:
        raise
      names = ', '.join(re.findall(r'"([^"]*)"', match.group(2))[:NAMED])
      raise UnreadableDataError(
          f'{self.dataset}: {match.group(1).strip()} e.g. {names}'
      ) from None
    if self.stopped() or (finite and self.tried and not self.read):
      raise self.error()


# The words input_pipeline._all_unreadable's assertion starts with.
ASSERT_MARK = 'could not be read'


def interruptible(iterator, stop, poll=0.25, size=2):
  """Yields iterator's items, read ahead on a daemon thread (`size` at
  most); while waiting, checks stop() every `poll` seconds and raises
  InputWaitStopped once it is true. Errors of the iterator are re-raised
  here. The main thread waits in Python, so signal handlers run.
  """
  items = queue.Queue(maxsize=size)
  done = object()
  quit_ = threading.Event()

  def read():
    try:
      for item in iterator:
        while not quit_.is_set():
          try:
            items.put((item, None), timeout=poll)
            break
          except queue.Full:
            continue
        if quit_.is_set():
          return
      items.put((done, None))
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
      items.put((done, e))

  thread = threading.Thread(target=read, name='input-reader', daemon=True)
  thread.start()
  try:
    while True:
      try:
        item, error = items.get(timeout=poll)
      except queue.Empty:
        if stop():
          raise InputWaitStopped() from None
        continue
      if item is done:
        if error is not None:
          raise error
        return
      yield item
  finally:
    quit_.set()
