"""The benchmark CLI at tiny size: records, fields and FLOP counting (no timing)."""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import benchmark
from alexnet_jax.benchmarks import harness
from alexnet_jax.benchmarks import input as input_bench
from alexnet_jax.benchmarks import model as model_bench
from alexnet_jax.benchmarks import parallel as parallel_bench
from alexnet_jax.benchmarks import profile_worker
from helpers import repo


def test_paper_flops_match_the_layer_table():
  # Forward multiply-adds of the paper model (224 input, groups of 2), from
  # the paper's layer shapes by hand: output pixels x kernel size x kernels.
  macs = [
      55 * 55 * 11 * 11 * 3 * 96,
      27 * 27 * 5 * 5 * 48 * 256,
      13 * 13 * 3 * 3 * 256 * 384,
      13 * 13 * 3 * 3 * 192 * 384,
      13 * 13 * 3 * 3 * 192 * 256,
      6 * 6 * 256 * 4096,
      4096 * 4096,
      4096 * 1000,
  ]
  got = dict(model_bench.layer_flops('paper', 224))
  assert list(got.values()) == [2 * m for m in macs]
  assert model_bench.step_flops('infer', 'paper', 224, 2) == 2 * 2 * sum(macs)
  # Training: forward, weight gradients, input gradients except conv1's.
  assert model_bench.step_flops('train', 'paper', 224, 1) == (
      2 * (3 * sum(macs) - macs[0])
  )


def test_torchvision_flops():
  got = dict(model_bench.layer_flops('torchvision', 224))
  assert got['conv1'] == 2 * 55 * 55 * 11 * 11 * 3 * 64
  assert got['conv2'] == 2 * 27 * 27 * 5 * 5 * 64 * 192  # no groups
  assert got['fc6'] == 2 * 6 * 6 * 256 * 4096


def test_bad_arguments_name_what_is_accepted():
  with pytest.raises(SystemExit, match="'vgg': use one or more of paper, torc"):
    benchmark.parse_args(['train', '--variant', 'vgg'])
  with pytest.raises(SystemExit, match='one or more of float32, bfloat16'):
    benchmark.parse_args(['train', '--dtype', 'float16'])
  with pytest.raises(SystemExit, match="mode 'trian': use one of all, train"):
    benchmark.parse_args(['trian'])
  # Each mode has its own flags: --modes is parallel's, not train's.
  with pytest.raises(SystemExit, match='modes'):
    benchmark.parse_args(['train', '--modes', 'single'])


@pytest.mark.parametrize(
    'mode, own, other',
    [('parallel', '--modes', '--variant'), ('train', '--variant', '--modes')],
)
def test_each_modes_help_lists_its_own_flags(mode, own, other):
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.benchmark', mode, '--help'],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0  # asking for help is no error (cli.parse_flags)
  listed = proc.stdout.split('\nflags:\n', 1)[1]  # after the docstring
  assert f'  {own}:' in listed and f'  {other}:' not in listed


def test_quick_defaults():
  args = benchmark.parse_args(['train', '--quick'])
  assert (args.batch, args.steps, args.warmup) == (32, 3, 1)
  args = benchmark.parse_args(['train'])
  assert (args.batch, args.variant, args.dtype) == (128, ['paper'], ['float32'])


# The tiny model and run every benchmark test uses.
TINY = '--width-scale=0.05 --image-size=67 --batch=2 --steps=2 --warmup=1'
TINY = TINY.split()


def _benchmark(*args):
  """`python -m alexnet_jax.benchmark ARGS` run to completion (its
  CompletedProcess, output captured)."""
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.benchmark', *args],
      capture_output=True,
      text=True,
      check=True,
      timeout=600,
  )


def _records(stdout):
  return [json.loads(l) for l in stdout.splitlines() if l.startswith('{')]


