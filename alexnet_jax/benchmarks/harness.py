"""The harness every benchmark runs on: workers, alternating steps, provenance.

How the figures are taken, so they hold on a shared, noisy machine:

* Every implementation (or parallel mode, or step variant) runs in its own
  worker process: its own peak RSS, its own XLA flags. A JAX worker imports
  neither torch nor TensorFlow, a PyTorch worker no JAX.
* Workers set up and compile one after the other, then the parent
  alternates single timed steps between them (A B A B ...), so drift in the
  machine's load hits all of them alike.
* Each step ends with what the trainer reads back to the host (the loss,
  and for the train steps the parameter norm); nothing else is copied.
* Records carry the machine (CPU, cores, AMX), the 1-minute load average
  before and after the measurement, the date, the command and the commit.

This module is the parent's side; benchmarks/worker.py is the worker's. A
worker process imports `alexnet_jax.benchmarks.KIND` (a `*_worker` module,
which imports JAX or torch at its top) and calls its `setup(spec)`, which
returns a `worker.Job`.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import flags

PROTOCOL = '@@bench '  # worker -> parent lines start with this
# How a worker process starts (the worker module imports this one).
_WORKER_COMMAND = (
    'import sys; from alexnet_jax.benchmarks import worker; '
    'worker.main(sys.argv[1:])'
)


class Worker:
  """The parent's handle on one worker process."""

  def __init__(self, kind, spec, env=None):
    self.spec = spec
    self.proc = subprocess.Popen(
        [sys.executable, '-c', _WORKER_COMMAND, kind, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )

  def receive(self):
    for line in self.proc.stdout:
      if line.startswith(PROTOCOL):
        return json.loads(line[len(PROTOCOL) :])
      sys.stderr.write(line)  # anything else the worker printed
    code = self.proc.wait()
    raise RuntimeError(
        f'benchmark worker {json.dumps(self.spec)} exited '
        f'with code {code} (its error is printed above)'
    )

  def send(self, command):
    self.proc.stdin.write(command + '\n')
    self.proc.stdin.flush()
    return self.receive()

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()


def compare(kind, specs, *, steps, settle_s=0.1, envs=None, sequential=False):
  """Runs each spec in its own worker, steps alternating; returns results.

  Workers set up one at a time (compilation does not overlap a timed
  step), then step i of every worker runs before step i+1 of any.
  `sequential`: each worker runs all its steps and exits before the next
  starts (on a GPU or TPU, where each must own the device's memory). Each
  result: ready (the worker's facts), steps and cpu_steps (seconds of each
  timed step, wall and this process's CPU), done (peak RSS and finish()'s
  fields), load (1-minute load average before and after). `kind`: the
  worker module's name under alexnet_jax.benchmarks, or a function of the
  spec giving it.
  """
  envs = envs or [None] * len(specs)
  if sequential:
    return [
        compare(kind, [s], steps=steps, settle_s=0, envs=[e])[0]
        for s, e in zip(specs, envs)
    ]
  workers, results = [], []
  load_before = load()
  try:
    for spec, env in zip(specs, envs):
      name = kind if isinstance(kind, str) else kind(spec)
      workers.append(Worker(name, spec, env))
      results.append(dict(ready=workers[-1].receive(), steps=[], cpu_steps=[]))
    for _ in range(steps):
      for worker, result in zip(workers, results):
        time.sleep(settle_s)  # let the other worker's threads go idle
        reply = worker.send('step')
        result['steps'].append(reply['seconds'])
        result['cpu_steps'].append(reply['cpu_seconds'])
    for worker, result in zip(workers, results):
      result['done'] = worker.send('finish')
  finally:
    for worker in workers:
      worker.close()
  for result in results:
    result['load'] = [load_before, load()]
  return results


def step_fields(result, batch):
  """Step-time fields of a record from one compare() result."""
  steps = result['steps']
  step_s = statistics.median(steps)
  return dict(
      step_ms=step_s * 1e3,
      step_ms_min=min(steps) * 1e3,
      step_ms_max=max(steps) * 1e3,
      steps=len(steps),
      step_cpu_ms=statistics.median(result['cpu_steps']) * 1e3,
      img_per_s=batch / step_s,
  )


# ----------------------------------------------------------------------------
# Provenance and output.


def load():
  """The 1-minute load average (what `uptime` shows first), or None."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def machine():
  """'Nx CPU model, AMX|no AMX' from /proc/cpuinfo (else platform's)."""
  try:
    with open('/proc/cpuinfo') as f:
      text = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  names = [
      l.split(':', 1)[1].strip()
      for l in text.splitlines()
      if l.startswith('model name')
  ]
  if not names:
    return platform.processor() or platform.machine()
  amx = 'AMX' if ' amx_tile' in text or ' amx_bf16' in text else 'no AMX'
  return f'{len(names)}x {names[0]}, {amx}'


@functools.cache
def commit():
  """The checkout's short commit (with '+' if it has changes), or None."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(
        ['git', 'rev-parse', '--short', 'HEAD'],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=10,
    )
    dirty = subprocess.run(
        ['git', 'status', '--porcelain', '-uno'],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=10,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  if rev.returncode:
    return None
  return rev.stdout.strip() + ('+' if dirty.stdout.strip() else '')


def stamp(record, command):
  """Adds date, machine, command and commit to a record."""
  record.update(
      date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      machine=machine(),
      command=command,
      commit=commit(),
  )
  return record


def emit(record, out=''):
  """Prints one JSON line and appends it to `out` (if given)."""
  line = json.dumps(record)
  print(line, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'a') as f:
      f.write(line + '\n')


def publish(record, args, records):
  """Stamps `record`, emits it to args.out and appends it to `records`."""
  emit(stamp(record, args.command_line), args.out)
  records.append(record)


# ----------------------------------------------------------------------------
# Flags shared by the benchmark modes (absl; the command defines each mode's).


def define_csv(fv, name, choices, help_text, default=None):
  """A comma-separated list of some of `choices` (a list; None if not
  given); anything else is an error naming what is accepted."""
  flags.DEFINE_list(name, default, help_text, flag_values=fv)

  def check(values):
    bad = [v for v in values or () if v not in choices]
    if bad or values == []:
      raise flags.ValidationError(
          f'{", ".join(map(repr, bad)) or "nothing"}: use one or more of '
          f'{", ".join(choices)}, comma-separated'
      )
    return True

  flags.register_validator(name, check, flag_values=fv)


def define_positive(fv, name, help_text, default=None):
  """An integer >= 1 (None if not given and no default)."""
  flags.DEFINE_integer(name, default, help_text, flag_values=fv)

  def check(value):
    if value is not None and value < 1:
      raise flags.ValidationError(f'{value} is not a positive integer')
    return True

  flags.register_validator(name, check, flag_values=fv)


def define_step_flags(fv, *, steps_help, warmup_help):
  """--image-size, --steps and --warmup (steps default to None: per mode)."""
  define_positive(fv, 'image-size', 'Input side in pixels.', default=224)
  define_positive(fv, 'steps', steps_help)
  define_positive(fv, 'warmup', warmup_help)


def define_width_scale_flag(fv):
  flags.DEFINE_float(
      'width-scale',
      1.0,
      '< 1 shrinks every layer (tests only).',
      flag_values=fv,
  )


def define_out_flag(fv):
  flags.DEFINE_string(
      'out', '', 'Also append the JSON lines to this file.', flag_values=fv
  )


def defaults(define_flags):
  """The defaults of the flags `define_flags(fv)` defines, as namespace()."""
  fv = flags.FlagValues()
  define_flags(fv)
  return namespace(fv)


def namespace(fv):
  """The values of the FlagValues `fv` as attributes ('-' as '_')."""
  return argparse.Namespace(
      **{name.replace('-', '_'): fv[name].value for name in fv}
  )
