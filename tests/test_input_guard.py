"""Input that cannot hang (input_guard.py): an all-unreadable dataset ends
the run in one line; a read that never returns still lets SIGINT/SIGTERM
through. Unit tests in-process, then real trainer processes and signals."""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from alexnet_jax.configs import smoke
from alexnet_jax.core import input_guard
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import train

REPO = pathlib.Path(__file__).resolve().parents[1]
# Generous: a hang detector, not a speed target (start-up and the first
# compile take ~30 s on 2 busy cores).
HANG = 300


def _folder(root, write, splits=('train', 'test'), per_class=3):
  for split in splits:
    for cls in ('a', 'b'):
      d = root / split / cls
      d.mkdir(parents=True)
      for i in range(per_class):
        write(d / f'{i}.jpg')
  return root


def _text(path):
  path.write_text('not an image')


def _config(root, **data):
  c = smoke.get_config()
  c.data.name = f'folder:{root}'
  c.model.num_classes = 2
  c.optim.batch_size = 4
  c.data.threads = 2
  for k, v in data.items():
    c.data[k] = v
  return c


# ---------------------------------------------------------------- the guard


def _decode_all(guard, readable):
  """A stream of positions whose decode fails unless readable(p)."""

  def fn(p):
    image = tf.io.decode_jpeg(tf.constant(b'not a jpeg'))
    return tf.cond(
        readable(p), lambda: tf.zeros([1, 1, 3], tf.uint8), lambda: image
    )

  ds = guard.watch(tf.data.Dataset.range(0, 1 << 40))
  return ds.map(
      guard.counted(fn, lambda p: p), num_parallel_calls=2
  ).ignore_errors()


def test_guard_ends_a_stream_of_unreadable_files_and_names_some():
  names = lambda m: tf.strings.join(['file', tf.strings.as_string(m)])
  guard = input_guard.ReadGuard('toy train', names, limit=10, slack=2)
  out = list(_decode_all(guard, lambda p: p < 5))
  assert len(out) == 5
  assert guard.stopped()
  with pytest.raises(input_guard.UnreadableDataError) as e:
    list(guard.checked(iter(out), finite=False))
  text = str(e.value)
  assert '\n' not in text
  assert text.startswith('toy train: 12 files in a row could not be read')
  assert f'({guard.tried} tried, 5 read)' in text
  last = guard.tried - 1
  assert f'file{last}' in text and f'file{last - 2}' in text


def test_guard_lets_a_mostly_readable_stream_run():
  guard = input_guard.ReadGuard('toy', lambda m: tf.as_string(m), limit=10)
  ds = _decode_all(guard, lambda p: p % 7 != 0).take(500)
  assert len(list(guard.checked(ds.as_numpy_iterator(), finite=True))) == 500
  assert not guard.stopped()


def test_guard_finite_split_with_nothing_readable():
  guard = input_guard.ReadGuard('toy test', lambda m: tf.as_string(m))
  ds = tf.data.Dataset.range(0)  # nothing at all: no error
  assert list(guard.checked(ds.as_numpy_iterator(), finite=True)) == []
  fn = guard.counted(
      lambda p: tf.io.decode_jpeg(tf.constant(b'x')), lambda p: p
  )
  ds = tf.data.Dataset.range(3).map(fn).ignore_errors()
  with pytest.raises(
      input_guard.UnreadableDataError,
      match=r'^toy test: none of the 3 files tried could be read',
  ):
    list(guard.checked(ds.as_numpy_iterator(), finite=True))


def test_all_unreadable_folder_train_and_eval_end_in_one_line(tmp_path):
  root = _folder(tmp_path / 'bad', _text)
  for cache in (True, False):
    c = _config(root, cache=cache)
    with pytest.raises(input_guard.UnreadableDataError) as e:
      next(input_pipeline.train_iterator(c))
    text = str(e.value)
    assert text.startswith(f'folder:{root} train: none of its 6 files')
    assert str(root / 'train') in text and '\n' not in text
    with pytest.raises(
        input_guard.UnreadableDataError,
        match=rf'folder:{root} test: none of the 6 files tried',
    ):
      list(input_pipeline.eval_iterator(c, 'test'))


