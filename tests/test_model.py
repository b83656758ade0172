"""The Flax AlexNet against the paper's numbers and an independent PyTorch
model.

Real sizes (shapes, parameter counts) are checked with `jax.eval_shape`, which
costs no memory or compute; numerical checks run at tiny widths
(`width_scale=1/16`) on small inputs, with random parameters drawn in NumPy
(no jitted init to compile) and copied into `torch_models`'s Caffe-style
model (grouped convolutions, nn.LocalResponseNorm).
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alexnet_jax.configs import paper
from alexnet_jax.core import model as model_lib
from alexnet_jax.reference import torch_models  # noqa: E402  (needs torch)

TINY = 1 / 16
# 96x96 input: conv1 23x23 (the paper's 3 padded columns are read, as at
# 224), pool5 2x2 (fc6's flatten order matters), and 3/2 and 2/2 pooling give
# the same sizes.
SMALL = 96


def _model_config(**overrides):
  """config.model with dotted-name overrides ('lrn.alpha': 1.0)."""
  m = paper.get_config().model
  m.update_from_flattened_dict(overrides)
  return m


def _shapes(module, image_size):
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), x))


def _random_params(module, image_size, seed=0):
  """He-scaled normal kernels and small random biases, drawn in NumPy.

  Larger than the paper's std 0.01 so the logits depend strongly on every
  layer (with 0.01 they are mostly the bias path at tiny widths).
  """
  rng = np.random.RandomState(seed)

  def draw(path, s):
    if path[-1].key == 'kernel':
      fan_in = s.shape[0] if s.ndim == 2 else int(np.prod(s.shape[1:-1]))
      return rng.randn(*s.shape).astype(np.float32) * np.sqrt(2 / fan_in)
    return rng.randn(*s.shape).astype(np.float32) * 0.1

  shapes = _shapes(module, image_size)['params']
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _images(n, size, seed=1):
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


@contextlib.contextmanager
def _one_torch_thread():
  """PyTorch on one thread: with two threads on a loaded machine its tanh
  model's logits differed between identical runs (2.5e-5 relative in 2 of
  ~15 runs, over this file's 1e-5 tolerance); on one thread they repeat."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(threads)


def _torch_logits(model_config, params, images, flatten='hwc'):
  net = torch_models.from_config(
      model_config, image_size=images.shape[1], flatten=flatten
  )
  torch_models.load_flax_params(net.eval(), params)
  with torch.no_grad(), _one_torch_thread():
    return net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def _flax_logits(model_config, params, images, **kwargs):
  module = model_lib.from_config(model_config)
  return np.asarray(
      jax.jit(lambda p, x: module.apply({'params': p}, x, **kwargs))(
          params, images
      )
  )


