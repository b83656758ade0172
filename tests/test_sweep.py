"""The sweep runner and collector, against a fake trainer (fast).

The fake trainer (written into tmp_path) behaves like alexnet_jax.main as the
runner sees it: it takes --config/--workdir/--config.x=y, resumes from a
state file in the workdir, appends to metrics.jsonl (4 steps an epoch), can
be made to crash part-way, and exits cleanly on SIGTERM.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments import collect
from experiments import figure1
from experiments import runner
from experiments import sweep as sweep_cli
from experiments import sweep_definitions as sweeps_lib

FAKE_MAIN = textwrap.dedent("""
    import json, math, os, pathlib, signal, sys, time
    args = dict(a.lstrip('-').split('=', 1) for a in sys.argv[1:])
    wd = pathlib.Path(args['workdir'])
    wd.mkdir(parents=True, exist_ok=True)
    with open(wd / 'invocations', 'a') as f:
      f.write(' '.join(sys.argv[1:]) + '\\n')
    act = args.get('config.model.activation', 'relu')
    steps = int(float(args.get('config.optim.num_epochs', '3')) * 4)
    state = wd / 'state.json'
    start = json.loads(state.read_text())['step'] if state.exists() else 0
    crash = int(os.environ.get('FAKE_CRASH_AT', '0'))
    def term(*_):  # like the trainer: checkpoint, exit 143, no results file
      (wd / 'got_sigterm').write_text('yes')
      sys.exit(143)
    signal.signal(signal.SIGTERM, term)
    if os.environ.get('FAKE_SLEEP'):
      (wd / 'started').write_text('yes')
      time.sleep(60)
    with open(wd / 'metrics.jsonl', 'a') as f:
      for step in range(start + 1, steps + 1):
        # Best at lr 0.01; tanh learns 3x slower than relu.
        lr = float(args.get('config.optim.lr', '0.01'))
        slow = (3 if act == 'tanh' else 1) * (1 + abs(math.log10(lr) + 2))
        err = min(0.9, slow / step)
        f.write(json.dumps({'step': step, 'train_top1_error': err,
                            'epoch': step / 4}) + '\\n')
        if step % 4 == 0:
          f.write(json.dumps({'step': step, 'val_top1_error': err + 0.1})
                  + '\\n')
        f.flush()
        state.write_text(json.dumps({'step': step}))
        if step == int(os.environ.get('FAKE_QUIT_AT', '0')):
          sys.exit(0)  # a clean exit before the end (e.g. a direct SIGTERM)
        if crash and step == crash and start == 0:
          f.write('{"step": 99, "train_to')  # a torn last line
          sys.exit(3)
    (wd / 'results.json').write_text(json.dumps({'step': steps}))
