r"""Figure 1 of the paper: ReLU vs tanh, four-layer CNN on CIFAR-10.

    python -m experiments.figure1 [--stage all|search|train|plot] [--jobs N]
        [--root DIR] [--data_root DIR] [--set field=value ...]

Network, data and recipe: configs/figure1.py (model.Cifar4, the
cuda-convnet layers-18pct net; real CIFAR-10 JPEGs at 32x32; no augmentation,
weight decay or dropout; SGD with momentum 0.9 at a constant learning rate).

Stages (each resumable; `all` runs them in order). Workdirs go under
--root (default $ALEXNET_JAX_RUNS or ~/alexnet_jax_runs, outside the
repository); each training stage ends by copying the runs' logs and records
into the results tree, experiments/results/figure1/ (collect.export):
  search  the `figure1_lr` sweep: each activation at each rate in
          sweeps.FIGURE1_LRS for FIGURE1_SEARCH_EPOCHS epochs, collected in
          figure1/lr_search/; the rate with the lowest training error in the
          last epoch wins (the paper chose each network's rate "to make
          training as fast as possible"), read from lr_search's logs.
  train   the two long runs at the chosen rates (sweeps.FIGURE1_EPOCHS).
          Each starts from a copy of its search run's workdir: at a constant
          rate, with every batch a function of (seed, step), continuing that
          run is exactly a fresh run of the longer length. Logs to
          figure1/logs/, records to figure1/provenance.json.
  plot    from the committed logs alone (no workdir): figure1.png (training
          error per epoch for both), figure1.md (epochs to 25% and their
          ratio; the paper: six times faster with ReLU) and summary.json.

Training error is the trainer's running top-1 error on the training batches
(in train mode, before each update, as cuda-convnet reported it), averaged
over each epoch.
"""

import argparse
import json
import pathlib
import shutil
import sys

import experiments

plt = experiments.pyplot()  # or one line naming the extra to install

from alexnet_jax.core import paths  # noqa: E402
from experiments import collect  # noqa: E402
from experiments import runner  # noqa: E402
from experiments import sweep as sweep_cli  # noqa: E402
from experiments import sweep_definitions as sweeps_lib  # noqa: E402

TARGET = 0.25  # the paper's 25% training error
OUT = collect.RESULTS_ROOT / 'figure1'
SEARCH_DIR = 'lr_search'  # the learning-rate search's results, under OUT
ACTIVATIONS = ('relu', 'tanh')


def choose_lrs(search_dir) -> dict:
  """Per activation: the rate whose last search epoch has the lowest error,
  from the search's results directory (its logs and provenance records).

  Returns {'relu': {'lr': x, 'train_error_last_epoch': {lr: err, ...}}, ...}.
  """
  try:
    prov, curves = collect.load(search_dir)
  except FileNotFoundError:
    prov, curves = {'runs': {}}, {}
  out = {}
  for act in ACTIVATIONS:
    scores = {}
    for variant, rows in curves.items():
      record = prov['runs'][variant]
      if record['overrides'].get('model.activation') != act:
        continue
      xs, ys = collect.series(rows, collect.TRAIN_ERROR)
      if record.get('status') != 'finished' or not xs:
        continue  # unfinished, or stopped by the trainer's NaN guard
      means = collect.per_epoch_mean(xs, ys)
      scores[float(record['overrides']['optim.lr'])] = means[max(means)]
    if not scores:
      raise RuntimeError(
          f'no finished learning-rate search run for {act} '
          f'in {search_dir}; run --stage search first'
      )
    best = min(scores, key=lambda lr: (scores[lr], lr))
    out[act] = dict(lr=best, train_error_last_epoch=scores)
  return out


