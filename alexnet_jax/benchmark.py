"""Speed of alexnet_jax against PyTorch on the same machine, side by side.

    python -m alexnet_jax.benchmark all            # docs/performance.md (6-12 min)
    python -m alexnet_jax.benchmark all --quick    # model steps only (~2 min)
    python -m alexnet_jax.benchmark train [--variant paper,torchvision]
        [--batch 128] [--image-size 224] [--dtype float32|bfloat16]
        [--steps 6] [--warmup 2]
    python -m alexnet_jax.benchmark infer ...      # eval-mode forward pass
    python -m alexnet_jax.benchmark matmul         # this machine's peaks
    python -m alexnet_jax.benchmark overhead ...   # metrics/norms/lr cost
    python -m alexnet_jax.benchmark parallel ...   # the parallel modes
    python -m alexnet_jax.benchmark input ...      # the input pipeline
    python -m alexnet_jax.benchmark profile ...    # where a step's time goes
    python -m alexnet_jax.benchmark memory ...     # XLA's memory plan
    python -m alexnet_jax.benchmark accelerator    # a GPU/TPU host's check
    python -m alexnet_jax.benchmark compile ...    # compiled for TPU/GPU, here
    python -m alexnet_jax.benchmark MODE --help    # that mode's flags

On a GPU or TPU (`train`, `infer`) the implementations run one after the
other instead (each owns the device; JAX preallocates 75% of a GPU's
memory), PyTorch's on CUDA when a CUDA build of torch is installed, and
each record adds the device and the fraction of its datasheet peak
(benchmarks/accelerator.py's table, per dtype and --precision).

The train figures time the trainer's own step (steps.make_train_step) on a
fake-data config, against a PyTorch twin doing the same work
(torch_models.TrainStep): see benchmarks/model.py. How the figures are
taken on a shared, noisy machine (one worker process per implementation,
timed steps alternating between them, load average recorded): see
benchmarks/harness.py. Each measurement prints one JSON line (and appends
it to --out), then a table.
"""

import argparse
import sys

from absl import flags

from alexnet_jax import cli
from alexnet_jax.benchmarks import accelerator
from alexnet_jax.benchmarks import deviceless
from alexnet_jax.benchmarks import harness
from alexnet_jax.benchmarks import input as input_bench
from alexnet_jax.benchmarks import model as model_bench
from alexnet_jax.benchmarks import parallel as parallel_bench
from alexnet_jax.benchmarks import profile

PROG = 'python -m alexnet_jax.benchmark'

# The model modes' flags; each mode's --help lists only its own (parallel
# and input define theirs in their modules).
_FLAGS = {
    'quick': lambda fv: flags.DEFINE_bool(
        'quick',
        False,
        'Fewer steps, smaller batch: one or two minutes.',
        flag_values=fv,
    ),
    'variant': lambda fv: harness.define_csv(
        fv,
        'variant',
        model_bench.VARIANTS,
        'Default paper (profile: torchvision; memory: both).',
    ),
    'dtype': lambda fv: harness.define_csv(
        fv,
        'dtype',
        model_bench.DTYPES,
        'Default float32; bfloat16 = config dtype in JAX, autocast in '
        'PyTorch.',
    ),
    'batch': lambda fv: harness.define_positive(
        fv, 'batch', 'Default 128 (32 with --quick).'
    ),
    'steps': lambda fv: harness.define_step_flags(
        fv,
        steps_help='Timed steps per worker (default 6, 3 with --quick; '
        'overhead: 10).',
        warmup_help='Untimed steps after compiling (default 2, 1 with '
        '--quick).',
    ),
    'repeats': lambda fv: harness.define_positive(
        fv, 'repeats', 'Rounds of fresh workers (default 3).', default=3
    ),
    'top': lambda fv: harness.define_positive(
        fv, 'top', 'How many of the longest ops to list.', default=40
    ),
    'bare': lambda fv: flags.DEFINE_bool(
        'bare',
        False,
        'Also the step without its metrics and norms.',
        flag_values=fv,
    ),
    'impls': lambda fv: harness.define_csv(
        fv, 'impls', ('jax', 'torch'), 'Default both.', default='jax,torch'
    ),
    'matmul-size': lambda fv: harness.define_positive(
        fv,
        'matmul-size',
        'Side of the square peak matmul (default 4096, 2048 with --quick).',
    ),
    'width-scale': harness.define_width_scale_flag,
    'precision': lambda fv: flags.DEFINE_enum(
        'precision',
        'default',
        ['default', 'high', 'highest'],
        "config.model.precision of the JAX model (default: the platform's, "
        'TF32 / bf16 passes).',
        flag_values=fv,
    ),
    'simulate': lambda fv: flags.DEFINE_string(
        'simulate',
        '',
        'Rehearse on CPU as cuda[:N] or tpu[:N] (tests).',
        flag_values=fv,
    ),
    'test-timeout': lambda fv: harness.define_positive(
        fv, 'test-timeout', 'Seconds for pytest -m accelerator.', default=300
    ),
    'out': harness.define_out_flag,
}
_STEP = ('quick', 'variant', 'dtype', 'batch', 'steps', 'width-scale', 'out')
_MODEL = (*_STEP, 'impls', 'matmul-size', 'precision')
MODE_FLAGS = {
    'all': (
        'quick',
        'batch',
        'steps',
        'impls',
        'matmul-size',
        'width-scale',
        'precision',
        'out',
    ),
    'train': _MODEL,
    'infer': _MODEL,
    'matmul': ('quick', 'impls', 'matmul-size', 'out'),
    'overhead': (*_STEP, 'repeats', 'matmul-size'),
    'profile': (*_STEP, 'top'),
    'memory': (*_STEP, 'bare'),
    'accelerator': (
        'quick',
        'batch',
        'precision',
        'simulate',
        'test-timeout',
        'out',
    ),
    'parallel': parallel_bench.define_flags,
    'input': input_bench.define_flags,
    'compile': deviceless.define_flags,
}
COMMANDS = tuple(MODE_FLAGS)


