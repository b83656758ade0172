"""Speed of alexnet_jax against PyTorch on the same machine, side by side.

    python -m alexnet_jax.benchmark all            # the README table (~12 min)
    python -m alexnet_jax.benchmark all --quick    # model steps only (~2 min)
    python -m alexnet_jax.benchmark train [--variant paper,torchvision]
        [--batch 128] [--image-size 224] [--dtype float32|bfloat16]
        [--steps 6] [--warmup 2]
    python -m alexnet_jax.benchmark infer ...      # eval-mode forward pass
    python -m alexnet_jax.benchmark matmul         # this machine's peaks
    python -m alexnet_jax.benchmark parallel ...   # two towers, two devices
    python -m alexnet_jax.benchmark input ...      # the input pipeline
    python -m alexnet_jax.benchmark accelerator    # a GPU/TPU host's check

On a GPU or TPU (`train`, `infer`) the implementations run one after the
other instead (each owns the device; JAX preallocates 75% of a GPU's
memory), PyTorch's on CUDA when a CUDA build of torch is installed, and
each record adds the device and the fraction of its datasheet peak
(benchmarks/accelerator.py's table, per dtype and --precision).

Each measurement prints one JSON line (and appends it to --out), then a
table. How the figures are taken, so they hold on a shared, noisy machine:

* Every implementation runs in its own worker process (its own peak RSS,
  its own XLA flags; the JAX worker never imports torch and vice versa).
  The workers build their model and compile one after the other, then the
  parent alternates single timed steps between them (A B A B ...), so
  drift in the machine's load hits both. `ratio_to_torch` is PyTorch's
  median step time over ours (> 1: we are faster).
* Step time: median of --steps timed steps after compilation and --warmup
  untimed ones. Inputs live on the device; every step ends with the loss
  back on the host (block_until_ready / .item()), nothing else is copied.
* Train step: forward with dropout, softmax cross-entropy, backward, the
  paper's SGD update (momentum 0.9, weight decay 5e-4); JAX donates the
  state buffers. PyTorch: `torch_models` twins, `torch.optim.SGD`.
* FLOPs are counted from the layer shapes (multiply-add = 2), not from
  either implementation: train = forward + weight gradients + input
  gradients of every layer but conv1 = 3 x forward - conv1. The fraction
  of peak compares that with a large square matmul measured in the same
  worker (XLA's `dot`, `torch.mm`) right after the timed steps.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

PROTOCOL = '@@bench '        # worker -> parent lines start with this
VARIANTS = ('paper', 'torchvision')
DTYPES = ('float32', 'bfloat16')
WEIGHT_DECAY, MOMENTUM, LR = 5e-4, 0.9, 0.01


# ----------------------------------------------------------------------------
# FLOPs from the layer table (independent of both implementations).


def _conv_out(size, kernel, stride, pad):
  return (size + pad - kernel) // stride + 1


def layer_flops(variant, image_size, width_scale=1.0, num_classes=1000):
  """Forward FLOPs per image of each layer, as a list of (name, flops)."""
  from alexnet_jax.core import model as model_lib  # the width table only
  towers = 2 if variant == 'paper' else 1
  c1, c2, c3, c4, c5, f6, f7 = model_lib.widths_for(variant, towers,
                                                    width_scale)
  pad = model_lib.CONV1_PADDING['paper' if variant == 'paper' else
                                'torchvision']
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
    s = 6                        # adaptive average pool to 6x6
  out += [('fc6', 2 * s * s * c5 * f6), ('fc7', 2 * f6 * f7),
          ('fc8', 2 * f7 * num_classes)]
  return out


def step_flops(benchmark, variant, image_size, batch, width_scale=1.0):
  layers = dict(layer_flops(variant, image_size, width_scale))
  forward = sum(layers.values())
  if benchmark == 'infer':
    return batch * forward
  return batch * (3 * forward - layers['conv1'])


# ----------------------------------------------------------------------------
# Workers: one process per implementation, driven over stdin/stdout.


def _rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _say(**record):
  print(PROTOCOL + json.dumps(record), flush=True)


def train_step_fn(net):
  """(tx, train_step) of the benchmark's training step for the Flax `net`:
  forward with dropout, softmax cross-entropy, backward, the paper's SGD
  update. train_step((params, opt_state), images, labels, key) returns the
  new state and the loss. Also compiled by experiments/benchmarks/
  step_memory.py, so its memory figures are this step's."""
  import jax
  import optax
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                   optax.sgd(LR, momentum=MOMENTUM))

  def train_step(state, images, labels, key):
    params, opt_state = state

    def loss_fn(params):
      logits = net.apply({'params': params}, images, train=True,
                         rngs={'dropout': key})
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return tx, train_step


