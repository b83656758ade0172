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

A worker is `python -m alexnet_jax.benchmark _worker KIND SPEC`: it imports
`alexnet_jax.benchmarks.KIND` and calls its `setup(spec)`, which returns a
`Job`. Setup functions import JAX (or torch) themselves, after setting
whatever must be set before the backend starts.
"""

import argparse
from collections.abc import Callable
import ctypes
import dataclasses
import datetime
import functools
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

PROTOCOL = '@@bench '  # worker -> parent lines start with this


@dataclasses.dataclass
class Job:
  """What a worker runs.

  run(i): step i, returning once its result is on the host.
  facts: fields reported when the worker is ready (compile_s, version...).
  finish(): more fields for the final report, measured after peak RSS is
    read (e.g. matmul peaks, which allocate).
  """

  run: Callable[[int], Any]
  facts: dict
  finish: Callable[[], dict] = dict


# ----------------------------------------------------------------------------
# Worker side.


def rss_mb():
  """Peak resident memory of this process so far, MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_free_heap():
  """Returns the C heap's free pages to the OS (glibc only; else no-op).

  XLA's compiler leaves a few hundred MB of freed but fragmented heap
  behind, which would count in the step's peak RSS though the step never
  uses it. Every worker calls this after setting up, so peak RSS measures
  what each implementation's step holds.
  """
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _say(**record):
  print(PROTOCOL + json.dumps(record), flush=True)


def worker_main(kind, spec):
  """Sets up, reports `ready`, then serves `step` / `finish` commands."""
  module = importlib.import_module(f'alexnet_jax.benchmarks.{kind}')
  job = module.setup(spec)
  release_free_heap()
  start = time.perf_counter()
  job.run(0)
  first_step_s = time.perf_counter() - start
  step = 1
  while step < spec.get('warmup', 1):
    job.run(step)
    step += 1
  _say(event='ready', first_step_s=first_step_s, **job.facts)
  for line in sys.stdin:
    command = line.strip()
    if command == 'step':
      start, cpu = time.perf_counter(), time.process_time()
      job.run(step)
      _say(
          event='step',
          seconds=time.perf_counter() - start,
          cpu_seconds=time.process_time() - cpu,
      )
      step += 1
    elif command == 'finish':
      done = dict(peak_rss_mb=rss_mb())  # before finish() allocates
      done.update(job.finish())
      _say(event='done', **done)
      return
    else:
      raise ValueError(f'benchmark worker: unknown command {command!r}')


# ----------------------------------------------------------------------------
# Parent side.


class Worker:
  """The parent's handle on one worker process."""

  def __init__(self, kind, spec, env=None):
    self.spec = spec
    self.proc = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'alexnet_jax.benchmark',
            '_worker',
            kind,
            json.dumps(spec),
        ],
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
  fields), load (1-minute load average before and after).
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
      workers.append(Worker(kind, spec, env))
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


# ----------------------------------------------------------------------------
# Argument parsing shared by the benchmark commands.


def csv_choices(choices, name):
  def parse(text):
    values = [v for v in text.split(',') if v]
    bad = [v for v in values if v not in choices]
    if bad or not values:
      raise argparse.ArgumentTypeError(
          f'{name} {text!r}: use one or more of {", ".join(choices)}, '
          'comma-separated'
      )
    return values

  return parse


def positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'{text} is not a positive integer')
  return value
