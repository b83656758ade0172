"""`benchmark compile`: the trainer's step compiled for TPU and GPU chips
on this CPU machine (benchmarks/deviceless.py), and what XLA says of it.

Default suite: a reduced step (67x67 images, 1/8 of the widths, batch 8)
in the two-tower mode on TPU v5e and on H100, each compile taking seconds.
`-m slow`: the paper's full step (224x224, batch 128 per replica,
bfloat16) in every mode on TPU v5e and H100 (about 15-25 minutes here).
Both skip, saying why, where the `compile` extra is not installed.
"""

import json

import pytest

from alexnet_jax.benchmarks import deviceless
from helpers import chips

SMALL = dict(batch=8, image_size=67, width_scale=0.125, data=2)
# The towers meet where the paper's GPUs talked (model.py): all-gathers
# before conv3, fc6, fc7, fc8 and of the logits; in the backward pass the
# gathers' transposes (reduce-scatters, which XLA may rewrite as an
# all-reduce and a slice) and the norms' partial sums.
TOWER_GATHERS = 5


def _check_step(record, *, mode, platform):
  assert 'skipped' not in record, record.get('skipped')
  assert record['memory']['fits'] is True
  assert record['memory']['total_mb'] > 0
  # No loop in the model. pmap has CLU's metric gathering: one scan over
  # the devices per gathered metric (loss, top-1, top-5, learning rate,
  # both norms, the count), on scalars after the update
  # (test_accelerator_export.test_pmap_loops_are_the_metric_gathering_only).
  loops = 7 if mode == 'pmap' else 0
  assert record['while_loops'] == loops, 'a while loop reached the model'
  if platform == 'cuda':
    # Native convolutions: cuDNN calls, no XLA convolution left over.
    cudnn = {k: n for k, n in record['custom_calls'].items() if 'cudnn' in k}
    assert sum(cudnn.values()) >= 13, record['custom_calls']
    assert record['convolutions'] == 0
    assert record['custom_call_gb'] > 0
  else:
    assert record['convolutions'] >= 13
    assert not any('cudnn' in k for k in record['custom_calls'])
  kinds = set(record['collectives'])
  if mode == 'single':
    assert kinds == set()
  elif mode in ('model', 'hybrid'):
    assert kinds <= {'all-gather', 'reduce-scatter', 'all-reduce'}
    assert record['collectives']['all-gather']['count'] == TOWER_GATHERS
  else:  # jit, pmap: the gradients' all-reduce, and no gather of them
    assert 'all-reduce' in kinds
  roof = record['roofline']
  assert roof['bound_ms'] > 0 and roof['img_per_s_per_chip'] > 0
  assert 0 < roof['bound_frac_of_peak'] <= 1
  assert record['xla_gflop'] > 0 and record['gb_accessed'] > 0
  json.dumps({k: v for k, v in record.items() if k != 'hlo'})


@pytest.mark.parametrize('target', ['v5e', 'h100'])
def test_reduced_two_tower_step_compiles_for_the_chip(target):
  chips.need(target)
  record = deviceless.measure(
      target, 'model', variant='paper', dtype='bfloat16', **SMALL
  )
  platform = record['platform']
  _check_step(record, mode='model', platform=platform)
  assert record['devices'] == 2
  # Activations cross between the towers, never parameters: every
  # collective is far smaller than one tower's parameters.
  params_mb = record['memory']['argument_mb'] / 3  # params, momenta, batch
  coll_mb = sum(c['mb'] for c in record['collectives'].values())
  assert coll_mb < params_mb / 4, (coll_mb, params_mb)
  # Per platform LRN (core/lrn.py): the TPU's banded matmul is in the
  # compiled program, a dot besides the fully connected layers'.
  if platform == 'tpu':
    assert 'convolution' in record['hlo']


def test_the_command_prints_one_line_per_compile(capsys):
  chips.need('h100')
  deviceless.main(
      [
          '--target=h100',
          '--modes=single',
          '--batch=4',
          '--image-size=67',
          '--width-scale=0.125',
      ]
  )
  out = capsys.readouterr().out
  lines = [json.loads(l) for l in out.splitlines() if l.startswith('{')]
  assert len(lines) == 1 and lines[0]['mode'] == 'single'
  assert 'hlo' not in lines[0]
  assert '| h100 | single | 1 | 4 |' in out


