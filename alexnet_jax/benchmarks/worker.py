"""The worker side of the harness (the parent, harness.Worker, starts it).

A worker process runs `worker.main([KIND, SPEC])`: it imports `alexnet_jax.benchmarks.KIND`, calls its `setup(spec)` (which
returns a `Job`), runs the untimed steps, reports `ready`, then serves the
parent's `step` and `finish` commands over stdin/stdout, one JSON line
each (lines starting with harness.PROTOCOL).
"""

from collections.abc import Callable
import ctypes
import dataclasses
import importlib
import json
import resource
import sys
import time
from typing import Any

from alexnet_jax.benchmarks import harness


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
  print(harness.PROTOCOL + json.dumps(record), flush=True)


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


def main(argv):
  """harness.Worker runs `python -c '...worker.main(sys.argv[1:])' KIND
  SPEC` (not `python -m` of this module: the worker modules import it for
  Job, and runpy would load it a second time as __main__)."""
  kind, spec = argv
  worker_main(kind, json.loads(spec))


def best_gflops(run, n, repeats=3):
  """Best-of-`repeats` GFLOP/s of `run()`, an n x n @ n x n matmul that
  returns once its result is ready (after one untimed call)."""
  run()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9