def _rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _record_inputs(module, fn, names):
  """Runs fn() while recording the inputs (first arg) of the named layers."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and context.module.name in names:
      seen[context.module.name] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    out = fn()
  return out, seen


# --- Real shapes and sizes (eval_shape: nothing is allocated) ----------------


@pytest.mark.parametrize(
    'conv1_padding,image_size',
    [('paper', 224), ('torchvision', 224), ('caffe', 227)],
)
def test_layer_shapes_55_27_13_6(conv1_padding, image_size):
  module = model_lib.from_config(_model_config(conv1_padding=conv1_padding))
  x = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  layers = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')

  def forward():
    variables = module.init(jax.random.key(0), x)
    (out, state), inputs = _record_inputs(
        module,
        lambda: module.apply(
            variables, x, capture_intermediates=True, mutable=['intermediates']
        ),
        layers,
    )
    outputs = {
        k: v['__call__'][0]
        for k, v in state['intermediates'].items()
        if k in layers
    }
    return out, inputs, outputs, variables['params']

  out, ins, outs, params = jax.eval_shape(forward)
  shape = lambda t: [tuple(a.shape) for a in t]
  # Per tower (two towers), NHWC.
  assert shape(outs['conv1']) == [(2, 55, 55, 48)] * 2
  assert shape(ins['conv2']) == [(2, 27, 27, 48)] * 2  # after pool1
  assert shape(outs['conv2']) == [(2, 27, 27, 128)] * 2
  assert ins['conv3'][0].shape == (2, 13, 13, 256)  # both towers
  assert shape(outs['conv3']) == [(2, 13, 13, 192)] * 2
  assert shape(ins['conv4']) == [(2, 13, 13, 192)] * 2  # own tower
  assert shape(outs['conv4']) == [(2, 13, 13, 192)] * 2
  assert shape(outs['conv5']) == [(2, 13, 13, 128)] * 2
  assert ins['fc6'].shape == (2, 6 * 6 * 256)  # pool5: 6x6
  assert shape(outs['fc6']) == [(2, 2048)] * 2
  assert ins['fc7'].shape == (2, 4096)
  assert ins['fc8'].shape == (2, 4096)
  assert out.shape == (2, 1000) and out.dtype == jnp.float32
  # The tower axis leads every tower layer's parameters.
  assert params['conv1']['kernel'].shape == (2, 11, 11, 3, 48)
  assert params['conv2']['kernel'].shape == (2, 5, 5, 48, 128)
  assert params['conv3']['kernel'].shape == (2, 3, 3, 256, 192)
  assert params['conv4']['kernel'].shape == (2, 3, 3, 192, 192)
  assert params['conv5']['kernel'].shape == (2, 3, 3, 192, 128)
  assert params['fc6']['kernel'].shape == (2, 9216, 2048)
  assert params['fc7']['kernel'].shape == (2, 4096, 2048)
  assert params['fc8']['kernel'].shape == (4096, 1000)


def test_torchvision_variant_shapes():
  module = model_lib.from_config(
      _model_config(
          variant='torchvision', towers=1, conv1_padding='torchvision'
      )
  )
  x = jnp.zeros((1, 224, 224, 3), jnp.float32)

  def forward():
    variables = module.init(jax.random.key(0), x)
    return module.apply(
        variables, x, capture_intermediates=True, mutable=['intermediates']
    )

  out, state = jax.eval_shape(forward)
  outs = {
      k: v['__call__'][0][0].shape
      for k, v in state['intermediates'].items()
      if k.startswith('conv')
  }
  assert outs == {
      'conv1': (1, 55, 55, 64),
      'conv2': (1, 27, 27, 192),
      'conv3': (1, 13, 13, 384),
      'conv4': (1, 13, 13, 256),
      'conv5': (1, 13, 13, 256),
  }
  assert out.shape == (1, 1000)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize(
    'overrides,expected',
    [
        ({}, 60_965_224),
        (
            {
                'variant': 'torchvision',
                'towers': 1,
                'lrn.enabled': False,
                'conv1_padding': 'torchvision',
            },
            61_100_840,
        ),
        ({'towers': 1}, 59_798_312),
    ],
)
def test_parameter_counts(overrides, expected):
  config = _model_config(**overrides)
  params = _shapes(model_lib.from_config(config), 224)['params']
  assert _count(params) == expected
  # The independent PyTorch model agrees (built on the meta device: free).
  with torch.device('meta'):
    net = torch_models.from_config(config)
  assert sum(p.numel() for p in net.parameters()) == expected


def test_one_tower_control_halves_conv1_to_conv4_only():
  params = _shapes(model_lib.from_config(_model_config(towers=1)), 224)
  params = params['params']
  assert [params[f'conv{i}']['kernel'].shape[-1] for i in range(1, 6)] == [
      48,
      128,
      192,
      192,
      256,
  ]
  assert params['fc6']['kernel'].shape == (1, 9216, 4096)
  assert params['fc7']['kernel'].shape == (1, 4096, 4096)


def test_width_scale_and_num_classes_set_shapes():
  module = model_lib.from_config(_model_config(width_scale=0.5, num_classes=10))
  params = _shapes(module, 224)['params']
  assert params['conv1']['kernel'].shape == (2, 11, 11, 3, 24)
  assert params['conv5']['kernel'].shape == (2, 3, 3, 96, 64)
  assert params['fc6']['kernel'].shape == (2, 6 * 6 * 128, 1024)
  assert params['fc8']['kernel'].shape == (2048, 10)
  out = jax.eval_shape(
      module.apply,
      {'params': params},
      jax.ShapeDtypeStruct((3, 224, 224, 3), jnp.float32),
  )
  assert out.shape == (3, 10)


def test_pool_2_2_gives_the_same_sizes():
  base = _shapes(model_lib.from_config(_model_config()), 224)
  other = _shapes(
      model_lib.from_config(
          _model_config(**{'pool.window': 2, 'pool.stride': 2})
      ),
      224,
  )
  shapes = lambda t: jax.tree_util.tree_map(lambda a: a.shape, t)
  assert shapes(base) == shapes(other)


# --- Initialisation (a real init at reduced width) ---------------------------


def _real_init(config, image_size=67):
  module = model_lib.from_config(config)
  # The statistics do not depend on the threefry variant; the
  # non-partitionable one compiles several times faster on XLA:CPU.
  with jax.threefry_partitionable(False):
    return jax.device_get(
        model_lib.init(module, jax.random.key(0), image_size)['params']
    )


def _assert_normal(kernel, std, name):
  kernel = np.asarray(kernel, np.float64)
  n = kernel.size
  assert abs(kernel.mean()) < 5 * std / np.sqrt(n), name
  assert abs(kernel.std() / std - 1) < 5 / np.sqrt(2 * n) + 0.01, name


def test_paper_init_statistics():
  # The paper's values: N(0, 0.01) weights, biases of 1 in conv2, conv4,
  # conv5, fc6, fc7 (the default's biases are 0.1: configs/paper.py).
  params = _real_init(_model_config(width_scale=0.25, bias_init=1.0))
  for name, p in params.items():
    _assert_normal(p['kernel'], 0.01, name)
    ones = name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
    np.testing.assert_array_equal(p['bias'], 1.0 if ones else 0.0, err_msg=name)


def test_bias_init_and_weight_std_are_honoured():
  params = _real_init(
      _model_config(
          width_scale=0.25,
          bias_init=0.1,
          weight_init_std=0.02,
          fc_init_std=0.005,
      )
  )
  for name, p in params.items():
    _assert_normal(p['kernel'], 0.005 if name in ('fc6', 'fc7') else 0.02, name)
    ones = name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
    np.testing.assert_array_equal(
        p['bias'], np.float32(0.1 if ones else 0), err_msg=name
    )


def test_torchvision_variant_biases_are_zero():
  params = _real_init(
      _model_config(
          variant='torchvision',
          towers=1,
          conv1_padding='torchvision',
          width_scale=0.25,
      )
  )
  for name, p in params.items():
    np.testing.assert_array_equal(p['bias'], 0.0, err_msg=name)


# --- Against the PyTorch reference, switch by switch -------------------------

# LRN with alpha=1 (instead of 1e-4) so the normalisation changes the
# activations by tens of percent: every LRN switch then shows in the logits.
BASE = {'width_scale': TINY, 'lrn.alpha': 1.0}
SWITCHES = {
    'paper': {},
    'tanh': {'activation': 'tanh'},
    'lrn_off': {'lrn.enabled': False},
    'lrn_alpha_over_n': {'lrn.alpha_over_n': True},
    'lrn_across_towers': {'lrn.across_towers': True},
    'lrn_k_n_beta': {'lrn.k': 1.0, 'lrn.n': 3, 'lrn.beta': 0.5},
    'pool_2_2': {'pool.window': 2, 'pool.stride': 2},
    'conv1_torchvision': {'conv1_padding': 'torchvision'},
    'conv1_caffe': {'conv1_padding': 'caffe'},
    'one_tower': {'towers': 1},
    'num_classes': {'num_classes': 7},
}


@pytest.fixture(scope='module')
def paper_reference():
  """The default tiny model's params, images and logits."""
  config = _model_config(**BASE)
  params = _random_params(model_lib.from_config(config), SMALL)
  images = _images(2, SMALL)
  return params, images, _flax_logits(config, params, images)