def _mode(argv):
  """The mode: the first argument."""
  mode = argv[0] if argv else None
  if mode not in MODE_FLAGS:
    raise SystemExit(
        f'error: mode {mode!r}: use one of {", ".join(COMMANDS)} (then '
        '--help for its flags)'
    )
  return mode


def define_flags(fv, mode):
  """The flags of one mode, defined in the FlagValues `fv`."""
  mode_flags = MODE_FLAGS[mode]
  if callable(mode_flags):
    mode_flags(fv)
    return
  for name in mode_flags:
    _FLAGS[name](fv)


def _namespace(fv, mode, argv):
  """The parsed flags as the namespace the benchmarks read, with the
  defaults that depend on the mode and --quick filled in."""
  args = harness.namespace(fv)
  args.command = mode
  args.argv = list(argv)
  args.command_line = ' '.join([PROG, *argv])
  if callable(MODE_FLAGS[mode]):
    return args
  quick = getattr(args, 'quick', False)
  default_variant = {
      'profile': ['torchvision'],
      'memory': list(model_bench.VARIANTS),
  }
  fill = dict(
      variant=default_variant.get(mode, ['paper']),
      dtype=['float32'],
      image_size=224,
      width_scale=1.0,
      impls=['jax', 'torch'],
      precision='default',
      out='',
  )
  for key, value in fill.items():
    if not getattr(args, key, None):
      setattr(args, key, value)
  args.batch_given = getattr(args, 'batch', None) is not None
  args.batch = getattr(args, 'batch', None) or (32 if quick else 128)
  args.steps = getattr(args, 'steps', None) or (
      10 if mode == 'overhead' else 3 if quick else 6
  )
  args.warmup = getattr(args, 'warmup', None) or (1 if quick else 2)
  args.matmul_size = getattr(args, 'matmul_size', None) or (
      2048 if quick else 4096
  )
  return args


def parse_args(argv):
  """argv (the mode, then its flags) -> the namespace a benchmark reads."""
  mode = _mode(argv)
  fv = flags.FlagValues()
  define_flags(fv, mode)
  rest = cli.parse_flags([PROG, *argv], fv)
  cli.no_arguments(rest[2:])
  return _namespace(fv, mode, argv)


def run_all(args):
  """The headline figures: both models' float32 train and infer steps
  against PyTorch (with matmul peaks), one device against two towers on
  two devices, and the input pipeline. bfloat16 (`train --dtype
  bfloat16`), the other parallel modes (`parallel`) and the overhead
  (`overhead`) have their own commands: with bf16 and all parallel modes
  `all` took 23 minutes instead of about 12. `--quick` (about 2 minutes)
  runs the model steps only: the parallel and input figures take another
  75 s even when quick, so they have their own `parallel --quick` and
  `input --quick`."""
  records = []
  for benchmark in ('train', 'infer'):
    sub = argparse.Namespace(**vars(args))
    sub.variant, sub.dtype = list(model_bench.VARIANTS), ['float32']
    records += model_bench.measure(benchmark, sub)
  if args.quick:
    print(
        'all --quick: model steps only; run `parallel --quick` and '
        '`input --quick` for the rest',
        file=sys.stderr,
    )
    return records
  for name, bench in (('parallel', parallel_bench), ('input', input_bench)):
    sub = argparse.Namespace(**vars(args))
    sub.modes = ['single', 'model']
    try:
      records += bench.run(sub) or []
    except FileNotFoundError as e:  # input: no sample images here
      print(f'skipped {name}: {e}', file=sys.stderr)
  return records


def _run(args):
  if args.command == 'all':
    records = run_all(args)
  elif args.command in ('train', 'infer'):
    records = model_bench.measure(args.command, args)
  elif args.command == 'matmul':
    records = model_bench.matmul(args)
  elif args.command == 'overhead':
    records = model_bench.overhead(args)
  elif args.command == 'accelerator':
    records = accelerator.run(args)
  elif args.command == 'profile':
    records = profile.profile(args)
  elif args.command == 'memory':
    records = profile.memory(args)
  elif args.command == 'parallel':
    parallel_bench.run(args)  # prints its own table
    return 0
  elif args.command == 'compile':
    deviceless.run(args)  # prints its own table
    return 0
  else:
    input_bench.run(args)  # prints its own table
    return 0
  model_bench.print_table(records)
  profile.print_table(records)
  return 0


def main(argv=None):
  """The command (`argv`: the mode and its flags; None: sys.argv, as a
  program, where --help after the mode lists that mode's flags)."""
  if argv is not None:
    return _run(parse_args(argv))
  given = sys.argv[1:]
  asks_help = any(
      a in ('-h', '-?', '--help', '--helpshort', '--helpfull') for a in given
  )
  if given[:1] and given[0] in MODE_FLAGS:
    mode = given[0]
  elif asks_help:
    mode = None  # no flags: --help shows the modes (this docstring)
  else:
    _mode(given)  # raises, naming the modes

  def command(fv, rest):
    cli.no_arguments(rest[1:])
    return _run(_namespace(fv, mode, given))

  def define(fv):
    if mode:
      define_flags(fv, mode)

  return cli.run_command(__name__, define, command)


if __name__ == '__main__':
  main()
