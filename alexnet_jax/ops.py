"""Max-pooling with a backward pass XLA:CPU runs faster.

Same maths as `lax.reduce_window(max)` and its autodiff gradient; only how
the gradient is computed differs. XLA's gradient of a max-pool
(`select_and_scatter`) runs on XLA:CPU as an argmax loop over index arrays.
Measured effects are in README "Speed".

* `max_pool`: the gradient goes to the first maximum of each window (what
  select_and_scatter and PyTorch do), found with strided slices, compares
  and interior padding that XLA fuses into one loop.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

Array = jnp.ndarray


def _strided_taps(x, window, stride):
  """The window x window strided views of x: [B, H, W, C] -> [B, Ho, Wo, C]."""
  _, h, w, _ = x.shape
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  return [(i, j, x[:, i:i + stride * (ho - 1) + 1:stride,
                   j:j + stride * (wo - 1) + 1:stride, :])
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: Array, window: int, stride: int) -> Array:
  """Max-pool over H, W of x: [B, H, W, C], no padding (VALID)."""
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max,
                           (1, window, window, 1), (1, stride, stride, 1),
                           'VALID')


def _max_pool_fwd(x, window, stride):
  y = max_pool(x, window, stride)
  return y, (x, y)


def _max_pool_bwd(window, stride, residuals, g):
  x, y = residuals
  _, h, w, _ = x.shape
  ho, wo = y.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  claimed = jnp.zeros(y.shape, bool)   # windows whose max got its gradient
  dx = jnp.zeros_like(x)
  for i, j, tap in _strided_taps(x, window, stride):
    # Row-major window order, first maximum wins (select_and_scatter, torch).
    hit = (tap == y) & ~claimed
    claimed = claimed | hit
    # Back to input positions: interior padding puts output (a, b) at
    # input (i + stride*a, j + stride*b).
    dx = dx + lax.pad(jnp.where(hit, g, zero), zero, (
        (0, 0, 0),
        (i, h - i - stride * (ho - 1) - 1, stride - 1),
        (j, w - j - stride * (wo - 1) - 1, stride - 1),
        (0, 0, 0)))
  return (dx,)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
