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
including the fraction of the device's peak FLOP/s (`PEAKS` below).

`--simulate=cuda[:DEVICES]` or `--simulate=tpu[:DEVICES]` runs the same
sequence on this machine's CPU at a tiny size, as if the platform were
there: tests/test_benchmark.py checks the command's own logic that way.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

# Dense peak TFLOP/s per JAX device, from the vendors' datasheets (no
# structured sparsity). GPUs: 'fp32' (CUDA cores), 'tf32' and 'bf16'
# (tensor cores); None where the part has no such units (V100, T4: XLA then
# runs those at fp32 speed). TPUs: 'bf16' of the MXUs; float32 matmuls run
# as 1, 3 or 6 bf16 passes at precision default, high, highest. TPU v2/v3
# show each of a chip's two cores as a device (half the chip's figure);
# v4 and v5p one megacore device per chip; v5e and v6e one core per chip.
# Memory, for `benchmark compile`'s roofline: 'hbm_gb' (capacity, 1e9
# bytes), 'hbm_gbps' (HBM bandwidth, GB/s) and 'link_gbps' (the chip's
# bidirectional chip-to-chip bandwidth, GB/s: NVLink, TPU ICI), where a
# source states them. Sources: NVIDIA's H100 and A100 datasheets (H100
# SXM5 80 GB, 3.35 TB/s, NVLink 900 GB/s; H100 PCIe 80 GB, 2.0 TB/s, NVLink
# bridge 600 GB/s; A100 SXM4 80 GB, 2,039 GB/s, NVLink 600 GB/s); Cloud
# TPU's system-architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p,
# v6e): v4 32 GiB, 1,200 GB/s (no per-chip ICI figure stated); v5e 16 GB,
# 819 GB/s, ICI 400 GB/s; v5p 95 GB, 2,765 GB/s, ICI 1,200 GB/s; v6e
# 32 GB, 1,638 GB/s, ICI 800 GB/s.
PEAKS = (  # (device_kind pattern, {unit: TFLOP/s, memory}); first match wins
    (
        r'H100 PCIe',
        dict(
            fp32=51.0, tf32=378.0, bf16=756.0,
            hbm_gb=80.0, hbm_gbps=2000.0, link_gbps=600.0,
        ),
    ),
    (
        r'H100',
        dict(
            fp32=67.0, tf32=494.7, bf16=989.4,
            hbm_gb=80.0, hbm_gbps=3350.0, link_gbps=900.0,
        ),
    ),
    (r'H200|GH200', dict(fp32=67.0, tf32=494.7, bf16=989.4)),
    (
        r'A100-SXM4-80GB',
        dict(
            fp32=19.5, tf32=156.0, bf16=312.0,
            hbm_gb=80.0, hbm_gbps=2039.0, link_gbps=600.0,
        ),
    ),
    (r'A100', dict(fp32=19.5, tf32=156.0, bf16=312.0)),
    (r'L40S', dict(fp32=91.6, tf32=183.0, bf16=362.0)),
    (r'\bL4\b', dict(fp32=30.3, tf32=60.0, bf16=121.0)),
    (r'A10G?\b', dict(fp32=31.2, tf32=62.5, bf16=125.0)),
    (r'V100', dict(fp32=15.7, tf32=None, bf16=None)),
    (r'\bT4\b', dict(fp32=8.1, tf32=None, bf16=None)),
    (r'TPU v2', dict(bf16=22.5)),
    (r'TPU v3', dict(bf16=61.5)),
    (r'TPU v4', dict(bf16=275.0, hbm_gb=34.36, hbm_gbps=1200.0)),
    (
        r'TPU v5 ?lite|TPU v5e',
        dict(bf16=197.0, hbm_gb=16.0, hbm_gbps=819.0, link_gbps=400.0),
    ),
    (
        r'TPU v5',
        dict(bf16=459.0, hbm_gb=95.0, hbm_gbps=2765.0, link_gbps=1200.0),
    ),
    (
        r'TPU v6 ?lite|TPU v6e',
        dict(bf16=918.0, hbm_gb=32.0, hbm_gbps=1638.0, link_gbps=800.0),
    ),
)  # fmt: skip
TPU_F32_PASSES = {'default': 1, 'high': 3, 'highest': 6}
SIMULATED_KIND = {'cuda': 'NVIDIA A100-SXM4-80GB', 'tpu': 'TPU v4'}


