"""The accelerator benchmark's own logic, on CPU (nobody here has a GPU/TPU).

`benchmark accelerator --simulate=cuda:2` runs the maintainer's whole
sequence on this CPU at a tiny size, as if two A100s were there; the peak
table and the record fields are checked directly.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from alexnet_jax import benchmark
from alexnet_jax.benchmarks import accelerator
from alexnet_jax.benchmarks import device
from alexnet_jax.benchmarks import harness

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    'kind, dtype, precision, peak, unit',
    [
        ('NVIDIA A100-SXM4-80GB', 'float32', 'default', 156.0, 'tf32'),
        ('NVIDIA A100-SXM4-40GB', 'float32', 'highest', 19.5, 'fp32'),
        ('NVIDIA A100 80GB PCIe', 'bfloat16', 'default', 312.0, 'bf16'),
        ('NVIDIA H100 80GB HBM3', 'float32', 'high', 494.7, 'tf32'),
        ('NVIDIA H100 PCIe', 'bfloat16', 'default', 756.0, 'bf16'),
        ('NVIDIA A10G', 'float32', 'default', 62.5, 'tf32'),
        ('NVIDIA L4', 'bfloat16', 'default', 121.0, 'bf16'),
        # No bf16 or TF32 units: XLA runs those at the fp32 rate.
        ('Tesla V100-SXM2-16GB', 'bfloat16', 'default', 15.7, 'fp32'),
        ('Tesla T4', 'float32', 'default', 8.1, 'fp32'),
        ('TPU v4', 'bfloat16', 'default', 275.0, 'bf16'),
        ('TPU v4', 'float32', 'highest', 275.0 / 6, 'f32 as 6 bf16 pass(es)'),
        ('TPU v3', 'float32', 'default', 61.5, 'f32 as 1 bf16 pass(es)'),
        ('TPU v5 lite', 'bfloat16', 'default', 197.0, 'bf16'),
        ('TPU v5', 'bfloat16', 'default', 459.0, 'bf16'),
        ('TPU v6 lite', 'float32', 'high', 918.0 / 3, 'f32 as 3 bf16 pass(es)'),
    ],
)
def test_device_peaks(kind, dtype, precision, peak, unit):
  assert device.device_peak_tflops(kind, dtype, precision) == (
      pytest.approx(peak),
      unit,
  )


def test_unknown_device_has_no_peak_and_says_so():
  peak, why = device.device_peak_tflops('NVIDIA B300', 'float32')
  assert peak is None and 'not in the peak table' in why
  rec = device.annotate(
      dict(dtype='float32', achieved_gflops=1e3),
      dict(platform='cuda', device_kind='NVIDIA B300'),
      'default',
  )
  assert 'frac_of_device_peak' not in rec and rec['peak_tflops'] is None


def test_annotate_gives_the_fraction_of_the_device_peak():
  rec = device.annotate(
      dict(dtype='float32', achieved_gflops=39_000.0),
      device.probe('cuda:2'),
      'default',
  )
  assert rec['platform'] == 'cuda' and rec['simulated']
  assert rec['frac_of_device_peak'] == pytest.approx(0.25)  # of TF32's 156


def test_simulate_parses_and_refuses_other_platforms():
  assert device.probe('tpu') == dict(
      platform='tpu',
      devices=1,
      device_kind='TPU v4',
      torch_cuda=False,
      simulated=True,
  )
  with pytest.raises(SystemExit, match='use cuda'):
    device.probe('rocm:2')


def test_on_cpu_the_command_refuses_and_says_how_to_rehearse(tmp_path):
  args = benchmark.parse_args(
      ['accelerator', '--out', str(tmp_path / 'x.jsonl')]
  )
  with pytest.raises(SystemExit, match='--simulate=cuda'):
    accelerator.run(args)  # JAX_PLATFORMS=cpu here (tests/conftest.py)


def test_sequential_compare_runs_one_worker_at_a_time(monkeypatch):
  alive, order = [], []

  class FakeWorker:

    def __init__(self, kind, spec, env=None):
      del kind
      assert not alive, 'two workers alive at once'
      alive.append(self)
      self.spec = spec
      order.append(spec['impl'])

    def receive(self):
      return {}

    def send(self, command):
      return dict(seconds=0.1, cpu_seconds=0.1) if command == 'step' else {}

    def close(self):
      alive.remove(self)

  monkeypatch.setattr(harness, 'Worker', FakeWorker)
  results = harness.compare(
      'model', [dict(impl='jax'), dict(impl='torch')], steps=2, sequential=True
  )
  assert order == ['jax', 'torch'] and len(results) == 2
  assert all(len(r['steps']) == 2 for r in results)


@pytest.mark.slow
def test_simulated_two_gpu_host_runs_the_whole_sequence(tmp_path):
  """experiments/accelerator/run.sh --simulate=cuda:2: about a minute of
  the tiny model's steps on CPU, as on two A100s."""
  out = tmp_path / 'accelerator.jsonl'
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  # The maintainer's command itself (the venv's python is first on PATH).
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
  proc = subprocess.run(
      [
          'bash',
          str(REPO / 'experiments' / 'accelerator' / 'run.sh'),
          str(out),
          '--simulate=cuda:2',
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=env,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:]
  records = [json.loads(line) for line in out.read_text().splitlines()]
  steps = [
      (
          r['benchmark'],
          r.get('step') or r.get('mode') or r.get('dtype') or r['target'],
      )
      for r in records
  ]
  assert steps == [
      ('accelerator', 'probe'),
      ('accelerator', 'tests'),
      ('accelerator', 'torch'),
      ('train', 'float32'),
      ('train', 'bfloat16'),
      ('parallel', 'single'),
      ('parallel', 'model'),
      # `benchmark compile --target auto`: this CPU has no chip to compile
      # for (on a GPU or TPU host, the bound beside the measured img/s).
      ('compile', 'auto'),
  ]
  for r in records:
    if r['benchmark'] == 'train':
      assert r['device_kind'] == 'NVIDIA A100-SXM4-80GB' and r['simulated']
      assert 0 < r['frac_of_device_peak'] < 1
      assert r['img_per_s'] > 0 and r['step_ms'] > 0
  assert records[2]['skipped'].startswith('no CUDA build of torch')
  assert records[-2]['devices'] == 2
  assert "'cpu'" in records[-1]['skipped']
  assert 'no measured train record' in proc.stdout