@pytest.mark.parametrize(
    'command', ['train', pytest.param('infer', marks=pytest.mark.slow)]
)
def test_cli_prints_one_record_per_implementation(command, tmp_path):
  out = tmp_path / 'bench.jsonl'
  proc = _benchmark(command, *TINY, '--matmul-size', '64', '--out', str(out))
  lines = _records(proc.stdout)
  assert [l['impl'] for l in lines] == ['jax', 'torch']
  assert [json.loads(l) for l in out.read_text().splitlines()] == lines
  for rec in lines:
    assert rec['benchmark'] == command
    assert (rec['model'], rec['batch'], rec['dtype']) == ('paper', 2, 'float32')
    assert rec['steps'] == 2
    for field in (
        'img_per_s',
        'step_ms',
        'peak_rss_mb',
        'achieved_gflops',
        'frac_of_xla_matmul_peak',
        'frac_of_torch_matmul_peak',
    ):
      assert rec[field] > 0, field
    assert rec['img_per_s'] == pytest.approx(2e3 / rec['step_ms'])
    assert rec['gflop_per_step'] == pytest.approx(
        model_bench.step_flops(command, 'paper', 67, 2, 0.05) / 1e9
    )
    # Provenance: machine (with AMX or not), load before and after, date,
    # the command, the commit.
    if os.path.exists('/proc/cpuinfo'):
      assert rec['machine'].endswith(('AMX', 'no AMX')), rec['machine']
    assert len(rec['load_avg']) == 2
    assert rec['command'].startswith(
        'python -m alexnet_jax.benchmark ' + command
    )
    assert {'date', 'commit'} <= rec.keys()
    if command == 'train':
      assert rec['train_step'] == 'trainer'
  jax_rec, torch_rec = lines
  assert jax_rec['ratio_to_torch'] == pytest.approx(
      torch_rec['step_ms'] / jax_rec['step_ms']
  )
  assert 'ratio_to_torch' not in torch_rec
  assert '| jax |' in proc.stdout and '| torch |' in proc.stdout
  # The JAX worker ran with the trainer's XLA flags and says which
  # convolutions it used.
  assert (
      '--xla_cpu_copy_insertion_use_region_analysis=true'
      in jax_rec['xla_flags']
  )
  assert jax_rec['conv_backend'] in ('onednn', 'xla')


def test_jax_worker_runs_the_trainers_step_without_torch_or_tensorflow():
  """The JAX worker's step is make_train_step's (its metrics come back),
  and the worker carries neither torch nor TensorFlow in its memory."""
  code = (
      'import sys\n'
      'from alexnet_jax.benchmarks import model_jax_worker as w\n'
      'built = w.build_jax_train(dict(model="paper", batch=2, '
      'image_size=67, width_scale=0.05))\n'
      'step, state, batch = built["step"], built["state"], built["batch"]\n'
      'state[0], m = step(state[0], batch)\n'
      'print(sorted(m.compute()), "tensorflow" in sys.modules, '
      '"torch" in sys.modules)\n'
  )
  out = repo.run('-c', code).stdout
  assert out.strip().splitlines()[-1] == (
      "['grad_norm', 'learning_rate', 'loss', 'param_norm', 'top1_error', "
      "'top5_error'] False False"
  )


def _fake_compare(step_ms):
  """A harness.compare stand-in: each spec's steps take step_ms[spec
  step] ms (wall and CPU)."""
  calls = []

  def compare(kind, specs, *, steps, **_):
    calls.append([s['step'] for s in specs])
    return [
        dict(
            ready={},
            steps=[step_ms[s['step']] / 1e3] * steps,
            cpu_steps=[step_ms[s['step']] / 1e3] * steps,
            done=dict(peak_rss_mb=100.0),
            load=[1.0, 1.0],
        )
        for s in specs
    ]

  return compare, calls


def test_overhead_pairs_trainer_and_bare_steps(monkeypatch):
  compare, calls = _fake_compare({'trainer': 103.0, 'bare': 100.0})
  monkeypatch.setattr(harness, 'compare', compare)
  args = benchmark.parse_args(['overhead', '--repeats', '3', '--steps', '4'])
  (rec,) = model_bench.overhead(args)
  # Which step starts alternates by round; every round has both.
  assert calls == [
      ['trainer', 'bare'],
      ['bare', 'trainer'],
      ['trainer', 'bare'],
  ]
  assert rec['overhead_pct'] == pytest.approx(3.0)
  assert rec['cpu_overhead_pct'] == pytest.approx(3.0)
  assert rec['pairs'] == 12 and len(rec['rounds']) == 3


def test_param_copies_reads_the_entry_of_the_compiled_step():
  hlo = """HloModule m

%body { %x = f32[2] parameter(0) ROOT %c = f32[2] copy(%x) }

ENTRY %main {
  %state_params__fc6____kernel__.1 = f32[9216,4096]{1,0} parameter(0)
  %state_step.1 = s32[] parameter(1)
  %copy.1 = f32[9216,4096]{1,0} copy(%state_params__fc6____kernel__.1)
  %copy.2 = s32[] copy(%state_step.1)
  ROOT %t = (f32[9216,4096]) tuple(%copy.1)
}
"""
  assert profile_worker._param_copies(hlo) == [  # noqa: SLF001
      ('%state_params__fc6____kernel__.1', 9216 * 4096 * 4)
  ]