""")


@pytest.fixture
def fake(tmp_path):
  (tmp_path / 'fake_main.py').write_text(FAKE_MAIN)
  env = {'PYTHONPATH': f'{tmp_path}{os.pathsep}{sweeps_lib.REPO}'}
  return tmp_path, env


def _sweep():
  return sweeps_lib.Sweep(
      'toy',
      'relu vs tanh',
      'six times faster',
      {
          'relu': {'model.activation': 'relu', 'model.lrn.enabled': False},
          'tanh': {'model.activation': 'tanh', 'model.lrn.enabled': False},
      },
      datasets=('cifar10',),
  )


def test_plan_and_command(tmp_path):
  runs = runner.plan(
      _sweep(),
      'cifar10',
      root=tmp_path,
      extra={'optim.num_epochs': 2, 'data.mean': (0.5, 0.5)},
  )
  assert [r.variant for r in runs] == ['relu', 'tanh']
  assert runs[1].workdir == tmp_path / 'toy' / 'cifar10' / 'tanh'
  cmd = runner.command(runs[1])
  assert cmd[1:4] == ['-m', 'alexnet_jax.main', '--config=configs/cifar10.py']
  assert '--config.model.activation=tanh' in cmd
  assert '--config.model.lrn.enabled=False' in cmd
  assert '--config.data.mean=(0.5, 0.5)' in cmd
  assert '--config.optim.num_epochs=2' in cmd
  with pytest.raises(ValueError, match='no variant sigmoid'):
    runner.plan(_sweep(), 'cifar10', only=['sigmoid'])
  with pytest.raises(ValueError, match="runs on cifar10, not 'imagenet'"):
    runner.plan(_sweep(), 'imagenet')
  assert sweep_cli.parse_set(['--config.optim.lr=0.1', 'model.towers=1']) == {
      'optim.lr': '0.1',
      'model.towers': '1',
  }


def test_every_ablation_has_two_variants_on_both_datasets():
  for name in ('activation', 'lrn', 'pooling', 'towers', 'lighting', 'dropout'):
    s = sweeps_lib.get(name)
    assert len(s.variants) == 2 and set(s.datasets) == {'cifar10', 'imagenet'}
    assert runner.plan(s, 'imagenet')[0].config == 'configs/paper.py'
  with pytest.raises(KeyError, match='no sweep named'):
    sweeps_lib.get('nope')


def test_ablations_sweep_shares_one_baseline():
  """`ablations` trains the base config once: every ablation's first variant
  must be what the base configs already say, or the shared baseline would
  not be the paper's network."""
  import importlib.util

  s = sweeps_lib.get('ablations')
  singles = ('activation', 'lrn', 'pooling', 'towers', 'lighting', 'dropout')
  assert list(s.variants) == ['paper'] + [
      list(sweeps_lib.get(n).variants)[1] for n in singles
  ]
  assert s.variants['paper'] == {}
  for dataset in ('cifar10', 'imagenet'):
    path = sweeps_lib.REPO / sweeps_lib.datasets()[dataset].config
    spec = importlib.util.spec_from_file_location('base', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    for name in singles:
      for field, value in list(sweeps_lib.get(name).variants.values())[
          0
      ].items():
        node = config
        for part in field.split('.'):
          node = node[part]
        assert node == value, (dataset, field, node, value)
    assert len(runner.plan(s, dataset)) == 7


def test_ablations_are_defined_once_in_configs_ablations():
  from alexnet_jax.configs import ablations

  for name, (question, paper, variants) in ablations.ABLATIONS.items():
    s = sweeps_lib.get(name)
    assert (s.question, s.paper, s.variants) == (question, paper, variants)
    for variant, overrides in variants.items():
      config = ablations.get_config(f'cifar10/{variant}')
      for field, value in overrides.items():
        node = config
        for part in field.split('.'):
          node = node[part]
        assert node == value, (variant, field)
  assert sweeps_lib.get('lrn_cifar').variants == {
      v: ablations.VARIANTS[v] for v in ('lrn_on', 'lrn_off')
  }
  # The sweeps write no overrides of their own: a second copy would drift.
  assert (
      "'model."
      not in (
          sweeps_lib.REPO / 'experiments' / 'sweep_definitions.py'
      ).read_text()
  )


def test_workdirs_default_outside_the_repository(tmp_path, monkeypatch):
  from alexnet_jax.core import paths

  monkeypatch.delenv(paths.RUNS_ENV, raising=False)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  run = runner.plan(sweeps_lib.get('lrn'), 'cifar10')[0]
  assert (
      run.workdir
      == tmp_path / 'home' / 'alexnet_jax_runs' / 'lrn' / ('cifar10') / 'lrn_on'
  )
  monkeypatch.setenv(paths.RUNS_ENV, str(tmp_path / 'runs'))
  assert runner.plan(sweeps_lib.get('lrn'), 'cifar10')[0].workdir == (
      tmp_path / 'runs' / 'lrn' / 'cifar10' / 'lrn_on'
  )
  # The CIFAR-10 JPEGs are named through the data root, never a path.
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / 'data'))
  assert 'data.name' not in sweeps_lib.datasets()['cifar10'].overrides
  (tmp_path / 'data' / 'cifar10').mkdir(parents=True)
  assert sweeps_lib.datasets()['cifar10'].overrides == {
      'data.name': 'folder:$ALEXNET_JAX_DATA/cifar10'
  }


@pytest.mark.parametrize(
    'name,results',
    [
        ('ablations', 'ablations-cifar10'),
        ('lrn_cifar', 'lrn_cifar-cifar10'),
        ('lrn', 'lrn-cifar10'),
        ('lrn', 'lrn-cifar10-raw255'),
        ('init_scale', 'init_scale-cifar10'),
        ('figure1_lr', 'figure1/lr_search'),
    ],
)
def test_committed_tables_come_from_committed_logs(
    name, results, tmp_path, capsys
):
  """`--from-logs` redraws each committed sweep's summary.csv and table.md
  byte for byte from its logs and provenance.json, with no workdir."""
  committed = collect.RESULTS_ROOT / results
  out = tmp_path / 'results'
  shutil.copytree(committed, out)
  for f in ('summary.csv', 'table.md', 'curves.png'):
    (out / f).unlink()
  assert sweep_cli.main([name, '--from-logs', '--results', str(out)]) == 0
  for f in ('summary.csv', 'table.md'):
    assert (out / f).read_text() == (committed / f).read_text(), f
  assert (out / 'curves.png').stat().st_size > 1000
  assert 'Overrides of each variant' in capsys.readouterr().out


