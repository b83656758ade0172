"""Learning curves of a training workdir (its metrics.jsonl) as a PNG.

    python -m experiments.cifar10.plot [--workdir=experiments/cifar10/workdir]
        [--out=experiments/cifar10/curves.png]

Top-1 error (training batches, held-out validation, final test) and the
training loss against epochs, with the learning rate on a log axis.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def read(workdir):
  rows = []
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  for line in path.read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      if 'step' in record:
        rows.append(record)
  return rows


def series(rows, key, steps_per_epoch):
  pts = sorted({r['step']: r[key] for r in rows if key in r}.items())
  return [s / steps_per_epoch for s, _ in pts], [v for _, v in pts]


def plot(workdir, out, title=None):
  rows = read(workdir)
  with_epoch = [r for r in rows if r.get('epoch')]
  steps_per_epoch = with_epoch[-1]['step'] / with_epoch[-1]['epoch']
  fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
  x, y = series(rows, 'train_top1_error', steps_per_epoch)
  ax_err.plot(x, [100 * v for v in y], lw=0.8, alpha=0.7,
              label='training batches (dropout on)')
  x, y = series(rows, 'val_top1_error', steps_per_epoch)
  ax_err.plot(x, [100 * v for v in y], 'o-', ms=3, label='held-out validation')
  x, y = series(rows, 'test_top1_error', steps_per_epoch)
  if y:
    ax_err.plot(x, [100 * v for v in y], 'r*', ms=10,
                label=f'test (final): {100 * y[-1]:.1f}%')
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
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default=str(HERE / 'workdir'))
  parser.add_argument('--out', default=str(HERE / 'curves.png'))
  parser.add_argument('--title', default='AlexNet (configs/cifar10.py) on '
                      'CIFAR-10 (JPEG copy), 2-core Xeon CPU')
  args = parser.parse_args()
  print(plot(args.workdir, args.out, args.title))


if __name__ == '__main__':
  main()