def _jax_setup(spec):
  """Returns (run_one_step, matmul_fn(n, dtype) -> seconds, facts)."""
  import jax
  import jax.numpy as jnp
  from alexnet_jax.core import model as model_lib
  from alexnet_jax.core import ops
  from alexnet_jax.configs import paper

  if spec['benchmark'] == 'matmul':
    n = spec['matmul_size']
    a = jax.random.normal(jax.random.key(4), (n, n),
                          getattr(jnp, spec['dtype']))
    mm = jax.jit(lambda a, b: a @ b)
    start = time.perf_counter()
    mm = mm.lower(a, a).compile()
    facts = dict(compile_s=time.perf_counter() - start, rss_base_mb=_rss_mb(),
                 version=jax.__version__,
                 xla_flags=os.environ.get('XLA_FLAGS', ''),
                 devices=len(jax.devices()))
    return (lambda i: mm(a, a).block_until_ready()), facts

  cfg = paper.get_config().model
  cfg.variant = spec['model']
  cfg.towers = 2 if spec['model'] == 'paper' else 1
  cfg.dtype = spec['dtype']
  cfg.width_scale = spec['width_scale']
  cfg.precision = spec.get('precision', 'default')
  net = model_lib.from_config(cfg)
  b, size = spec['batch'], spec['image_size']
  params = model_lib.init(net, jax.random.key(0), size)['params']
  images = jax.random.normal(jax.random.key(1), (b, size, size, 3))
  labels = jax.random.randint(jax.random.key(2), (b,), 0, cfg.num_classes)
  rss_base = _rss_mb()

  if spec['benchmark'] == 'train':
    tx, train_step = train_step_fn(net)
    state = [(params, tx.init(params))]
    fn = jax.jit(train_step, donate_argnums=(0,))
    key = jax.random.key(3)
    start = time.perf_counter()
    compiled = fn.lower(state[0], images, labels, key).compile()
    compile_s = time.perf_counter() - start

    def run(i):
      state[0], loss = compiled(state[0], images, labels,
                                jax.random.fold_in(key, i))
      return float(loss)          # the only host transfer of the step
  else:
    fn = jax.jit(lambda params, images: net.apply(
        {'params': params}, images, train=False))
    start = time.perf_counter()
    compiled = fn.lower(params, images).compile()
    compile_s = time.perf_counter() - start

    def run(i):
      del i
      return compiled(params, images).block_until_ready()

  facts = dict(compile_s=compile_s, rss_base_mb=rss_base,
               version=jax.__version__,
               xla_flags=os.environ.get('XLA_FLAGS', ''),
               devices=len(jax.devices()),
               platform=jax.devices()[0].platform,
               device_kind=jax.devices()[0].device_kind,
               conv_backend=ops.conv_backend(cfg.dtype))
  return run, facts


