"""The chips `benchmark compile` compiles for, without one present.

XLA compiles for a TPU topology or a GPU model on a CPU-only machine:
`jax.experimental.topologies.get_topology_desc` returns compile-only
devices (they can be laid out in a mesh and compiled for, never run on).

* TPU: libtpu (`pip install 'jax[tpu]'`, the `compile` extra) describes any
  topology by name. One device per chip: v4 and v5p as megacores (the
  chip's two TensorCores as one device, as Cloud TPU runs them), v5e and
  v6e have one TensorCore. libtpu's smallest host is 2x2 chips, so every
  target is a 2x2 slice and a mode uses its first devices.
* GPU: the CUDA plugin (jax-cuda12-plugin, jax-cuda12-pjrt, and
  nvidia-cuda-nvcc-cu12 for libdevice) compiles for the GPU an XLA
  `GpuTargetConfigProto` describes. Those of H100 SXM and A100 SXM 80GB
  are alexnet_jax/assets/gpu_targets/*.txtpb, from XLA's own specs (each
  file names its source and licence). The topology string is
  partitions x hosts x GPUs per host.

Both work with JAX_PLATFORMS=cpu (as the tests run): the compile-only
devices do not depend on the process's backend, and JAX on CPU is
unaffected by the packages being installed.
"""

import dataclasses
import functools
import importlib.resources
import importlib.util
import os

INSTALL_HINT = (
    "pip install -r requirements-compile.txt (or -e '.[compile]') for the "
    'TPU and CUDA compilers'
)


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # 'tpu' or 'cuda'
  description: str
  topology: str = ''  # TPU: a libtpu topology name
  chip_config: str | None = None  # TPU: 'megacore' for v4 / v5p
  spec_file: str = ''  # GPU: a GpuTargetConfigProto in assets/gpu_targets
  gpu_model: str = ''  # GPU: the name get_topology_desc takes


TARGETS = {
    t.name: t
    for t in (
        Target('v4', 'tpu', 'TPU v4 (megacore)', 'v4:2x2x1', 'megacore'),
        Target('v5e', 'tpu', 'TPU v5e (v5 lite)', 'v5e:2x2'),
        Target('v5p', 'tpu', 'TPU v5p (megacore)', 'v5p:2x2x1', 'megacore'),
        Target('v6e', 'tpu', 'TPU v6e (Trillium)', 'v6e:2x2'),
        Target(
            'h100',
            'cuda',
            'NVIDIA H100 SXM 80GB',
            spec_file='h100_sxm.txtpb',
            gpu_model='h100',
        ),
        Target(
            'a100',
            'cuda',
            'NVIDIA A100 SXM4 80GB',
            spec_file='a100_sxm_80.txtpb',
            gpu_model='a100',
        ),
    )
}
# The largest mode of a 2x2 TPU slice; GPUs take any count.
TPU_SLICE_DEVICES = 4


def unavailable(platform: str) -> str | None:
  """Why this environment cannot compile for `platform`, or None."""
  if platform == 'tpu':
    if importlib.util.find_spec('libtpu') is None:
      return f'libtpu is not installed: {INSTALL_HINT}'
    return None
  if platform == 'cuda':
    missing = [
        name
        for name in ('jax_plugins.xla_cuda12', 'nvidia.cuda_nvcc')
        if _find(name) is None
    ]
    if missing:
      return f'{" and ".join(missing)} not installed: {INSTALL_HINT}'
    return None
  raise ValueError(f'platform {platform!r} is not tpu or cuda')


def _find(name):
  try:
    return importlib.util.find_spec(name)
  except ModuleNotFoundError:
    return None


# device_kind (what a real chip calls itself) -> target; first match wins.
KINDS = (
    (r'H100', 'h100'),
    (r'A100', 'a100'),
    (r'TPU v4', 'v4'),
    (r'TPU v5 ?lite|TPU v5e', 'v5e'),
    (r'TPU v5', 'v5p'),
    (r'TPU v6 ?lite|TPU v6e', 'v6e'),
)


def for_device_kind(kind: str) -> str | None:
  """The target compiled for a chip of this device_kind, or None."""
  import re

  return next((t for p, t in KINDS if re.search(p, kind or '')), None)


def target(name: str) -> Target:
  if name not in TARGETS:
    raise ValueError(f'--target {name!r} is not one of {", ".join(TARGETS)}')
  return TARGETS[name]


def gpu_spec_text(t: Target) -> str:
  return (
      importlib.resources.files('alexnet_jax.assets')
      .joinpath('gpu_targets', t.spec_file)
      .read_text()
  )


@functools.cache
def devices(name: str, count: int) -> tuple:
  """`count` compile-only devices of target `name`."""
  from jax.experimental import topologies

  t = target(name)
  reason = unavailable(t.platform)
  if reason:
    raise RuntimeError(f'--target {name}: {reason}')
  if t.platform == 'tpu':
    # libtpu takes a machine-wide lock against a second process driving
    # the same TPU; compile-only topologies drive none, so two compiling
    # processes (a test run beside a benchmark) may both load it.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    if count > TPU_SLICE_DEVICES:
      raise ValueError(
          f'--target {name}: {count} devices asked, the 2x2 slice has '
          f'{TPU_SLICE_DEVICES}'
      )
    kwargs = {'chip_config_name': t.chip_config} if t.chip_config else {}
    desc = topologies.get_topology_desc(
        platform='tpu', topology_name=t.topology, **kwargs
    )
  else:
    desc = topologies.get_topology_desc(
        t.gpu_model,
        platform='cuda',
        target_config=gpu_spec_text(t),
        topology=f'1x1x{count}',
    )
  return tuple(desc.devices[:count])