def test_bad_target_and_override_are_refused():
  with pytest.raises(SystemExit):
    deviceless.parse_args(['--target=v9'])
  config_args = ('paper', 'bfloat16', 8, 67, 'single', 1)
  with pytest.raises(SystemExit, match='model.lrn.enable'):
    deviceless.config_for(*config_args, overrides=['model.lrn.enable=False'])
  with pytest.raises(SystemExit, match='True or False'):
    deviceless.config_for(*config_args, overrides=['model.lrn.enabled=maybe'])
  c = deviceless.config_for(*config_args, overrides=['model.lrn.enabled=False'])
  assert c.model.lrn.enabled is False


def test_collectives_are_read_from_optimised_hlo():
  hlo = """
  %all-gather-start = (bf16[8,128]{1,0}, bf16[8,256]{1,0}) all-gather-start(%a), dimensions={1}
  %all-gather-done = bf16[8,256]{1,0} all-gather-done(%all-gather-start)
  %all-reduce-start.1 = f32[1000]{0} all-reduce-start(%b), to_apply=%sum
  %all-reduce.2 = (f32[]{:T(128)}, bf16[2,48]{1,0:T(2,128)(2,1)}) all-reduce(%c, %d), to_apply=%sum
  %fusion.1 = f32[4]{0} fusion(%e), kind=kLoop
  """
  got = deviceless.collectives(hlo)
  assert got == {
      'all-gather': dict(count=1, bytes=8 * 256 * 2),
      'all-reduce': dict(count=2, bytes=4000 + 4 + 2 * 48 * 2),
  }


@pytest.mark.slow
@pytest.mark.parametrize('target', ['v5e', 'h100'])
def test_the_paper_step_compiles_in_every_mode(target):
  """The full step, bfloat16, batch 128 per replica (jit and pmap: 4 data
  shards; hybrid: 2x2). pmap compiles too: jax.pmap lowers and compiles
  for compile-only devices."""
  chips.need(target)
  for mode in deviceless.MODES:
    record = deviceless.measure(
        target,
        mode,
        variant='paper',
        dtype='bfloat16',
        batch=128,
        image_size=224,
        data=4,
    )
    _check_step(record, mode=mode, platform=record['platform'])


def test_run_sh_pairs_the_bound_with_the_measured_speed(tmp_path, capsys):
  """experiments/accelerator/run.sh's last step: measured img/s of the JAX
  train records beside the compile record's bound, by dtype and batch."""
  from experiments.accelerator import bound_vs_measured

  records = [
      dict(benchmark='train', impl='jax', dtype='bfloat16', batch=128,
           img_per_s=5000.0),
      dict(benchmark='train', impl='torch', dtype='bfloat16', batch=128,
           img_per_s=4000.0),
      dict(benchmark='train', impl='jax', dtype='float32', batch=128,
           img_per_s=2000.0),
      dict(benchmark='compile', mode='single', dtype='bfloat16', batch=128,
           device_kind='TPU v5 lite',
           roofline=dict(img_per_s_per_chip=10000.0, bound_by='hbm')),
  ]  # fmt: skip
  log = tmp_path / 'log.jsonl'
  log.write_text(''.join(json.dumps(r) + '\n' for r in records))
  bound_vs_measured.main([str(log)])
  rows = [l for l in capsys.readouterr().out.splitlines() if 'TPU' in l]
  assert rows == ['| TPU v5 lite | bfloat16 | 128 | 5000 | 10000 | 50% | hbm |']


def test_a_real_chip_names_its_target():
  from alexnet_jax.benchmarks import compile_targets

  kinds = {
      'NVIDIA H100 80GB HBM3': 'h100',
      'NVIDIA A100-SXM4-80GB': 'a100',
      'TPU v4': 'v4',
      'TPU v5 lite': 'v5e',
      'TPU v5': 'v5p',
      'TPU v6 lite': 'v6e',
      'cpu': None,
  }
  for kind, name in kinds.items():
    assert compile_targets.for_device_kind(kind) == name, kind


def test_auto_target_on_a_cpu_host_says_so(capsys):
  """run.sh's `--target auto` on a host without a GPU or TPU (here, and
  `run.sh --simulate`): one skipped line, no error."""
  records = deviceless.run(deviceless.parse_args(['--target=auto']))
  assert len(records) == 1 and "'cpu'" in records[0]['skipped']
  assert json.loads(capsys.readouterr().out)['target'] == 'auto'