def _torch_setup(spec):
  import torch
  import torch.nn.functional as F
  from alexnet_jax.reference import torch_models
  from alexnet_jax.configs import paper

  if spec['benchmark'] == 'matmul':
    n = spec['matmul_size']
    a = torch.randn(n, n, dtype=getattr(torch, spec['dtype']))
    facts = dict(compile_s=None, rss_base_mb=_rss_mb(),
                 version=torch.__version__, threads=torch.get_num_threads())
    return (lambda i: torch.mm(a, a)), facts

  cfg = paper.get_config().model
  cfg.variant = spec['model']
  cfg.towers = 2 if spec['model'] == 'paper' else 1
  cfg.width_scale = spec['width_scale']
  torch.manual_seed(0)
  b, size = spec['batch'], spec['image_size']
  # flatten='chw': the twin as a PyTorch user writes it (no permute).
  net = torch_models.from_config(cfg, image_size=size, flatten='chw')
  device = spec.get('device', 'cpu')
  if device == 'cuda':
    # The same maths as JAX's default precision on the GPU (TF32).
    torch.backends.cuda.matmul.allow_tf32 = spec.get('precision') != 'highest'
    torch.backends.cudnn.allow_tf32 = spec.get('precision') != 'highest'
    torch.backends.cudnn.benchmark = True
  net = net.to(device)
  images = torch.randn(b, 3, size, size, device=device)
  labels = torch.randint(0, cfg.num_classes, (b,), device=device)
  bf16 = spec['dtype'] == 'bfloat16'
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16,
                                    enabled=bf16)
  rss_base = _rss_mb()

  if spec['benchmark'] == 'train':
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY)

    def run(i):
      del i
      with autocast():
        loss = F.cross_entropy(net(images), labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      return loss.item()
  else:
    net.eval()

    def run(i):
      del i
      with torch.inference_mode(), autocast():
        return net(images).float().sum().item()

  facts = dict(compile_s=None, rss_base_mb=rss_base,
               version=torch.__version__, threads=torch.get_num_threads(),
               platform=device)
  return run, facts


def matmul_gflops(impl, n, dtype, repeats=3, device='cpu'):
  """Best-of-`repeats` GFLOP/s of an n x n @ n x n matmul (XLA or torch)."""
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
  return 2 * n ** 3 / best / 1e9


def _release_free_heap():
  """Returns the C heap's free pages to the OS (glibc only; else no-op).

  XLA's compiler leaves a few hundred MB of freed but fragmented heap
  behind, which would count in the step's peak RSS though the step never
  uses it. Both workers call this after setting up, so peak RSS measures
  what each implementation's training step holds.
  """
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


def worker_main(spec):
  """Sets up, reports `ready`, then serves `step` / `finish` commands."""
  if spec['impl'] == 'jax':
    from alexnet_jax.core import xla_flags
    xla_flags.set_defaults()      # what the trainer runs with
  setup = _jax_setup if spec['impl'] == 'jax' else _torch_setup
  run, facts = setup(spec)
  _release_free_heap()
  start = time.perf_counter()
  run(0)
  first_step_s = time.perf_counter() - start
  for i in range(1, spec['warmup']):
    run(i)
  _say(event='ready', first_step_s=first_step_s, **facts)
  step = spec['warmup']
  for line in sys.stdin:
    command = line.strip()
    if command == 'step':
      start, cpu = time.perf_counter(), time.process_time()
      run(step)
      _say(event='step', seconds=time.perf_counter() - start,
           cpu_seconds=time.process_time() - cpu)
      step += 1
    elif command == 'finish':
      peak = _rss_mb()        # before the matmuls allocate anything
      peaks = {d: matmul_gflops(spec['impl'], spec['matmul_size'], d,
                                device=spec.get('device', 'cpu'))
               for d in sorted({'float32', spec['dtype']})}
      _say(event='done', peak_rss_mb=peak, matmul_gflops=peaks)
      return
    else:
      raise ValueError(f'benchmark worker: unknown command {command!r}')


class Worker:
  """The parent's handle on one worker process."""

  def __init__(self, spec, env=None):
    self.spec = spec
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'alexnet_jax.benchmark', '_worker',
         json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env)

  def receive(self):
    for line in self.proc.stdout:
      if line.startswith(PROTOCOL):
        return json.loads(line[len(PROTOCOL):])
      sys.stderr.write(line)       # anything else the worker printed
    code = self.proc.wait()
    raise RuntimeError(f'benchmark worker {self.spec["impl"]} '
                       f'({self.spec["model"]}) exited with code {code} '
                       '(its error is printed above)')

  def send(self, command):
    self.proc.stdin.write(command + '\n')
    self.proc.stdin.flush()
    return self.receive()

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()


