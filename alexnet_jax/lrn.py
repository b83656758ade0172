"""Local response normalisation across channels (paper section 3.3).

    b[c] = a[c] / (k + alpha' * sum_{|c'-c| <= n//2} a[c']^2) ** beta

with alpha' = alpha (the paper: alpha multiplies the sum) or alpha / n
(Caffe, PyTorch's nn.LocalResponseNorm, cuda-convnet2). Channels beyond the
edges count as zero, as in every implementation. Flax has no LRN layer.
"""

import jax.numpy as jnp
import numpy as np


def _band(channels: int, n: int, dtype) -> jnp.ndarray:
  """[C, C] 0/1 matrix summing each channel's window of n neighbours."""
  idx = np.arange(channels)
  return jnp.asarray(np.abs(idx[:, None] - idx[None, :]) <= n // 2, dtype)


def lrn(x: jnp.ndarray, *, k: float, n: int, alpha: float, beta: float,
        alpha_over_n: bool) -> jnp.ndarray:
  """LRN over the last (channel) axis of x: [..., C]."""
  if alpha_over_n:
    alpha = alpha / n
  # The windowed sum of squares as a banded matmul: one dot whose backward
  # pass is another dot, which XLA:CPU runs far faster than a reduce_window
  # over the channel axis or n shifted slices.
  sq = jnp.square(x.astype(jnp.float32))
  window_sum = jnp.einsum('...c,cd->...d', sq, _band(x.shape[-1], n, sq.dtype))
  scale = k + alpha * window_sum
  # x * scale**-beta, written with exp/log so beta=0.75 needs no pow special
  # case and the division happens as one multiply.
  return (x * jnp.exp(-beta * jnp.log(scale)).astype(x.dtype))
