"""Model steps against PyTorch: train, infer, matmul peaks, step overhead.

* train: the trainer's own step (steps.make_train_step) on a fake-data
  config of the paper recipe: forward with dropout, softmax cross-entropy,
  backward, the paper's update with the learning rate written into the
  optimiser state, top-1/top-5 errors, gradient and parameter norms; the
  state is donated and every step ends with the loss and parameter norm on
  the host, as in training. PyTorch: `torch_models.TrainStep`, which does
  the same work on the twin (checked against ours in tests/test_train.py).
* infer: the eval-mode forward pass (logits only) of both.
* matmul: the large square matmul peak of XLA (`dot`) and of torch.mm.
* overhead: the trainer's step against the same step with only forward,
  backward and update (`make_train_step(..., bare=True)`), both JAX,
  alternating, in several rounds of fresh workers: what the metrics, norms
  and learning-rate state cost.

FLOPs are counted from the layer shapes (multiply-add = 2), not from either
implementation: train = forward + weight gradients + input gradients of
every layer but conv1 = 3 x forward - conv1. The fraction of peak compares
that with a large square matmul measured in the same worker right after the
timed steps.

This module is the parent's side; the workers are model_jax_worker and
model_torch_worker (each in its own process, with JAX or torch only).
"""

import statistics
import sys

from alexnet_jax.benchmarks import device
from alexnet_jax.benchmarks import harness
from alexnet_jax.benchmarks import specs
from alexnet_jax.core import model as model_lib  # the width table only

VARIANTS = ('paper', 'torchvision')
DTYPES = specs.DTYPES


# ----------------------------------------------------------------------------
# FLOPs from the layer table (independent of both implementations).


def _conv_out(size, kernel, stride, pad):
  return (size + pad - kernel) // stride + 1


