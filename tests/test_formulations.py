"""The CPU formulations against the one GPUs and TPUs run, on this CPU.

`config.model.formulation='accelerator'` runs on CPU the plain-XLA model
that `cuda` and `tpu` lower to (tests/test_accelerator_export.py checks that
lowering); 'auto' runs the CPU-tuned one here (oneDNN custom calls or
per-image kernel gradients, and the hand-written max-pool backward). Both
must compute the same function: values and gradients agree to float32
rounding in float32, and within bfloat16's rounding in bfloat16.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.configs import paper
from alexnet_jax.core import config_checks
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import ops
from helpers import formulations as fm


@functools.cache
def _loss_grads_logits(formulation, dtype):
  """(loss, grads, logits) of the tiny model on one batch.

  Dropout is off (train=False): its masks are the same code in both
  formulations, and XLA:CPU compiles the random bits slowly.
  """
  module = model_lib.from_config(fm.model_config(formulation, dtype))

  @jax.jit
  def run(params, images, labels):
    def loss_fn(params):
      logits = module.apply({'params': params}, images, train=False)
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels
      ).mean()
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, logits

  return jax.tree.map(np.asarray, run(fm.params(), *fm.batch()))


def test_accelerator_formulation_equals_the_cpu_one_in_float32():
  cpu = _loss_grads_logits('auto', 'float32')
  accel = _loss_grads_logits('accelerator', 'float32')
  loss, grads, logits = accel
  np.testing.assert_allclose(loss, cpu[0], rtol=1e-5)
  np.testing.assert_allclose(logits, cpu[2], rtol=1e-5, atol=1e-5)
  # Kernel gradients are sums over the batch and the image, in another
  # order in each formulation: float32 rounding relative to their scale.
  worst = max(jax.tree.leaves(fm.relative_errors(grads, cpu[1])))
  assert worst < 1e-5, fm.relative_errors(grads, cpu[1])
  # ...and the gradients are not trivially equal (every layer learns).
  assert min(np.abs(g).max() for g in jax.tree.leaves(grads)) > 1e-4


def test_accelerator_formulation_equals_the_cpu_one_in_bfloat16():
  cpu = _loss_grads_logits('auto', 'bfloat16')
  accel = _loss_grads_logits('accelerator', 'bfloat16')
  # Parameters stay float32 in bf16 models: so do their gradients.
  assert {g.dtype for g in jax.tree.leaves(accel[1])} == {np.dtype('float32')}
  errors = fm.relative_errors(accel, cpu)
  worst = max(jax.tree.leaves(errors))
  assert worst < fm.BF16_TOLERANCE, errors
  # Both really computed in bfloat16 (1% from float32 here).
  f32 = _loss_grads_logits('accelerator', 'float32')
  assert max(jax.tree.leaves(fm.relative_errors(accel[2], f32[2]))) > 1e-3


@pytest.mark.parametrize(
    'shape,kernel,stride,padding',
    [
        ((2, 9, 9, 3), 3, 1, ((1, 1), (1, 1))),
        ((1, 23, 23, 3), 11, 4, ((0, 3), (0, 3))),  # conv1: space-to-depth
    ],
)
def test_conv2d_formulations_agree(shape, kernel, stride, padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  k = rng.normal(size=(kernel, kernel, shape[-1], 5)).astype(np.float32)

  @jax.jit
  def both(x, k):
    out = []
    for formulation in ops.FORMULATIONS:
      f = lambda x, k: (
          ops.conv2d(x, k, stride, padding, formulation=formulation) ** 2
      ).sum()
      out.append(jax.value_and_grad(f, argnums=(0, 1))(x, k))
    return out

  (v0, (dx0, dk0)), (v1, (dx1, dk1)) = both(x, k)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-5 * np.abs(dx0).max())
  np.testing.assert_allclose(dk1, dk0, rtol=1e-5, atol=1e-5 * np.abs(dk0).max())


def test_max_pool_formulations_agree_including_ties():
  rng = np.random.default_rng(2)
  # Integers make ties: both backward passes give the gradient to the
  # first maximum of each window.
  x = rng.integers(0, 4, size=(2, 13, 13, 3)).astype(np.float32)
  g = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)

  @jax.jit
  def both(x, g):
    return [
        jax.vjp(lambda x: ops.max_pool(x, 3, 2, formulation=f), x)[1](g)
        for f in ops.FORMULATIONS
    ]

  (cpu,), (accel,) = both(x, g)
  # Equal up to the order in which overlapping windows' gradients add.
  np.testing.assert_allclose(accel, cpu, rtol=1e-6, atol=1e-6)


def test_formulation_is_a_config_value_that_jit_sees():
  """Not an environment variable read at trace time (which jit's cache
  would ignore): two models in one process lower differently."""
  x = jax.ShapeDtypeStruct((fm.BATCH, fm.SIZE, fm.SIZE, 3), jnp.float32)

  def lowered(formulation):
    module = model_lib.from_config(fm.model_config(formulation))
    params = jax.tree.map(np.asarray, fm.params())
    grad = jax.grad(lambda p, x: module.apply({'params': p}, x).sum())
    return jax.jit(grad).lower(params, x).as_text()

  cpu, accel = lowered('auto'), lowered('accelerator')
  # Lowered for this CPU: 'auto' keeps its CPU-tuned pieces (a oneDNN
  # custom call or a per-image loop for every kernel gradient); the
  # accelerator formulation has neither.
  assert ('custom_call @Alexnet' in cpu) or ('stablehlo.while' in cpu)
  assert 'custom_call' not in accel and 'stablehlo.while' not in accel
  assert accel.count('stablehlo.convolution') == 8 + 7 + 8


def test_bad_formulation_and_precision_are_refused():
  c = paper.get_config()
  c.model.formulation = 'gpu'
  with pytest.raises(config_checks.ConfigError, match='model.formulation'):
    config_checks.validate(c)
  c = paper.get_config()
  c.model.precision = 'tf32'
  with pytest.raises(config_checks.ConfigError, match='model.precision'):
    config_checks.validate(c)
  with pytest.raises(ValueError, match="formulation 'gpu' is not one of"):
    ops.conv2d(
        jnp.ones((1, 3, 3, 1)),
        jnp.ones((1, 1, 1, 1)),
        1,
        'SAME',
        formulation='gpu',
    )


@pytest.mark.parametrize(
    'precision, expected',
    [('default', 'DEFAULT'), ('high', 'HIGH'), ('highest', 'HIGHEST')],
)
def test_precision_reaches_every_convolution_and_matmul(precision, expected):
  module = model_lib.from_config(
      fm.model_config('accelerator', precision=precision)
  )
  params = jax.tree.map(np.asarray, fm.params())
  x = jax.ShapeDtypeStruct((fm.BATCH, fm.SIZE, fm.SIZE, 3), jnp.float32)
  text = (
      jax.jit(lambda p, x: module.apply({'params': p}, x))
      .lower(params, x)
      .as_text()
  )
  found = re.findall(r'stablehlo\.(convolution|dot_general)[^\n]*', text)
  # Forward only: conv1 and conv3 (one per layer, towers side by side),
  # conv2, conv4, conv5 (one per tower); fc6, fc7 (batched over towers), fc8.
  assert sorted(found) == ['convolution'] * 8 + ['dot_general'] * 3
  for op in re.findall(r'stablehlo\.(?:convolution|dot_general)[^\n]*', text):
    # 'default' may also be written as no precision_config at all.
    assert re.findall(r'\b(DEFAULT|HIGHEST|HIGH)\b', op) == [expected] * 2 or (
        expected == 'DEFAULT' and 'precision' not in op
    ), op


def test_checkpoint_records_precision_and_predict_overrides_it(tmp_path):
  """Training runs at config.model.precision (recorded with the weights);
  predict (and evaluate, the same two lines) runs at 'highest' unless its
  --precision flag says otherwise."""
  from alexnet_jax import predict
  from alexnet_jax.core import checkpoint

  config = paper.get_config()
  config.model.update_from_flattened_dict(
      dict(width_scale=fm.SCALE, num_classes=fm.CLASSES, precision='high')
  )
  config.data.image_size, config.data.resize_size = 64, 72
  params = jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), checkpoint.abstract_params(config)
  )
  out = tmp_path / 'export'
  checkpoint.save_model(
      out,
      config=config,
      variables={'params': params},
      preprocessing=dict(
          channel_order='RGB',
          pixel_scale=1.0,
          mean=[0.5] * 3,
          std=[1.0] * 3,
          image_size=64,
          resize_size=72,
      ),
      class_names=[str(i) for i in range(fm.CLASSES)],
  )
  model, _, saved = checkpoint.load(out)
  assert saved.model.precision == model.precision == 'high'
  assert predict.Predictor(out).model.precision == 'highest'
  assert predict.Predictor(out, precision='default').model.precision == (
      'default'
  )
  with pytest.raises(ValueError, match="precision 'fp32' is not one of"):
    model_lib.with_precision(model, 'fp32')