def compare(specs, *, steps, settle_s=0.1, envs=None, sequential=False):
  """Runs each spec in its own worker, steps alternating; returns results.

  Workers set up one at a time (compilation does not overlap a timed
  step), then step i of every worker runs before step i+1 of any.
  `sequential`: each worker runs all its steps and exits before the next
  starts (on a GPU or TPU, where each must own the device's memory).
  """
  envs = envs or [None] * len(specs)
  if sequential:
    return [compare([s], steps=steps, settle_s=0, envs=[e])[0]
            for s, e in zip(specs, envs)]
  workers, results = [], []
  try:
    for spec, env in zip(specs, envs):
      workers.append(Worker(spec, env))
      results.append(dict(ready=workers[-1].receive(), steps=[],
                          cpu_steps=[]))
    for _ in range(steps):
      for worker, result in zip(workers, results):
        time.sleep(settle_s)       # let the other worker's threads go idle
        reply = worker.send('step')
        result['steps'].append(reply['seconds'])
        result['cpu_steps'].append(reply['cpu_seconds'])
    for worker, result in zip(workers, results):
      result['done'] = worker.send('finish')
  finally:
    for worker in workers:
      worker.close()
  return results


# ----------------------------------------------------------------------------
# Measurements -> records.


def _machine():
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if
               l.startswith('model name')]
    cpu = f'{len(names)}x {names[0]}' if names else cpu
  except OSError:
    pass
  return cpu


def _record(benchmark, spec, result, flops):
  ready, done, steps = result['ready'], result['done'], result['steps']
  step_s = statistics.median(steps)
  peak = done['matmul_gflops']['float32']
  achieved = flops / step_s / 1e9
  rec = dict(
      benchmark=benchmark, impl=spec['impl'], model=spec['model'],
      batch=spec['batch'], image_size=spec['image_size'],
      dtype=spec['dtype'], img_per_s=spec['batch'] / step_s,
      step_ms=step_s * 1e3, step_ms_min=min(steps) * 1e3,
      step_ms_max=max(steps) * 1e3, steps=len(steps),
      step_cpu_ms=statistics.median(result['cpu_steps']) * 1e3,
      warmup=spec['warmup'], compile_s=ready['compile_s'],
      first_step_s=ready['first_step_s'], peak_rss_mb=done['peak_rss_mb'],
      rss_base_mb=ready['rss_base_mb'], gflop_per_step=flops / 1e9,
      achieved_gflops=achieved,
      matmul_gflops=done['matmul_gflops'],
      frac_of_own_matmul_peak=achieved / peak,
      version=ready['version'])
  if spec['width_scale'] != 1.0:
    rec['width_scale'] = spec['width_scale']
  for key in ('xla_flags', 'devices', 'threads', 'conv_backend',
              'platform', 'device_kind'):
    if key in ready:
      rec[key] = ready[key]
  return rec


def _finish_records(records):
  """Adds ratio_to_torch and the cross-implementation peak fractions."""
  torch_rec = next((r for r in records if r['impl'] == 'torch'), None)
  jax_rec = next((r for r in records if r['impl'] == 'jax'), None)
  if torch_rec and jax_rec:
    jax_rec['ratio_to_torch'] = torch_rec['step_ms'] / jax_rec['step_ms']
    jax_rec['peak_rss_vs_torch'] = (jax_rec['peak_rss_mb'] /
                                    torch_rec['peak_rss_mb'])
    xla_peak = jax_rec['matmul_gflops']['float32']
    torch_peak = torch_rec['matmul_gflops']['float32']
    for rec in records:
      rec['frac_of_xla_matmul_peak'] = rec['achieved_gflops'] / xla_peak
      rec['frac_of_torch_matmul_peak'] = rec['achieved_gflops'] / torch_peak
  return records


def _stamp(record, args):
  record.update(date=datetime.datetime.now().astimezone().isoformat(
      timespec='seconds'), machine=_machine(),
      command='python -m alexnet_jax.benchmark ' + ' '.join(args.argv))
  return record


def emit(record, args):
  """Prints one JSON line and appends it to --out."""
  line = json.dumps(_stamp(record, args))
  print(line, flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'a') as f:
      f.write(line + '\n')


