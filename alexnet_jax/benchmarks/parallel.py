"""Train-step speed of each parallel mode on forced CPU devices.

    python -m alexnet_jax.parallel_benchmark [--batch 128] [--steps 6]
        [--image-size 224] [--modes single,model,jit,pmap,hybrid] [--quick]
    python -m alexnet_jax.benchmark parallel ...   # the same, from the CLI

For each mode (single device; the two towers on two devices; jit and pmap
data parallelism on two; both on a 2x2 mesh) a worker process simulates the
devices it needs (`config.parallel.cpu_devices`, through
`parallel.setup_devices`), places the paper model's state with
`parallel.Parallel` and compiles its train step (forward with dropout,
softmax cross-entropy, backward, SGD with momentum 0.9 and weight decay
5e-4, state donated). Workers compile one after the other, then the parent
alternates single timed steps between them (A B C ... A B C ...), so the
machine's drifting load hits every mode alike (`--sequential`: one worker
alive at a time, for memory). Every mode runs the same global batch.

Each mode prints one JSON line: step_ms (median), img_per_s, the bytes of
parameters held by the fullest device, and ratio_to_single = this mode's
step time / the single-device step time (< 1: faster). Forced CPU devices
share the machine's cores: this measures how well each split keeps them
busy, not a real multi-GPU speed-up.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from alexnet_jax import benchmark  # its argument parsers; imports no jax

MODES = {        # name: (mesh.data, mesh.model, data_parallel, label)
    'single': (1, 1, 'jit', 'one device'),
    'model': (1, 2, 'jit', 'two towers on two devices (shard_map)'),
    'jit': (2, 1, 'jit', 'data parallel, jit + NamedSharding'),
    'pmap': (2, 1, 'pmap', 'data parallel, pmap (classic path)'),
    'hybrid': (2, 2, 'jit', 'data x model 2x2'),
}
PROTOCOL = '@@parallel_benchmark '
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


# ----------------------------------------------------------------------------
# The worker: one mode, its own process and simulated devices.


def _numpy_params(net, config, size):
  """The paper's initial distribution, drawn by NumPy.

  Shapes come from jax.eval_shape; JAX's own initialisers would compile its
  random-number kernels, which takes long on XLA:CPU and is not measured.
  """
  import jax
  import numpy as np
  from alexnet_jax.core import model as model_lib
  shapes = jax.eval_shape(
      lambda: model_lib.init(net, jax.random.PRNGKey(0), size))['params']
  rng = np.random.default_rng(0)
  std, bias = config.model.weight_init_std, config.model.bias_init

  def make(path, x):
    if path[-1].key == 'bias':
      return np.full(x.shape, bias, np.float32)
    return (rng.standard_normal(x.shape, np.float32) * std)
  return jax.tree_util.tree_map_with_path(make, shapes)


def train_step(state, batch, *, apply_fn, tx, axis_name=None):
  """The benchmark's step; pmap binds axis_name and averages gradients."""
  import jax
  import optax
  key = jax.random.fold_in(state['rng'], state['step'])
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

  def loss_fn(params):
    logits = apply_fn({'params': params}, batch['image'], train=True,
                      rngs={'dropout': key})
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    loss = jax.lax.pmean(loss, axis_name)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  return dict(state, step=state['step'] + 1, opt_state=opt_state,
              params=optax.apply_updates(state['params'], updates)), loss


def _say(**message):
  print(PROTOCOL + json.dumps(message), flush=True)


