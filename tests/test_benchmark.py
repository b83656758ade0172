"""The benchmark CLI at tiny size: records, fields and FLOP counting (no timing)."""

import json
import subprocess
import sys

import pytest

from alexnet_jax import benchmark


def test_paper_flops_match_the_layer_table():
  # Forward multiply-adds of the paper model (224 input, groups of 2), from
  # the paper's layer shapes by hand: output pixels x kernel size x kernels.
  macs = [55 * 55 * 11 * 11 * 3 * 96, 27 * 27 * 5 * 5 * 48 * 256,
          13 * 13 * 3 * 3 * 256 * 384, 13 * 13 * 3 * 3 * 192 * 384,
          13 * 13 * 3 * 3 * 192 * 256, 6 * 6 * 256 * 4096, 4096 * 4096,
          4096 * 1000]
  got = dict(benchmark.layer_flops('paper', 224))
  assert list(got.values()) == [2 * m for m in macs]
  assert benchmark.step_flops('infer', 'paper', 224, 2) == 2 * 2 * sum(macs)
  # Training: forward, weight gradients, input gradients except conv1's.
  assert benchmark.step_flops('train', 'paper', 224, 1) == (
      2 * (3 * sum(macs) - macs[0]))


def test_torchvision_flops():
  got = dict(benchmark.layer_flops('torchvision', 224))
  assert got['conv1'] == 2 * 55 * 55 * 11 * 11 * 3 * 64
  assert got['conv2'] == 2 * 27 * 27 * 5 * 5 * 64 * 192   # no groups
  assert got['fc6'] == 2 * 6 * 6 * 256 * 4096


def test_bad_arguments_name_what_is_accepted(capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args(['train', '--variant', 'vgg'])
  assert 'paper, torchvision' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    benchmark.parse_args(['train', '--dtype', 'float16'])
  assert 'float32, bfloat16' in capsys.readouterr().err


def test_quick_defaults():
  args = benchmark.parse_args(['train', '--quick'])
  assert (args.batch, args.steps, args.warmup) == (32, 3, 1)
  args = benchmark.parse_args(['train'])
  assert (args.batch, args.variant, args.dtype) == (128, ['paper'],
                                                    ['float32'])


@pytest.mark.parametrize('command', [
    'train', pytest.param('infer', marks=pytest.mark.slow)])
def test_cli_prints_one_record_per_implementation(command, tmp_path):
  torch = pytest.importorskip('torch')
  del torch
  out = tmp_path / 'bench.jsonl'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.benchmark', command,
       '--width-scale', '0.05', '--image-size', '67', '--batch', '2',
       '--steps', '2', '--warmup', '1', '--matmul-size', '64',
       '--out', str(out)],
      capture_output=True, text=True, check=True, timeout=600)
  lines = [json.loads(l) for l in proc.stdout.splitlines()
           if l.startswith('{')]
  assert [l['impl'] for l in lines] == ['jax', 'torch']
  assert [json.loads(l) for l in out.read_text().splitlines()] == lines
  for rec in lines:
    assert rec['benchmark'] == command
    assert (rec['model'], rec['batch'], rec['dtype']) == ('paper', 2,
                                                          'float32')
    assert rec['steps'] == 2
    for field in ('img_per_s', 'step_ms', 'peak_rss_mb', 'achieved_gflops',
                  'frac_of_xla_matmul_peak', 'frac_of_torch_matmul_peak'):
      assert rec[field] > 0, field
    assert rec['img_per_s'] == pytest.approx(2e3 / rec['step_ms'])
    assert rec['gflop_per_step'] == pytest.approx(benchmark.step_flops(
        command, 'paper', 67, 2, 0.05) / 1e9)
  jax_rec, torch_rec = lines
  assert jax_rec['ratio_to_torch'] == pytest.approx(
      torch_rec['step_ms'] / jax_rec['step_ms'])
  assert 'ratio_to_torch' not in torch_rec
  assert '| jax |' in proc.stdout and '| torch |' in proc.stdout
  # The JAX worker ran with the trainer's XLA flags and says which
  # convolutions it used.
  assert ('--xla_cpu_copy_insertion_use_region_analysis=true'
          in jax_rec['xla_flags'])
  assert jax_rec['conv_backend'] in ('onednn', 'xla')


def test_all_runs_the_headline_benchmarks(monkeypatch):
  """`all`: float32 train and infer of both models, one device vs two
  towers, the input pipeline (bf16 and the other modes have their own
  commands, to keep `all` near ten minutes)."""
  calls = []
  monkeypatch.setattr(benchmark, 'model_benchmark', lambda name, args: (
      calls.append((name, args.variant, args.dtype)) or [{'name': name}]))
  monkeypatch.setattr(benchmark, '_delegate', lambda name, args: (
      calls.append((name, args.modes)) or [{'name': name}]))
  records = benchmark.run_all(benchmark.parse_args(['all']))
  models = [('train', ['paper', 'torchvision'], ['float32']),
            ('infer', ['paper', 'torchvision'], ['float32'])]
  assert calls == models + [('parallel', ['single', 'model']),
                            ('input', ['single', 'model'])]
  assert len(records) == 4
  # --quick: the model steps only (about two minutes).
  calls.clear()
  benchmark.run_all(benchmark.parse_args(['all', '--quick']))
  assert calls == models


def test_parallel_benchmark_arguments_name_what_is_accepted(capsys):
  from alexnet_jax.benchmarks import parallel as parallel_benchmark
  with pytest.raises(SystemExit):
    parallel_benchmark.parse_args(['--modes', 'single,tensor'])
  assert 'single, model, jit, pmap, hybrid' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    parallel_benchmark.parse_args(['--batch', '0'])
  assert 'not a positive integer' in capsys.readouterr().err
  args = parallel_benchmark.parse_args(['--modes', 'single,model'])
  assert args.modes == ['single', 'model']
