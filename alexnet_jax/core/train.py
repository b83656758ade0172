"""Training and evaluation: the loop around the steps of steps.py.

Data flows one way: config -> Parallel (mesh) -> input batches + model ->
train step -> metrics (CLU) and checkpoints (Orbax). The step functions are
pure and module-level; parallel.py decides how they run (jit with
shardings, or pmap, where they receive `axis_name`). They and
`make_train_step`, which builds the compiled train step that training, the
benchmarks and the tests all run, live in steps.py (free of TensorFlow) and
are re-exported here.

Exact resume: batch k is a pure function of (config.train.seed, k) (see
input_pipeline.train_iterator), the dropout key of step k is folded from
the state's key and k, and the lr and plateau state live in the state, so a
run restarted from a checkpoint replays exactly what the interrupted run
would have done.
"""

import functools
import json
import math
import pathlib
import signal
import threading
import time

from absl import logging
from clu import periodic_actions
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.core import checkpoint
from alexnet_jax.core import config_checks
from alexnet_jax.core import input_guard
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import metrics as metrics_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import optim
from alexnet_jax.core import outputs
from alexnet_jax.core import parallel
from alexnet_jax.core import splits

# The steps and their factory, re-exported (train.make_train_step etc.).
from alexnet_jax.core.steps import Plan
from alexnet_jax.core.steps import TrainState  # noqa: F401
from alexnet_jax.core.steps import TrainStep  # noqa: F401
from alexnet_jax.core.steps import create_train_state
from alexnet_jax.core.steps import eval_step
from alexnet_jax.core.steps import make_train_step
from alexnet_jax.core.steps import train_step  # noqa: F401

RESULTS_FILE = 'results.json'
CONFIG_FILE = 'config.json'


class NonFiniteError(RuntimeError):
  """The loss or the parameters stopped being finite."""


# ------------------------------------------------------------ set-up ------


def plan(config, info) -> Plan:
  examples = config.train.num_train_examples
  if examples <= 0:
    try:  # 'train', or a slice such as 'train[:90%]'
      _, lo, hi = splits.parse_split(config.data.train_split, info.split_sizes)
      examples = hi - lo
    except ValueError as e:
      raise config_checks.ConfigError(
          f'cannot tell how many examples split {config.data.train_split!r} '
          f'has ({e}): set config.train.num_train_examples'
      ) from e
  steps_per_epoch = examples / config.optim.batch_size
  total = config.train.num_train_steps
  if total <= 0:
    total = max(1, math.ceil(config.optim.num_epochs * steps_per_epoch))
  return Plan(examples, steps_per_epoch, total)


def _check_splits(config, info):
  """Every split the run reads exists (not only at the first evaluation)."""
  for field in ('train_split', 'eval_split', 'test_split'):
    split = config.data[field]
    if split:
      try:
        splits.check_split(split, info.split_sizes)
      except ValueError as e:
        raise config_checks.ConfigError(f'config.data.{field}: {e}') from None


def _host_state(par, state) -> dict:
  """The state as a plain nested dict of numpy arrays (checkpoint form)."""
  return flax.serialization.to_state_dict(par.to_host(state))


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
      if not isinstance(x, jax.ShapeDtypeStruct)
      else x,
      tree,
  )


def _flat_config(config) -> dict:
  flat = checkpoint.flatten(config)
  return {
      k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
      for k, v in flat.items()
  }


