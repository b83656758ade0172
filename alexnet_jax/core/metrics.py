"""The metric writers: TensorBoard, logging and WORKDIR/metrics.jsonl.

`JsonlWriter` puts every scalar in WORKDIR/metrics.jsonl, next to the
TensorBoard events, so runs can be plotted and committed without
TensorBoard. Each line is one event, `{"step": N, "time": T, name: value,
...}`: a training log (`train_*`, `epoch`, `images_per_sec`), an evaluation
(`val_*`) or the final test (`test_*`); docs/training.md lists the fields.
The hyperparameters go to TensorBoard and config.json, not to the log.
The metric collections the steps return (TrainMetrics, EvalMetrics) are in
steps.py, which does not import TensorFlow; clu's writers do.
"""

from collections.abc import Mapping
import json
import pathlib
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax.numpy as jnp
import numpy as np

JSONL_FILE = 'metrics.jsonl'


class JsonlWriter(metric_writers.MetricWriter):
  """Scalars (and hparams) as JSON lines; other summaries are not written."""

  def __init__(self, path):
    self._path = pathlib.Path(path)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self._path, 'a', encoding='utf-8')
    self._lock = threading.Lock()

  def _write(self, record: Mapping[str, Any]):
    with self._lock:
      self._file.write(json.dumps(record, default=_to_python) + '\n')
      # Every line reaches the file at once: a run killed later (SIGKILL,
      # a lost machine) keeps its log up to its last checkpoint, from which
      # the resumed run appends.
      self._file.flush()

  def write_scalars(self, step, scalars):
    record = {'step': int(step), 'time': round(time.time(), 3)}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    self._write(record)

  def write_hparams(self, hparams):
    del hparams  # config.json holds them, as written

  def write_texts(self, step, texts):
    self._write({'step': int(step), 'texts': dict(texts)})

  # Arrays have no useful JSON form: TensorBoard keeps those.
  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def flush(self):
    with self._lock:
      self._file.flush()

  def close(self):
    with self._lock:
      if not self._file.closed:
        self._file.close()


def _to_python(value):
  if isinstance(value, (np.ndarray, np.generic, jnp.ndarray)):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()
  if isinstance(value, (tuple, list)):
    return [_to_python(v) for v in value]
  return value


class ConsoleWriter(metric_writers.LoggingWriter):
  """CLU's LoggingWriter in short: one line of 4-digit scalars per event,
  and no hyperparameters (a run's config is its config.json). The first
  event of a step the trainer logs starts with its `Progress`."""

  def __init__(self):
    super().__init__()
    self._progress = {}  # step -> text (keyed: the writes are asynchronous)

  def progress(self, step: int, text: str):
    """Puts `text` at the start of the step's next line."""
    self._progress[step] = text

  def write_scalars(self, step, scalars):
    values = ', '.join(f'{k}={_short(v)}' for k, v in sorted(scalars.items()))
    progress = self._progress.pop(step, None)
    if progress:
      values = f'{progress} | {values}'
    logging.info('[%d] %s', step, values)

  def write_hparams(self, hparams):
    del hparams


class Progress(periodic_actions.ReportProgress):
  """CLU's ReportProgress (steps/s, percent, ETA, the time spent in its
  `timed` parts), put into the console line of the step's training event
  rather than logged as a line of its own: one line per logged step."""

  def __init__(self, console: ConsoleWriter, *, num_train_steps, every_steps):
    super().__init__(
        num_train_steps=num_train_steps,
        every_steps=every_steps,
        every_secs=None,
    )
    self._console = console

  def _apply(self, step: int, t: float):
    rate = (step - self._previous_step) / (t - self._previous_time)
    total = self._num_train_steps
    text = (
        f'{rate:.3g} steps/s, {100 * step / total:.1f}% ({step}/{total}), '
        f'ETA {_secs((total - step) / rate)}'
    )
    if self._time_per_part:
      elapsed = time.monotonic() - self._t0
      parts = ', '.join(
          f'{100 * dt / elapsed:.1f}% {name}'
          for name, dt in sorted(self._time_per_part.items())
      )
      text += f' ({_secs(elapsed)}: {parts})'
    self._console.progress(step, text)


def _secs(seconds: float) -> str:
  if seconds >= 3600:
    return f'{seconds / 3600:.1f} h'
  return f'{seconds / 60:.1f} min' if seconds >= 60 else f'{seconds:.0f} s'


def _short(value):
  value = _to_python(value)
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def read_jsonl(path) -> list[dict]:
  """The records of a metrics.jsonl file (scalar records only)."""
  out = []
  for line in pathlib.Path(path).read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      if 'step' in record and 'texts' not in record:
        out.append(record)
  return out


def create_writer(workdir, console: ConsoleWriter, *, just_logging=False):
  """Console + TensorBoard + JSONL writer for the workdir (one process)."""
  if just_logging:
    return metric_writers.AsyncMultiWriter([console])
  return metric_writers.AsyncMultiWriter(
      [
          console,
          metric_writers.SummaryWriter(str(workdir)),
          JsonlWriter(pathlib.Path(workdir) / JSONL_FILE),
      ]
  )
