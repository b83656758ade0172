"""Convolution and max-pooling with backward passes XLA:CPU runs faster.

Same maths as `lax.conv_general_dilated` and `lax.reduce_window(max)` and
their autodiff gradients; only how the gradients are computed differs. On
XLA:CPU (jaxlib 0.10, convolutions run by YNNPACK) the forward convolution
and its input gradient run near the machine's matmul speed, but the kernel
gradient of a 3x3 convolution runs at about a third of it, and a max-pool's
gradient (`select_and_scatter`) is a slow argmax loop. Measured effects are
in README "Speed".

* `conv2d`: forward and input gradient are XLA's convolutions; the kernel
  gradient of 3x3 stride-1 convolutions (conv3-conv5) is computed in the
  Winograd F(2x2, 3x3) domain (Lavin & Gray 2016): 16 matmuls over the
  batch instead of a 3x3 correlation, 2.25x fewer multiplications.
* `max_pool`: the gradient goes to the first maximum of each window (what
  select_and_scatter and PyTorch do), found with strided slices, compares
  and interior padding that XLA fuses into one loop.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

# Winograd F(2x2, 3x3): Y = AT [(G g G^T) * (BT d BT^T)] AT^T per 4x4 tile.
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
                     [0, 1, 0, -1]], np.float32)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
                   np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def _xla_conv(x, kernel, stride, padding):
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _combine(matrix, xs):
  """[sum_i matrix[a, i] * xs[i] for a]; zero terms skipped so XLA fuses."""
  out = []
  for row in matrix:
    acc = None
    for c, x in zip(row, xs):
      if c == 0:
        continue
      term = x if c == 1 else -x if c == -1 else x * c.astype(x.dtype)
      acc = term if acc is None else acc + term
    out.append(acc)
  return out


def _transform_2d(matrix, planes):
  """out[a][b] = sum_ij matrix[a, i] matrix[b, j] planes[i][j], flattened."""
  n = len(planes)
  cols = [_combine(matrix, [planes[i][j] for i in range(n)])
          for j in range(n)]                          # cols[j][a]
  return [v for a in range(matrix.shape[0])
          for v in _combine(matrix, [cols[j][a] for j in range(n)])]


def winograd_kernel_grad(x: Array, dy: Array, padding) -> Array:
  """d(loss)/d(kernel) of a 3x3 stride-1 convolution, f32[3, 3, Cin, Cout].

  Args:
    x: the convolution's input [B, H, W, Cin].
    dy: the gradient of its output [B, Ho, Wo, Cout].
    padding: ((top, bottom), (left, right)).
  """
  x, dy = x.astype(jnp.float32), dy.astype(jnp.float32)
  _, h, w, cin = x.shape
  ho, wo, cout = dy.shape[1:]
  nh, nw = -(-ho // 2), -(-wo // 2)                   # 2x2 output tiles
  (top, _), (left, _) = padding
  # Pad to whole tiles; rows/columns beyond the real padding meet zeros in
  # the padded dy, so they add nothing.
  x = jnp.pad(x, ((0, 0), (top, 2 * nh + 2 - h - top),
                  (left, 2 * nw + 2 - w - left), (0, 0)))
  dy = jnp.pad(dy, ((0, 0), (0, 2 * nh - ho), (0, 2 * nw - wo), (0, 0)))
  # Input tiles d[i][j] = x[2a + i, 2b + j] -> V = BT d BT^T: 16 planes.
  tiles = [[x[:, i:i + 2 * nh - 1:2, j:j + 2 * nw - 1:2, :] for j in range(4)]
           for i in range(4)]
  v = jnp.stack(_transform_2d(_WINO_BT, tiles)).reshape(16, -1, cin)
  # Output-gradient tiles -> AT^T dy AT: 16 planes.
  dy_tiles = [[dy[:, i::2, j::2, :] for j in range(2)] for i in range(2)]
  m = jnp.stack(_transform_2d(_WINO_AT.T, dy_tiles)).reshape(16, -1, cout)
  u = jnp.einsum('tnc,tno->tco', v, m).reshape(4, 4, cin, cout)
  return jnp.einsum('ai,abco,bj->ijco', _WINO_G, u, _WINO_G)


def conv2d(x: Array, kernel: Array, stride: int, padding) -> Array:
  """conv_general_dilated(x, kernel) in NHWC / HWIO, as XLA computes it.

  Args:
    x: [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout].
    stride: both spatial strides.
    padding: ((top, bottom), (left, right)), 'SAME' or 'VALID'.
  """
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2],
                                  (stride, stride), padding)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  x, kernel = _same_varying_axes(x, kernel)
  return _conv2d(x, kernel, stride, padding)


def _varying(x) -> frozenset:
  """The shard_map axes x varies over (empty outside shard_map)."""
  mat = getattr(jax.typeof(x), 'mat', None)
  return frozenset(getattr(mat, 'varying', ()))


def _same_varying_axes(*xs):
  """Marks every operand as varying over the union of their shard_map axes.

  A custom VJP's backward pass must return each cotangent with its input's
  type. Under parallel.py's shard_map a tower's kernel varies over 'model'
  only while the activations also vary over 'data', so the kernel gradient
  (computed from them) varies over both: casting the kernel up front makes
  the types agree, and the cast's own transpose sums the kernel gradient
  over 'data', as the gradient of a parameter replicated there must be.
  """
  union = frozenset().union(*map(_varying, xs))
  return tuple(
      lax.pcast(x, tuple(sorted(union - _varying(x))), to='varying')
      if union - _varying(x) else x for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, kernel, stride, padding):
  return _xla_conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
  return _conv2d(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  # Input gradient: XLA's transposed convolution (fast). When x needs no
  # gradient (conv1 reads the images) XLA drops it.
  (dx,) = jax.vjp(lambda x: _xla_conv(x, kernel, stride, padding), x)[1](dy)
  if kernel.shape[:2] == (3, 3) and stride == 1:
    dkernel = winograd_kernel_grad(x, dy, padding).astype(kernel.dtype)
  else:
    (dkernel,) = jax.vjp(
        lambda k: _xla_conv(x, k, stride, padding), kernel)[1](dy)
  return dx, dkernel


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


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
