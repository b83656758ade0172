"""ops.conv2d / ops.max_pool gradients against XLA's autodiff and NumPy loops."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alexnet_jax.core import onednn
from alexnet_jax.core import ops

# Where the cpu extra installs oneDNN it must build: a skip there would
# hide a broken build behind a slower, still-passing suite.
ONEDNN_EXPECTED = onednn.PLATFORM_SUPPORTED


@pytest.fixture(params=['xla', 'onednn'])
def conv_backend(request, monkeypatch):
  """Runs a test once with each convolution backend."""
  if request.param == 'onednn' and not ONEDNN_EXPECTED:
    pytest.skip('oneDNN convolutions are built on x86-64 Linux only')
  monkeypatch.setenv('ALEXNET_JAX_CONV', request.param)
  assert ops.conv_backend() == request.param
  return request.param


def _xla_conv(x, k, stride, padding):
  return lax.conv_general_dilated(
      x,
      k,
      (stride, stride),
      padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


def _numpy_kernel_grad(x, dy, k, padding):
  """dL/dk[i, j, c, o] = sum_{b,h,w} xpad[b, h+i, w+j, c] dy[b, h, w, o]."""
  (t, b), (l, r) = padding
  xp = np.pad(x.astype(np.float64), ((0, 0), (t, b), (l, r), (0, 0)))
  ho, wo = dy.shape[1:3]
  return np.stack(
      [
          np.stack(
              [
                  np.einsum('bhwc,bhwo->co', xp[:, i : i + ho, j : j + wo], dy)
                  for j in range(k)
              ]
          )
          for i in range(k)
      ]
  )


@pytest.mark.parametrize(
    'shape,kernel,stride,padding',
    [
        ((2, 8, 7, 4), 3, 1, ((1, 1), (1, 1))),  # conv3-5
        ((1, 6, 5, 3), 3, 1, ((0, 2), (2, 0))),  # uneven padding
        ((2, 9, 9, 3), 5, 1, ((2, 2), (2, 2))),  # conv2
        ((1, 23, 23, 3), 11, 4, ((0, 3), (0, 3))),  # conv1: space-to-depth
        ((1, 27, 26, 3), 11, 4, 'VALID'),  # conv1, Caffe (unused rows)
        ((1, 12, 12, 2), 4, 3, ((1, 2), (0, 1))),  # kernel a multiple of stride
    ],
)
def test_conv2d_value_and_gradients_match_xla(
    shape, kernel, stride, padding, conv_backend
):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  k = rng.normal(size=(kernel, kernel, shape[-1], 6)).astype(np.float32)
  pads = padding if padding != 'VALID' else ((0, 0), (0, 0))
  out = [(n + sum(p) - kernel) // stride + 1 for n, p in zip(shape[1:3], pads)]
  g = rng.normal(size=(shape[0], *out, 6)).astype(np.float32)

  @jax.jit
  def value_and_grads(x, k, g):  # one compilation instead of op by op
    y, vjp = jax.vjp(lambda x, k: ops.conv2d(x, k, stride, padding), x, k)
    want_y, want_vjp = jax.vjp(lambda x, k: _xla_conv(x, k, stride, pads), x, k)
    return y, want_y, vjp(g), want_vjp(g)

  y, want_y, (dx, dk), (want_dx, want_dk) = value_and_grads(x, k, g)
  np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-4)
  if stride == 1:
    np.testing.assert_allclose(
        dk,
        _numpy_kernel_grad(x, g.astype(np.float64), kernel, pads),
        rtol=1e-4,
        atol=1e-4,
    )


def _numpy_conv(x, k, padding):
  """Stride-1 conv2d in float64 loops; negative padding crops."""
  (t, b), (l, r) = padding
  x = np.asarray(x, np.float64)
  x = np.pad(
      x, ((0, 0), (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0)), (0, 0))
  )
  h, w = x.shape[1:3]
  x = x[:, max(-t, 0) : h - max(-b, 0), max(-l, 0) : w - max(-r, 0)]
  kh, kw = k.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return sum(
      np.einsum('bhwc,co->bhwo', x[:, i : i + ho, j : j + wo], k[i, j])
      for i in range(kh)
      for j in range(kw)
  )


# Negative at one end of an axis and positive at the other: what XLA:CPU
# miscomputes (below), along H, along W and mixed.
CROPPING = [
    ((-1, 1), (0, 0)),
    ((0, 0), (-1, 1)),
    ((-2, 1), (1, -1)),
    ((1, -2), (-1, 2)),
    ((-1, -1), (-1, -1)),
]


@pytest.mark.parametrize('padding', CROPPING)
def test_conv2d_negative_padding_against_numpy(padding, conv_backend):
  """Values against NumPy, gradients against an explicit crop + VALID conv:
  never against XLA's own negative padding, which is wrong (below)."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  k = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  want = _numpy_conv(x, k, padding)
  g = rng.normal(size=want.shape).astype(np.float32)
  (t, b), (l, r) = padding

  def explicit(x, k):
    x = jnp.pad(
        x, ((0, 0), (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0)), (0, 0))
    )
    h, w = x.shape[1:3]
    x = x[:, max(-t, 0) : h - max(-b, 0), max(-l, 0) : w - max(-r, 0)]
    return _xla_conv(x, k, 1, 'VALID')

  @jax.jit
  def value_and_grads(x, k, g):
    y, vjp = jax.vjp(lambda x, k: ops.conv2d(x, k, 1, padding), x, k)
    return y, vjp(g), jax.vjp(explicit, x, k)[1](g)

  y, (dx, dk), (want_dx, want_dk) = value_and_grads(x, k, g)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-4)