@pytest.mark.parametrize('switch', list(SWITCHES))
def test_matches_pytorch_reference(switch, paper_reference):
  """Two towers == nn.Conv2d(groups=2) in conv2/4/5, conv3 and FC reading all.

  And every switch changes the logits (same parameters where the shapes
  allow it), so each one is both effective and the right one.
  """
  config = _model_config(**BASE, **SWITCHES[switch])
  base_params, images, base_logits = paper_reference
  module = model_lib.from_config(config)
  same_shapes = jax.tree_util.tree_map(
      np.shape, base_params
  ) == jax.tree_util.tree_map(np.shape, _shapes(module, SMALL)['params'])
  params = base_params if same_shapes else _random_params(module, SMALL)
  logits = _flax_logits(config, params, images)
  expected = _torch_logits(config, params, images)
  assert logits.shape == expected.shape
  assert _rel_err(logits, expected) < 1e-5
  if switch == 'paper':  # PyTorch's own flatten order, fc6 columns permuted
    chw = _torch_logits(config, params, images, flatten='chw')
    assert _rel_err(logits, chw) < 1e-5
    return
  if same_shapes:
    assert _rel_err(logits, base_logits) > 1e-2, f'{switch} has no effect'
  else:  # the effect is on the shapes (caffe: conv1 22x22 unpadded at 96)
    assert switch in ('one_tower', 'num_classes', 'conv1_caffe')


def test_paper_lrn_constants_match_pytorch():
  """The default alpha=1e-4 too (its effect is small, the check is exact)."""
  config = _model_config(width_scale=TINY)
  params = _random_params(model_lib.from_config(config), SMALL, seed=3)
  images = _images(2, SMALL) * 20  # large activations: LRN does something
  assert (
      _rel_err(
          _flax_logits(config, params, images),
          _torch_logits(config, params, images),
      )
      < 1e-5
  )


def test_reference_catches_a_tower_mixup(paper_reference):
  """The comparison can fail: confined vs cross-tower LRN references differ."""
  params, images, logits = paper_reference
  wrong = _model_config(**BASE, **{'lrn.across_towers': True})
  assert _rel_err(logits, _torch_logits(wrong, params, images)) > 1e-2


