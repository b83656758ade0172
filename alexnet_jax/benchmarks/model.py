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

This module imports neither JAX nor torch at the top: its setup() runs in
the worker, after the XLA flags are set.
"""

import statistics
import sys

from alexnet_jax.benchmarks import harness

VARIANTS = ('paper', 'torchvision')
DTYPES = ('float32', 'bfloat16')


# ----------------------------------------------------------------------------
# FLOPs from the layer table (independent of both implementations).


def _conv_out(size, kernel, stride, pad):
  return (size + pad - kernel) // stride + 1


def layer_flops(variant, image_size, width_scale=1.0, num_classes=1000):
  """Forward FLOPs per image of each layer, as a list of (name, flops)."""
  from alexnet_jax.core import model as model_lib  # the width table only

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
# What the workers build.


def config_for(spec):
  """The paper recipe's config for a spec, on fake data and one device.

  spec: model (variant), dtype, batch, image_size, width_scale; parallel
  specs also set the mesh. No dataset is read: the step gets placed random
  batches (fake_batch), so the input pipeline is not part of the figure.
  """
  from alexnet_jax.configs import paper

  c = paper.get_config()
  c.data.name = 'fake'
  c.data.image_size = spec['image_size']
  c.model.variant = spec['model']
  c.model.towers = 2 if spec['model'] == 'paper' else 1
  c.model.dtype = spec.get('dtype', 'float32')
  c.model.width_scale = spec['width_scale']
  c.model.precision = spec.get('precision', 'default')
  c.optim.batch_size = spec['batch']
  c.parallel.mesh.data = 1
  return c


def numpy_params(net, config):
  """The paper's initial distribution, drawn by NumPy.

  Shapes come from jax.eval_shape; JAX's own initialisers would compile
  their random-number kernels, which takes long on XLA:CPU and is not
  what is measured.
  """
  import jax
  import numpy as np

  from alexnet_jax.core import model as model_lib

  shapes = jax.eval_shape(
      lambda: model_lib.init(net, jax.random.PRNGKey(0), config.data.image_size)
  )['params']
  rng = np.random.default_rng(0)
  m = config.model
  bias = m.bias_init

  def make(path, x):
    if path[-1].key == 'bias':
      return np.full(x.shape, bias, np.float32)
    fc67 = any(getattr(p, 'key', '') in ('fc6', 'fc7') for p in path)
    std = m.fc_init_std if fc67 else m.weight_init_std
    return rng.standard_normal(x.shape, np.float32) * np.float32(std)

  return jax.tree_util.tree_map_with_path(make, shapes)


def fake_batch(config, seed=1):
  """One global batch of random NHWC images and labels (NumPy)."""
  import numpy as np

  rng = np.random.default_rng(seed)
  b, size = config.optim.batch_size, config.data.image_size
  return dict(
      image=rng.standard_normal((b, size, size, 3), np.float32),
      label=rng.integers(0, config.model.num_classes, b).astype(np.int32),
  )


def matmul_gflops(impl, n, dtype, repeats=3, device='cpu'):
  """Best-of-`repeats` GFLOP/s of an n x n @ n x n matmul (XLA or torch;
  torch on `device`)."""
  import time

  if impl == 'jax':
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(4), (n, n), getattr(jnp, dtype))
    mm = jax.jit(lambda a, b: a @ b)
    run = lambda: mm(a, a).block_until_ready()
  else:
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    run = lambda: (torch.mm(a, a), sync())
  run()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9


def setup(spec) -> harness.Job:
  """The worker's job for a spec (impl jax|torch, benchmark
  train|infer|matmul)."""
  if spec['impl'] == 'jax':
    from alexnet_jax.core import xla_flags

    xla_flags.set_defaults()  # what the trainer runs with
  if spec['benchmark'] == 'matmul':
    return _matmul_job(spec)
  job = (_jax_job if spec['impl'] == 'jax' else _torch_job)(spec)
  dtypes = sorted({'float32', spec['dtype']})
  job.finish = lambda: dict(
      matmul_gflops={
          d: matmul_gflops(
              spec['impl'],
              spec['matmul_size'],
              d,
              device=spec.get('device', 'cpu'),
          )
          for d in dtypes
      }
  )
  return job


def _matmul_job(spec):
  if spec['impl'] == 'jax':
    import jax

    version = jax.__version__
  else:
    import torch

    version = torch.__version__
  return harness.Job(
      run=lambda i: None,
      facts=dict(version=version),
      finish=lambda: dict(
          matmul_gflops={
              d: matmul_gflops(spec['impl'], spec['matmul_size'], d)
              for d in DTYPES
          }
      ),
  )


def build_jax_train(spec):
  """The trainer's step for a spec, its placed state and batch, compiled.

  Returns dict(step, state=[state] (a list: the step donates it), batch,
  compiled (the AOT executable, which later calls of the step reuse),
  compile_s). spec['step'] == 'bare' builds make_train_step(bare=True).
  """
  import time

  from alexnet_jax.core import model as model_lib
  from alexnet_jax.core import steps

  config = config_for(spec)
  net = model_lib.from_config(config.model)
  step = steps.make_train_step(config, net, bare=spec.get('step') == 'bare')
  par = step.par
  # Placed as the trainer places a fresh state (no host copies).
  state = [
      par.place_state(
          steps.create_train_state(
              config, net, step.tx, numpy_params(net, config)
          )
      )
  ]
  batch = par.shard_batch(fake_batch(config))
  start = time.perf_counter()
  compiled = step.lower(state[0], batch).compile()
  return dict(
      step=step,
      state=state,
      batch=batch,
      compiled=compiled,
      compile_s=time.perf_counter() - start,
  )


def train_run(built):
  """A Job's run for build_jax_train's result: one step, then what the
  trainer reads back after every step (all of the bare step's output)."""
  import jax

  step, state, batch = built['step'], built['state'], built['batch']

  def run(i):
    del i
    state[0], out = step(state[0], batch)
    if step.bare:
      return jax.device_get(out)
    # What the trainer reads back after every step.
    return jax.device_get((out.loss.total, out.param_norm.total))

  return run


def _jax_job(spec):
  import os
  import time

  import jax

  from alexnet_jax.core import model as model_lib
  from alexnet_jax.core import ops

  config = config_for(spec)
  net = model_lib.from_config(config.model)
  rss_base = harness.rss_mb()
  if spec['benchmark'] == 'train':
    built = build_jax_train(spec)
    compile_s = built['compile_s']
    run = train_run(built)

  else:
    from alexnet_jax.core import parallel

    par = parallel.Parallel(config, net)
    params = par.place_state(numpy_params(net, config))
    images = par.shard_batch(fake_batch(config))['image']
    fn = jax.jit(
        lambda params, images: par.apply(
            {'params': params}, images, train=False
        )
    )
    start = time.perf_counter()
    compiled = fn.lower(params, images).compile()
    compile_s = time.perf_counter() - start

    def run(i):
      del i
      return compiled(params, images).block_until_ready()

  return harness.Job(
      run=run,
      facts=dict(
          compile_s=compile_s,
          rss_base_mb=rss_base,
          version=jax.__version__,
          xla_flags=os.environ.get('XLA_FLAGS', ''),
          devices=len(jax.devices()),
          platform=jax.devices()[0].platform,
          device_kind=jax.devices()[0].device_kind,
          conv_backend=ops.conv_backend(config.model.dtype),
      ),
  )


def _torch_job(spec):
  import torch

  from alexnet_jax.reference import torch_models

  config = config_for(spec)
  torch.manual_seed(0)
  size = config.data.image_size
  # flatten='chw': the twin as a PyTorch user writes it (no permute).
  net = torch_models.from_config(config.model, image_size=size, flatten='chw')
  device = spec.get('device', 'cpu')
  if device == 'cuda':
    # The same maths as JAX's default precision on the GPU (TF32).
    torch.backends.cuda.matmul.allow_tf32 = spec.get('precision') != 'highest'
    torch.backends.cudnn.allow_tf32 = spec.get('precision') != 'highest'
    torch.backends.cudnn.benchmark = True
  net = net.to(device)
  batch = fake_batch(config)
  images = torch.from_numpy(batch['image'].transpose(0, 3, 1, 2).copy()).to(
      device
  )
  labels = torch.from_numpy(batch['label'].astype('int64')).to(device)
  bf16 = config.model.dtype == 'bfloat16'
  rss_base = harness.rss_mb()

  if spec['benchmark'] == 'train':
    step = torch_models.TrainStep(
        net, config.optim, autocast=torch.bfloat16 if bf16 else None
    )

    def run(i):
      del i
      out = step(images, labels)
      return out['loss'].item(), out['param_norm'].item()

  else:
    net.eval()

    def run(i):
      del i
      with (
          torch.inference_mode(),
          torch.autocast(device, dtype=torch.bfloat16, enabled=bf16),
      ):
        return net(images).float().sum().item()

  return harness.Job(
      run=run,
      facts=dict(
          compile_s=None,
          rss_base_mb=rss_base,
          version=torch.__version__,
          threads=torch.get_num_threads(),
          platform=device,
      ),
  )


# ----------------------------------------------------------------------------
# Measurements -> records.


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
  from alexnet_jax.benchmarks import accelerator

  info = getattr(args, 'platform_info', None) or accelerator.probe()
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
      specs = [
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
          'model', specs, steps=args.steps, sequential=on_device
      )
      flops = step_flops(
          benchmark, variant, args.image_size, args.batch, args.width_scale
      )
      group = _add_ratios(
          [_record(benchmark, s, r, flops) for s, r in zip(specs, results)]
      )
      for rec in group:
        if on_device:
          accelerator.annotate(rec, info, precision)
        harness.emit(harness.stamp(rec, args.command_line), args.out)
      records += group
  return records


def matmul(args):
  """This machine's large-matmul peak in XLA and PyTorch, f32 and bf16."""
  records = []
  for impl in args.impls:
    spec = dict(impl=impl, benchmark='matmul', matmul_size=args.matmul_size)
    (result,) = harness.compare('model', [spec], steps=0)
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
        specs = [
            _spec(args, 'jax', 'train', variant, dtype, step=s) for s in order
        ]
        results = harness.compare('model', specs, steps=args.steps)
        by = {s['step']: res for s, res in zip(specs, results)}
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