def test_memory_reports_the_trainers_compiled_step(tmp_path):
  out = tmp_path / 'memory.jsonl'
  proc = _benchmark(
      'memory',
      '--variant=torchvision',
      '--width-scale=0.05',
      '--image-size=67',
      '--batch=2',
      '--bare',
      '--out',
      str(out),
  )
  rec, bare = _records(proc.stdout)
  assert rec['benchmark'] == 'memory'
  assert (rec['train_step'], bare['train_step']) == ('trainer', 'bare')
  assert rec['argument_mb'] > 0 and rec['temp_mb'] > 0
  # The same state goes in; the metrics and norms only add temporaries.
  # (To a few bytes: the two steps read different scalars of the state.)
  assert bare['argument_mb'] == pytest.approx(rec['argument_mb'], rel=1e-4)
  assert bare['temp_mb'] <= rec['temp_mb']
  # The trainer's XLA flag removes the copies of donated parameters.
  assert rec['copied_params'] == 0
  assert rec['rss_after_trim_mb'] <= rec['rss_after_compile_mb']


@pytest.mark.slow
def test_profile_lists_the_steps_ops():
  proc = _benchmark('profile', *TINY, '--top', '5')
  (rec,) = _records(proc.stdout)
  assert len(rec['top_ops']) == 5 and rec['traced_ops_ms'] > 0
  assert sum(rec['ms_by_kind'].values()) == pytest.approx(rec['traced_ops_ms'])


def test_all_runs_the_headline_benchmarks(monkeypatch):
  """`all`: float32 train and infer of both models, one device vs two
  towers, the input pipeline (bf16, the other modes and the overhead have
  their own commands, to keep `all` near ten minutes)."""
  calls = []
  monkeypatch.setattr(
      model_bench,
      'measure',
      lambda name, args: (
          calls.append((name, args.variant, args.dtype)) or [{'name': name}]
      ),
  )
  for name, bench in (('parallel', parallel_bench), ('input', input_bench)):
    monkeypatch.setattr(
        bench,
        'run',
        lambda args, name=name: (
            calls.append((name, args.modes)) or [{'name': name}]
        ),
    )
  records = benchmark.run_all(benchmark.parse_args(['all']))
  models = [
      ('train', ['paper', 'torchvision'], ['float32']),
      ('infer', ['paper', 'torchvision'], ['float32']),
  ]
  assert calls == models + [
      ('parallel', ['single', 'model']),
      ('input', ['single', 'model']),
  ]
  assert len(records) == 4
  # --quick: the model steps only (about two minutes).
  calls.clear()
  benchmark.run_all(benchmark.parse_args(['all', '--quick']))
  assert calls == models


def test_parallel_benchmark_arguments_name_what_is_accepted():
  with pytest.raises(SystemExit, match='single, model, jit, pmap, hybrid'):
    benchmark.parse_args(['parallel', '--modes', 'single,tensor'])
  with pytest.raises(SystemExit, match='not a positive integer'):
    benchmark.parse_args(['parallel', '--batch', '0'])
  args = benchmark.parse_args(['parallel', '--modes', 'single,model'])
  assert args.modes == ['single', 'model']


def test_parallel_modes_run_the_trainers_step(tmp_path):
  out = tmp_path / 'parallel.jsonl'
  proc = _benchmark(
      'parallel', '--modes', 'single,model', *TINY, '--out', str(out)
  )
  records = _records(proc.stdout)
  assert [r['mode'] for r in records] == ['single', 'model']
  assert [json.loads(l) for l in out.read_text().splitlines()] == records
  single, model = records
  assert (single['devices'], model['devices']) == (1, 2)
  assert single['ratio_to_single'] == 1.0
  assert model['param_bytes_per_device'] * 2 == single['param_bytes_per_device']
  # What the step returned: the trainer's metrics after the same three
  # steps from the same state on the same batch, equal on one device and on
  # two towers (dropout masks included).
  want = single['metrics']
  assert set(want) == {
      'loss',
      'top1_error',
      'top5_error',
      'grad_norm',
      'param_norm',
      'learning_rate',
  }
  assert want['loss'] > 0 and want['param_norm'] > 0 and want['grad_norm'] > 0
  assert model['metrics'] == pytest.approx(want, rel=1e-4)
  for r in records:
    assert r['step_ms'] > 0
    assert r['command'].startswith('python -m alexnet_jax.benchmark parallel')
