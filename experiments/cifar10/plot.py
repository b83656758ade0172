"""The CIFAR-10 run's curves and table, from its committed logs.

    python -m experiments.cifar10.plot [--results=experiments/results/cifar10]
        [--export=WORKDIR]

Draws RESULTS/curves.png (top-1 error on the training batches, held-out
validation and final test, and the training loss against epochs, with the
learning rate on a log axis) and RESULTS/table.md (the final errors,
centre crop and, when logs/test_10crop.json is there, the paper's 10
crops) from RESULTS/logs/ and RESULTS/provenance.json alone.

--export=WORKDIR first copies the trainer's metrics.jsonl, config.json and
results.json from WORKDIR into RESULTS/logs/ and records the command,
machine, date and commit in RESULTS/provenance.json (experiments/cifar10/
run.sh does this after training).
"""

import argparse
import json
import pathlib
import shutil
import sys

import experiments

plt = experiments.pyplot()  # or one line naming the extra to install

from experiments import collect  # noqa: E402

OUT = collect.RESULTS_ROOT / 'cifar10'
TRAINER_FILES = ('metrics.jsonl', 'config.json', 'results.json')
TITLE = 'AlexNet (configs/cifar10.py) on CIFAR-10 (JPEG copy), 2-core Xeon CPU'


def series(rows, key, steps_per_epoch):
  pts = sorted({r['step']: r[key] for r in rows if key in r}.items())
  return [s / steps_per_epoch for s, _ in pts], [v for _, v in pts]


def plot(rows, out, title=None):
  with_epoch = [r for r in rows if r.get('epoch')]
  if not with_epoch:
    raise ValueError('the log has no training rows with an epoch')
  steps_per_epoch = with_epoch[-1]['step'] / with_epoch[-1]['epoch']
  fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
  x, y = series(rows, 'train_top1_error', steps_per_epoch)
  ax_err.plot(
      x,
      [100 * v for v in y],
      lw=0.8,
      alpha=0.7,
      label='training batches (dropout on)',
  )
  x, y = series(rows, 'val_top1_error', steps_per_epoch)
  ax_err.plot(x, [100 * v for v in y], 'o-', ms=3, label='held-out validation')
  x, y = series(rows, 'test_top1_error', steps_per_epoch)
  if y:
    ax_err.plot(
        x,
        [100 * v for v in y],
        'r*',
        ms=10,
        label=f'test (final): {100 * y[-1]:.1f}%',
    )
  ax_err.set_xlabel('epoch')
  ax_err.set_ylabel('top-1 error (%)')
  ax_err.set_ylim(0, 100)
  ax_err.grid(alpha=0.3)
  ax_err.legend()

  x, y = series(rows, 'train_loss', steps_per_epoch)
  ax_loss.plot(x, y, lw=0.8, label='training loss')
  x, y = series(rows, 'val_loss', steps_per_epoch)
  ax_loss.plot(x, y, 'o-', ms=3, label='validation loss')
  ax_loss.set_xlabel('epoch')
  ax_loss.set_ylabel('cross-entropy')
  ax_loss.grid(alpha=0.3)
  lr = ax_loss.twinx()
  x, y = series(rows, 'train_learning_rate', steps_per_epoch)
  lr.plot(x, y, 'k--', lw=0.8, label='learning rate')
  lr.set_yscale('log')
  lr.set_ylabel('learning rate')
  lines = ax_loss.get_legend_handles_labels()
  more = lr.get_legend_handles_labels()
  ax_loss.legend(lines[0] + more[0], lines[1] + more[1])
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def export(workdir, out, command):
  """Copies the trainer's files into OUT/logs and writes provenance.json."""
  workdir, logs = pathlib.Path(workdir), pathlib.Path(out) / collect.LOGS_DIR
  logs.mkdir(parents=True, exist_ok=True)
  for name in TRAINER_FILES:
    if (workdir / name).is_file():
      shutil.copyfile(workdir / name, logs / name)
    else:  # e.g. results.json of an earlier run: not this run's
      (logs / name).unlink(missing_ok=True)
  status = 'finished' if (workdir / 'results.json').is_file() else 'unfinished'
  prov = collect.provenance([], [collect.runner.git_commit()])
  prov.update(command=command, status=status)
  (pathlib.Path(out) / collect.PROVENANCE_FILE).write_text(
      json.dumps(prov, indent=1) + '\n'
  )


def _errors(d, prefix):
  return (
      d.get(f'{prefix}examples'),
      d.get(f'{prefix}top1_error'),
      d.get(f'{prefix}top5_error'),
  )


def table(out) -> str:
  """table.md: the final errors, from logs/ and provenance.json."""
  out = pathlib.Path(out)
  logs = out / collect.LOGS_DIR
  prov = json.loads((out / collect.PROVENANCE_FILE).read_text())
  config = json.loads((logs / 'config.json').read_text())
  rows = []
  if (logs / 'results.json').is_file():
    final = json.loads((logs / 'results.json').read_text())
    rows.append(
        (
            f'validation `{config["data"]["eval_split"]}`, centre crop',
            *_errors(final, 'val_'),
        )
    )
    if config['data'].get('test_split'):
      rows.append(
          (
              f'test `{config["data"]["test_split"]}`, centre crop',
              *_errors(final, 'test_'),
          )
      )
  if (logs / 'test_10crop.json').is_file():
    ten = json.loads((logs / 'test_10crop.json').read_text())
    rows.append(
        (
            f'test `{ten["split"]}`, {ten["crops"]} crops '
            '(alexnet_jax.evaluate)',
            *_errors(ten, ''),
        )
    )
  steps = (
      json.loads((logs / 'results.json').read_text())['step']
      if (logs / 'results.json').is_file()
      else None
  )
  lines = [
      '# AlexNet (configs/cifar10.py) on CIFAR-10',
      '',
      f'After {steps} steps ({config["optim"]["num_epochs"]:g} epochs '
      f'at batch {config["optim"]["batch_size"]}); curves in '
      'curves.png, logs in logs/.'
      if steps
      else 'Unfinished run; curves in curves.png, logs in logs/.',
      '',
      '| evaluation | images | top-1 error | top-5 error |',
      '|---|---|---|---|',
  ]
  for name, n, top1, top5 in rows:
    lines.append(f'| {name} | {n} | {100 * top1:.2f}% | {100 * top5:.2f}% |')
  lines += collect.provenance_footer(prov)
  return '\n'.join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(
      prog='python -m experiments.cifar10.plot',
      description=__doc__.split('\n')[0],
  )
  parser.add_argument('--results', default=str(OUT))
  parser.add_argument(
      '--export',
      default=None,
      metavar='WORKDIR',
      help='first copy the logs of this training workdir',
  )
  parser.add_argument(
      '--command',
      default='experiments/cifar10/run.sh',
      help='with --export: the training command to record',
  )
  parser.add_argument('--title', default=TITLE)
  args = parser.parse_args(argv)
  out = pathlib.Path(args.results)
  if args.export:
    export(args.export, out, args.command)
  rows = collect.read_log(out / collect.LOGS_DIR / 'metrics.jsonl')
  plot(rows, out / 'curves.png', args.title)
  (out / 'table.md').write_text(table(out))
  print((out / 'table.md').read_text())
  return 0


if __name__ == '__main__':
  sys.exit(main())
