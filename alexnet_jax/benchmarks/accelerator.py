"""The maintainer's check of a new GPU or TPU host, and the device peaks.

    python -m alexnet_jax.benchmark accelerator [--out FILE] [--quick]
    experiments/accelerator/run.sh            # the same, with a default --out

On a GPU or TPU host, in under 10 minutes (the install not counted):

1. `pytest -m accelerator tests/`: the formulation GPUs and TPUs run against
   the CPU one, two towers on two real devices, a short training run;
2. `benchmark train` of the paper model on one device, float32 (the
   platform's default precision) and bfloat16, with the PyTorch twin on
   CUDA when a CUDA build of torch is installed (in its own process, after
   JAX's has exited: JAX preallocates 75% of the GPU's memory);
3. `benchmark parallel` of one device against two towers on two devices,
   when there are two.

Every step appends JSON lines to --out: what ran, where, and how fast,
including the fraction of the device's peak FLOP/s (device.PEAKS).

`--simulate=cuda[:DEVICES]` or `--simulate=tpu[:DEVICES]` runs the same
sequence on this machine's CPU at a tiny size, as if the platform were
there: tests/test_benchmark.py checks the command's own logic that way.
"""

import pathlib
import re
import subprocess
import sys
import time
import types

from alexnet_jax.benchmarks import device
from alexnet_jax.benchmarks import harness
from alexnet_jax.benchmarks import model as model_bench
from alexnet_jax.benchmarks import parallel as parallel_bench

REPO = pathlib.Path(__file__).resolve().parents[2]


def _emit(record, args):
  harness.emit(harness.stamp(record, args.command_line), args.out)


def _pytest_counts(output: str) -> dict:
  counts = {
      k: int(n)
      for n, k in re.findall(
          r'(\d+) (passed|failed|skipped|errors?|deselected)', output
      )
  }
  counts.setdefault('passed', 0)
  counts.setdefault('failed', 0)
  return counts


def run_tests(args, info):
  """`pytest -m accelerator` (a checkout's tests/; installs have none)."""
  tests = REPO / 'tests'
  if not tests.is_dir():
    return dict(
        step='tests',
        skipped='no tests/ beside this package (run from a git checkout)',
    )
  command = [
      sys.executable,
      '-m',
      'pytest',
      '-q',
      '-m',
      'accelerator',
      str(tests / 'test_on_accelerator.py'),
  ]
  start = time.perf_counter()
  proc = subprocess.run(
      command,
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      timeout=args.test_timeout,
  )
  sys.stderr.write(proc.stdout[-3000:])
  return dict(
      step='tests',
      command=' '.join(command[1:]),
      returncode=proc.returncode,
      seconds=time.perf_counter() - start,
      **_pytest_counts(proc.stdout.splitlines()[-1] if proc.stdout else ''),
  )


def run(args):
  """The sequence in the module doc; returns every record written."""
  info = device.probe(args.simulate)
  if info['platform'] == 'cpu':
    raise SystemExit(
        'benchmark accelerator: no GPU or TPU here (JAX sees '
        'cpu); `--simulate=cuda` rehearses it on CPU'
    )
  quick = args.quick or bool(args.simulate)
  records = []

  def emit(record):
    record = dict(record, host=info)
    _emit(record, args)
    records.append(record)

  emit(dict(benchmark='accelerator', step='probe', **info))
  if args.simulate:
    # The tests need the device; rehearse only that they are collected.
    emit(dict(benchmark='accelerator', step='tests', skipped='simulated'))
  else:
    emit(dict(benchmark='accelerator', **run_tests(args, info)))

  sub = types.SimpleNamespace(
      command_line=args.command_line,
      out=args.out,
      platform_info=info,
      precision=args.precision,
      variant=['paper'],
      dtype=['float32', 'bfloat16'],
      impls=['jax'] + (['torch'] if info['torch_cuda'] else []),
      image_size=224,
      width_scale=1.0,
  )
  if args.simulate:  # tiny, on this CPU
    sub.batch, sub.image_size, sub.width_scale = 8, 67, 1 / 16
    sub.steps, sub.warmup, sub.matmul_size = 2, 1, 256
  else:
    sub.batch = args.batch if getattr(args, 'batch_given', False) else 128
    sub.steps, sub.warmup = (5, 2) if quick else (20, 5)
    sub.matmul_size = 8192
  if not info['torch_cuda']:
    emit(
        dict(
            benchmark='accelerator',
            step='torch',
            skipped=(
                'no CUDA build of torch here (pip install torch with CUDA to '
                'measure the PyTorch twin)'
                if info['platform'] == 'cuda'
                else f'PyTorch twin runs on CUDA only, not {info["platform"]}'
            ),
        )
    )
  for rec in model_bench.measure('train', sub):
    records.append(rec)

  if info['devices'] >= 2:
    par = types.SimpleNamespace(
        command_line=args.command_line,
        out=args.out,
        modes=['single', 'model'],
        sequential=True,  # one process at a time on the device
        batch=sub.batch,
        steps=sub.steps,
        warmup=sub.warmup,
        image_size=sub.image_size,
        width_scale=sub.width_scale,
    )
    for rec in parallel_bench.run(par):
      rec = dict(rec, host=info)
      records.append(rec)
  else:
    emit(
        dict(
            benchmark='accelerator',
            step='parallel',
            skipped='one device: two towers need two',
        )
    )
  return records
