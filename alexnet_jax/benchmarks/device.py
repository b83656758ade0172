"""What a benchmark needs of a device: what is here, and its peak FLOP/s.

`probe()` asks a subprocess which platform and devices JAX sees (importing
jax's backend in the benchmark's parent process would preallocate GPU
memory its workers need); `annotate()` adds the device and the fraction of
its datasheet peak (`PEAKS`) to a train or infer record. Both the model
benchmark and the maintainer's accelerator check import this module.
"""

import json
import os
import re
import subprocess
import sys

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