def model_benchmark(benchmark, args):
  """train / infer: every variant and dtype asked, jax and torch alternating
  (on CPU) or one after the other (on a GPU or TPU)."""
  from alexnet_jax.benchmarks import accelerator
  info = getattr(args, 'platform_info', None) or accelerator.probe()
  on_device = info['platform'] != 'cpu'
  impls = list(args.impls)
  if info['platform'] not in ('cpu', 'cuda') or (
      info['platform'] == 'cuda' and not info['torch_cuda']):
    impls = [i for i in impls if i != 'torch']   # no twin for this device
  records = []
  for variant in args.variant:
    for dtype in args.dtype:
      specs = [dict(impl=impl, benchmark=benchmark, model=variant,
                    dtype=dtype, batch=args.batch,
                    image_size=args.image_size, warmup=args.warmup,
                    width_scale=args.width_scale,
                    precision=getattr(args, 'precision', 'default'),
                    device=('cuda' if impl == 'torch' and on_device and
                            not info.get('simulated') else 'cpu'),
                    matmul_size=args.matmul_size) for impl in impls]
      results = compare(specs, steps=args.steps, sequential=on_device)
      flops = step_flops(benchmark, variant, args.image_size, args.batch,
                         args.width_scale)
      group = _finish_records([_record(benchmark, s, r, flops)
                               for s, r in zip(specs, results)])
      for rec in group:
        if on_device:
          accelerator.annotate(rec, info, getattr(args, 'precision',
                                                  'default'))
        emit(rec, args)
      records += group
  return records


def matmul_benchmark(args):
  """This machine's large-matmul peak in XLA and PyTorch, f32 and bf16."""
  records = []
  for impl in args.impls:
    # A fresh process per implementation, as for the models.
    code = ('import json; from alexnet_jax import benchmark as b; '
            f'print(json.dumps({{d: b.matmul_gflops({impl!r}, '
            f'{args.matmul_size}, d) for d in b.DTYPES}}))')
    out = subprocess.run([sys.executable, '-c', code], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    for dtype, gflops in json.loads(out.strip().splitlines()[-1]).items():
      rec = dict(benchmark='matmul', impl=impl, model=f'{args.matmul_size}^2',
                 batch=None, dtype=dtype, gflops=gflops)
      emit(rec, args)
      records.append(rec)
  return records



def _delegate(module_name, args):
  """Runs another helper's benchmark module (parallel, input)."""
  import importlib
  try:
    module = importlib.import_module(f'alexnet_jax.benchmarks.{module_name}')
  except ModuleNotFoundError as e:
    if e.name != f'alexnet_jax.benchmarks.{module_name}':
      raise
    raise SystemExit(f'benchmark {args.command!r} needs '
                     f'alexnet_jax/benchmarks/{module_name}.py, which this '
                     'checkout does not have') from None
  return module.run(args) or []


# ----------------------------------------------------------------------------
# Table and command line.


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def print_table(records, file=sys.stdout):
  rows = [r for r in records if r.get('benchmark') in ('train', 'infer')]
  if rows:
    print('\n| benchmark | model | dtype | batch | impl | img/s | step ms | '
          'vs torch | compile s | peak RSS MB | GFLOP/s | of own peak | '
          'of XLA peak | of torch peak |', file=file)
    print('|' + '---|' * 14, file=file)
    for r in rows:
      print(f"| {r['benchmark']} | {r['model']} | {r['dtype']} | "
            f"{r['batch']} | {r['impl']} | {r['img_per_s']:.1f} | "
            f"{r['step_ms']:.0f} | {_fmt(r.get('ratio_to_torch'), '.2f')}x | "
            f"{_fmt(r['compile_s'], '.1f')} | {r['peak_rss_mb']:.0f} | "
            f"{r['achieved_gflops']:.0f} | "
            f"{r['frac_of_own_matmul_peak']:.0%} | "
            f"{_fmt(r.get('frac_of_xla_matmul_peak'), '.0%')} | "
            f"{_fmt(r.get('frac_of_torch_matmul_peak'), '.0%')} |",
            file=file)
  mm = [r for r in records if r.get('benchmark') == 'matmul']
  if mm:
    print('\n| matmul | impl | dtype | GFLOP/s |\n|---|---|---|---|', file=file)
    for r in mm:
      print(f"| {r['model']} | {r['impl']} | {r['dtype']} | "
            f"{r['gflops']:.0f} |", file=file)


def csv_choices(choices, name):
  def parse(text):
    values = [v for v in text.split(',') if v]
    bad = [v for v in values if v not in choices]
    if bad or not values:
      raise argparse.ArgumentTypeError(
          f'{name} {text!r}: use one or more of {", ".join(choices)}, '
          'comma-separated')
    return values
  return parse


def positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'{text} is not a positive integer')
  return value


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m alexnet_jax.benchmark',
      description=__doc__.split('\n\n')[0])
  parser.add_argument('command', choices=(
      'all', 'train', 'infer', 'matmul', 'parallel', 'input', 'accelerator'))
  parser.add_argument('--quick', action='store_true',
                      help='fewer steps, smaller batch: one or two minutes')
  parser.add_argument('--variant', type=csv_choices(VARIANTS, '--variant'),
                      default=None, help='paper,torchvision (default paper)')
  parser.add_argument('--dtype', type=csv_choices(DTYPES, '--dtype'), default=None,
                      help='float32,bfloat16 (default float32; bf16 = '
                      'config dtype in JAX, autocast in PyTorch)')
  parser.add_argument('--batch', type=positive_int, default=None,
                      help='default 128 (32 with --quick)')
  parser.add_argument('--image-size', type=positive_int, default=224)
  parser.add_argument('--steps', type=positive_int, default=None,
                      help='timed steps per implementation (default 6, '
                      '3 with --quick)')
  parser.add_argument('--warmup', type=positive_int, default=None,
                      help='untimed steps after compiling (default 2, '
                      '1 with --quick)')
  parser.add_argument('--impls', type=csv_choices(('jax', 'torch'), '--impls'),
                      default=['jax', 'torch'])
  parser.add_argument('--matmul-size', type=positive_int, default=None,
                      help='side of the square peak matmul (default 4096)')
  parser.add_argument('--width-scale', type=float, default=1.0,
                      help='< 1 shrinks every layer (tests only)')
  parser.add_argument('--precision', default='default',
                      choices=('default', 'high', 'highest'),
                      help='config.model.precision of the JAX model '
                      "(default: the platform's, TF32 / bf16 passes)")
  parser.add_argument('--simulate', default='',
                      help='accelerator: rehearse on CPU as cuda[:N] or '
                      'tpu[:N] (tests)')
  parser.add_argument('--test-timeout', type=positive_int, default=300,
                      help='accelerator: seconds for pytest -m accelerator')
  parser.add_argument('--out', default='',
                      help='also append the JSON lines to this file')
  args = parser.parse_args(argv)
  args.argv = list(argv)
  quick = args.quick
  args.variant = args.variant or ['paper']
  args.dtype = args.dtype or ['float32']
  args.batch_given = args.batch is not None
  args.batch = args.batch or (32 if quick else 128)
  args.steps = args.steps or (3 if quick else 6)
  args.warmup = args.warmup or (1 if quick else 2)
  args.matmul_size = args.matmul_size or (2048 if quick else 4096)
  return args


