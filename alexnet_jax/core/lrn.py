"""Local response normalisation across channels (paper section 3.3).

    b[c] = a[c] / (k + alpha' * sum_{|c'-c| <= n//2} a[c']^2) ** beta

with alpha' = alpha (the paper: alpha multiplies the sum) or alpha / n
(Caffe, PyTorch's nn.LocalResponseNorm, cuda-convnet2). Channels beyond the
edges count as zero, as in every implementation. Flax has no LRN layer.
"""

import functools

import jax
import jax.numpy as jnp


def _window_sum(v, n):
  """sum_{|c'-c| <= n//2} v[..., c'] as n//2*2+1 shifted slices of v.

  Written as pad + slices + adds, XLA fuses it with the elementwise maths
  around it into one pass over the array (a banded [C, C] matmul, the
  previous formulation, did 48 multiply-adds per element for conv1's 48
  channels where 5 adds suffice).
  """
  half = n // 2
  channels = v.shape[-1]
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(half, half)])
  total = padded[..., :channels]
  for d in range(1, 2 * half + 1):
    total = total + padded[..., d : d + channels]
  return total


def lrn(
    x: jnp.ndarray,
    *,
    k: float,
    n: int,
    alpha: float,
    beta: float,
    alpha_over_n: bool,
) -> jnp.ndarray:
  """LRN over the last (channel) axis of x: [..., C]."""
  if alpha_over_n:
    alpha = alpha / n
  return _lrn(x, float(k), int(n), float(alpha), float(beta))


def _scale(x, k, n, alpha):
  return k + alpha * _window_sum(jnp.square(x), n)


# A custom gradient: only x is kept for the backward pass (the scale is
# recomputed there, one fused pass), and the gradient is written out
# analytically instead of differentiating through exp/log:
#   dx[c] = g[c] s[c]^-beta
#           - 2 alpha beta x[c] sum_{|c'-c| <= n//2} g[c'] x[c'] s[c']^(-beta-1)
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, k, n, alpha, beta):
  xf = x.astype(jnp.float32)
  # x * s**-beta, written with exp/log so beta=0.75 needs no pow special
  # case and the division happens as one multiply.
  return (xf * jnp.exp(-beta * jnp.log(_scale(xf, k, n, alpha)))).astype(
      x.dtype
  )


def _lrn_fwd(x, k, n, alpha, beta):
  return _lrn(x, k, n, alpha, beta), x


def _lrn_bwd(k, n, alpha, beta, x, g):
  xf, gf = x.astype(jnp.float32), g.astype(jnp.float32)
  s = _scale(xf, k, n, alpha)
  s_pow = jnp.exp(-beta * jnp.log(s))  # s**-beta
  t = gf * xf * s_pow / s
  dx = gf * s_pow - (2 * alpha * beta) * xf * _window_sum(t, n)
  return (dx.astype(x.dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)