def worker_main(spec):
  """Sets up one mode, reports `ready`, then runs `step` until `finish`."""
  from alexnet_jax.core import parallel
  from alexnet_jax.configs import paper
  data, model, data_parallel, _ = MODES[spec['mode']]
  config = paper.get_config()
  config.model.width_scale = spec['width_scale']
  config.data.image_size = spec['image_size']
  config.optim.batch_size = spec['batch']
  config.parallel.mesh.data = data
  config.parallel.mesh.model = model
  config.parallel.data_parallel = data_parallel
  config.parallel.cpu_devices = data * model
  parallel.setup_devices(config)     # before anything touches a device

  import jax
  import numpy as np
  import optax
  from alexnet_jax.core import model as model_lib
  net = model_lib.from_config(config.model)
  par = parallel.Parallel(config, net)
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                   optax.sgd(LR, momentum=MOMENTUM))
  params = _numpy_params(net, config, spec['image_size'])
  host_state = dict(step=np.zeros((), np.int32),
                    rng=np.asarray(jax.random.PRNGKey(0)), params=params,
                    opt_state=jax.tree.map(np.asarray, tx.init(params)))
  rng = np.random.default_rng(1)
  b, size = spec['batch'], spec['image_size']
  batch = par.shard_batch(dict(
      image=rng.standard_normal((b, size, size, 3), np.float32),
      label=rng.integers(0, config.model.num_classes, b).astype(np.int32)))
  state = [par.place_state(host_state)]
  del host_state, params
  step = par.jit_step(functools.partial(train_step, apply_fn=par.apply,
                                        tx=tx))
  start = time.perf_counter()
  step.lower(state[0], batch).compile()
  compile_s = time.perf_counter() - start
  per_device = parallel.param_bytes_per_device(state[0]['params'])

  def run():
    state[0], loss = step(state[0], batch)
    return float(loss)       # the step's only host transfer

  for _ in range(spec['warmup']):
    run()
  _say(event='ready', compile_s=compile_s, devices=len(per_device),
       param_bytes_per_device=max(per_device.values()),
       param_bytes_total=sum(x.nbytes for x in jax.tree.leaves(par.to_host(
           state[0]['params']))), version=jax.__version__)
  for line in sys.stdin:
    command = line.strip()
    if command == 'step':
      start, cpu = time.perf_counter(), time.process_time()
      loss = run()
      _say(event='step', seconds=time.perf_counter() - start,
           cpu_seconds=time.process_time() - cpu, loss=loss)
    elif command == 'finish':
      _say(event='done', peak_rss_mb=_rss_mb())
      return
    else:
      raise ValueError(f'parallel benchmark worker: unknown command '
                       f'{command!r}')


def _rss_mb():
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------
# The parent: workers, alternating timed steps, records.


class _Worker:

  def __init__(self, spec):
    self.spec = spec
    env = dict(os.environ)
    env.pop('XLA_FLAGS', None)  # devices come from config.parallel.cpu_devices
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'alexnet_jax.benchmarks.parallel', '_worker',
         json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env)

  def receive(self):
    for line in self.proc.stdout:
      if line.startswith(PROTOCOL):
        return json.loads(line[len(PROTOCOL):])
      sys.stderr.write(line)
    code = self.proc.wait()
    raise RuntimeError(f'parallel benchmark worker {self.spec["mode"]} exited '
                       f'with code {code} (its error is printed above)')

  def send(self, command):
    self.proc.stdin.write(command + '\n')
    self.proc.stdin.flush()
    return self.receive()

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()


def _machine():
  try:
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f
               if l.startswith('model name')]
    if names:
      return f'{len(names)}x {names[0]}'
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _time_workers(specs, steps):
  """Starts a worker per spec, then alternates `steps` timed steps."""
  workers, results = [], []
  try:
    for spec in specs:   # one at a time: compiling does not overlap timing
      workers.append(_Worker(spec))
      results.append(dict(ready=workers[-1].receive(), steps=[], cpu=[]))
    for _ in range(steps):
      for worker, result in zip(workers, results):
        time.sleep(0.1)  # let the previous worker's threads go idle
        reply = worker.send('step')
        result['steps'].append(reply['seconds'])
        result['cpu'].append(reply['cpu_seconds'])
    for worker, result in zip(workers, results):
      result['done'] = worker.send('finish')
  finally:
    for worker in workers:
      worker.close()
  return results


def measure(args) -> list[dict]:
  """Runs every mode in args.modes; returns one record per mode."""
  specs = [dict(mode=m, batch=args.batch, image_size=args.image_size,
                width_scale=args.width_scale, warmup=args.warmup)
           for m in args.modes]
  if getattr(args, 'sequential', False):
    results = [r for spec in specs for r in _time_workers([spec], args.steps)]
  else:
    results = _time_workers(specs, args.steps)

  date = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  records = []
  for spec, result in zip(specs, results):
    ready, step_s = result['ready'], statistics.median(result['steps'])
    data, model, data_parallel, label = MODES[spec['mode']]
    records.append(dict(
        benchmark='parallel', impl='jax', model='paper', mode=spec['mode'],
        timing='sequential' if getattr(args, 'sequential', False)
        else 'alternating',
        label=label, mesh=dict(data=data, model=model),
        data_parallel=data_parallel, devices=ready['devices'],
        batch=spec['batch'], image_size=spec['image_size'],
        width_scale=spec['width_scale'], step_ms=step_s * 1e3,
        step_ms_min=min(result['steps']) * 1e3,
        step_ms_max=max(result['steps']) * 1e3, steps=len(result['steps']),
        step_cpu_ms=statistics.median(result['cpu']) * 1e3,
        img_per_s=spec['batch'] / step_s,
        param_bytes_per_device=ready['param_bytes_per_device'],
        param_bytes_total=ready['param_bytes_total'],
        compile_s=ready['compile_s'], peak_rss_mb=result['done'][
            'peak_rss_mb'], version=ready['version'], date=date,
        machine=_machine(), command=args.command_line))
  single = next((r for r in records if r['mode'] == 'single'), None)
  for r in records:
    r['ratio_to_single'] = (r['step_ms'] / single['step_ms'] if single
                            else None)
  return records