def run_all(args):
  """The README's headline figures: both models' float32 train and infer
  steps against PyTorch (with matmul peaks), one device against two towers
  on two devices, and the input pipeline. bfloat16 (`train --dtype
  bfloat16`) and the other parallel modes (`parallel`) have their own
  commands: with them `all` took 23 minutes here instead of about 12.
  `--quick` (about 2 minutes) runs the model steps only: the parallel and
  input figures take another 75 s even when quick, so they have their own
  `parallel --quick` and `input --quick`."""
  records = []
  for benchmark in ('train', 'infer'):
    sub = argparse.Namespace(**vars(args))
    sub.variant, sub.dtype = list(VARIANTS), ['float32']
    records += model_benchmark(benchmark, sub)
  if args.quick:
    print('all --quick: model steps only; run `parallel --quick` and '
          '`input --quick` for the rest', file=sys.stderr)
    return records
  for name in ('parallel', 'input'):
    sub = argparse.Namespace(**vars(args))
    sub.modes = ['single', 'model']
    try:
      records += _delegate(name, sub)
    except SystemExit as e:
      print(f'skipped: {e}', file=sys.stderr)
  return records


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ['_worker']:
    return worker_main(json.loads(argv[1]))
  args = parse_args(argv)
  if args.command == 'all':
    records = run_all(args)
  elif args.command in ('train', 'infer'):
    records = model_benchmark(args.command, args)
  elif args.command == 'matmul':
    records = matmul_benchmark(args)
  elif args.command == 'accelerator':
    from alexnet_jax.benchmarks import accelerator
    records = accelerator.run(args)
  else:
    records = _delegate(args.command, args)
  print_table(records)


if __name__ == '__main__':
  main()