@pytest.mark.parametrize('image_size', [SMALL, 260])
def test_torchvision_variant_matches_pytorch(image_size):
  """260 input: pool5 is 7x7, so the adaptive 6x6 average pool overlaps."""
  config = _model_config(
      variant='torchvision',
      towers=1,
      width_scale=TINY,
      conv1_padding='torchvision',
  )
  params = _random_params(model_lib.from_config(config), image_size)
  images = _images(1, image_size)
  assert (
      _rel_err(
          _flax_logits(config, params, images),
          _torch_logits(config, params, images),
      )
      < 1e-5
  )


def test_lrn_across_towers_differs_only_at_the_tower_boundary(paper_reference):
  """Caffe's windows reach n//2 = 2 channels into the other tower: pool1's
  output (conv2's input) differs in those channels and nowhere else."""
  params, images, _ = paper_reference
  inputs = {}
  for across in (False, True):
    module = model_lib.from_config(
        _model_config(**BASE, **{'lrn.across_towers': across})
    )
    seen = jax.jit(
        lambda p, x: _record_inputs(
            module, lambda: module.apply({'params': p}, x), ('conv2',)
        )[1]
    )(params, images)
    inputs[across] = [np.asarray(t) for t in seen['conv2']]
  c = inputs[False][0].shape[-1]
  diff = [
      np.abs(a - b).max(axis=(0, 1, 2))
      for a, b in zip(inputs[False], inputs[True])
  ]
  changed = np.concatenate(diff) > 1e-6
  expected = np.zeros(2 * c, bool)
  expected[c - 2 : c + 2] = True
  np.testing.assert_array_equal(changed, expected)


# --- Dropout and dtype --------------------------------------------------------


@pytest.mark.parametrize(
    'variant,rate', [('paper', 0.5), ('paper', 0.25), ('torchvision', 0.5)]
)
def test_dropout_only_in_training_and_scaled(variant, rate):
  """Paper: dropout on fc6's and fc7's outputs; torchvision: on their inputs.

  In training each dropped input of the next layer is 0 and each kept one is
  the evaluation value / (1 - rate); evaluation is deterministic.
  """
  extra = (
      {'towers': 1, 'conv1_padding': 'torchvision'}
      if variant == 'torchvision'
      else {}
  )
  config = _model_config(
      variant=variant, width_scale=TINY, dropout=rate, **extra
  )
  module = model_lib.from_config(config)
  params = _random_params(module, SMALL)
  images = _images(4, SMALL)
  names = ('fc6', 'fc7', 'fc8')

  @jax.jit
  def run_train(seed):
    return _record_inputs(
        module,
        lambda: module.apply(
            {'params': params},
            images,
            train=True,
            rngs={'dropout': jax.random.key(seed)},
        ),
        names,
    )

  @jax.jit
  def run_eval():
    return _record_inputs(
        module,
        lambda: module.apply({'params': params}, images, train=False),
        names,
    )

  run = lambda train, seed=0: run_train(seed) if train else run_eval()

  eval_out, eval_in = run(False)
  # Mask statistics do not depend on the threefry variant; this one
  # compiles several times faster on XLA:CPU.
  with jax.threefry_partitionable(False):
    train_out, train_in = run(True)
    assert np.abs(train_out - run(True, seed=1)[0]).max() > 1e-4
  # The layer right after each dropout sees the eval value, scaled or zeroed.
  after_dropout = 'fc6' if variant == 'torchvision' else 'fc7'
  x_eval = np.asarray(eval_in[after_dropout])
  x_train = np.asarray(train_in[after_dropout])
  live = np.abs(x_eval) > 1e-6
  kept = np.isclose(x_train, x_eval / (1 - rate), rtol=1e-5, atol=1e-7)
  dropped = x_train == 0
  assert np.all((kept | dropped)[live])
  assert abs(dropped[live].mean() - rate) < 0.06
  if variant == 'paper':  # nothing dropped before fc6
    np.testing.assert_allclose(train_in['fc6'], eval_in['fc6'], rtol=1e-6)


def test_bfloat16_computes_in_bf16_and_returns_f32(paper_reference):
  params, images, logits = paper_reference
  config = _model_config(**BASE, dtype='bfloat16')
  module = model_lib.from_config(config)
  out, state = jax.jit(
      lambda p, x: module.apply(
          {'params': p},
          x,
          capture_intermediates=True,
          mutable=['intermediates'],
      )
  )(params, images)
  assert out.dtype == jnp.float32
  for name in ('conv1', 'conv3', 'conv5', 'fc6'):
    assert state['intermediates'][name]['__call__'][0][0].dtype == (
        jnp.bfloat16
    ), name
  # Close to the float32 model, but not bit-identical (it did use bf16).
  err = _rel_err(np.asarray(out), logits)
  assert 0 < err < 0.1