def print_table(records, file=sys.stdout):
  print('\n| mode | mesh (data x model) | devices | batch | step ms | img/s | '
        'vs single (step time) | param MB / device | compile s |', file=file)
  print('|' + '---|' * 9, file=file)
  for r in records:
    ratio = r['ratio_to_single']
    print(f"| {r['mode']}: {r['label']} | {r['mesh']['data']} x "
          f"{r['mesh']['model']} | {r['devices']} | {r['batch']} | "
          f"{r['step_ms']:.0f} | {r['img_per_s']:.1f} | "
          f"{'-' if ratio is None else format(ratio, '.2f') + 'x'} | "
          f"{r['param_bytes_per_device'] / 2**20:.1f} | "
          f"{r['compile_s']:.1f} |", file=file)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m alexnet_jax.parallel_benchmark',
      description=__doc__.split('\n\n')[0])
  parser.add_argument('--modes', type=benchmark.csv_choices(MODES, '--modes'), default=list(MODES),
                      help=f'comma-separated subset of {",".join(MODES)}')
  parser.add_argument('--quick', action='store_true',
                      help='batch 32, 3 steps: a few minutes')
  parser.add_argument('--batch', type=benchmark.positive_int, default=None,
                      help='global batch, every mode (default 128; 32 '
                      'with --quick)')
  parser.add_argument('--image-size', type=benchmark.positive_int, default=224)
  parser.add_argument('--steps', type=benchmark.positive_int, default=None,
                      help='timed steps per mode (default 6, 3 with --quick)')
  parser.add_argument('--warmup', type=benchmark.positive_int, default=None,
                      help='untimed steps after compiling (default 2, 1 '
                      'with --quick)')
  parser.add_argument('--width-scale', type=float, default=1.0,
                      help='< 1 shrinks every layer (tests only)')
  parser.add_argument('--sequential', action='store_true',
                      help='one worker alive at a time (less memory: five '
                      'paper-model workers at batch 128 need ~20 GB), '
                      'instead of alternating timed steps between modes')
  parser.add_argument('--out', default='',
                      help='also append the JSON lines to this file')
  args = parser.parse_args(argv)
  args.argv = list(argv)
  return _defaults(args)


def _defaults(args):
  """Fills defaults; also accepts benchmark.py's namespace."""
  quick = getattr(args, 'quick', False)
  args.batch = getattr(args, 'batch', None) or (32 if quick else 128)
  args.steps = getattr(args, 'steps', None) or (3 if quick else 6)
  args.warmup = getattr(args, 'warmup', None) or (1 if quick else 2)
  args.image_size = getattr(args, 'image_size', None) or 224
  args.width_scale = getattr(args, 'width_scale', None) or 1.0
  args.modes = getattr(args, 'modes', None) or list(MODES)
  args.out = getattr(args, 'out', '')
  if not hasattr(args, 'command_line'):
    prog = ('alexnet_jax.parallel_benchmark' if not hasattr(args, 'command')
            else 'alexnet_jax.benchmark')
    args.command_line = ' '.join(['python -m', prog]
                                 + list(getattr(args, 'argv', [])))
  for mode in args.modes:
    data = MODES[mode][0]
    if args.batch % data:
      raise SystemExit(f'--batch {args.batch} does not split over the '
                       f'{data} data shards of mode {mode}: use a multiple '
                       f'of {data}')
  return args


def run(args) -> list[dict]:
  """Measures, prints JSON lines and the table; returns the records.

  `args`: this module's parse_args(), or benchmark.py's namespace (its
  --batch, --steps, --warmup, --image-size, --width-scale, --quick, --out).
  """
  args = _defaults(args)
  records = measure(args)
  for r in records:
    line = json.dumps(r)
    print(line, flush=True)
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, 'a') as f:
        f.write(line + '\n')
  print_table(records)
  return records


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ['_worker']:
    return worker_main(json.loads(argv[1]))
  run(parse_args(argv))


if __name__ == '__main__':
  main()
