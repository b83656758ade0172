"""End-to-end training on the embedded CIFAR-10 sample (tiny AlexNet).

One uninterrupted reference run, and one run that is SIGKILLed after its
first checkpoint, restarted and SIGTERMed, restarted and Ctrl-C'd, then
restarted to the end: its final parameters and metrics must equal the
reference's exactly.
"""

import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest
import torch

from alexnet_jax import evaluate
from alexnet_jax.configs import smoke
from alexnet_jax.core import checkpoint
from alexnet_jax.core import config_checks
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import metrics as metrics_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import train
from helpers import repo
from helpers.smoke import STEPS
from helpers.smoke import main_command
from helpers.smoke import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module', autouse=True)
def jax_cache(tmp_path_factory):
  """A persistent compilation cache shared by this module's runs.

  The runs compile the same programs (in this process and in the
  subprocesses); sharing them saves about 10 s per run on 2 cores.
  """
  cache_dir = tmp_path_factory.mktemp('jax_cache')
  saved = (
      jax.config.jax_compilation_cache_dir,
      jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  jax.config.update('jax_compilation_cache_dir', str(cache_dir))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache.reset_cache()
  yield cache_dir
  jax.config.update('jax_compilation_cache_dir', saved[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', saved[1])
  compilation_cache.reset_cache()


def _env(cache_dir):
  env = dict(os.environ)
  env['JAX_COMPILATION_CACHE_DIR'] = str(cache_dir)
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def _wait_for(predicate, proc, what, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      pytest.fail(f'the run exited (code {proc.returncode}) before {what}')
    time.sleep(0.01)
  proc.kill()
  pytest.fail(f'timed out waiting for {what}')


def _train_rows(workdir):
  path = workdir / metrics_lib.JSONL_FILE
  if not path.exists():
    return []
  try:
    return [r for r in metrics_lib.read_jsonl(path) if 'train_loss' in r]
  except json.JSONDecodeError:  # a line being written
    return []


def _params(workdir):
  return checkpoint.load(workdir)[1]['params']


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted in-process run."""
  workdir = tmp_path_factory.mktemp('reference')
  results = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, results


def _start_trainer(workdir, env, log):
  """The smoke trainer on `workdir` in a process, its output into `log`."""
  return subprocess.Popen(
      main_command(workdir),
      cwd=REPO,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
  )


def _stop(workdir, env, sig, log_path):
  """Restarts the run, sends `sig` after its first new training step;
  returns (exit status, log, checkpoint steps)."""
  rows_before = len(_train_rows(workdir))
  with open(log_path, 'w+') as log:
    proc = _start_trainer(workdir, env, log)
    _wait_for(
        lambda: len(_train_rows(workdir)) > rows_before,
        proc,
        'a training step after the restart',
    )
    proc.send_signal(sig)
    returncode = proc.wait(timeout=120)
    log.seek(0)
    text = log.read()
  return (
      returncode,
      text,
      [s for s, _ in checkpoint.step_dirs(workdir / 'checkpoints')],
  )


@pytest.fixture(scope='module')
def interrupted(tmp_path_factory, jax_cache):
  """SIGKILL after the first checkpoint, restart, SIGTERM, restart, Ctrl-C
  (SIGINT), restart to the end."""
  workdir = tmp_path_factory.mktemp('interrupted')
  env = _env(jax_cache)
  logs = {}

  with open(workdir.parent / 'killed.log', 'w+') as log:
    proc = _start_trainer(workdir, env, log)
    _wait_for(
        lambda: (workdir / 'checkpoints' / '5').is_dir(),
        proc,
        'its first checkpoint (step 5)',
    )
    proc.kill()
    proc.wait()
    log.seek(0)
    logs['killed'] = log.read()
  killed_steps = [s for s, _ in checkpoint.step_dirs(workdir / 'checkpoints')]

  returncodes, steps = {}, {'killed': killed_steps}
  for name, sig in (
      ('terminated', signal.SIGTERM),
      ('interrupted', signal.SIGINT),
  ):
    returncodes[name], logs[name], steps[name] = _stop(
        workdir, env, sig, workdir.parent / f'{name}.log'
    )

  results = train.train_and_evaluate(tiny_config(), workdir)
  return dict(
      workdir=workdir,
      logs=logs,
      killed_steps=killed_steps,
      steps=steps,
      returncodes=returncodes,
      results=results,
  )


def test_smoke_run_trains_evaluates_checkpoints(reference):
  workdir, results = reference
  assert results['step'] == STEPS
  assert results['val_examples'] == 16  # 2 eval batches of 8
  for key in ('val_loss', 'val_top1_error', 'val_top5_error'):
    assert math.isfinite(results[key])
  assert results['val_top5_error'] <= results['val_top1_error']
  rows = metrics_lib.read_jsonl(workdir / metrics_lib.JSONL_FILE)
  lines = (workdir / metrics_lib.JSONL_FILE).read_text().splitlines()
  assert len(rows) == len(lines)  # every line is a metrics record
  # One record per event, each kind with fixed fields (docs/training.md).
  kinds = {
      'train': {
          'train_loss',
          'train_top1_error',
          'train_top5_error',
          'train_learning_rate',
          'train_grad_norm',
          'train_param_norm',
          'epoch',
          'images_per_sec',
      },
      'val': {'val_loss', 'val_top1_error', 'val_top5_error', 'val_examples'},
  }
  for row in rows:
    assert set(row) - {'step', 'time'} in kinds.values(), row
  train_rows = [r for r in rows if 'train_loss' in r]
  assert [r['step'] for r in train_rows] == list(range(1, STEPS + 1))
  assert [r['step'] for r in rows if 'val_top1_error' in r] == [10, 20, 30, 40]
  # Plateau with patience 0 and errors in steps of 1/16: the lr dropped.
  lrs = [r['train_learning_rate'] for r in train_rows]
  assert lrs[0] == pytest.approx(0.01)
  assert min(lrs) < 0.01 and lrs == sorted(lrs, reverse=True)
  assert list(workdir.glob('events.out.tfevents.*'))
  saved = json.loads((workdir / train.CONFIG_FILE).read_text())
  assert saved['train']['num_train_steps'] == STEPS
  assert json.loads((workdir / train.RESULTS_FILE).read_text()) == results
  layout = results['layout']  # what ran where (parallel.Parallel.layout)
  assert layout['mesh']['data'] * layout['mesh']['model'] == layout['devices']
  assert layout['per_device_batch'] * layout['mesh']['data'] == 8
  assert layout['processes'] == 1 and layout['dtype'] == 'float32'
  steps = [s for s, _ in checkpoint.step_dirs(workdir / 'checkpoints')]
  assert steps[-2:] == [35, 40]


def test_evaluate_matches_training_and_rerun_only_evaluates(reference, caplog):
  workdir, results = reference
  got = evaluate.run_evaluation(
      workdir, max_batches=2, batch_size=8, progress=False
  )
  assert got['top1_error'] == pytest.approx(results['val_top1_error'])
  assert got['loss'] == pytest.approx(results['val_loss'], rel=1e-5)
  caplog.set_level('INFO')
  again = train.train_and_evaluate(
      tiny_config(**{'train.log_every_steps': 2}), workdir
  )
  assert again == results
  assert (
      'Resuming with a changed config: train.log_every_steps: '
      'checkpoint 1, config 2'
  ) in caplog.text
  # The run ends saying where everything is.
  end = caplog.text.split(f'Final metrics at step {STEPS}:')[1]
  best = checkpoint.best_step(workdir / 'checkpoints')
  for want in (
      f'results     {workdir / train.RESULTS_FILE}',
      f'latest {workdir / "checkpoints" / str(STEPS)}',
      f'best   {workdir / "checkpoints" / str(best)}',
      f'tensorboard --logdir={workdir}',
      f'top-1 error {100 * results["val_top1_error"]:.2f}%',
  ):
    assert want in end, end
  assert '[Hyperparameters]' not in caplog.text


def test_resume_tells_the_lr_it_uses_and_test_metrics_come_before_the_end(
    reference, tmp_path, caplog
):
  """A finished run re-run with another lr and a test split: the resume
  line gives the lr the next step would use (the config's), and the test
  metrics are logged before the end-of-run summary."""
  source, _ = reference
  workdir = tmp_path / 'copy'
  shutil.copytree(source, workdir)
  caplog.set_level('INFO')
  train.train_and_evaluate(
      tiny_config(**{'optim.lr': 0.02, 'data.test_split': 'test[:16]'}),
      workdir,
  )
  resumed = re.search(
      rf'Resumed from the checkpoint at step {STEPS} in \S+ \(lr (\S+), was '
      r'(\S+) in the checkpoint, plateau drops (\d+)\)',
      caplog.text,
  )
  assert resumed, caplog.text
  now, was, drops = float(resumed[1]), float(resumed[2]), int(resumed[3])
  factor = tiny_config().optim.plateau.factor
  assert now == pytest.approx(0.02 * factor**drops, rel=1e-5)  # the config's
  assert was != pytest.approx(now)
  messages = [r.getMessage() for r in caplog.records]
  test_line = max(i for i, m in enumerate(messages) if 'test_top1_error' in m)
  end = next(i for i, m in enumerate(messages) if 'Final metrics at step' in m)
  assert test_line < end


def test_exact_resume_after_sigkill(reference, interrupted):
  assert 'Final metrics' not in interrupted['logs']['killed']
  assert 5 in interrupted['killed_steps']
  assert max(interrupted['killed_steps']) < STEPS
  assert 'Resumed from the checkpoint at step' in (
      interrupted['logs']['terminated']
  )
  ref_dir, ref_results = reference
  assert interrupted['results'] == ref_results
  want, got = _params(ref_dir), _params(interrupted['workdir'])
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    'stop, status, before',
    [('terminated', 143, 'killed'), ('interrupted', 130, 'terminated')],
)
def test_sigterm_and_ctrl_c_save_then_exit_128_plus_the_signal(
    interrupted, stop, status, before
):
  log = interrupted['logs'][stop]
  # Not 0: a script must tell a stopped run from a finished one.
  assert interrupted['returncodes'][stop] == status, log[-3000:]
  marker = 'Preempted: saved the checkpoint at step '
  assert marker in log, log[-3000:]
  assert 'Traceback' not in log and 'Final metrics' not in log
  step = int(log.split(marker)[1].split()[0])
  assert step in interrupted['steps'][stop]
  assert step > max(interrupted['steps'][before])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(
      **{
          'optim.lr': 1e9,
          'train.checkpoint_every_steps': 1,
          'train.num_train_steps': 30,
          'optim.schedule': 'constant',
      }
  )
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(config, tmp_path)
  message = str(e.value)
  bad_step = int(message.split(' at step ')[1].split(':')[0])
  assert 'last good checkpoint is step' in message
  steps = [s for s, _ in checkpoint.step_dirs(tmp_path / 'checkpoints')]
  assert steps and max(steps) == bad_step - 1
  for leaf in jax.tree.leaves(_params(tmp_path)):
    assert np.isfinite(leaf).all()


def test_resume_into_a_different_model_fails_before_training(
    reference, tmp_path
):
  workdir, _ = reference
  config = tiny_config(
      **{'model.width_scale': 0.125, 'train.num_train_steps': STEPS + 10}
  )
  with pytest.raises(
      checkpoint.CheckpointError,
      match='model.width_scale: checkpoint 0.0625, config 0.125',
  ):
    train.train_and_evaluate(config, workdir)


def test_bad_config_fails_before_any_work(tmp_path):
  config = tiny_config(**{'optim.batch_size': 6, 'parallel.mesh.data': 4})
  with pytest.raises(config_checks.ConfigError, match='not divisible'):
    train.train_and_evaluate(config, tmp_path / 'wd')
  assert not (tmp_path / 'wd').exists()


def _linear_apply(variables, images, train=False, rngs=None):
  del train, rngs
  return images.reshape(images.shape[0], -1) @ variables['params']['w']


@pytest.mark.parametrize('crops', [1, 10])
def test_eval_step_against_numpy(crops):
  rng = np.random.default_rng(0)
  b, classes = 6, 7
  shape = (b, 2, 2, 3) if crops == 1 else (b, crops, 2, 2, 3)
  images = rng.normal(size=shape).astype(np.float32)
  labels = rng.integers(0, classes, b).astype(np.int32)
  mask = np.array([1, 1, 1, 1, 1, 0], bool)  # the last one is padding
  w = rng.normal(size=(12, classes)).astype(np.float32)
  m = train.eval_step(
      {'w': w},
      dict(image=images, label=labels, mask=mask),
      apply_fn=_linear_apply,
  ).compute()

  logits = images.reshape(b, crops, 12) @ w
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True)).mean(axis=1)  # softmax averaged
  loss = -np.log(p[np.arange(b), labels])
  rank = (p > p[np.arange(b), labels][:, None]).sum(-1)
  n = mask.sum()
  assert float(m['loss']) == pytest.approx(loss[mask].mean(), rel=1e-5)
  assert float(m['top1_error']) == pytest.approx((rank[mask] >= 1).sum() / n)
  assert float(m['top5_error']) == pytest.approx((rank[mask] >= 5).sum() / n)


def test_jsonl_writer(tmp_path):
  writer = metrics_lib.JsonlWriter(tmp_path / 'm.jsonl')
  writer.write_hparams({'optim.lr': 0.01})  # config.json holds them
  writer.write_scalars(3, {'loss': np.float32(1.5), 'lr': jax.numpy.ones(())})
  writer.write_images(3, {'x': np.zeros((1, 2, 2, 3))})  # not written
  writer.close()
  rows = metrics_lib.read_jsonl(tmp_path / 'm.jsonl')
  assert len(rows) == 1
  assert rows[0]['step'] == 3 and rows[0]['loss'] == 1.5 and rows[0]['lr'] == 1
  assert len((tmp_path / 'm.jsonl').read_text().splitlines()) == 1


def test_console_writer_is_one_short_line(caplog):
  caplog.set_level('INFO')
  writer = metrics_lib.ConsoleWriter()
  writer.write_hparams({'optim.lr': 0.01})
  writer.write_scalars(
      7, {'train_loss': np.float32(2.4620499), 'images_per_sec': 1275.7586}
  )
  assert [r.getMessage() for r in caplog.records] == [
      '[7] images_per_sec=1276, train_loss=2.462'
  ]


def test_a_logged_step_is_one_line_with_its_progress(caplog):
  """The trainer's progress (metrics.Progress, CLU's ReportProgress) goes
  into the step's training line, not a line of its own; the evaluation at
  the same step gets none."""
  caplog.set_level('INFO')
  console = metrics_lib.ConsoleWriter()
  progress = metrics_lib.Progress(console, num_train_steps=40, every_steps=10)
  for step in range(1, 21):
    progress(step, 100.0 + step / 2)  # 2 steps/s
  console.write_scalars(20, {'train_loss': 2.0})
  console.write_scalars(20, {'val_loss': 2.5})
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 2, lines
  assert lines[0].startswith('[20] 2 steps/s, 50.0% (20/40), ETA 10 s')
  assert lines[0].endswith(' | train_loss=2')
  assert lines[1] == '[20] val_loss=2.5'


def test_plan_counts_sliced_splits():
  info = input_pipeline.DatasetInfo(
      10, tuple('abcdefghij'), {'train': 50000, 'test': 10000}
  )
  config = tiny_config(
      **{
          'data.train_split': 'train[:90%]',
          'train.num_train_steps': -1,
          'optim.num_epochs': 2.0,
          'optim.batch_size': 128,
      }
  )
  p = train.plan(config, info)
  assert p.num_train_examples == 45000
  assert p.total_steps == math.ceil(2 * 45000 / 128)
  config.data.train_split = 'nope'
  with pytest.raises(config_checks.ConfigError, match='num_train_examples'):
    train.plan(config, info)


def test_ctrl_c_requests_a_save_and_a_second_one_interrupts():
  with train._Preemption() as preempt:  # noqa: SLF001
    os.kill(os.getpid(), signal.SIGINT)
    assert preempt.requested
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------- the trainer's step -----


def test_loss_falls_on_the_smoke_data():
  """The trainer's step makes progress: the smoke model (quarter width) on
  64 of the smoke images, read by the training input pipeline, goes from
  chance (ln 10 = 2.30) to well below it in 60 steps. Dropout is off so
  the fall is the step's, not noise."""
  config = smoke.get_config()
  config.data.train_split = 'train[:64]'
  config.model.dropout = 0.0
  config.optim.schedule = 'constant'
  config.train.num_train_steps = 60
  step = train.make_train_step(config, model_lib.from_config(config.model))
  par = step.par
  state = par.place_state(step.init_state())
  batches = input_pipeline.train_iterator(config)
  losses = []
  for _ in range(60):
    state, m = step(state, par.shard_batch(next(batches)))
    losses.append(float(m.compute()['loss']))
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert first == pytest.approx(math.log(10), abs=0.15)
  assert last < 0.8 * math.log(10), losses


def _he_params(module, image_size, seed=0):
  """He-scaled NumPy parameters (no jitted init to compile)."""
  shapes = jax.eval_shape(
      lambda: model_lib.init(module, jax.random.PRNGKey(0), image_size)
  )['params']
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if path[-1].key == 'bias':
      return (0.1 * rng.normal(size=x.shape)).astype(np.float32)
    fan_in = np.prod(x.shape[1:-1]) if x.ndim > 2 else x.shape[0]
    return (rng.normal(size=x.shape) * np.sqrt(2 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _batches(n, batch, size, classes=10, seed=3):
  rng = np.random.default_rng(seed)
  return [
      dict(
          image=rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          label=rng.integers(0, classes, batch).astype(np.int32),
      )
      for _ in range(n)
  ]


# Cosine over four steps: the lr changes every step.
SIZES = train.Plan(num_train_examples=32, steps_per_epoch=4.0, total_steps=4)


def test_bare_step_updates_exactly_like_the_trainers():
  """`benchmark overhead` times the step with and without its metrics,
  norms and lr write: both must do the same update."""
  config = tiny_config(**{'optim.schedule': 'constant'})
  module = model_lib.from_config(config.model)
  full = train.make_train_step(config, module, sizes=SIZES)
  bare = train.make_train_step(config, module, full.par, sizes=SIZES, bare=True)
  par = full.par
  host = full.init_state(_he_params(module, 64))
  batch = par.shard_batch(_batches(1, 8, 64)[0])
  state, metrics = full(par.place_state(host), batch)
  bare_state, loss = bare(par.place_state(host), batch)
  assert np.shape(loss) == ()
  assert float(loss) == pytest.approx(
      float(metrics.compute()['loss']), rel=1e-6
  )
  for a, b in zip(
      jax.tree.leaves(par.to_host(state)),
      jax.tree.leaves(par.to_host(bare_state)),
  ):
    np.testing.assert_array_equal(a, b)


def test_make_train_step_refuses_a_layout_of_another_model():
  config = tiny_config()
  module = model_lib.from_config(config.model)
  other = model_lib.from_config(tiny_config(**{'model.towers': 1}).model)
  par = train.parallel.Parallel(config, other)
  with pytest.raises(ValueError, match='par was built for another model'):
    train.make_train_step(config, module, par, sizes=SIZES)


def test_pytorch_twin_step_does_the_trainers_work():
  """torch_models.TrainStep (the benchmark's PyTorch step) against the
  trainer's step from the same weights, Caffe's bias switches on and the
  lr changing every step: the same metrics, norms and parameters."""
  from alexnet_jax.reference import torch_models  # pylint: disable=g-import-not-at-top

  config = tiny_config(
      **{
          'model.dropout': 0.0,
          'optim.lr': 0.05,
          'optim.schedule': 'cosine',
          'optim.decay_biases': False,
          'optim.bias_lr_mult': 2.0,
      }
  )
  module = model_lib.from_config(config.model)
  step = train.make_train_step(config, module, sizes=SIZES)
  par = step.par
  params = _he_params(module, 64)
  net = torch_models.from_config(config.model, image_size=64, flatten='hwc')
  torch_models.load_flax_params(net, params)
  twin = torch_models.TrainStep(
      net, config.optim, lr_fn=lambda i: float(step.lr_fn(i))
  )
  state = par.place_state(step.init_state(params))
  for batch in _batches(3, 8, 64):
    state, m = step(state, par.shard_batch(batch))
    want = {k: float(v) for k, v in par.to_host(m.compute()).items()}
    got = twin(
        torch.from_numpy(batch['image'].transpose(0, 3, 1, 2)),
        torch.from_numpy(batch['label'].astype(np.int64)),
    )
    assert got.keys() == want.keys()
    for k in want:
      assert float(got[k]) == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
  # The parameters, compared in the twin's layout.
  ours = torch_models.from_config(config.model, image_size=64, flatten='hwc')
  torch_models.load_flax_params(ours, par.to_host(state.params))
  for (name, a), b in zip(net.state_dict().items(), ours.state_dict().values()):
    np.testing.assert_allclose(
        a.numpy(),
        b.numpy(),
        rtol=1e-4,
        atol=1e-4 * float(b.abs().max()),
        err_msg=name,
    )


def test_the_step_does_not_need_tensorflow():
  """steps.py (the step and its factory) stays free of TensorFlow, so the
  benchmark's JAX worker measures the step's memory, not tf.data's."""
  code = (
      'import sys; from alexnet_jax.core import steps; '
      'print("tensorflow" in sys.modules)'
  )
  out = repo.run('-c', code).stdout
  assert out.strip() == 'False'