def test_committed_figure1_redraws_from_its_logs(tmp_path):
  """`experiments.figure1 --stage plot` in a fresh clone: the committed
  figure1.md and summary.json again, from logs/ and lr_search/ alone."""
  committed = collect.RESULTS_ROOT / 'figure1'
  out = tmp_path / 'figure1'
  shutil.copytree(committed, out)
  for f in ('figure1.md', 'figure1.png', 'summary.json'):
    (out / f).unlink()
  assert (
      figure1.main(
          [
              '--stage',
              'plot',
              '--out',
              str(out),
              '--root',
              str(tmp_path / 'no_runs'),
          ]
      )
      == 0
  )
  assert (out / 'figure1.md').read_text() == (
      committed / 'figure1.md'
  ).read_text()
  assert json.loads((out / 'summary.json').read_text()) == json.loads(
      (committed / 'summary.json').read_text()
  )
  assert (out / 'figure1.png').stat().st_size > 1000


def test_runs_in_parallel_skips_finished_and_collects(fake, tmp_path):
  root, env = fake
  runs = runner.plan(
      _sweep(), 'cifar10', root=root / 'runs', extra={'optim.num_epochs': 3}
  )
  logs = []
  run_all = lambda: runner.run_all(
      runs,
      jobs=2,
      main_module='fake_main',
      env=env,
      log=logs.append,
      poll_seconds=0.05,
  )
  rc = run_all()
  assert rc == {'toy/cifar10/relu': 0, 'toy/cifar10/tanh': 0}
  assert all(runner.is_finished(r) for r in runs)
  # A second call skips both: the fake trainer is not invoked again.
  run_all()
  for r in runs:
    assert len((r.workdir / 'invocations').read_text().splitlines()) == 1
  assert sum('skipped' in m for m in logs) == 2

  out = collect.collect(
      _sweep(),
      'cifar10',
      runs,
      out_dir=tmp_path / 'res',
      argv=['experiments.sweep', 'toy'],
  )
  rows = list(csv.DictReader(open(out / 'summary.csv')))
  assert [r['variant'] for r in rows] == ['relu', 'tanh']
  assert rows[0]['status'] == 'finished' and rows[0]['steps'] == '12'
  # 4 steps per epoch (512 / 128): epoch 3 = steps 9..12.
  want = sum(3 / s for s in range(9, 13)) / 4
  assert float(rows[1]['train_top1_error_last_epoch']) == pytest.approx(want)
  assert float(rows[1]['val_top1_error_best']) == pytest.approx(3 / 12 + 0.1)
  table = (out / 'table.md').read_text()
  assert 'six times faster' in table and 'Machine:' in table
  assert 'python -m experiments.sweep toy' in table
  assert (out / 'curves.png').stat().st_size > 1000
  assert (out / 'logs' / 'tanh.jsonl').is_file()


def test_interrupted_run_resumes(fake):
  root, env = fake
  runs = runner.plan(_sweep(), 'cifar10', root=root / 'runs', only=['relu'])
  rc = runner.run_all(
      runs,
      main_module='fake_main',
      env=dict(env, FAKE_CRASH_AT='5'),
      log=lambda m: None,
      poll_seconds=0.05,
  )
  assert rc == {'toy/cifar10/relu': 3}
  assert not runner.is_finished(runs[0])
  rows = collect.read_metrics(runs[0].workdir)
  assert rows[-1]['step'] == 5  # the torn line was dropped
  # Exit 0 before the end (no results file): not finished either.
  rc = runner.run_all(
      runs,
      main_module='fake_main',
      env=dict(env, FAKE_QUIT_AT='8'),
      log=lambda m: None,
      poll_seconds=0.05,
  )
  assert rc == {'toy/cifar10/relu': None}
  assert not runner.is_finished(runs[0])
  rc = runner.run_all(
      runs,
      main_module='fake_main',
      env=env,
      log=lambda m: None,
      poll_seconds=0.05,
  )
  assert rc == {'toy/cifar10/relu': 0}
  status = runner.read_status(runs[0])
  assert status['attempts'] == 3 and status['completed'] is True
  rows = collect.read_metrics(runs[0].workdir)
  assert [r['step'] for r in rows] == list(range(1, 13))
  # A workdir made with other overrides is not silently reused.
  other = runner.plan(
      _sweep(),
      'cifar10',
      root=root / 'runs',
      only=['relu'],
      extra={'optim.lr': 0.5},
  )
  status['completed'] = False
  (other[0].workdir / runner.STATUS_FILE).write_text(json.dumps(status))
  with pytest.raises(RuntimeError, match='other overrides'):
    runner.run_all(other, main_module='fake_main', env=env, log=lambda m: None)