def seed_from_search(run: runner.Run, search_runs: list[runner.Run]):
  """Starts `run` from its finished search run (same config, shorter)."""
  if run.workdir.exists():
    return
  same = [
      r
      for r in search_runs
      if runner.is_finished(r)
      and all(
          r.overrides.get(k) == v
          for k, v in run.overrides.items()
          if k != 'optim.num_epochs'
      )
  ]
  if not same:
    return
  ignore = shutil.ignore_patterns(
      runner.STATUS_FILE, runner.LOG_FILE, runner.RESULTS_FILE
  )
  shutil.copytree(same[0].workdir, run.workdir, ignore=ignore)
  print(f'[figure1] {run.name} continues {same[0].name}')


def crossing(xs, ys, threshold=TARGET):
  """Epochs to reach `threshold`, whole and interpolated.

  `whole`: the first epoch whose mean training error is <= threshold (the
  paper's plot is per epoch). `interpolated`: where the line through the
  epoch means first crosses it. None when it never does.
  """
  means = collect.per_epoch_mean(xs, ys)
  whole = collect.epochs_to_reach(means, threshold)
  interp = None
  if whole is not None:
    prev = whole - 1
    if prev in means and means[prev] > threshold:
      a, b = means[prev], means[whole]
      interp = prev + (a - threshold) / (a - b)
    else:
      interp = float(whole)
  return dict(whole=whole, interpolated=interp, epoch_means=means)


