"""Local response normalisation across channels (paper section 3.3).

    b[c] = a[c] / (k + alpha' * sum_{|c'-c| <= n//2} a[c']^2) ** beta

with alpha' = alpha (the paper: alpha multiplies the sum) or alpha / n
(Caffe, PyTorch's nn.LocalResponseNorm, cuda-convnet2). Channels beyond the
edges count as zero, as in every implementation. Flax has no LRN layer.

The maths is the same everywhere; how the windowed sum over channels is
written differs per platform, picked when the step is lowered
(`lax.platform_dependent`, as ops.conv2d and max_pool do), because each
compiler turns a different formulation into the least memory traffic
(`python -m alexnet_jax.benchmark compile`; docs/performance.md
"Compiled for TPUs and GPUs"):

* 'slices' (CPU, and any platform not named below): pad + n shifted
  slices + adds, which XLA:CPU fuses with the elementwise maths around it
  (a banded matmul did 48 multiply-adds per element for conv1's 48 channels
  where 5 adds suffice). CPU speed is measured in README "Speed".
* 'matmul' (TPU): one [..., C] x [C, C] banded matrix product on the MXU.
  XLA:TPU keeps the channel axis on its 128-wide lanes, where each shifted
  slice is a lane shift that stops fusion: the slices made XLA write x^2
  and two float32 intermediates to HBM. The conv1 block (conv, ReLU, LRN,
  pool, forward and backward, one tower, batch 128, bf16) accesses 0.97 GB
  with slices and 0.71 GB with the matmul; without LRN 0.45 GB.
* 'reduce_window' (CUDA): `lax.reduce_window(add)` over the channel axis,
  which XLA:GPU fuses into one kernel per direction: the same block
  accesses 1.19 GB against 1.42 GB with slices (0.78 GB without LRN) on
  H100. The matmul (1.79 GB) is worse there.

Every formulation keeps only x for the backward pass (custom VJP; the scale
is recomputed) and computes in float32 inside, but the TPU's matmul, whose
operands are in x's dtype (bfloat16 models: squares rounded to bfloat16,
summed in float32; float32 models: Precision.HIGHEST).
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

# Formulations of the windowed sum (module doc); `lrn(..., impl=)` forces
# one on any platform (tests compare them on CPU).
IMPLS = ('slices', 'matmul', 'reduce_window')


def _slices_sum(v, n):
  """sum_{|c'-c| <= n//2} v[..., c'] as n//2*2+1 shifted slices of v."""
  half = n // 2
  channels = v.shape[-1]
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(half, half)])
  total = padded[..., :channels]
  for d in range(1, 2 * half + 1):
    total = total + padded[..., d : d + channels]
  return total


def _reduce_window_sum(v, n):
  """The same sum as one reduce_window over the channel axis."""
  half = n // 2
  return lax.reduce_window(
      v,
      jnp.zeros((), v.dtype),
      lax.add,
      (1,) * (v.ndim - 1) + (2 * half + 1,),
      (1,) * v.ndim,
      [(0, 0)] * (v.ndim - 1) + [(half, half)],
  )


def _matmul_sum(v, n, dtype):
  """The same sum as v @ band, band[c', c] = 1 where |c'-c| <= n//2, with
  the operands in `dtype` (the model's) and float32 accumulation."""
  channels = v.shape[-1]
  i = jnp.arange(channels)
  band = (jnp.abs(i[:, None] - i[None, :]) <= n // 2).astype(dtype)
  return jnp.einsum(
      '...c,cd->...d',
      v.astype(dtype),
      band,
      precision=lax.Precision.HIGHEST if dtype == jnp.float32 else None,
      preferred_element_type=jnp.float32,
  )


def _window_sum(v, n, impl, dtype):
  if impl == 'matmul':
    return _matmul_sum(v, n, dtype)
  if impl == 'reduce_window':
    return _reduce_window_sum(v, n)
  return _slices_sum(v, n)


def lrn(
    x: jnp.ndarray,
    *,
    k: float,
    n: int,
    alpha: float,
    beta: float,
    alpha_over_n: bool,
    impl: str | None = None,
) -> jnp.ndarray:
  """LRN over the last (channel) axis of x: [..., C].

  impl: one of IMPLS on every platform; None (default) picks per platform
  when the program is lowered (module doc).
  """
  if alpha_over_n:
    alpha = alpha / n
  args = (float(k), int(n), float(alpha), float(beta))
  if impl is not None:
    if impl not in IMPLS:
      raise ValueError(f'LRN impl {impl!r} is not one of {", ".join(IMPLS)}')
    return _lrn(x, *args, impl)
  return lax.platform_dependent(
      x,
      tpu=lambda x: _lrn(x, *args, 'matmul'),
      cuda=lambda x: _lrn(x, *args, 'reduce_window'),
      default=lambda x: _lrn(x, *args, 'slices'),
  )


def _scale(x, k, n, alpha, impl, dtype):
  return k + alpha * _window_sum(jnp.square(x), n, impl, dtype)


# A custom gradient: only x is kept for the backward pass (the scale is
# recomputed there, one fused pass), and the gradient is written out
# analytically instead of differentiating through exp/log:
#   dx[c] = g[c] s[c]^-beta
#           - 2 alpha beta x[c] sum_{|c'-c| <= n//2} g[c'] x[c'] s[c']^(-beta-1)
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _lrn(x, k, n, alpha, beta, impl):
  xf = x.astype(jnp.float32)
  # x * s**-beta, written with exp/log so beta=0.75 needs no pow special
  # case and the division happens as one multiply.
  s = _scale(xf, k, n, alpha, impl, x.dtype)
  return (xf * jnp.exp(-beta * jnp.log(s))).astype(x.dtype)


def _lrn_fwd(x, k, n, alpha, beta, impl):
  return _lrn(x, k, n, alpha, beta, impl), x


def _lrn_bwd(k, n, alpha, beta, impl, x, g):
  xf, gf = x.astype(jnp.float32), g.astype(jnp.float32)
  s = _scale(xf, k, n, alpha, impl, x.dtype)
  s_pow = jnp.exp(-beta * jnp.log(s))  # s**-beta
  t = gf * xf * s_pow / s
  dx = gf * s_pow - (2 * alpha * beta) * xf * _window_sum(t, n, impl, x.dtype)
  return (dx.astype(x.dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)