def test_sigterm_stops_trainers_cleanly(fake):
  root, env = fake
  cmd = [
      sys.executable,
      '-m',
      'experiments.sweep',
      'activation',
      '--main',
      'fake_main',
      '--root',
      str(root / 'runs'),
      '--results',
      str(root / 'res'),
      '--jobs',
      '2',
  ]
  proc = subprocess.Popen(
      cmd,
      cwd=sweeps_lib.REPO,
      env=dict(os.environ, FAKE_SLEEP='1', **env),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  wds = [root / 'runs' / 'activation' / 'cifar10' / v for v in ('relu', 'tanh')]
  deadline = time.time() + 60
  while not all((w / 'started').exists() for w in wds):
    assert time.time() < deadline and proc.poll() is None, proc.stdout.read()
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 130, out
  assert 'start the sweep again to resume' in out
  for w in wds:
    assert (w / 'got_sigterm').read_text() == 'yes'
    status = json.loads((w / runner.STATUS_FILE).read_text())
    assert status['returncode'] == 143 and status['completed'] is False
  assert (root / 'res' / 'summary.csv').is_file()


def test_per_epoch_mean_and_epochs_to_reach():
  # Spans (0, .25], (.25, .5], (.5, 1], (1, 1.5], (1.5, 2], (2, 2.5]: the
  # first three (weights 1, 1, 2) make epoch 1; a row just past a boundary
  # (2.001, spanning (1.5, 2.001]) still counts for epoch 2.
  means = collect.per_epoch_mean(
      [0.25, 0.5, 1.0, 1.5, 2.001, 2.5], [0.9, 0.7, 0.5, 0.3, 0.2, 0.1]
  )
  assert means == pytest.approx(
      {1: 0.65, 2: (0.3 * 0.5 + 0.2 * 0.501) / 1.001, 3: 0.1}
  )
  assert collect.epochs_to_reach(means, 0.25) == 2
  assert collect.epochs_to_reach(means, 0.05) is None


def test_figure1_search_train_and_ratio(fake, tmp_path, monkeypatch):
  root, env = fake
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(sweeps_lib, 'FIGURE1_EPOCHS', {'relu': 8, 'tanh': 16})
  out = tmp_path / 'fig1'
  rc = figure1.main(
      [
          '--main',
          'fake_main',
          '--root',
          str(root / 'runs'),
          '--out',
          str(out),
          '--jobs',
          '2',
      ]
  )
  assert rc == 0
  summary = json.loads((out / 'summary.json').read_text())
  assert {a: v['lr'] for a, v in summary['learning_rates'].items()} == {
      'relu': 0.01,
      'tanh': 0.01,
  }
  # Fake curves at lr 0.01: error = c / step, 4 steps an epoch, c = 1 (relu)
  # or 3 (tanh). Epoch means: relu epoch 2 = mean(1/5..1/8) = 0.16 <= 0.25
  # after epoch 1 = 0.52; tanh first <= 0.25 at epoch 4 (mean 3/13..3/16).
  relu, tanh = summary['runs']['relu'], summary['runs']['tanh']
  assert (relu['whole'], tanh['whole']) == (2, 4)
  m1 = (0.9 + 1 / 2 + 1 / 3 + 1 / 4) / 4  # the fake caps error at 0.9
  m2 = sum(1 / s for s in range(5, 9)) / 4
  assert relu['interpolated'] == pytest.approx(1 + (m1 - 0.25) / (m1 - m2))
  assert summary['ratio_tanh_over_relu'] == pytest.approx(
      tanh['interpolated'] / relu['interpolated']
  )
  # The final runs continued their search runs (3 epochs = 12 steps).
  final = root / 'runs' / 'figure1' / 'cifar10' / 'relu'
  calls = (final / 'invocations').read_text().splitlines()
  assert len(calls) == 2 and 'num_epochs=3.0' in calls[0]
  assert [r['step'] for r in collect.read_metrics(final)] == list(range(1, 33))
  assert (out / 'figure1.png').stat().st_size > 1000
  assert 'the paper: about 6x' in (out / 'figure1.md').read_text()

  # A fresh clone has the results tree but no workdir at all: the plot
  # stage redraws the same figure and table from the committed logs.
  table = (out / 'figure1.md').read_text()
  shutil.rmtree(root / 'runs')
  for name in ('figure1.md', 'figure1.png', 'summary.json'):
    (out / name).unlink()
  assert (
      figure1.main(
          ['--root', str(root / 'runs'), '--out', str(out), '--stage', 'plot']
      )
      == 0
  )
  assert not (root / 'runs').exists()
  assert json.loads((out / 'summary.json').read_text()) == summary
  assert (out / 'figure1.md').read_text() == table
  assert (out / 'figure1.png').stat().st_size > 1000
  # Exporting from workdirs without logs (a fresh clone about to resume)
  # keeps the committed logs and records.
  relu_log = (out / 'logs' / 'relu.jsonl').read_bytes()
  (root / 'runs' / 'figure1' / 'cifar10' / 'tanh').mkdir(parents=True)
  collect.export(
      runner.plan(
          sweeps_lib.figure1({'relu': 0.01, 'tanh': 0.01}),
          'cifar10',
          root=root / 'runs',
      ),
      out,
      argv=['experiments.figure1', '--stage', 'train'],
  )
  prov = json.loads((out / collect.PROVENANCE_FILE).read_text())
  assert prov['runs']['relu']['status'] == 'finished'
  assert (out / 'logs' / 'relu.jsonl').read_bytes() == relu_log
  assert prov['runs']['tanh']['status'] == 'finished'  # its old record
  # Without the search's results there are no rates to plot with.
  shutil.rmtree(out / 'lr_search')
  with pytest.raises(RuntimeError, match='no finished learning-rate search'):
    figure1.main(
        ['--root', str(root / 'runs'), '--out', str(out), '--stage', 'plot']
    )


@pytest.mark.slow
def test_real_trainer_two_steps_then_resume(tmp_path):
  """The runner drives the real alexnet_jax.main (Figure 1 config, embedded
  CIFAR-10 sample): two steps, then two more in the same workdir."""
  from alexnet_jax.configs import smoke

  sweep = sweeps_lib.get('figure1_lr')
  extra = {
      'data.name': 'folder:' + smoke.sample_root(),
      'train.num_train_steps': 2,
      'train.log_every_steps': 1,
      'train.max_eval_batches': 1,
  }
  runs = runner.plan(
      sweep, 'cifar10', root=tmp_path, extra=extra, only=['relu_lr0.1']
  )
  assert runner.run_all(runs, log=print) == {runs[0].name: 0}
  rows = collect.read_metrics(runs[0].workdir)
  assert [r['step'] for r in rows if 'train_top1_error' in r] == [1, 2]
  assert rows[0]['epoch'] == pytest.approx(128 / 1700)
  (runs[0].workdir / runner.STATUS_FILE).unlink()  # as if interrupted
  runs = runner.plan(
      sweep,
      'cifar10',
      root=tmp_path,
      only=['relu_lr0.1'],
      extra=dict(extra, **{'train.num_train_steps': 4}),
  )
  assert runner.run_all(runs, log=print) == {runs[0].name: 0}
  log = (runs[0].workdir / runner.LOG_FILE).read_text()
  assert 'resum' in log.lower()
  rows = collect.read_metrics(runs[0].workdir)
  assert [r['step'] for r in rows if 'train_top1_error' in r] == [1, 2, 3, 4]


def test_cifar10_run_redraws_from_its_logs_and_exports(tmp_path):
  from experiments.cifar10 import plot as cifar10_plot

  committed = collect.RESULTS_ROOT / 'cifar10'
  out = tmp_path / 'cifar10'
  shutil.copytree(committed, out)
  (out / 'table.md').unlink()
  assert cifar10_plot.main([f'--results={out}']) == 0
  assert (out / 'table.md').read_text() == (committed / 'table.md').read_text()
  assert '| test `test`, 10 crops' in (out / 'table.md').read_text()
  # --export: a workdir's trainer files replace the logs; provenance says so.
  work = tmp_path / 'work'
  work.mkdir()
  for name in ('metrics.jsonl', 'config.json'):
    shutil.copyfile(out / 'logs' / name, work / name)
  assert (
      cifar10_plot.main(
          [
              f'--results={out}',
              f'--export={work}',
              '--command=experiments/cifar10/run.sh',
          ]
      )
      == 0
  )
  prov = json.loads((out / collect.PROVENANCE_FILE).read_text())
  assert prov['command'] == 'experiments/cifar10/run.sh'
  assert prov['status'] == 'unfinished'  # no results.json in the workdir
  assert not (out / 'logs' / 'results.json').exists()
  assert 'Unfinished run' in (out / 'table.md').read_text()
