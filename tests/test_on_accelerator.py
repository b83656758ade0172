"""Checks that need a real GPU or TPU: `pytest -m accelerator` on one.

Skipped everywhere else (tests/conftest.py), and exempt from its CPU
forcing. experiments/accelerator/run.sh runs them, then the benchmark.
What can be checked without the device is checked on CPU by
test_accelerator_export.py (what the platform would compile) and
test_formulations.py (that formulation against the CPU one, on CPU).
"""

import functools

import jax
import numpy as np
import optax
import pytest

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import parallel
from alexnet_jax.core import train
from helpers import formulations
from helpers import smoke
from helpers import tiny_model

pytestmark = pytest.mark.accelerator


def _on(device, fn, *args):
  """fn(*args) run on `device`; jit lowers for that device's platform."""
  args = jax.device_put(args, device)
  return jax.tree.map(np.asarray, jax.jit(fn)(*args))


def _loss_grads_fn(module):
  def run(params, images, labels):
    def loss_fn(params):
      logits = module.apply({'params': params}, images, train=False)
      return (
          optax.softmax_cross_entropy_with_integer_labels(
              logits, labels
          ).mean(),
          logits,
      )

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, logits

  return run


def test_accelerator_matches_the_cpu_formulation_at_highest_precision():
  """The platform's own convolutions, pooling and their gradients equal
  ops.py's CPU formulation run on this host's CPU (float32, 'highest' so
  TF32 / bf16 passes do not blur the comparison)."""
  config = formulations.model_config('auto', precision='highest')
  module = model_lib.from_config(config)
  args = (formulations.params(), *formulations.batch())
  run = _loss_grads_fn(module)
  got = _on(jax.devices()[0], run, *args)
  want = _on(jax.devices('cpu')[0], run, *args)
  errors = formulations.relative_errors(got, want)
  assert max(jax.tree.leaves(errors)) < 1e-4, errors


def test_default_precision_stays_close_to_highest():
  """TF32 (A100/H100) or bf16 passes (TPU) at 'default': a few 1e-3 of
  the logits' scale, not more (recorded, so a regression shows)."""
  args = (formulations.params(), *formulations.batch())
  out = {}
  for precision in ('default', 'highest'):
    module = model_lib.from_config(
        formulations.model_config('auto', precision=precision)
    )
    out[precision] = _on(jax.devices()[0], _loss_grads_fn(module), *args)
  logits_error = formulations.relative_errors(
      out['default'][2], out['highest'][2]
  )
  assert logits_error < 2e-2, logits_error


def test_two_towers_on_two_devices_equal_one_device():
  if len(jax.devices()) < 2:
    pytest.skip('one device here: two towers need two')
  config = tiny_model.config('model')
  config.model.precision = 'highest'
  module = model_lib.from_config(config.model)
  single = model_lib.from_config(
      tiny_model.config('single').model, precision='highest'
  )
  variables = tiny_model.variables()
  batch = tiny_model.batch(1)
  par = parallel.Parallel(config, module)
  loss = functools.partial(tiny_model.loss_and_logits, train=True)
  grad = lambda apply: jax.jit(
      jax.grad(functools.partial(loss, apply), has_aux=True)
  )
  want_g, want_logits = grad(single.apply)(
      variables, batch['image'], batch['label']
  )
  placed = par.place_state(variables)
  images = par.shard_batch(batch)
  g, logits = grad(par.apply)(placed, images['image'], images['label'])
  tiny_model.close(logits, want_logits, rtol=1e-4, atol=1e-5)
  tiny_model.close_grads(par.to_host(g), want_g)
  # Each device holds its own tower: the model really is split.
  kernel = placed['params']['conv2']['kernel']
  assert len(kernel.sharding.device_set) == 2
  assert kernel.addressable_shards[0].data.shape[0] == 1


def test_a_short_training_run_learns(tmp_path):
  """The smoke config (embedded CIFAR-10 sample), 30 steps on the device:
  the loss falls and every metric is finite."""

  config = smoke.tiny_config(
      **{
          'train.num_train_steps': 30,
          'train.eval_every_steps': 30,
          'train.checkpoint_every_steps': 30,
          'optim.schedule': 'constant',
          'optim.batch_size': 32,
          # One device: 32 need not divide over every device of the host.
          'parallel.mesh.data': 1,
      }
  )
  results = train.train_and_evaluate(config, str(tmp_path))
  assert all(np.isfinite(v) for v in results.values() if isinstance(v, float))
  from alexnet_jax.core import metrics as metrics_lib

  rows = [
      r
      for r in metrics_lib.read_jsonl(tmp_path / metrics_lib.JSONL_FILE)
      if 'train_loss' in r
  ]
  assert rows[-1]['train_loss'] < rows[0]['train_loss']
