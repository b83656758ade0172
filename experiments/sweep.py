r"""Runs a named sweep and collects its results.

    python -m experiments.sweep NAME [--dataset cifar10|imagenet] [--jobs N]
        [--only VARIANT,...] [--set field=value ...] [--root DIR]
        [--data_root DIR] [--results DIR] [--collect-only | --from-logs]
        [--dry-run]
    python -m experiments.sweep --list

Each variant trains with `python -m alexnet_jax.main --config=BASE
--workdir=ROOT/NAME/DATASET/VARIANT --config.field=value ...`. Finished
variants are skipped; interrupted ones resume from their checkpoints, so the
same command continues a sweep stopped at any point. Workdirs (checkpoints,
TensorBoard events) go to ROOT, outside the repository: --root, else
$ALEXNET_JAX_RUNS, else ~/alexnet_jax_runs. Data: --data_root, else
$ALEXNET_JAX_DATA, else ~/alexnet_jax_data (docs/data.md).

Results go to experiments/results/NAME-DATASET/: the runs' JSONL logs
(logs/VARIANT.jsonl) and provenance.json (command, machine, date, commit,
and per run whether it finished), from which summary.csv, table.md and
curves.png are drawn. --from-logs redraws those from the committed logs
alone, without any workdir.

Example (a short CIFAR-10 LRN ablation, two runs at a time):

    python -m experiments.sweep lrn --dataset cifar10 --jobs 2 \
        --set optim.num_epochs=10
"""

import argparse
import shlex
import sys

from alexnet_jax.core import paths
from experiments import collect
from experiments import runner
from experiments import sweep_definitions as sweeps_lib


def parse_set(items) -> dict[str, str]:
  out = {}
  for item in items or ():
    key, sep, value = item.partition('=')
    key = key.removeprefix('--').removeprefix('config.')
    if not sep or not key:
      raise SystemExit(
          f'--set {item!r}: expected field=value, e.g. optim.num_epochs=10'
      )
    out[key] = value
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(
      prog='python -m experiments.sweep', description=__doc__.split('\n')[0]
  )
  p.add_argument('name', nargs='?', help='sweep name (--list shows them)')
  p.add_argument(
      '--dataset',
      default='cifar10',
      help='cifar10 (configs/cifar10.py) or imagenet (configs/paper.py)',
  )
  p.add_argument(
      '--jobs', type=int, default=1, help='variants trained at once (default 1)'
  )
  p.add_argument('--only', default='', help='comma-separated variants')
  p.add_argument(
      '--set',
      action='append',
      metavar='FIELD=VALUE',
      help='config override for every variant (repeatable)',
  )
  runner.add_location_flags(p, holding='the datasets')
  p.add_argument(
      '--results',
      default=None,
      help='results directory (default experiments/results/NAME-DATASET)',
  )
  p.add_argument(
      '--main',
      default='alexnet_jax.main',
      help='the training module run for each variant',
  )
  p.add_argument(
      '--collect-only',
      action='store_true',
      help='only collect the logs of existing workdirs into the '
      'results directory and redraw its tables and plots',
  )
  p.add_argument(
      '--from-logs',
      action='store_true',
      help='only redraw the tables and plots from the results '
      "directory's logs (no workdir needed)",
  )
  p.add_argument(
      '--dry-run', action='store_true', help='print the commands, run nothing'
  )
  p.add_argument('--list', action='store_true', help='list the sweeps')
  args = p.parse_args(argv)

  if args.list or not args.name:
    for s in sweeps_lib.SWEEPS.values():
      print(
          f'{s.name:12s} {s.question} [{", ".join(s.datasets)}]; '
          f'variants: {", ".join(s.variants)}\n{"":12s} the paper: '
          f'{s.paper}'
      )
    return 0
  paths.set_data_root(args.data_root)
  try:
    sweep = sweeps_lib.get(args.name)
    if args.from_logs:
      out = collect.results_dir(sweep, args.dataset, args.results)
      collect.render(sweep, args.dataset, out)
      print((out / 'table.md').read_text())
      return 0
    runs = runner.plan(
        sweep,
        args.dataset,
        root=args.root,
        extra=parse_set(args.set),
        only=[v for v in args.only.split(',') if v],
    )
  except (KeyError, ValueError, FileNotFoundError) as e:
    raise SystemExit(f'error: {e.args[0]}') from None
  if args.dry_run:
    for run in runs:
      state = 'finished' if runner.is_finished(run) else 'to run'
      print(f'# {run.name} ({state})')
      # Shell-quoted, with the data root the trainers would get.
      print(
          f'{paths.DATA_ENV}={shlex.quote(str(paths.data_root()))}',
          shlex.join(runner.command(run, args.main)),
      )
    return 0
  rc = 0
  if not args.collect_only:
    try:
      results = runner.run_all(runs, jobs=args.jobs, main_module=args.main)
    except KeyboardInterrupt as e:
      print(f'[sweep] {e}', file=sys.stderr)
      collect.collect(
          sweep,
          args.dataset,
          runs,
          out_dir=args.results,
          argv=['experiments.sweep'] + argv,
      )
      return 130
    failed = [n for n, code in results.items() if code not in (0, None)]
    if failed:
      print(f'[sweep] failed: {", ".join(failed)}', file=sys.stderr)
      rc = 1
  out = collect.collect(
      sweep,
      args.dataset,
      runs,
      out_dir=args.results,
      argv=['experiments.sweep'] + argv,
  )
  print(f'[sweep] results in {out}')
  print((out / 'table.md').read_text())
  return rc


if __name__ == '__main__':
  sys.exit(main())