def plot(curves: dict, path, lrs: dict):
  """Training error per epoch: ReLU solid, tanh dashed (as Figure 1)."""
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for act, style in zip(ACTIVATIONS, ('-', '--')):
    if act not in curves:
      continue
    means = curves[act]['epoch_means']
    ax.plot(
        list(means),
        [100 * v for v in means.values()],
        style,
        color='k',
        label=f'{act} (lr {lrs[act]["lr"]:g})',
    )
  ax.axhline(100 * TARGET, color='grey', lw=0.8)
  ax.set_xlabel('epochs')
  ax.set_ylabel('training error rate (%)')
  ax.set_ylim(0, 80)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(
      'Four-layer CNN on CIFAR-10 (JPEG copy): ReLU vs tanh', fontsize=10
  )
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report(out=OUT) -> dict:
  """Writes figure1.png, figure1.md and summary.json from the results
  directory alone (logs/, provenance.json, lr_search/); returns the
  summary."""
  out = pathlib.Path(out)
  lrs = choose_lrs(out / SEARCH_DIR)
  prov, rows_by_run = collect.load(out)
  curves = {}
  for variant, rows in rows_by_run.items():
    xs, ys = collect.series(rows, collect.TRAIN_ERROR)
    if xs:
      curves[variant] = crossing(xs, ys)
      curves[variant]['finished'] = (
          prov['runs'][variant].get('status') == 'finished'
      )
      curves[variant]['epochs_run'] = max(xs)
  plot(curves, out / 'figure1.png', lrs)
  relu, tanh = curves.get('relu'), curves.get('tanh')
  ratio = None
  if relu and tanh and relu['interpolated'] and tanh['interpolated']:
    ratio = tanh['interpolated'] / relu['interpolated']
  run_prov = {k: v for k, v in prov.items() if k != 'runs'}
  summary = dict(
      target_train_error=TARGET,
      learning_rates=lrs,
      ratio_tanh_over_relu=ratio,
      provenance=run_prov,
      runs={k: {kk: vv for kk, vv in v.items()} for k, v in curves.items()},
  )
  (out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
  (out / 'figure1.md').write_text(_markdown(curves, lrs, ratio, run_prov))
  return summary


def _markdown(curves, lrs, ratio, prov):
  lines = [
      '# Figure 1: ReLU vs tanh, four-layer CNN, CIFAR-10 (JPEG copy)',
      '',
      '| activation | lr (searched) | epochs run | epochs to 25% '
      '(whole) | epochs to 25% (interpolated) | last-epoch train error |',
      '|---|---|---|---|---|---|',
  ]
  for act in ACTIVATIONS:
    c = curves.get(act)
    if not c:
      lines.append(
          f'| {act} | {lrs.get(act, {}).get("lr", "-")} | not run '
          '| - | - | - |'
      )
      continue
    last = c['epoch_means'][max(c['epoch_means'])]
    state = '' if c['finished'] else ' (unfinished)'
    reach = lambda v, f: (
        f'not within {c["epochs_run"]:.0f}' if v is None else format(v, f)
    )
    lines.append(
        f'| {act} | {lrs[act]["lr"]:g} | {c["epochs_run"]:.1f}{state} | '
        f'{reach(c["whole"], "d")} | {reach(c["interpolated"], ".2f")} | '
        f'{100 * last:.2f}% |'
    )
  lines += [
      '',
      'Ratio of epochs to reach 25% training error, tanh / ReLU: '
      + (
          f'**{ratio:.1f}x** (the paper: about 6x).'
          if ratio
          else 'not available (a run has not reached 25% yet).'
      ),
      '',
      'Learning-rate search (training error in the last search epoch):',
      '',
  ]
  for act in ACTIVATIONS:
    if act in lrs:
      scores = ', '.join(
          f'{lr:g}: {100 * e:.1f}%'
          for lr, e in sorted(
              lrs[act]['train_error_last_epoch'].items(), key=lambda t: t[0]
          )
      )
      edge = lrs[act]['lr'] in (
          min(sweeps_lib.FIGURE1_LRS),
          max(sweeps_lib.FIGURE1_LRS),
      )
      lines.append(
          f'- {act}: {scores}'
          + (' (the best rate is at the edge of the grid)' if edge else '')
      )
  lines += collect.provenance_footer(prov)
  return '\n'.join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(
      prog='python -m experiments.figure1', description=__doc__.split('\n')[0]
  )
  p.add_argument(
      '--stage', default='all', choices=('all', 'search', 'train', 'plot')
  )
  p.add_argument('--jobs', type=int, default=1)
  runner.add_location_flags(p, holding='cifar10/')
  p.add_argument(
      '--set',
      action='append',
      metavar='FIELD=VALUE',
      help='config override for every run (repeatable)',
  )
  p.add_argument('--main', default='alexnet_jax.main')
  p.add_argument('--out', default=str(OUT))
  args = p.parse_args(argv)
  paths.set_data_root(args.data_root)
  extra = sweep_cli.parse_set(args.set)
  out = pathlib.Path(args.out)
  full_argv = ['experiments.figure1'] + argv

  search = sweeps_lib.figure1_search()
  search_runs = runner.plan(search, 'cifar10', root=args.root, extra=extra)
  if args.stage in ('all', 'search'):
    try:
      runner.run_all(search_runs, jobs=args.jobs, main_module=args.main)
    finally:  # also when stopped: the logs so far are results too
      collect.collect(
          search,
          'cifar10',
          search_runs,
          out_dir=out / SEARCH_DIR,
          argv=full_argv,
      )
  lrs = choose_lrs(out / SEARCH_DIR)
  print('[figure1] learning rates:', {a: v['lr'] for a, v in lrs.items()})
  if args.stage == 'search':
    return 0
  if args.stage in ('all', 'train'):
    final = sweeps_lib.figure1({a: v['lr'] for a, v in lrs.items()})
    runs = runner.plan(final, 'cifar10', root=args.root, extra=extra)
    for run in runs:
      seed_from_search(run, search_runs)
    try:
      runner.run_all(runs, jobs=args.jobs, main_module=args.main)
    finally:
      collect.export(runs, out, argv=full_argv)
  summary = report(out)
  print((out / 'figure1.md').read_text())
  return 0 if summary['ratio_tanh_over_relu'] else 1


if __name__ == '__main__':
  try:
    sys.exit(main())
  except KeyboardInterrupt as e:  # the runner stopped its trainers cleanly
    print(f'[figure1] {e}', file=sys.stderr)
    sys.exit(130)