def test_xla_cpu_negative_then_positive_padding_reproducer():
  """Why ops.conv2d crops negative padding itself (ops._crop).

  XLA:CPU (jaxlib 0.10.2) runs a convolution padded (-1, 1) along W as if
  the input started one column later and reads the "padding" column from
  memory: the next row's first column (here), or past the end of the
  input buffer on the last row and along H (heap garbage: this is what
  made test_onednn's old XLA-against-XLA test see 2.1e10 in one full-suite
  run). If this test fails, a jaxlib upgrade fixed it and _crop could go.
  """
  x = jnp.arange(1.0, 37.0).reshape(1, 6, 6, 1)
  k = jnp.ones((3, 3, 1, 1))
  padding = ((0, 0), (-1, 1))
  y = np.asarray(_xla_conv(x, k, 1, padding))
  want = _numpy_conv(x, k, padding)
  # Rows 0-2 of the last column read in-bounds neighbours: wrong, and
  # deterministically so; the first three columns are right.
  np.testing.assert_array_equal(y[0, :3, :3], want[0, :3, :3])
  assert (y[0, :3, 3] != want[0, :3, 3]).all(), (
      y[0, :, :, 0],
      want[0, :, :, 0],
  )
  np.testing.assert_array_equal(ops.conv2d(x, k, 1, padding), want)


def test_kernel_grad_against_numpy_loop():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
  dy = rng.normal(size=(3, 5, 6, 7)).astype(np.float32)
  pads = ((1, 1), (1, 1))
  np.testing.assert_allclose(
      jax.jit(ops.kernel_grad, static_argnums=(2, 3, 4))(
          jnp.asarray(x), jnp.asarray(dy), (3, 3), 1, pads
      ),
      _numpy_kernel_grad(x, dy.astype(np.float64), 3, pads),
      rtol=1e-4,
      atol=1e-4,
  )


