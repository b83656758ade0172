"""Train-step speed of each parallel mode on forced CPU devices.

    python -m alexnet_jax.benchmark parallel [--batch 128] [--steps 6]
        [--image-size 224] [--modes single,model,jit,pmap,hybrid] [--quick]

For each mode (single device; the two towers on two devices; jit and pmap
data parallelism on two; both on a 2x2 mesh) a worker process simulates the
devices it needs (`config.parallel.cpu_devices`, through
`parallel.setup_devices`) and builds the trainer's own step for that layout
(`steps.make_train_step` on a fake-data config of the paper recipe: the
update, metrics and norms training runs, state donated; parallel_worker.py).
The workers run on
benchmarks/harness.py: they compile one after the other, then the parent
alternates single timed steps between them (A B C ... A B C ...), so the
machine's drifting load hits every mode alike (`--sequential`: one worker
alive at a time, for memory). Every mode runs the same global batch.

Each mode prints one JSON line: step_ms (median), img_per_s, the bytes of
parameters held by the fullest device, and ratio_to_single = this mode's
step time / the single-device step time (< 1: faster). Forced CPU devices
share the machine's cores: this measures how well each split keeps them
busy, not a real multi-GPU speed-up.
"""

import os
import sys

from absl import flags

from alexnet_jax.benchmarks import harness

MODES = {  # name: (mesh.data, mesh.model, data_parallel, label)
    'single': (1, 1, 'jit', 'one device'),
    'model': (1, 2, 'jit', 'two towers on two devices (shard_map)'),
    'jit': (2, 1, 'jit', 'data parallel, jit + NamedSharding'),
    'pmap': (2, 1, 'pmap', 'data parallel, pmap (classic path)'),
    'hybrid': (2, 2, 'jit', 'data x model 2x2'),
}


# ----------------------------------------------------------------------------
# The parent: workers, alternating timed steps, records.


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # devices come from config.parallel.cpu_devices
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def measure(args) -> list[dict]:
  """Runs every mode in args.modes; returns one record per mode."""
  specs = [
      dict(
          mode=m,
          batch=args.batch,
          image_size=args.image_size,
          width_scale=args.width_scale,
          warmup=args.warmup,
      )
      for m in args.modes
  ]
  sequential = getattr(args, 'sequential', False)
  groups = [[s] for s in specs] if sequential else [specs]
  results = [
      r
      for group in groups
      for r in harness.compare(
          'parallel_worker', group, steps=args.steps, envs=[_env()] * len(group)
      )
  ]

  records = []
  for spec, result in zip(specs, results):
    ready = result['ready']
    data, model, data_parallel, label = MODES[spec['mode']]
    rec = dict(
        benchmark='parallel',
        impl='jax',
        model='paper',
        mode=spec['mode'],
        timing='sequential' if sequential else 'alternating',
        label=label,
        mesh=dict(data=data, model=model),
        data_parallel=data_parallel,
        devices=ready['devices'],
        batch=spec['batch'],
        image_size=spec['image_size'],
        width_scale=spec['width_scale'],
        train_step='trainer',
    )
    rec.update(harness.step_fields(result, spec['batch']))
    rec.update(
        param_bytes_per_device=ready['param_bytes_per_device'],
        param_bytes_total=ready['param_bytes_total'],
        compile_s=ready['compile_s'],
        peak_rss_mb=result['done']['peak_rss_mb'],
        # The last timed step's metrics: the same in every mode.
        metrics=result['done']['metrics'],
        version=ready['version'],
        load_avg=result['load'],
    )
    records.append(harness.stamp(rec, args.command_line))
  single = next((r for r in records if r['mode'] == 'single'), None)
  for r in records:
    r['ratio_to_single'] = r['step_ms'] / single['step_ms'] if single else None
  return records


def print_table(records, file=sys.stdout):
  print(
      '\n| mode | mesh (data x model) | devices | batch | step ms | img/s | '
      'vs single (step time) | param MB / device | compile s |',
      file=file,
  )
  print('|' + '---|' * 9, file=file)
  for r in records:
    ratio = r['ratio_to_single']
    print(
        f"| {r['mode']}: {r['label']} | {r['mesh']['data']} x "
        f"{r['mesh']['model']} | {r['devices']} | {r['batch']} | "
        f"{r['step_ms']:.0f} | {r['img_per_s']:.1f} | "
        f"{'-' if ratio is None else format(ratio, '.2f') + 'x'} | "
        f"{r['param_bytes_per_device'] / 2**20:.1f} | "
        f"{r['compile_s']:.1f} |",
        file=file,
    )


def define_flags(fv):
  """`benchmark parallel`'s flags, defined in the FlagValues `fv`."""
  harness.define_csv(
      fv, 'modes', tuple(MODES), f'Comma-separated subset of {",".join(MODES)}.'
  )
  flags.DEFINE_bool(
      'quick', False, 'Batch 32, 3 steps: a few minutes.', flag_values=fv
  )
  harness.define_positive(
      fv, 'batch', 'Global batch, every mode (default 128; 32 with --quick).'
  )
  harness.define_step_flags(
      fv,
      steps_help='Timed steps per mode (default 6, 3 with --quick).',
      warmup_help='Untimed steps after compiling (default 2, 1 with --quick).',
  )
  harness.define_width_scale_flag(fv)
  flags.DEFINE_bool(
      'sequential',
      False,
      'One worker alive at a time (less memory: five paper-model workers at '
      'batch 128 need ~20 GB), instead of alternating timed steps between '
      'modes.',
      flag_values=fv,
  )
  harness.define_out_flag(fv)


def _defaults(args):
  """Fills the defaults that depend on --quick (also for `all`'s
  namespace, which has no --modes)."""
  quick = getattr(args, 'quick', False)
  args.batch = getattr(args, 'batch', None) or (32 if quick else 128)
  args.steps = getattr(args, 'steps', None) or (3 if quick else 6)
  args.warmup = getattr(args, 'warmup', None) or (1 if quick else 2)
  args.image_size = getattr(args, 'image_size', None) or 224
  args.width_scale = getattr(args, 'width_scale', None) or 1.0
  args.modes = getattr(args, 'modes', None) or list(MODES)
  args.out = getattr(args, 'out', '')
  for mode in args.modes:
    data = MODES[mode][0]
    if args.batch % data:
      raise SystemExit(
          f'--batch {args.batch} does not split over the '
          f'{data} data shards of mode {mode}: use a multiple '
          f'of {data}'
      )
  return args


def run(args) -> list[dict]:
  """Measures, prints JSON lines and the table; returns the records.

  `args`: the command's namespace of `benchmark parallel` (define_flags),
  or of `benchmark all` (its --batch, --steps, --warmup, --image-size,
  --width-scale, --quick, --out).
  """
  args = _defaults(args)
  records = measure(args)
  for r in records:
    harness.emit(r, args.out)
  print_table(records)
  return records