def layer_flops(variant, image_size, width_scale=1.0, num_classes=1000):
  """Forward FLOPs per image of each layer, as a list of (name, flops)."""
  towers = 2 if variant == 'paper' else 1
  c1, c2, c3, c4, c5, f6, f7 = model_lib.widths_for(
      variant, towers, width_scale
  )
  pad = model_lib.CONV1_PADDING[
      'paper' if variant == 'paper' else 'torchvision'
  ]
  s = _conv_out(image_size, 11, 4, sum(pad[0]))
  out = [('conv1', 2 * s * s * 11 * 11 * 3 * c1)]
  s = _conv_out(s, 3, 2, 0)
  out.append(('conv2', 2 * s * s * 25 * (c1 // towers) * c2))
  s = _conv_out(s, 3, 2, 0)
  out.append(('conv3', 2 * s * s * 9 * c2 * c3))
  out.append(('conv4', 2 * s * s * 9 * (c3 // towers) * c4))
  out.append(('conv5', 2 * s * s * 9 * (c4 // towers) * c5))
  s = _conv_out(s, 3, 2, 0)
  if variant == 'torchvision':
    s = 6  # adaptive average pool to 6x6
  out += [
      ('fc6', 2 * s * s * c5 * f6),
      ('fc7', 2 * f6 * f7),
      ('fc8', 2 * f7 * num_classes),
  ]
  return out


def step_flops(benchmark, variant, image_size, batch, width_scale=1.0):
  layers = dict(layer_flops(variant, image_size, width_scale))
  forward = sum(layers.values())
  if benchmark == 'infer':
    return batch * forward
  return batch * (3 * forward - layers['conv1'])


# ----------------------------------------------------------------------------
# Measurements -> records.


def worker_kind(spec):
  """The worker module of a spec: model_jax_worker or model_torch_worker."""
  return f"model_{spec['impl']}_worker"


def _spec(args, impl, benchmark, variant, dtype, **extra):
  return dict(
      impl=impl,
      benchmark=benchmark,
      model=variant,
      dtype=dtype,
      batch=args.batch,
      image_size=args.image_size,
      warmup=args.warmup,
      width_scale=args.width_scale,
      matmul_size=args.matmul_size,
      **extra,
  )


def _record(benchmark, spec, result, flops):
  ready, done = result['ready'], result['done']
  rec = dict(
      benchmark=benchmark,
      impl=spec['impl'],
      model=spec['model'],
      batch=spec['batch'],
      image_size=spec['image_size'],
      dtype=spec['dtype'],
  )
  rec.update(harness.step_fields(result, spec['batch']))
  peak = done['matmul_gflops']['float32']
  achieved = flops / (rec['step_ms'] / 1e3) / 1e9
  rec.update(
      warmup=spec['warmup'],
      compile_s=ready['compile_s'],
      first_step_s=ready['first_step_s'],
      peak_rss_mb=done['peak_rss_mb'],
      rss_base_mb=ready['rss_base_mb'],
      gflop_per_step=flops / 1e9,
      achieved_gflops=achieved,
      matmul_gflops=done['matmul_gflops'],
      frac_of_own_matmul_peak=achieved / peak,
      version=ready['version'],
      load_avg=result['load'],
  )
  if benchmark == 'train':
    rec['train_step'] = spec.get('step', 'trainer')
  if spec['width_scale'] != 1.0:
    rec['width_scale'] = spec['width_scale']
  for key in (
      'xla_flags',
      'devices',
      'threads',
      'conv_backend',
      'platform',
      'device_kind',
  ):
    if key in ready:
      rec[key] = ready[key]
  return rec


def _add_ratios(records):
  """Adds ratio_to_torch and the cross-implementation peak fractions."""
  torch_rec = next((r for r in records if r['impl'] == 'torch'), None)
  jax_rec = next((r for r in records if r['impl'] == 'jax'), None)
  if torch_rec and jax_rec:
    jax_rec['ratio_to_torch'] = torch_rec['step_ms'] / jax_rec['step_ms']
    jax_rec['peak_rss_vs_torch'] = (
        jax_rec['peak_rss_mb'] / torch_rec['peak_rss_mb']
    )
    xla_peak = jax_rec['matmul_gflops']['float32']
    torch_peak = torch_rec['matmul_gflops']['float32']
    for rec in records:
      rec['frac_of_xla_matmul_peak'] = rec['achieved_gflops'] / xla_peak
      rec['frac_of_torch_matmul_peak'] = rec['achieved_gflops'] / torch_peak
  return records


def measure(benchmark, args):
  """train / infer: every variant and dtype asked, implementations
  alternating (on CPU) or one after the other (on a GPU or TPU); returns
  the records (emitted as they come)."""
  info = getattr(args, 'platform_info', None) or device.probe()
  on_device = info['platform'] != 'cpu'
  precision = getattr(args, 'precision', 'default')
  impls = list(args.impls)
  if info['platform'] not in ('cpu', 'cuda') or (
      info['platform'] == 'cuda' and not info['torch_cuda']
  ):
    impls = [i for i in impls if i != 'torch']  # no twin for this device
  records = []
  for variant in args.variant:
    for dtype in args.dtype:
      group_specs = [
          _spec(
              args,
              impl,
              benchmark,
              variant,
              dtype,
              precision=precision,
              device=(
                  'cuda'
                  if impl == 'torch' and on_device and not info.get('simulated')
                  else 'cpu'
              ),
          )
          for impl in impls
      ]
      results = harness.compare(
          worker_kind, group_specs, steps=args.steps, sequential=on_device
      )
      flops = step_flops(
          benchmark, variant, args.image_size, args.batch, args.width_scale
      )
      group = _add_ratios(
          [
              _record(benchmark, s, r, flops)
              for s, r in zip(group_specs, results)
          ]
      )
      for rec in group:
        if on_device:
          device.annotate(rec, info, precision)
        harness.emit(harness.stamp(rec, args.command_line), args.out)
      records += group
  return records


def matmul(args):
  """This machine's large-matmul peak in XLA and PyTorch, f32 and bf16."""
  records = []
  for impl in args.impls:
    spec = dict(impl=impl, benchmark='matmul', matmul_size=args.matmul_size)
    (result,) = harness.compare(worker_kind, [spec], steps=0)
    for dtype, gflops in result['done']['matmul_gflops'].items():
      rec = dict(
          benchmark='matmul',
          impl=impl,
          model=f'{args.matmul_size}^2',
          batch=None,
          dtype=dtype,
          gflops=gflops,
          version=result['ready']['version'],
          load_avg=result['load'],
      )
      harness.publish(rec, args, records)
  return records


def overhead(args):
  """What the trainer's step adds to forward, backward and update.

  For each variant, --repeats rounds of two fresh JAX workers (the
  trainer's step and the bare one; which starts alternates by round), each
  round --steps timed steps alternating between them. The overhead is the
  median over all rounds of trainer / bare for back-to-back step pairs
  (wall and CPU time), so drift in the machine's load cancels.
  """
  records = []
  for variant in args.variant:
    for dtype in args.dtype:
      pairs, cpu_pairs, rounds = [], [], []
      load_avg = []
      for r in range(args.repeats):
        order = ('trainer', 'bare') if r % 2 == 0 else ('bare', 'trainer')
        pair = [
            _spec(args, 'jax', 'train', variant, dtype, step=s) for s in order
        ]
        results = harness.compare(worker_kind, pair, steps=args.steps)
        by = {s['step']: res for s, res in zip(pair, results)}
        wall = [
            t / b for t, b in zip(by['trainer']['steps'], by['bare']['steps'])
        ]
        cpu = [
            t / b
            for t, b in zip(by['trainer']['cpu_steps'], by['bare']['cpu_steps'])
        ]
        pairs += wall
        cpu_pairs += cpu
        load_avg += results[0]['load']
        rounds.append(
            dict(
                first=order[0],
                trainer_ms=statistics.median(by['trainer']['steps']) * 1e3,
                bare_ms=statistics.median(by['bare']['steps']) * 1e3,
                overhead_pct=(statistics.median(wall) - 1) * 100,
                cpu_overhead_pct=(statistics.median(cpu) - 1) * 100,
                peak_rss_mb={k: by[k]['done']['peak_rss_mb'] for k in by},
            )
        )
      rec = dict(
          benchmark='overhead',
          impl='jax',
          model=variant,
          dtype=dtype,
          batch=args.batch,
          image_size=args.image_size,
          overhead_pct=(statistics.median(pairs) - 1) * 100,
          cpu_overhead_pct=(statistics.median(cpu_pairs) - 1) * 100,
          pairs=len(pairs),
          rounds=rounds,
          steps=args.steps,
          repeats=args.repeats,
          warmup=args.warmup,
          load_avg=load_avg,
      )
      if args.width_scale != 1.0:
        rec['width_scale'] = args.width_scale
      harness.publish(rec, args, records)
  return records


# ----------------------------------------------------------------------------
# Tables.


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def print_table(records, file=sys.stdout):
  rows = [r for r in records if r.get('benchmark') in ('train', 'infer')]
  if rows:
    print(
        '\n| benchmark | model | dtype | batch | impl | img/s | step ms | '
        'vs torch | compile s | peak RSS MB | GFLOP/s | of own peak | '
        'of XLA peak | of torch peak |',
        file=file,
    )
    print('|' + '---|' * 14, file=file)
    for r in rows:
      print(
          f"| {r['benchmark']} | {r['model']} | {r['dtype']} | "
          f"{r['batch']} | {r['impl']} | {r['img_per_s']:.1f} | "
          f"{r['step_ms']:.0f} | {_fmt(r.get('ratio_to_torch'), '.2f')}x | "
          f"{_fmt(r['compile_s'], '.1f')} | {r['peak_rss_mb']:.0f} | "
          f"{r['achieved_gflops']:.0f} | "
          f"{r['frac_of_own_matmul_peak']:.0%} | "
          f"{_fmt(r.get('frac_of_xla_matmul_peak'), '.0%')} | "
          f"{_fmt(r.get('frac_of_torch_matmul_peak'), '.0%')} |",
          file=file,
      )
  mm = [r for r in records if r.get('benchmark') == 'matmul']
  if mm:
    print('\n| matmul | impl | dtype | GFLOP/s |\n|---|---|---|---|', file=file)
    for r in mm:
      print(
          f"| {r['model']} | {r['impl']} | {r['dtype']} | "
          f"{r['gflops']:.0f} |",
          file=file,
      )
  oh = [r for r in records if r.get('benchmark') == 'overhead']
  if oh:
    print(
        '\n| overhead | model | dtype | batch | trainer ms | bare ms | '
        'overhead (wall) | overhead (CPU) | pairs |',
        file=file,
    )
    print('|' + '---|' * 9, file=file)
    for r in oh:
      trainer = statistics.median(x['trainer_ms'] for x in r['rounds'])
      bare = statistics.median(x['bare_ms'] for x in r['rounds'])
      print(
          f"| step | {r['model']} | {r['dtype']} | {r['batch']} | "
          f"{trainer:.0f} | {bare:.0f} | {r['overhead_pct']:+.1f}% | "
          f"{r['cpu_overhead_pct']:+.1f}% | {r['pairs']} |",
          file=file,
      )