@pytest.mark.parametrize(
    'image,dy_image,hw,stride,pad',
    [
        ((224, 224, 3), (55, 55, 64), (11, 11), 4, ((2, 2), (2, 2))),  # conv1
        ((27, 27, 64), (27, 27, 192), (5, 5), 1, ((2, 2), (2, 2))),
    ],
)  # conv2
def test_kernel_grad_scratch_memory_does_not_grow_with_the_batch(
    image, dy_image, hw, stride, pad
):
  """The padded (and space-to-depth) input is made per image inside the
  scan, so the compiled kernel gradient's scratch memory is one image's
  worth at any batch size. Padding the whole batch first grew it by 28 MB
  (conv1) and 11 MB (conv2) from batch 16 to 64, and cost 145 MB of the
  torchvision train step's temporaries at batch 128."""

  def scratch(batch):
    x = jax.ShapeDtypeStruct((batch,) + image, jnp.float32)
    dy = jax.ShapeDtypeStruct((batch,) + dy_image, jnp.float32)
    compiled = (
        jax.jit(lambda x, dy: ops.kernel_grad(x, dy, hw, stride, pad))
        .lower(x, dy)
        .compile()
    )
    return compiled.memory_analysis().temp_size_in_bytes

  assert scratch(64) - scratch(16) < 2**20, (scratch(16), scratch(64))


def test_conv2d_bfloat16_gradient_dtype(conv_backend):
  if conv_backend == 'onednn' and onednn.bfloat16_unavailable():
    pytest.skip(f'oneDNN bfloat16: {onednn.bfloat16_unavailable()}')
  x = jnp.ones((1, 5, 5, 2), jnp.bfloat16)
  k = jnp.ones((3, 3, 2, 3), jnp.bfloat16)
  dk = jax.jit(
      jax.grad(lambda k: ops.conv2d(x, k, 1, 'SAME').astype(jnp.float32).sum())
  )(k)
  assert dk.dtype == jnp.bfloat16
  # Centre tap sees all 25 pixels, corner taps 16.
  np.testing.assert_array_equal(np.asarray(dk[1, 1, 0], np.float32), 25.0)
  np.testing.assert_array_equal(np.asarray(dk[0, 0, 0], np.float32), 16.0)


@pytest.mark.parametrize(
    'shape,window,stride',
    [
        ((2, 13, 13, 3), 3, 2),
        ((1, 8, 9, 2), 2, 2),
        ((1, 10, 9, 1), 3, 2),
        ((1, 9, 9, 1), 2, 3),
        ((1, 7, 7, 1), 3, 1),
    ],
)
def test_max_pool_matches_reduce_window_and_its_gradient(shape, window, stride):
  rng = np.random.default_rng(2)
  x = rng.normal(size=shape).astype(np.float32)
  out = [(n - window) // stride + 1 for n in shape[1:3]]
  g = rng.normal(size=(shape[0], *out, shape[3])).astype(np.float32)

  @jax.jit
  def value_and_grads(x, g):
    y, vjp = jax.vjp(lambda x: ops.max_pool(x, window, stride), x)
    # The reference: flax's max pool (XLA's reduce_window and its
    # select_and_scatter gradient).
    want_y, want_vjp = jax.vjp(
        lambda x: nn.max_pool(x, (window, window), (stride, stride)), x
    )
    return y, want_y, vjp(g)[0], want_vjp(g)[0]

  y, want_y, dx, want_dx = value_and_grads(x, g)
  np.testing.assert_array_equal(y, want_y)
  # Windows overlap: sums of two gradients may round in another order.
  np.testing.assert_allclose(dx, want_dx, rtol=1e-6)


def test_max_pool_ties_give_the_gradient_to_the_first_maximum():
  # After ReLU whole windows are 0: PyTorch and select_and_scatter send each
  # window's gradient to its first (row-major) element only.
  x = jnp.zeros((1, 5, 5, 1))
  g = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
  dx = jax.jit(
      lambda x, g: jax.vjp(lambda x: ops.max_pool(x, 3, 2), x)[1](g)[0]
  )(x, g)
  want = np.zeros((5, 5))
  for a in range(2):
    for b in range(2):
      want[2 * a, 2 * b] += g[0, a, b, 0]
  np.testing.assert_array_equal(dx[0, :, :, 0], want)
  xt = torch.zeros(1, 1, 5, 5, requires_grad=True)
  torch.nn.functional.max_pool2d(xt, 3, 2).backward(
      torch.from_numpy(np.array(g).transpose(0, 3, 1, 2))
  )
  np.testing.assert_array_equal(xt.grad[0, 0].numpy(), want)