class _Preemption:
  """SIGTERM or Ctrl-C set a flag; the loop saves a checkpoint and returns.

  A second signal of either kind exits at once, without saving: Ctrl-C by
  KeyboardInterrupt (status 130), SIGTERM by SystemExit(143). `signal` is
  the name of the first signal received. The loop also checks the flag
  while it waits for input (input_guard.interruptible), so a read that
  never returns cannot hold a signal back.
  """

  def __init__(self):
    self.requested = False
    self.signal = None
    self._previous = {}

  def _handler(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested:
      logging.warning('Received %s again: exiting without saving', name)
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      raise SystemExit(128 + signum)
    # Set before logging: a second signal may run this during the log call.
    self.requested = True
    self.signal = name
    logging.warning(
        'Received %s: saving a checkpoint at the current step, then exiting '
        '(a second SIGINT or SIGTERM exits at once, without saving)',
        name,
    )

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


# ------------------------------------------------------------ evaluation --


def evaluate(
    par,
    eval_fn,
    params,
    config,
    split,
    *,
    crops=None,
    preprocessing=None,
    max_batches=-1,
    progress=None,
    stop=None,
) -> dict:
  """{'loss', 'top1_error', 'top5_error', 'examples'} on a whole split.

  `eval_fn` is the compiled eval step (Parallel.jit_step(eval_step)).
  `progress`, if given, is called with the number of examples done.
  `stop`, if given, is polled while waiting for input: once it returns
  True, input_guard.InputWaitStopped is raised.
  """
  batches = input_pipeline.eval_iterator(
      config,
      split,
      preprocessing=preprocessing,
      crops=crops,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  batches = input_guard.interruptible(batches, stop or (lambda: False))
  total = None
  for i, batch in enumerate(batches):
    if 0 < max_batches <= i:
      break
    m = eval_fn(params, par.shard_batch(batch))
    total = m if total is None else total.merge(m)
    if progress is not None:
      progress(int(np.sum(batch['mask'])))
  if total is None:
    raise ValueError(
        f'split {split!r} of {config.data.name} yielded no examples'
    )
  result = {k: float(v) for k, v in par.to_host(total.compute()).items()}
  result['examples'] = int(par.to_host(total.loss.count))
  return result


def make_eval_fn(par):
  return par.jit_step(
      functools.partial(eval_step, apply_fn=par.apply), donate_state=False
  )


# ------------------------------------------------------------ the end -----


def _errors(results, prefix) -> str | None:
  if f'{prefix}_top1_error' not in results:
    return None
  return (
      f'top-1 error {100 * results[f"{prefix}_top1_error"]:.2f}%, '
      f'top-5 error {100 * results[f"{prefix}_top5_error"]:.2f}%, '
      f'loss {results[f"{prefix}_loss"]:.4f} '
      f'({results[f"{prefix}_examples"]} images)'
  )


def summary(workdir, results) -> str:
  """What a finished run prints last: its metrics and where its outputs are."""
  workdir = pathlib.Path(workdir)
  root = workdir / checkpoint.CHECKPOINTS_DIR
  lines = [f'Final metrics at step {results["step"]}:']
  for prefix, name in (('val', 'validation'), ('test', 'test')):
    if (text := _errors(results, prefix)) is not None:
      lines.append(f'  {name:<11} {text}')
  steps = [s for s, _ in checkpoint.step_dirs(root)]
  best = checkpoint.best_step(root)
  lines += [
      f'  workdir     {workdir}',
      f'  results     {workdir / RESULTS_FILE}',
      f'  metrics     {workdir / metrics_lib.JSONL_FILE}, config in '
      f'{workdir / CONFIG_FILE}',
  ]
  if steps:
    lines.append(f'  checkpoints latest {root / str(steps[-1])}')
  if best is not None:
    lines.append(
        f'              best   {root / str(best)} (lowest '
        f'{checkpoint.BEST_METRIC})'
    )
  lines.append(f'  tensorboard tensorboard --logdir={workdir}')
  return '\n'.join(lines)


# ------------------------------------------------------------ the loop ----


def resume_message(step, directory, host_state, step_fn) -> str:
  """What a resume logs: the lr the next step uses (the config's schedule
  times the plateau scale, as the step computes it), and the one stored in
  the checkpoint when a changed config makes them differ."""
  saved = float(optim.learning_rate(host_state.opt_state))
  scale = float(host_state.plateau['scale'])
  next_lr = float(step_fn.lr_fn(step)) * scale
  lr = f'lr {next_lr:.6g}'
  if not math.isclose(next_lr, saved, rel_tol=1e-6):
    lr += f', was {saved:.6g} in the checkpoint'
  return (
      f'Resumed from the checkpoint at step {step} in {directory} ({lr}, '
      f'plateau drops {int(host_state.plateau["drops"])})'
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from the workdir's latest checkpoint) and evaluates.

  Returns the final metrics (also written to WORKDIR/results.json), or,
  when stopped by SIGINT or SIGTERM (from the start: a signal during the
  set-up is heard too), {'preempted_at_step', 'signal'}.
  """
  with _Preemption() as preempt:
    return _train_and_evaluate(config, workdir, preempt)


def _train_and_evaluate(config, workdir, preempt):
  config_checks.validate(config)
  workdir = pathlib.Path(workdir).absolute()
  primary = jax.process_index() == 0

  info = input_pipeline.get_info(config)
  if info.num_classes != config.model.num_classes:
    raise config_checks.ConfigError(
        f'config.model.num_classes={config.model.num_classes} but dataset '
        f'{config.data.name!r} has {info.num_classes} classes'
    )
  _check_splits(config, info)
  p = plan(config, info)
  outputs.make_dir(workdir, 'workdir')
  logging.info(
      'Training for %d steps (%.1f epochs of %d examples, %.1f '
      'steps per epoch, global batch %d)',
      p.total_steps,
      p.total_steps / p.steps_per_epoch,
      p.num_train_examples,
      p.steps_per_epoch,
      config.optim.batch_size,
  )

  module = model_lib.from_config(config.model)
  par = parallel.Parallel(config, module)
  layout = par.layout()
  logging.info('Layout: %s', parallel.layout_line(layout))
  step_fn = make_train_step(
      config,
      module,
      par,
      sizes=p,
      prepare=input_pipeline.device_prepare(config),
  )
  tx = step_fn.tx
  preprocessing = input_pipeline.preprocessing_from_config(config)
  metadata = checkpoint.make_metadata(
      config=config,
      preprocessing=preprocessing,
      class_names=info.class_names,
      data_position=dict(seed=config.train.seed, step_is_batch_index=True),
  )

  # Made here, so that a file in its place fails now, not at the first save.
  checkpoints = workdir / checkpoint.CHECKPOINTS_DIR
  outputs.make_dir(checkpoints, 'checkpoint directory')
  with outputs.writing('checkpoint directory', checkpoints):
    mgr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)

  def finish_saves():  # asynchronous saves raise their errors here
    with outputs.writing('checkpoint', mgr.directory):
      mgr.wait_until_finished()

  abstract_state = jax.eval_shape(
      functools.partial(create_train_state, config, module, tx)
  )
  restored = checkpoint.restore_train_state(
      mgr, _abstract(flax.serialization.to_state_dict(abstract_state)), config
  )
  if restored is None:
    start_step = 0
    host_state = create_train_state(config, module, tx)
    logging.info('Starting from scratch in %s', workdir)
  else:
    start_step, state_dict, saved = restored
    host_state = flax.serialization.from_state_dict(abstract_state, state_dict)
    logging.info(
        '%s', resume_message(start_step, mgr.directory, host_state, step_fn)
    )
    changed = checkpoint.config_differences(
        saved['config'], config, sections=None
    )
    if changed:  # allowed (e.g. more steps), but not an exact resume
      logging.warning('Resuming with a changed config: %s', '; '.join(changed))
  state = par.place_state(host_state)
  del host_state

  with outputs.writing('metrics', workdir):
    console = metrics_lib.ConsoleWriter()
    writer = metrics_lib.create_writer(
        workdir, console, just_logging=not primary
    )
  if primary:
    outputs.write_text(
        workdir / CONFIG_FILE, config.to_json(indent=2), 'config file'
    )
    if start_step == 0:
      writer.write_hparams(_flat_config(config))

  eval_fn = make_eval_fn(par)
  hooks = [
      # images_per_sec is in the train record; the progress (steps/s, ETA)
      # goes into its console line.
      metrics_lib.Progress(
          console,
          num_train_steps=p.total_steps,
          every_steps=config.train.log_every_steps,
      )
  ]
  if config.train.profile and primary:
    hooks.append(
        periodic_actions.Profile(
            logdir=str(workdir),
            num_profile_steps=5,
            first_profile=start_step + 5,
        )
    )
  report = hooks[0]

  def run_eval(step, split):
    with report.timed('eval'):
      result = evaluate(
          par,
          eval_fn,
          state.params,
          config,
          split,
          crops=config.data.eval_crops,
          max_batches=config.train.max_eval_batches,
          stop=lambda: preempt.requested,
      )
    prefix = 'val' if split == config.data.eval_split else 'test'
    scalars = {f'{prefix}_{k}': v for k, v in result.items()}
    writer.write_scalars(step, scalars)
    return scalars

  def save(step, val=None, *, force=False):
    if step in mgr.all_steps():
      return
    with report.timed('checkpoint'):
      metrics = {checkpoint.BEST_METRIC: val['val_top1_error']} if val else None
      with outputs.writing('checkpoint', mgr.directory / str(step)):
        checkpoint.save_train_state(
            mgr, step, _host_state(par, state), metadata, metrics, force=force
        )

  train_metrics = None
  last_log = (start_step, time.monotonic())
  # Placed batches kept in flight: the next batches' copies to the devices
  # overlap the current step.
  # Read on a thread of its own: the loop waits for input in Python, where
  # a signal is heard even if a read never returns (input_guard).
  train_iter = input_pipeline.device_prefetch(
      input_guard.interruptible(
          input_pipeline.train_iterator(
              config,
              start_step=start_step,
              process_index=jax.process_index(),
              process_count=jax.process_count(),
          ),
          stop=lambda: preempt.requested,
      ),
      par.shard_batch,
  )
  step = start_step
  val = None

  def stop_for_signal(step, val):
    if step == start_step:  # no step since the start: nothing new to save
      logging.warning(
          'Stopped by %s at step %d, before any step of this run: nothing '
          'new to save',
          preempt.signal,
          step,
      )
    else:
      save(step, val, force=True)
      finish_saves()
      logging.warning(
          'Preempted: saved the checkpoint at step %d in %s; '
          'run the same command again to resume',
          step,
          mgr.directory,
      )
    return {'preempted_at_step': step, 'signal': preempt.signal}

  try:
    while step < p.total_steps:
      if preempt.requested:  # e.g. a signal during the set-up
        return stop_for_signal(step, val)
      try:
        batch = next(train_iter)
      except input_guard.InputWaitStopped:
        return stop_for_signal(step, val)
      state, m = step_fn(state, batch)
      step += 1
      loss, pnorm = (
          float(x)
          for x in par.to_host(
              (m.loss.total / m.loss.count, m.param_norm.value)
          )
      )
      if not (math.isfinite(loss) and math.isfinite(pnorm)):
        finish_saves()
        last = mgr.latest_step()
        raise NonFiniteError(
            f'loss became {loss} (parameter norm {pnorm}) at step {step}: '
            'stopping. The last good checkpoint is '
            + (
                f'step {last} in {mgr.directory}'
                if last is not None
                else 'none (no checkpoint was saved)'
            )
            + '. Lower config.optim.lr or check the data.'
        )
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      for hook in hooks:
        hook(step)

      if step % config.train.log_every_steps == 0 or step == p.total_steps:
        scalars = {
            f'train_{k}': v
            for k, v in par.to_host(train_metrics.compute()).items()
        }
        t = time.monotonic()
        scalars['images_per_sec'] = (
            (step - last_log[0])
            * config.optim.batch_size
            / max(t - last_log[1], 1e-9)
        )
        scalars['epoch'] = step / p.steps_per_epoch
        last_log = (step, t)
        writer.write_scalars(step, scalars)
        train_metrics = None

      val = None
      if step % config.train.eval_every_steps == 0 or step == p.total_steps:
        try:
          val = run_eval(step, config.data.eval_split)
        except input_guard.InputWaitStopped:
          return stop_for_signal(step, None)
        if config.optim.schedule == 'plateau':
          decision = optim.plateau_update(
              par.to_host(state.plateau),
              val['val_top1_error'],
              config.optim.plateau,
          )
          if decision.dropped:
            logging.info('Step %d: %s', step, decision.message)
          state = state.replace(
              plateau=par.place_state(jax.tree.map(jnp.asarray, decision.state))
          )
      if (
          step % config.train.checkpoint_every_steps == 0
          or val is not None
          or step == p.total_steps
      ):
        save(step, val)
      if preempt.requested:
        return stop_for_signal(step, val)

    finish_saves()
    results = {'step': step, 'layout': layout}
    if start_step >= p.total_steps:
      logging.info(
          'Training already finished at step %d: evaluating only', start_step
      )
    try:
      results.update(val or run_eval(step, config.data.eval_split))
      if config.data.test_split:
        results.update(run_eval(step, config.data.test_split))
    except input_guard.InputWaitStopped:
      return stop_for_signal(step, None)
    # The writer logs from a thread of its own: its last lines (the test
    # metrics) come out before the summary only once it is flushed.
    writer.flush()
    if primary:
      outputs.write_text(
          workdir / RESULTS_FILE, json.dumps(results, indent=1), 'results file'
      )
      logging.info('%s', summary(workdir, results))
    return results
  finally:
    writer.close()  # flushes the metrics written so far
    finish_saves()
    mgr.close()
