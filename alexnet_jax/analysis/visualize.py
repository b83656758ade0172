"""conv1 kernels by tower (the paper's Figure 3) and how colour-specific they are.

The paper saw one tower's 48 conv1 kernels come out "largely
colour-agnostic" and the other's "largely colour-specific". The number used
here for that, per kernel w (kh x kw x 3):

    colour share = |w - grey(w)|^2 / |w|^2,   grey(w) = w averaged over RGB

i.e. the fraction of the kernel's energy that is NOT the same in all three
colour channels. 0: a pure luminance (grey) kernel, which responds to every
colour alike; 1: a kernel whose channels cancel at every pixel (a pure
colour-opponent kernel, e.g. red minus green). Random kernels score 2/3 on
average (two of the three colour directions are not grey). A tower's score
is the mean over its kernels. It does not depend on the channel order (RGB or
BGR weights score the same).
"""

import numpy as np


def conv1_kernels(variables) -> np.ndarray:
  """conv1's kernels as f32[T, K, kh, kw, 3]: T towers of K kernels each.

  Accepts the paper/torchvision AlexNet layout (kernel f32[T, kh, kw, 3, K])
  and plain convolutions (Cifar4: f32[kh, kw, 3, K], one "tower").
  """
  params = variables.get('params', variables)
  if 'conv1' not in params:
    raise ValueError(
        f'no conv1 layer in these variables (top-level layers: '
        f'{", ".join(sorted(params))})'
    )
  k = np.asarray(params['conv1']['kernel'], np.float32)
  if k.ndim == 4:
    k = k[None]
  if k.ndim != 5 or k.shape[3] != 3:
    raise ValueError(
        f'conv1 kernel has shape {k.shape}; expected '
        '[T, kh, kw, 3, K] or [kh, kw, 3, K] (an RGB input layer)'
    )
  return np.transpose(k, (0, 4, 1, 2, 3))


def colour_share(kernels) -> np.ndarray:
  """Per-kernel colour share (module docstring) of f32[..., kh, kw, 3]."""
  w = np.asarray(kernels, np.float64)
  grey = w.mean(axis=-1, keepdims=True)
  total = (w * w).sum(axis=(-3, -2, -1))
  colour = ((w - grey) ** 2).sum(axis=(-3, -2, -1))
  return (colour / np.maximum(total, 1e-30)).astype(np.float32)


def tower_colour_specificity(variables) -> np.ndarray:
  """Mean colour share of conv1's kernels, one number per tower: f32[T]."""
  return colour_share(conv1_kernels(variables)).mean(axis=-1)


def kernel_mosaic(
    kernels, *, columns: int = 8, channel_order: str = 'RGB', border: int = 1
) -> np.ndarray:
  """An RGB image f32[H, W, 3] in [0, 1] tiling kernels f32[K, kh, kw, 3].

  Each kernel is shown as 0.5 + w / (2 max|w|), so grey is zero and the
  colours keep their signs, like the paper's Figure 3.
  """
  k = np.asarray(kernels, np.float32)
  if k.ndim != 4 or k.shape[-1] != 3:
    raise ValueError(f'kernels must be f32[K, kh, kw, 3], got {k.shape}')
  if channel_order not in ('RGB', 'BGR'):
    raise ValueError(f"channel_order={channel_order!r}: use 'RGB' or 'BGR'")
  if channel_order == 'BGR':
    k = k[..., ::-1]
  scale = np.abs(k).max(axis=(1, 2, 3), keepdims=True)
  k = 0.5 + k / (2 * np.maximum(scale, 1e-12))
  n, kh, kw, _ = k.shape
  rows = -(-n // columns)
  out = np.ones(
      (rows * (kh + border) + border, columns * (kw + border) + border, 3),
      np.float32,
  )
  for i in range(n):
    r, c = divmod(i, columns)
    y, x = border + r * (kh + border), border + c * (kw + border)
    out[y : y + kh, x : x + kw] = k[i]
  return out
