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

from alexnet_jax.benchmarks import accelerator
from alexnet_jax.benchmarks import harness
from alexnet_jax.benchmarks import input as input_bench
from alexnet_jax.benchmarks import model as model_bench
from alexnet_jax.benchmarks import parallel as parallel_bench
from alexnet_jax.benchmarks import profile

COMMANDS = (
    'all',
    'train',
    'infer',
    'matmul',
    'overhead',
    'parallel',
    'input',
    'profile',
    'memory',
    'accelerator',
)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m alexnet_jax.benchmark',
      description=__doc__.split('\n\n')[0],
  )
  parser.add_argument('command', choices=COMMANDS)
  parser.add_argument(
      '--quick',
      action='store_true',
      help='fewer steps, smaller batch: one or two minutes',
  )
  parser.add_argument(
      '--variant',
      type=harness.csv_choices(model_bench.VARIANTS, '--variant'),
      default=None,
      help='paper,torchvision (default paper; profile: '
      'torchvision; memory: both)',
  )
  parser.add_argument(
      '--dtype',
      type=harness.csv_choices(model_bench.DTYPES, '--dtype'),
      default=None,
      help='float32,bfloat16 (default float32; bf16 = '
      'config dtype in JAX, autocast in PyTorch)',
  )
  parser.add_argument(
      '--batch',
      type=harness.positive_int,
      default=None,
      help='default 128 (32 with --quick)',
  )
  harness.add_step_options(
      parser,
      steps_help='timed steps per worker (default 6, 3 with '
      '--quick; overhead: 10)',
      warmup_help='untimed steps after compiling (default 2, '
      '1 with --quick)',
  )
  parser.add_argument(
      '--repeats',
      type=harness.positive_int,
      default=3,
      help='overhead: rounds of fresh workers (default 3)',
  )
  parser.add_argument(
      '--top',
      type=harness.positive_int,
      default=40,
      help='profile: how many of the longest ops to list',
  )
  parser.add_argument(
      '--bare',
      action='store_true',
      help='memory: also the step without its metrics and ' 'norms',
  )
  parser.add_argument(
      '--impls',
      type=harness.csv_choices(('jax', 'torch'), '--impls'),
      default=['jax', 'torch'],
  )
  parser.add_argument(
      '--matmul-size',
      type=harness.positive_int,
      default=None,
      help='side of the square peak matmul (default 4096)',
  )
  harness.add_width_scale_option(parser)
  parser.add_argument(
      '--precision',
      default='default',
      choices=('default', 'high', 'highest'),
      help='config.model.precision of the JAX model '
      "(default: the platform's, TF32 / bf16 passes)",
  )
  parser.add_argument(
      '--simulate',
      default='',
      help='accelerator: rehearse on CPU as cuda[:N] or ' 'tpu[:N] (tests)',
  )
  parser.add_argument(
      '--test-timeout',
      type=harness.positive_int,
      default=300,
      help='accelerator: seconds for pytest -m accelerator',
  )
  parser.add_argument(
      '--out', default='', help='also append the JSON lines to this file'
  )
  args = parser.parse_args(argv)
  args.argv = list(argv)
  args.command_line = 'python -m alexnet_jax.benchmark ' + ' '.join(argv)
  quick = args.quick
  default_variant = {
      'profile': ['torchvision'],
      'memory': list(model_bench.VARIANTS),
  }
  args.variant = args.variant or default_variant.get(args.command, ['paper'])
  args.dtype = args.dtype or ['float32']
  args.batch_given = args.batch is not None
  args.batch = args.batch or (32 if quick else 128)
  args.steps = args.steps or (
      10 if args.command == 'overhead' else 3 if quick else 6
  )
  args.warmup = args.warmup or (1 if quick else 2)
  args.matmul_size = args.matmul_size or (2048 if quick else 4096)
  return args


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


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] in (['parallel'], ['input']):
    # Their own options (--modes, --sequential; --data, --workers...):
    # `benchmark parallel` is `parallel_benchmark`, `benchmark input` is
    # `input_benchmark`, option for option.
    bench = parallel_bench if argv[0] == 'parallel' else input_bench
    return bench.main(argv[1:], prog=f'alexnet_jax.benchmark {argv[0]}')
  args = parse_args(argv)

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
  else:
    records = profile.memory(args)
  model_bench.print_table(records)
  profile.print_table(records)


if __name__ == '__main__':
  main()
