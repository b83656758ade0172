"""ops.max_pool and its gradient against XLA's autodiff and PyTorch."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import ops


def _reduce_window_pool(x, window, stride):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), 'VALID')


@pytest.mark.parametrize('shape,window,stride', [
    ((2, 13, 13, 3), 3, 2), ((1, 8, 9, 2), 2, 2)])
def test_max_pool_matches_reduce_window_and_its_gradient(shape, window,
                                                         stride):
  rng = np.random.default_rng(2)
  x = rng.normal(size=shape).astype(np.float32)
  out = [(n - window) // stride + 1 for n in shape[1:3]]
  g = rng.normal(size=(shape[0], *out, shape[3])).astype(np.float32)

  @jax.jit
  def value_and_grads(x, g):
    y, vjp = jax.vjp(lambda x: ops.max_pool(x, window, stride), x)
    want_y, want_vjp = jax.vjp(
        lambda x: _reduce_window_pool(x, window, stride), x)
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
  dx = jax.jit(lambda x, g: jax.vjp(lambda x: ops.max_pool(x, 3, 2), x)[1](
      g)[0])(x, g)
  want = np.zeros((5, 5))
  for a in range(2):
    for b in range(2):
      want[2 * a, 2 * b] += g[0, a, b, 0]
  np.testing.assert_array_equal(dx[0, :, :, 0], want)
  torch = pytest.importorskip('torch')
  xt = torch.zeros(1, 1, 5, 5, requires_grad=True)
  torch.nn.functional.max_pool2d(xt, 3, 2).backward(
      torch.from_numpy(np.array(g).transpose(0, 3, 1, 2)))
  np.testing.assert_array_equal(xt.grad[0, 0].numpy(), want)