def test_one_position_unreadable_in_every_draw_is_one_line(tmp_path):
  """Mostly unreadable (1 readable file in 60): a position whose 8 draws
  all fail stops the run (input_pipeline._all_unreadable), in one line."""
  root = tmp_path / 'mostly_bad'
  for cls in ('a', 'b'):
    d = root / 'train' / cls
    d.mkdir(parents=True)
    for i in range(30):
      _text(d / f'{i:02d}.jpg')
  good = next(pathlib.Path(smoke.sample_root()).glob('train/*/*.jpg'))
  (root / 'train' / 'a' / '00.jpg').write_bytes(good.read_bytes())
  it = input_pipeline.train_iterator(_config(root, cache=True))
  with pytest.raises(input_guard.UnreadableDataError) as e:
    for _ in range(1000):
      next(it)
  text = str(e.value)
  assert '\n' not in text and text.startswith(f'folder:{root} train: ')
  assert 'could not be read' in text and str(root) in text


# ------------------------------------------------------ waiting for input


def test_interruptible_passes_items_and_errors():
  assert list(input_guard.interruptible(iter(range(5)), lambda: False)) == [
      0,
      1,
      2,
      3,
      4,
  ]

  def failing():
    yield 1
    raise ValueError('bad batch')

  it = input_guard.interruptible(failing(), lambda: False)
  assert next(it) == 1
  with pytest.raises(ValueError, match='bad batch'):
    next(it)


def test_a_signal_is_heard_while_a_read_never_returns():
  """The main thread waits in Python: a real SIGINT reaches _Preemption's
  handler, and the wait gives up (InputWaitStopped)."""
  never = threading.Event()

  def blocked():
    never.wait()  # a read that never returns
    yield None

  with train._Preemption() as preempt:  # noqa: SLF001
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(input_guard.InputWaitStopped):
      next(input_guard.interruptible(blocked(), lambda: preempt.requested))
    assert preempt.signal == 'SIGINT'
  never.set()


def test_second_sigterm_exits_at_once():
  with train._Preemption() as preempt:  # noqa: SLF001
    os.kill(os.getpid(), signal.SIGTERM)
    assert preempt.requested and preempt.signal == 'SIGTERM'
    with pytest.raises(SystemExit) as e:
      os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.code == 143


def test_signal_messages_say_what_each_signal_does(caplog):
  caplog.set_level('WARNING')
  with train._Preemption():  # noqa: SLF001
    os.kill(os.getpid(), signal.SIGTERM)
  text = caplog.text
  assert 'Received SIGTERM: saving a checkpoint' in text
  assert 'a second SIGINT or SIGTERM exits at once' in text
  assert 'Ctrl-C again' not in text


# ------------------------------------------------------- real processes


def _main(root, workdir, *extra):
  """The trainer on the smoke config, reading the two-class folder `root`."""
  overrides = {
      'data.name': f'folder:{root}',
      'model.num_classes': 2,
      'optim.batch_size': 4,
      'model.width_scale': 0.0625,
  }
  flags = ['--config=configs/smoke.py', f'--workdir={workdir}']
  flags += [f'--config.{k}={v}' for k, v in overrides.items()]
  return [sys.executable, '-m', 'alexnet_jax.main', *flags, *extra]


def test_trainer_on_an_all_unreadable_folder_stops_with_one_line(tmp_path):
  root = _folder(tmp_path / 'bad', _text)
  proc = subprocess.run(
      _main(root, tmp_path / 'w', '--config.data.cache=False'),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=HANG,
      check=False,
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith(f'error: folder:{root} train: none of its 6')
  assert str(root / 'train') in errors[0]
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_trainer_waiting_on_a_read_that_never_returns_heeds_signals(
    tmp_path, sig
):
  """Every image is a FIFO nobody writes to: reading it blocks forever.
  The signal still stops the run at once, with 128 + its number."""
  root = _folder(tmp_path / 'fifo', os.mkfifo, per_class=1)
  log_path = tmp_path / 'log'
  with open(log_path, 'w+') as log:
    proc = subprocess.Popen(
        _main(root, tmp_path / 'w', '--config.data.cache=False'),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
      deadline = time.monotonic() + HANG
      while 'Starting from scratch' not in log_path.read_text():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, 'never started'
        time.sleep(0.1)
      time.sleep(2)  # now blocked waiting for the first batch
      proc.send_signal(sig)
      returncode = proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
  text = log_path.read_text()
  assert returncode == 128 + sig, text[-3000:]
  name = signal.Signals(sig).name
  assert f'Received {name}: saving a checkpoint' in text
  assert f'Stopped by {name} at step 0, before any step' in text
