"""Collects a sweep's metrics: a CSV, a markdown table and comparison plots.

Two steps, so that every table and plot comes from committed files:

  export   copies the JSONL metrics file the trainer writes in each workdir
           (alexnet_jax.core.metrics.JsonlWriter: one JSON object per line,
           `step` plus scalars such as `train_top1_error` and `epoch`, or
           `val_top1_error`) to RESULTS/logs/VARIANT.jsonl, and writes
           RESULTS/provenance.json: the command, machine, date and commit,
           and per run what its log cannot say (finished or not, overrides,
           eval split, seconds, the trainer's commit).
  render   draws summary.csv, table.md and curves.png from RESULTS alone.

`python -m experiments.sweep NAME --from-logs` renders without workdirs.
"""

import csv
import datetime
import json
import os
import pathlib
import platform
import shutil
import sys

import experiments

plt = experiments.pyplot()  # or one line naming the extra to install

from experiments import runner  # noqa: E402
from experiments import sweep_definitions as sweeps_lib  # noqa: E402

METRICS_FILE = 'metrics.jsonl'  # alexnet_jax.core.metrics.JSONL_FILE
RESULTS_ROOT = sweeps_lib.REPO / 'experiments' / 'results'
PROVENANCE_FILE = 'provenance.json'
LOGS_DIR = 'logs'
TRAIN_ERROR = 'train_top1_error'
VAL_ERROR = 'val_top1_error'
TEST_ERROR = 'test_top1_error'


def read_jsonl(path) -> list[dict]:
  """Rows of a JSONL file, tolerating lines torn by a killed writer.

  A writer killed mid-line leaves a fragment that the resumed writer's next
  row is appended to: the fragment is dropped and the row recovered.
  """
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        row = _parse_row(line)
        if row is not None:
          rows.append(row)
  return rows


def _parse_row(line):
  start = 0
  while start != -1:
    try:
      row = json.loads(line[start:])
      return row if isinstance(row, dict) else None
    except ValueError:
      start = line.find('{', start + 1)
  return None


def read_metrics(workdir) -> list[dict]:
  """The metric rows of a workdir's log (read_log)."""
  return read_log(pathlib.Path(workdir) / METRICS_FILE)


def read_log(path) -> list[dict]:
  """A trainer's metric rows in step order, de-duplicated by (step, key).

  A resumed run logs again from its last checkpoint: for each step the last
  value written wins.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  by_step: dict[int, dict] = {}
  for row in read_jsonl(path):
    if 'step' not in row or 'texts' in row:
      continue
    by_step.setdefault(int(row['step']), {}).update(row)
  return [by_step[s] for s in sorted(by_step)]


def series(rows, key, x='epoch'):
  """(xs, ys) of `key` over rows that have it; x is 'epoch' or 'step'."""
  pts = [
      (r[x], r[key]) for r in rows if key in r and x in r and r[key] is not None
  ]
  return [p[0] for p in pts], [p[1] for p in pts]


def add_epochs(rows, steps_per_epoch):
  """Adds `epoch` = step / steps_per_epoch to rows that lack it."""
  for r in rows:
    if 'epoch' not in r and steps_per_epoch:
      r['epoch'] = r['step'] / steps_per_epoch
  return rows


def steps_per_epoch(rows) -> float | None:
  """From the trainer's own `epoch` field on its training rows."""
  for r in rows:
    if r.get('epoch') and r.get('step'):
      return r['step'] / r['epoch']
  return None


