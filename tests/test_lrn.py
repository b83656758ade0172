"""lrn.lrn against the paper's formula (a NumPy loop), PyTorch, TensorFlow.

Every formulation (lrn.IMPLS: CPU's slices, TPU's banded matmul, CUDA's
reduce_window, each forced here on CPU) and the per-platform default
(None) must give the same values and gradients.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import torch

from alexnet_jax.core import lrn as lrn_lib

IMPLS = (None,) + lrn_lib.IMPLS


def lrn_loop(x, *, k, n, alpha, beta, alpha_over_n):
  """Section 3.3, channel by channel; channels past the edges do not exist."""
  x = np.asarray(x, np.float64)
  channels = x.shape[-1]
  a = alpha / n if alpha_over_n else alpha
  out = np.empty_like(x)
  for c in range(channels):
    lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
    total = sum(x[..., j] ** 2 for j in range(lo, hi + 1))
    out[..., c] = x[..., c] / (k + a * total) ** beta
  return out


def _activations(shape, seed=0, scale=30.0):
  # Post-ReLU-like, large enough that alpha * sum is comparable to k: the
  # normalisation then changes values by tens of percent.
  return (
      np.abs(np.random.RandomState(seed).randn(*shape)).astype(np.float32)
      * scale
  )


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('alpha_over_n', [False, True])
@pytest.mark.parametrize('n', [1, 3, 5, 7])
def test_matches_formula(n, alpha_over_n, impl):
  x = _activations((2, 3, 4, 16))
  kw = dict(k=2.0, n=n, alpha=1e-3, beta=0.75, alpha_over_n=alpha_over_n)
  got = np.asarray(lrn_lib.lrn(jnp.asarray(x), impl=impl, **kw))
  want = lrn_loop(x, **kw)
  np.testing.assert_allclose(got, want, rtol=2e-6)
  # The normalisation is not a no-op at these values.
  assert np.max(np.abs(want / x - 2.0**-0.75)) > 0.05


def test_alpha_conventions_differ_by_n():
  x = _activations((5, 12), seed=1)
  paper = lrn_lib.lrn(x, k=2.0, n=5, alpha=1e-3, beta=0.75, alpha_over_n=False)
  caffe = lrn_lib.lrn(x, k=2.0, n=5, alpha=5e-3, beta=0.75, alpha_over_n=True)
  np.testing.assert_allclose(paper, caffe, rtol=1e-6)
  caffe_same_alpha = lrn_lib.lrn(
      x, k=2.0, n=5, alpha=1e-3, beta=0.75, alpha_over_n=True
  )
  assert np.max(np.abs(np.asarray(paper) - np.asarray(caffe_same_alpha))) > 0.1


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('channels', [1, 2, 3, 6])
def test_edge_channels_and_windows_wider_than_the_channels(channels, impl):
  """Windows at the edges sum only the channels that exist (zero padding)."""
  x = _activations((3, channels), seed=2)
  kw = dict(k=1.0, n=5, alpha=1e-2, beta=0.75, alpha_over_n=False)
  got = np.asarray(lrn_lib.lrn(jnp.asarray(x), impl=impl, **kw))
  np.testing.assert_allclose(got, lrn_loop(x, **kw), rtol=2e-6)
  # Channel 0 by hand: its window is channels 0..2 (those that exist).
  s = (x[:, :3].astype(np.float64) ** 2).sum(-1)
  np.testing.assert_allclose(
      got[:, 0], x[:, 0] / (1 + 1e-2 * s) ** 0.75, rtol=2e-6
  )


@pytest.mark.parametrize('impl', IMPLS)
def test_paper_constants_and_bfloat16(impl):
  x = _activations((2, 5, 5, 48), seed=3)
  kw = dict(k=2.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=False)
  np.testing.assert_allclose(
      np.asarray(lrn_lib.lrn(jnp.asarray(x), impl=impl, **kw)),
      lrn_loop(x, **kw),
      rtol=2e-6,
  )
  y = lrn_lib.lrn(jnp.asarray(x, jnp.bfloat16), impl=impl, **kw)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(y, np.float32), lrn_loop(x, **kw), rtol=2e-2
  )


def test_matches_torch_local_response_norm():
  x = _activations((2, 4, 4, 24), seed=4)  # NHWC
  for size, k in ((5, 1.0), (3, 2.0)):
    norm = torch.nn.LocalResponseNorm(size, alpha=1e-2, beta=0.75, k=k)
    want = (
        norm(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        .numpy()
        .transpose(0, 2, 3, 1)
    )
    got = lrn_lib.lrn(
        jnp.asarray(x), k=k, n=size, alpha=1e-2, beta=0.75, alpha_over_n=True
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_matches_tf_local_response_normalization_with_paper_constants():
  """tf's LRN is the paper's formula literally: alpha on the sum."""
  x = _activations((2, 4, 4, 24), seed=5, scale=60.0)
  want = tf.nn.local_response_normalization(
      x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
  ).numpy()
  got = lrn_lib.lrn(
      jnp.asarray(x), k=2.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=False
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  assert np.max(np.abs(want / x - 2.0**-0.75)) > 0.05


@pytest.mark.parametrize('impl', IMPLS)
def test_gradient_matches_torch_autograd(impl):
  # lrn.lrn has a hand-written backward pass (custom_vjp): check it against
  # autograd through nn.LocalResponseNorm.
  import jax

  x = _activations((2, 3, 3, 12), seed=5)
  g = np.random.RandomState(6).randn(*x.shape).astype(np.float32)
  for size, alpha_over_n in ((5, False), (3, True)):
    alpha = 1e-2
    norm = torch.nn.LocalResponseNorm(
        size, alpha=alpha if alpha_over_n else alpha * size, beta=0.75, k=2.0
    )
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    norm(xt).backward(torch.from_numpy(g.transpose(0, 3, 1, 2).copy()))
    want = xt.grad.numpy().transpose(0, 2, 3, 1)
    grad = jax.jit(
        lambda v, g: jax.vjp(
            lambda v: lrn_lib.lrn(
                v,
                impl=impl,
                k=2.0,
                n=size,
                alpha=alpha,
                beta=0.75,
                alpha_over_n=alpha_over_n,
            ),
            v,
        )[1](g)[0]
    )
    np.testing.assert_allclose(
        np.asarray(grad(x, g)), want, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize('impl', lrn_lib.IMPLS)
def test_bfloat16_gradients_agree_with_float32(impl):
  """The TPU's matmul rounds its operands (x^2, and the backward pass's
  g x s^(-beta-1)) to bfloat16 in bfloat16 models: its gradient stays within
  bfloat16's own rounding of the float32 one, as the others do."""
  import jax

  x = _activations((2, 5, 5, 48), seed=7)
  g = np.random.RandomState(8).randn(*x.shape).astype(np.float32)
  kw = dict(k=2.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=False)

  def grad(dtype, impl):
    f = lambda v: lrn_lib.lrn(v, impl=impl, **kw)
    _, vjp = jax.vjp(f, jnp.asarray(x, dtype))
    return np.asarray(vjp(jnp.asarray(g, dtype))[0], np.float32)

  want = grad(jnp.float32, 'slices')
  got = grad(jnp.bfloat16, impl)
  scale = np.abs(want).max()
  assert np.abs(got - want).max() < 1e-2 * scale


def test_unknown_impl_is_refused():
  with pytest.raises(ValueError, match='slices, matmul, reduce_window'):
    lrn_lib.lrn(
        jnp.ones((2, 4)),
        k=2.0,
        n=5,
        alpha=1e-4,
        beta=0.75,
        alpha_over_n=False,
        impl='cumsum',
    )


@pytest.mark.parametrize(
    'platform, op',
    [
        ('cpu', None),
        ('tpu', 'stablehlo.dot_general'),
        ('cuda', 'reduce_window'),
    ],
)
def test_each_platform_lowers_its_formulation(platform, op):
  """The per-platform choice happens when lowering: the TPU program holds
  the banded matmul, CUDA's the reduce_window, CPU's neither."""
  import jax

  f = jax.jit(
      lambda v: lrn_lib.lrn(
          v, k=2.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=False
      )
  )
  x = jax.ShapeDtypeStruct((2, 5, 5, 48), jnp.bfloat16)
  text = jax.export.export(f, platforms=[platform])(x).mlir_module()
  ops = ('stablehlo.dot_general', 'reduce_window')
  for other in ops:
    assert (other in text) == (other == op), (platform, other)