def device_peak_tflops(
    device_kind: str, dtype: str, precision: str = 'default'
):
  """(TFLOP/s, unit) of one device for a model in `dtype` at `precision`,
  or (None, reason) when the device is not in PEAKS."""
  units = next(
      (u for pattern, u in PEAKS if re.search(pattern, device_kind or '')), None
  )
  if units is None:
    return None, f'{device_kind!r} is not in the peak table'
  if device_kind.startswith('TPU'):
    if dtype == 'bfloat16':
      return units['bf16'], 'bf16'
    passes = TPU_F32_PASSES[precision]
    return units['bf16'] / passes, f'f32 as {passes} bf16 pass(es)'
  if dtype == 'bfloat16':
    unit = 'bf16' if units['bf16'] else 'fp32'
  elif precision in ('default', 'high') and units['tf32']:
    unit = 'tf32'  # XLA:GPU's default for float32 dots
  else:
    unit = 'fp32'
  return units[unit], unit


def device_memory(device_kind: str) -> dict:
  """{hbm_gb, hbm_gbps, link_gbps} of one device (None where PEAKS has no
  figure)."""
  units = next(
      (u for pattern, u in PEAKS if re.search(pattern, device_kind or '')), {}
  )
  return {k: units.get(k) for k in ('hbm_gb', 'hbm_gbps', 'link_gbps')}


# ----------------------------------------------------------------------------
# What is here (asked in a subprocess: importing jax in this process would
# preallocate GPU memory the benchmark workers need).

_PROBE = r"""
import json, jax
d = jax.devices()
torch_cuda = False
if jax.default_backend() == 'gpu':   # torch's import is slow: CUDA only
  try:
    import torch
    torch_cuda = bool(torch.cuda.is_available() and torch.version.cuda)
  except Exception:
    pass
platform = {'gpu': d[0].platform}.get(jax.default_backend(),
                                    jax.default_backend())
print(json.dumps(dict(platform=platform, devices=len(d),
                      device_kind=d[0].device_kind, torch_cuda=torch_cuda)))
"""


def probe(simulate: str | None = None) -> dict:
  """{platform, devices, device_kind, torch_cuda, simulated}."""
  if not simulate and os.environ.get('JAX_PLATFORMS') == 'cpu':
    return dict(
        platform='cpu',
        devices=None,
        device_kind='cpu',
        torch_cuda=False,
        simulated=False,
    )
  if simulate:
    platform, _, count = simulate.partition(':')
    if platform not in SIMULATED_KIND:
      raise SystemExit(f'--simulate={simulate!r}: use cuda[:N] or tpu[:N]')
    return dict(
        platform=platform,
        devices=int(count or 1),
        device_kind=SIMULATED_KIND[platform],
        torch_cuda=False,
        simulated=True,
    )
  env = dict(
      os.environ,
      XLA_PYTHON_CLIENT_PREALLOCATE='false',
      TF_CPP_MIN_LOG_LEVEL='3',
  )
  out = subprocess.run(
      [sys.executable, '-c', _PROBE],
      check=True,
      env=env,
      stdout=subprocess.PIPE,
      text=True,
  ).stdout
  return dict(json.loads(out.strip().splitlines()[-1]), simulated=False)


def annotate(record: dict, info: dict, precision: str) -> dict:
  """Adds the platform and the fraction of the device's peak to a record
  of `benchmark train` / `infer` (achieved_gflops per device)."""
  peak, unit = device_peak_tflops(
      info['device_kind'], record['dtype'], precision
  )
  record.update(
      platform=info['platform'],
      device_kind=info['device_kind'],
      precision=precision,
      peak_tflops=peak,
      peak_unit=unit,
  )
  if info.get('simulated'):
    record['simulated'] = True
  if peak:
    record['frac_of_device_peak'] = record['achieved_gflops'] / (peak * 1e3)
  return record


# ----------------------------------------------------------------------------
# The maintainer's sequence.

REPO = pathlib.Path(__file__).resolve().parents[2]


def _emit(record, args):
  from alexnet_jax.benchmarks import harness

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
        skipped='no tests/ beside this package ' '(run from a git checkout)',
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
  from alexnet_jax import benchmark
  from alexnet_jax.benchmarks import model as model_bench

  info = probe(args.simulate)
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

  sub = benchmark.parse_args(['train'])
  sub.command_line = args.command_line
  sub.out = args.out
  sub.platform_info = info
  sub.precision = args.precision
  sub.variant = ['paper']
  sub.dtype = ['float32', 'bfloat16']
  sub.impls = ['jax'] + (['torch'] if info['torch_cuda'] else [])
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
    par = benchmark.parse_args(['parallel'])
    par.command_line, par.out = args.command_line, args.out
    par.modes = ['single', 'model']
    par.sequential = True  # one process at a time on the device
    par.batch, par.steps, par.warmup = sub.batch, sub.steps, sub.warmup
    par.image_size, par.width_scale = sub.image_size, sub.width_scale
    for rec in benchmark._delegate('parallel', par):
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
