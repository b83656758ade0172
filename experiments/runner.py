"""Runs a sweep's variants, each `python -m alexnet_jax.main` in its own workdir.

A run whose workdir records a successful finish is skipped; any other run is
(re)started with the same command, and the trainer resumes from the
checkpoints in its workdir, so a sweep stopped at any moment continues where
it was when started again. `jobs` runs go at once. SIGTERM or Ctrl-C stops
the runner: it passes SIGTERM on to the running trainers (which save a
checkpoint and exit) and waits for them.
"""

from collections.abc import Callable
import dataclasses
import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

from alexnet_jax.core import paths
from experiments import sweep_definitions as sweeps_lib

STATUS_FILE = 'sweep_run.json'  # in each workdir: command, start, finish
LOG_FILE = 'sweep_run.log'  # the trainer's stdout and stderr
# What the trainer writes when it has trained and evaluated to the end
# (alexnet_jax.core.train.RESULTS_FILE): a preempted trainer exits without it.
RESULTS_FILE = 'results.json'
# A trainer stopped by SIGTERM or Ctrl-C saves a checkpoint and exits 143 or
# 130 (128 + the signal); 0 is kept for trainers that exit cleanly early.
STOPPED_RETURNCODES = (0, 128 + signal.SIGINT, 128 + signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Run:
  sweep: str
  dataset: str
  variant: str
  config: str  # config file path, as passed to --config
  overrides: dict[str, Any]
  workdir: pathlib.Path

  @property
  def name(self) -> str:
    return f'{self.sweep}/{self.dataset}/{self.variant}'


def add_location_flags(parser, *, holding: str):
  """--root (where the workdirs go) and --data_root (the folder holding
  `holding`), as every experiment command takes them."""
  parser.add_argument(
      '--root',
      default=None,
      help='where the workdirs go (default $ALEXNET_JAX_RUNS or '
      '~/alexnet_jax_runs)',
  )
  parser.add_argument(
      '--data_root',
      default=None,
      help=f'the folder holding {holding} (default $ALEXNET_JAX_DATA or '
      '~/alexnet_jax_data)',
  )


def format_value(value) -> str:
  """A config value as ml_collections' --config.field=VALUE parses it."""
  if isinstance(value, bool):
    return 'True' if value else 'False'
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def plan(
    sweep: sweeps_lib.Sweep,
    dataset: str,
    *,
    root=None,
    extra: dict[str, Any] | None = None,
    only: list[str] | None = None,
) -> list[Run]:
  """The runs of `sweep` on `dataset`: its variants, in definition order.

  Workdirs go to ROOT/SWEEP/DATASET/VARIANT; ROOT defaults to the runs root
  (paths.runs_root: $ALEXNET_JAX_RUNS or ~/alexnet_jax_runs), outside the
  repository.
  """
  root = paths.runs_root(root)
  all_datasets = sweeps_lib.datasets()
  if dataset not in sweep.datasets:
    raise ValueError(
        f'sweep {sweep.name!r} runs on '
        f'{", ".join(sweep.datasets)}, not {dataset!r}'
    )
  if only:
    unknown = [v for v in only if v not in sweep.variants]
    if unknown:
      raise ValueError(
          f'sweep {sweep.name!r} has no variant '
          f'{", ".join(unknown)}; variants: '
          f'{", ".join(sweep.variants)}'
      )
  data = all_datasets[dataset]
  runs = []
  for variant, overrides in sweep.variants.items():
    if only and variant not in only:
      continue
    merged = {} if sweep.config else dict(data.overrides)
    merged.update(sweep.dataset_overrides.get(dataset, {}))
    merged.update(overrides)
    merged.update(extra or {})
    # Paths relative to the repository, where the trainer runs.
    runs.append(
        Run(
            sweep.name,
            dataset,
            variant,
            sweep.config or data.config,
            merged,
            pathlib.Path(root) / sweep.name / dataset / variant,
        )
    )
  return runs


def command(run: Run, main_module: str = 'alexnet_jax.main') -> list[str]:
  return [
      sys.executable,
      '-m',
      main_module,
      f'--config={run.config}',
      f'--workdir={run.workdir}',
  ] + [
      f'--config.{k}={format_value(v)}'
      for k, v in sorted(run.overrides.items())
  ]


def read_status(run: Run) -> dict | None:
  path = run.workdir / STATUS_FILE
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    return None  # half-written by a killed runner: treat as not finished


def is_finished(run: Run) -> bool:
  status = read_status(run)
  return bool(status) and status.get('completed') is True


def _completed(run: Run, returncode: int, started: float, stopped: bool):
  """Whether the trainer ran to its end (not merely exited cleanly).

  A trainer stopped by SIGTERM saves a checkpoint and exits (143); only a
  run that finished exits 0 with a fresh results file.
  """
  results = run.workdir / RESULTS_FILE
  return (
      returncode == 0
      and not stopped
      and results.is_file()
      and results.stat().st_mtime >= started - 1
  )


def _write_status(run: Run, status: dict):
  tmp = run.workdir / (STATUS_FILE + '.tmp')
  tmp.write_text(json.dumps(status, indent=1))
  os.replace(tmp, run.workdir / STATUS_FILE)


def _check_same_run(run: Run):
  """Refuses to resume a workdir that an earlier, different command made."""
  status = read_status(run)
  if status and status.get('overrides') != _jsonable(run.overrides):
    raise RuntimeError(
        f'{run.workdir} was made by a run with other overrides '
        f'({status.get("overrides")}), not {run.overrides}. Delete that '
        'workdir to start afresh, or use another --root.'
    )


def git_commit(repo=sweeps_lib.REPO) -> str:
  """The code's commit (short hash, '+dirty' with uncommitted changes)."""
  try:
    run = lambda *a: subprocess.run(
        ['git', *a], cwd=repo, text=True, capture_output=True, check=True
    ).stdout
    dirty = run('status', '--porcelain', '--untracked-files=no').strip()
    return run('rev-parse', '--short', 'HEAD').strip() + (
        '+dirty' if dirty else ''
    )
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def _jsonable(d):
  return json.loads(json.dumps(d))


def _now():
  return datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')


def run_all(
    runs: list[Run],
    *,
    jobs: int = 1,
    main_module: str = 'alexnet_jax.main',
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    poll_seconds: float = 1.0,
) -> dict[str, int]:
  """Runs every unfinished run, `jobs` at a time; returns name -> returncode.

  Finished runs are skipped (returncode 0 reported); a run that exited
  cleanly before its end (preempted) reports None. Failures are reported
  and do not stop the other runs.
  """
  if jobs < 1:
    raise ValueError(f'jobs={jobs} must be >= 1')
  results = {}
  pending = []
  for run in runs:
    if is_finished(run):
      log(f'[sweep] {run.name}: finished earlier, skipped ({run.workdir})')
      results[run.name] = 0
    else:
      _check_same_run(run)
      pending.append(run)
  active: dict[str, tuple[Run, subprocess.Popen, Any, dict]] = {}
  stopping = []

  def stop(signum, frame):
    del frame
    stopping.append(signum)
    log(
        f'[sweep] signal {signum}: stopping {len(active)} running trainer(s) '
        '(SIGTERM: each saves a checkpoint); start the sweep again to resume'
    )
    for _, proc, _, _ in active.values():
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while (pending and not stopping) or active:
      while pending and len(active) < jobs and not stopping:
        run = pending.pop(0)
        active[run.name] = _start(run, main_module, env, log)
      time.sleep(poll_seconds if active else 0)
      for name in list(active):
        run, proc, logf, status = active[name]
        rc = proc.poll()
        if rc is None:
          continue
        logf.close()
        del active[name]
        completed = _completed(run, rc, status['_t0'], bool(stopping))
        stopped = rc in STOPPED_RETURNCODES and not completed
        results[name] = None if stopped else rc
        status.update(
            finished=_now(),
            returncode=rc,
            completed=completed,
            seconds=round(time.time() - status['_t0'], 1),
        )
        status.pop('_t0')
        _write_status(run, status)
        if completed:
          state = 'done'
        elif stopped:
          state = 'stopped before its end (it resumes next time)'
        else:
          state = f'FAILED (exit {rc}); see {run.workdir / LOG_FILE}'
        log(f'[sweep] {name}: {state} in {status["seconds"]:.0f} s')
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  if stopping:
    raise KeyboardInterrupt('sweep stopped by a signal; run it again to resume')
  return results


def _start(run: Run, main_module, env, log):
  run.workdir.mkdir(parents=True, exist_ok=True)
  cmd = command(run, main_module)
  previous = read_status(run)
  resumed = previous is not None
  status = dict(
      sweep=run.sweep,
      dataset=run.dataset,
      variant=run.variant,
      config=run.config,
      overrides=_jsonable(run.overrides),
      command=cmd,
      git_commit=git_commit(),
      started=_now(),
      finished=None,
      returncode=None,
      attempts=(previous or {}).get('attempts', 0) + 1,
      _t0=time.time(),
  )
  _write_status(run, {k: v for k, v in status.items() if k != '_t0'})
  logf = open(run.workdir / LOG_FILE, 'a')
  logf.write(f'\n==== {_now()} attempt {status["attempts"]}: {" ".join(cmd)}\n')
  logf.flush()
  full_env = dict(os.environ, **(env or {}))
  # The trainer gets its own session: a Ctrl-C reaches only this runner,
  # which then stops the trainers with SIGTERM (they checkpoint first).
  proc = subprocess.Popen(
      cmd,
      stdout=logf,
      stderr=subprocess.STDOUT,
      cwd=sweeps_lib.REPO,
      env=full_env,
      start_new_session=True,
  )
  log(
      f'[sweep] {run.name}: {"resuming" if resumed else "starting"} '
      f'(pid {proc.pid}, attempt {status["attempts"]}) in {run.workdir}'
  )
  return run, proc, logf, status