def per_epoch_mean(xs, ys):
  """Averages a logged running metric over whole epochs (1, 2, ...).

  Row i averages the steps since row i-1, i.e. the span (x[i-1], x[i]]
  (x[-1] = 0): it counts for the epoch holding the span's middle, weighted
  by the span's length. (The last row of a run often sits just past an
  epoch boundary, e.g. 3.0003 epochs for step 1172 at 390.6 steps an
  epoch; by its middle it belongs to epoch 3.)
  """
  sums: dict[int, list] = {}
  prev = 0.0
  for x, y in sorted(zip(xs, ys)):
    if x <= prev:
      continue
    e = max(1, -int(-((prev + x) / 2) // 1))  # ceil of the middle
    acc = sums.setdefault(e, [0.0, 0.0])
    acc[0] += y * (x - prev)
    acc[1] += x - prev
    prev = x
  return {e: a / w for e, (a, w) in sorted(sums.items())}


def epochs_to_reach(epoch_means: dict[int, float], threshold: float):
  """The first whole epoch whose mean is at or below threshold, or None."""
  for e, v in sorted(epoch_means.items()):
    if v <= threshold:
      return e
  return None


def summarise(variant: str, rows: list[dict], record: dict) -> dict:
  """One line of summary.csv: a run's log plus its provenance record."""
  last = lambda key: next((r[key] for r in reversed(rows) if key in r), None)
  vals = [r[VAL_ERROR] for r in rows if VAL_ERROR in r]
  xs, ys = series(rows, TRAIN_ERROR)
  train_last_epoch = None
  if xs:
    means = per_epoch_mean(xs, ys)
    train_last_epoch = means[max(means)]
  return dict(
      variant=variant,
      status=record.get('status', 'unknown'),
      steps=rows[-1]['step'] if rows else 0,
      epochs=round(rows[-1]['epoch'], 2)
      if rows and 'epoch' in rows[-1]
      else None,
      train_top1_error_last_epoch=train_last_epoch,
      val_top1_error_final=last(VAL_ERROR),
      val_top1_error_best=min(vals) if vals else None,
      test_top1_error=last(TEST_ERROR),
      seconds=record.get('seconds'),
      overrides=' '.join(
          f'{k}={runner.format_value(v)}'
          for k, v in sorted(record.get('overrides', {}).items())
      ),
  )


def run_record(run: runner.Run, rows: list[dict]) -> dict:
  """What a run's log cannot say, from its workdir (the runner's status
  file and the config.json its trainer saved)."""
  status = runner.read_status(run) or {}
  return dict(
      status=(
          'finished'
          if status.get('completed')
          else 'failed'
          if status.get('returncode') not in (None, 0)
          else 'unfinished'
          if rows or status
          else 'not started'
      ),
      seconds=status.get('seconds'),
      overrides=json.loads(json.dumps(run.overrides)),
      config=run.config,
      eval_split=_eval_split(run),
      trained_with=status.get('git_commit') or 'not recorded',
  )


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        cpu = line.split(':', 1)[1].strip()
        break
  except OSError:
    pass
  return f'{os.cpu_count()}-core {cpu}, {platform.system()}, no GPU used'


def provenance(argv, trained_with=()) -> dict:
  """Command, machine, date and code of a results directory.

  `git_commit` is this collection's code; `trained_with` the commits the
  runs' trainers ran (recorded by the runner in each workdir).
  """
  return dict(
      command='python -m ' + ' '.join(argv),
      machine=machine(),
      date=datetime.datetime.now().astimezone().isoformat(timespec='minutes'),
      git_commit=runner.git_commit(),
      trained_with=sorted(set(trained_with)),
      python=sys.version.split()[0],
  )


def _fmt(v, column=''):
  if v is None:
    return '-'
  if column == 'epochs':  # a count, not a fraction (0.19 of an epoch)
    return f'{v:.1f}' if v >= 1 else f'{v:.2f}'
  if isinstance(v, float):
    return f'{100 * v:.2f}%' if v <= 1 else f'{v:.1f}'
  return str(v)


def results_dir(sweep: sweeps_lib.Sweep, dataset: str, out_dir=None):
  return pathlib.Path(out_dir or RESULTS_ROOT / f'{sweep.name}-{dataset}')


def export(runs: list[runner.Run], out, *, argv) -> dict:
  """Copies each run's log to OUT/logs/VARIANT.jsonl and writes
  OUT/provenance.json; returns the provenance.

  A run without a log in its workdir (e.g. a fresh clone resuming only some
  runs) keeps the log and record that OUT already has.
  """
  out = pathlib.Path(out)
  (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
  old = {}
  if (out / PROVENANCE_FILE).is_file():
    old = json.loads((out / PROVENANCE_FILE).read_text()).get('runs', {})
  records = {}
  for run in runs:
    src = run.workdir / METRICS_FILE
    if src.is_file():
      shutil.copyfile(src, out / LOGS_DIR / f'{run.variant}.jsonl')
      records[run.variant] = run_record(run, read_log(src))
    elif run.variant in old:
      records[run.variant] = old[run.variant]
    else:
      records[run.variant] = run_record(run, [])
  prov = provenance(
      argv, [r.get('trained_with') or 'not recorded' for r in records.values()]
  )
  prov['runs'] = records
  (out / PROVENANCE_FILE).write_text(json.dumps(prov, indent=1) + '\n')
  return prov


def load(out) -> tuple[dict, dict[str, list[dict]]]:
  """(provenance, {variant: metric rows with epochs}) of a results
  directory, in the provenance's run order; no workdir is read."""
  out = pathlib.Path(out)
  path = out / PROVENANCE_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f'{path} does not exist: {out} is not a results '
        'directory (collect a sweep first)'
    )
  prov = json.loads(path.read_text())
  curves = {}
  for variant in prov.get('runs', {}):
    rows = read_log(out / LOGS_DIR / f'{variant}.jsonl')
    curves[variant] = add_epochs(rows, steps_per_epoch(rows))
  return prov, curves


def render(sweep: sweeps_lib.Sweep, dataset: str, out) -> list[dict]:
  """Writes OUT/summary.csv, table.md and curves.png from OUT's logs and
  provenance; returns the summaries."""
  out = pathlib.Path(out)
  prov, curves = load(out)
  summaries = [
      summarise(v, rows, prov['runs'][v]) for v, rows in curves.items()
  ]
  fields = list(summaries[0]) if summaries else ['variant']
  with open(out / 'summary.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(summaries)
  splits = sorted({r.get('eval_split') for r in prov['runs'].values()} - {None})
  _write_table(out / 'table.md', sweep, dataset, summaries, prov, splits)
  plot_curves(
      curves,
      out / 'curves.png',
      title=f'{sweep.name} on {dataset}: {sweep.question}',
  )
  return summaries


def collect(
    sweep: sweeps_lib.Sweep,
    dataset: str,
    runs: list[runner.Run],
    *,
    out_dir=None,
    argv=None,
) -> pathlib.Path:
  """Exports the runs' logs to results/<sweep>-<dataset>/ (or out_dir) and
  renders summary.csv, table.md and curves.png from them. Returns the
  directory."""
  out = results_dir(sweep, dataset, out_dir)
  export(runs, out, argv=argv or ['experiments.sweep'] + sys.argv[1:])
  render(sweep, dataset, out)
  return out


def _eval_split(run):
  """data.eval_split of a run, from the config.json its trainer saved."""
  try:
    return json.loads((run.workdir / 'config.json').read_text())['data'][
        'eval_split'
    ]
  except (OSError, ValueError, KeyError):
    return None


def _write_table(path, sweep, dataset, summaries, prov, splits=()):
  cols = [
      'variant',
      'status',
      'epochs',
      'train_top1_error_last_epoch',
      'val_top1_error_final',
      'val_top1_error_best',
      'test_top1_error',
      'seconds',
  ]
  lines = [
      f'# Sweep `{sweep.name}` on {dataset}',
      '',
      f'{sweep.question}. The paper: {sweep.paper}.',
      '',
      '| ' + ' | '.join(cols) + ' |',
      '|' + '---|' * len(cols),
  ]
  for s in summaries:
    lines.append('| ' + ' | '.join(_fmt(s[c], c) for c in cols) + ' |')
  if splits:
    lines += [
        '',
        "The `val_*` columns are the config's eval split: "
        + ', '.join(f'`{s}`' for s in splits)
        + '.',
    ]
  lines += ['', 'Overrides of each variant:', '']
  lines += [f'- `{s["variant"]}`: `{s["overrides"]}`' for s in summaries]
  lines += provenance_footer(prov)
  path.write_text('\n'.join(lines))


def provenance_footer(prov: dict) -> list[str]:
  """The lines that end every results table: command, machine, date and
  commit (and the commits the runs trained with, when recorded)."""
  trained = prov.get('trained_with')
  return [
      '',
      f'Command: `{prov["command"]}`  ',
      f'Machine: {prov["machine"]}  ',
      f'Date: {prov["date"]}, git {prov["git_commit"]}'
      + (f' (trained with {", ".join(trained)})' if trained else ''),
      '',
  ]


def plot_curves(curves: dict[str, list[dict]], path, *, title=''):
  """Training and validation top-1 error of each variant against epochs."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for variant, rows in curves.items():
    x = 'epoch' if rows and all('epoch' in r for r in rows) else 'step'
    for ax, key in zip(axes, (TRAIN_ERROR, VAL_ERROR)):
      xs, ys = series(rows, key, x)
      if xs:
        ax.plot(
            xs,
            [100 * y for y in ys],
            label=variant,
            marker='.' if key == VAL_ERROR else None,
        )
      ax.set_xlabel(x + 's')
  for ax, name in zip(axes, ('training', 'eval split')):
    ax.set_ylabel(f'{name} top-1 error (%)')
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
