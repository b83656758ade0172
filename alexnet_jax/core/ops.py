"""Convolution and max-pooling with backward passes XLA:CPU runs faster.

Same maths as `lax.conv_general_dilated` and `lax.reduce_window(max)` and
their autodiff gradients; only how the gradients are computed differs. On
XLA:CPU (jaxlib 0.10, convolutions run by YNNPACK) the forward convolution
and its input gradient run near the machine's matmul speed, but kernel
gradients run at a third to a fifth of it, and a max-pool's gradient
(`select_and_scatter`) is a slow argmax loop. Measured effects are in
README "Speed".

* `conv2d`: forward and input gradient are XLA's convolutions. The kernel
  gradient is one matmul per image, dy^T [Cout, Ho*Wo] x patches^T
  [Ho*Wo, kh*kw*Cin], accumulated in a `lax.scan` over the batch: one
  image's patches fit in cache, and both operands have the contracted
  axis innermost, so XLA neither materialises a batch-sized patch matrix
  nor transposes one (it does both for a whole-batch im2col). Strided
  convolutions (conv1: 11x11, stride 4) are first rewritten as stride-1
  ones by space-to-depth.
* On CPU, float32 convolutions (all three; bfloat16 ones too where oneDNN
  has bfloat16 kernels for the CPU) run by default as oneDNN custom calls
  instead (`onednn.py`): the kernels PyTorch uses, 1.4-4.6x as fast as
  XLA:CPU's here (README "Speed"). ALEXNET_JAX_CONV=xla|onednn|auto picks (auto:
  oneDNN when it builds here, else XLA).
* `max_pool`: the gradient goes to the first maximum of each window (what
  select_and_scatter and PyTorch do), found with strided slices and
  compares on the output grid, then interleaved back to input positions.

All of the above is for CPU only, and is chosen when a program is lowered
for a platform (`lax.platform_dependent`), not from the process's default
backend: a step exported from this CPU machine for `cuda` or `tpu`, or
jitted on a GPU host, holds no oneDNN custom call and no per-image loop.
On `cuda`, `rocm` and `tpu` both ops are plain XLA (`conv_general_dilated`,
`reduce_window`) with autodiff's gradients, which cuDNN and the TPU run as
single convolutions: a `lax.scan` over 128 images would serialise 128
small matmuls per layer there, and scans run many times slower than native
ops on those backends (jax#810, jax#16611). `formulation='accelerator'`
runs that plain formulation on CPU too (tests compare the two).
"""

import functools
import logging
import os

import jax
from jax import lax
import jax.numpy as jnp

from alexnet_jax.core import onednn

Array = jnp.ndarray


def _xla_conv(x, kernel, stride, padding, precision=None):
  return lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=precision,
  )


def _kernel_grad_stride1(x, dy, kh, kw, prepare=lambda xi: xi):
  """dL/dkernel [kh, kw, C, O] of a stride-1 VALID conv of prepare(x).

  x: [B, ...], one image per row; prepare maps one image to the conv's
  input [H, W, C] (padding, space-to-depth). dy: [B, Ho, Wo, O]. One matmul
  per image inside a scan (see module doc); each image is prepared and
  transposed inside the loop, where it fits in cache, rather than the whole
  batch up front (which would cost batch-sized copies).
  """
  c = jax.eval_shape(prepare, jax.ShapeDtypeStruct(x.shape[1:], x.dtype)).shape[
      -1
  ]
  ho, wo, o = dy.shape[1:]

  def one_image(acc, image):
    xi, dyi = image
    xi = jnp.transpose(prepare(xi), (2, 0, 1))  # [C, H, W]
    dyi = dyi.reshape(ho * wo, o).T  # [O, Ho*Wo]
    # patches^T: rows (i, j, c), columns (h, w): [kh*kw*C, Ho*Wo]
    patches = jnp.concatenate(
        [xi[:, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)],
        axis=0,
    ).reshape(kh * kw * c, ho * wo)
    return (
        acc
        + jnp.einsum(
            'on,kn->ok', dyi, patches, preferred_element_type=jnp.float32
        ),
        None,
    )

  # Under shard_map the carry must vary over the axes its updates do.
  init = _vary(
      jnp.zeros((o, kh * kw * c), jnp.float32), _varying(x) | _varying(dy)
  )
  acc, _ = lax.scan(one_image, init, (x, dy))
  return acc.T.reshape(kh, kw, c, o)


def _space_to_depth(x, stride):
  """[B, H, W, C] (H, W multiples of stride) -> [B, H/s, W/s, s*s*C]."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // stride, stride, w // stride, stride, c)
  return jnp.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(
      b, h // stride, w // stride, stride * stride * c
  )


def kernel_grad(x: Array, dy: Array, kernel_hw, stride: int, padding) -> Array:
  """d(loss)/d(kernel), f32[kh, kw, Cin, Cout], of conv2d(x, kernel).

  Args:
    x: the convolution's input [B, H, W, Cin].
    dy: the gradient of its output [B, Ho, Wo, Cout].
    kernel_hw: (kh, kw).
    stride: both spatial strides.
    padding: ((top, bottom), (left, right)).
  """
  kh, kw = kernel_hw
  ho, wo = dy.shape[1:3]
  # Rows/columns the convolution reads, from -top/-left, rounded up to
  # whole stride blocks; taps past the kernel only meet rows we crop away.
  bh, bw = -(-kh // stride), -(-kw // stride)  # kernel in blocks
  rows, cols = (ho + bh - 1) * stride, (wo + bw - 1) * stride
  (top, _), (left, _) = padding
  h, w = x.shape[1:3]

  def pad(xi):  # one image
    xi = jnp.pad(
        xi,
        (
            (top, max(0, rows - h - top)),
            (left, max(0, cols - w - left)),
            (0, 0),
        ),
    )
    return xi[:rows, :cols]

  if stride == 1:
    return _kernel_grad_stride1(x, dy, kh, kw, pad)
  # Space-to-depth: a stride-s kh x kw conv is a stride-1 bh x bw conv over
  # s x s blocks, whose kernel rows are (block row, row in block).
  c = x.shape[-1]
  grad = _kernel_grad_stride1(
      x, dy, bh, bw, lambda xi: _space_to_depth(pad(xi)[None], stride)[0]
  )
  grad = grad.reshape(bh, bw, stride, stride, c, -1)
  grad = jnp.transpose(grad, (0, 2, 1, 3, 4, 5)).reshape(
      bh * stride, bw * stride, c, -1
  )
  return grad[:kh, :kw]


# 'auto': the CPU formulations above on CPU, plain XLA elsewhere, chosen
# per platform at lowering time; 'accelerator': plain XLA everywhere (what
# GPUs and TPUs run), to check it or run it on CPU.
FORMULATIONS = ('auto', 'accelerator')
# config.model.precision -> lax.Precision of matmuls and convolutions.
# 'default' leaves it to the platform (TF32 on A100/H100, bf16 passes on
# TPU) or to jax.default_matmul_precision.
PRECISIONS = {
    'default': None,
    'high': lax.Precision.HIGH,
    'highest': lax.Precision.HIGHEST,
}


def precision_of(name: str):
  """The lax.Precision (or None) config.model.precision names."""
  if name not in PRECISIONS:
    raise ValueError(
        f'precision {name!r} is not one of {", ".join(PRECISIONS)}'
    )
  return PRECISIONS[name]


def _check_formulation(formulation):
  if formulation not in FORMULATIONS:
    raise ValueError(
        f'formulation {formulation!r} is not one of '
        f'{", ".join(FORMULATIONS)}'
    )


def conv2d(
    x: Array,
    kernel: Array,
    stride: int,
    padding,
    *,
    formulation: str = 'auto',
    precision=None,
) -> Array:
  """conv_general_dilated(x, kernel) in NHWC / HWIO, as XLA computes it.

  Args:
    x: [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout].
    stride: both spatial strides.
    padding: ((top, bottom), (left, right)), 'SAME' or 'VALID'.
    formulation: 'auto' (CPU: oneDNN or per-image kernel gradients; other
      platforms: plain XLA) or 'accelerator' (plain XLA on every platform).
    precision: lax.Precision of the plain XLA convolution (the CPU
      formulations compute float32 exactly whatever it says).
  """
  _check_formulation(formulation)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(
        x.shape[1:3], kernel.shape[:2], (stride, stride), padding
    )
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  x, padding = _crop(x, padding)
  x, kernel = _same_varying_axes(x, kernel)
  plain = functools.partial(
      _xla_conv, stride=stride, padding=padding, precision=precision
  )
  if formulation == 'accelerator':
    return plain(x, kernel)
  return lax.platform_dependent(
      x,
      kernel,
      cpu=functools.partial(_cpu_conv2d, stride=stride, padding=padding),
      default=plain,
  )


def _crop(x, padding):
  """x with negative (cropping) padding done as a slice, and the padding
  left to the convolution, all non-negative.

  XLA:CPU (jaxlib 0.10.2) computes a convolution whose padding is negative
  at one end of an axis and positive at the other wrongly: it applies the
  negative side as an offset into the input and then reads the positive
  side's padding from memory instead of zeros, i.e. from the next row
  along W, and past the end of the input buffer along H (whatever the heap
  holds there: 2.1e10, nan). tests/test_ops.py keeps the reproducer. A
  slice is the same maths on every platform, and its gradient pads back.
  """
  (top, bottom), (left, right) = padding
  h, w = x.shape[1:3]
  if min(top, bottom, left, right) >= 0:
    return x, padding
  rows = slice(max(-top, 0), h - max(-bottom, 0))
  cols = slice(max(-left, 0), w - max(-right, 0))
  return x[:, rows, cols, :], (
      (max(top, 0), max(bottom, 0)),
      (max(left, 0), max(right, 0)),
  )


def _cpu_conv2d(x, kernel, *, stride, padding):
  # conv2d has cropped negative padding away (_crop): oneDNN takes none.
  if conv_backend(x.dtype, platform='cpu') == 'onednn':
    return _onednn_conv2d(x, kernel, stride, padding)
  return _conv2d(x, kernel, stride, padding)


CONV_BACKENDS = ('auto', 'xla', 'onednn')


def conv_backend(dtype=jnp.float32, platform: str | None = None) -> str:
  """The convolutions conv2d runs for `dtype` on `platform`.

  'onednn' or 'xla' (XLA's convolutions; on CPU with the per-image kernel
  gradient). `platform` defaults to this process's default backend; off
  CPU it is always 'xla'. On CPU, ALEXNET_JAX_CONV (read when a function
  is traced) chooses: 'xla'; 'onednn' (an error if it cannot run, or for
  bfloat16 on a CPU without bfloat16 instructions); or 'auto', the
  default: oneDNN when it builds here, for float32, and for bfloat16 where
  the CPU has bfloat16 instructions (`onednn.bfloat16_unavailable`); else
  XLA, with one line saying why.
  """
  choice = os.environ.get('ALEXNET_JAX_CONV', 'auto')
  if choice not in CONV_BACKENDS:
    raise ValueError(
        f'ALEXNET_JAX_CONV={choice!r} is not one of '
        f'{", ".join(CONV_BACKENDS)}'
    )
  if choice == 'xla':
    return 'xla'
  dtype = jnp.dtype(dtype)
  # The CPU branch is traced on every host, but only lowered for CPU: a
  # GPU or TPU host does not build oneDNN for a branch it will not run.
  host = jax.default_backend()
  platform = platform or host
  if (
      platform != 'cpu'
      or host != 'cpu'
      or dtype not in (jnp.float32, jnp.bfloat16)
  ):
    if choice == 'onednn':
      raise ValueError(
          f'ALEXNET_JAX_CONV=onednn runs float32 or bfloat16 '
          f'on CPU only, not {dtype.name} on {host}'
      )
    return 'xla'
  reason = onednn.unavailable()
  if reason is not None:
    if choice == 'onednn':
      raise onednn.Unavailable(reason)
    _warn_once(f"oneDNN convolutions unavailable, using XLA's: {reason}")
    return 'xla'
  if dtype == jnp.bfloat16:
    reason = onednn.bfloat16_unavailable()
    if reason is not None:
      if choice == 'onednn':
        raise onednn.Unavailable(f'oneDNN bfloat16 convolutions: {reason}')
      _warn_once(
          f'oneDNN bfloat16 convolutions would be slow here, using '
          f"XLA's for bfloat16: {reason}"
      )
      return 'xla'
  return 'onednn'


@functools.cache
def _warn_once(message):
  logging.warning(message)


# Custom calls return values typed as varying over no shard_map axis:
# `_vary` gives them their operands' types back.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv2d(x, kernel, stride, padding):
  return _vary(onednn.conv(x, kernel, stride, padding), _varying(x))


def _onednn_conv2d_fwd(x, kernel, stride, padding):
  return _onednn_conv2d(x, kernel, stride, padding), (x, kernel)


def _onednn_conv2d_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  # When x needs no gradient (conv1 reads the images), XLA drops the
  # input-gradient call: the custom calls have no side effects.
  dx = onednn.input_grad(dy, kernel, x.shape, stride, padding)
  dkernel = onednn.kernel_grad(x, dy, kernel.shape, stride, padding)
  return _vary(dx, _varying(x)), _vary(dkernel, _varying(kernel))


_onednn_conv2d.defvjp(_onednn_conv2d_fwd, _onednn_conv2d_bwd)


# shard_map (parallel.py's two-tower forward) types every value with the mesh
# axes it varies over. A custom VJP's backward must return each cotangent
# with its input's type, and a scan's carry must keep its type: the helpers
# below make both hold. Outside shard_map they do nothing.


def _varying(x) -> frozenset:
  """The shard_map axes x varies over (empty outside shard_map)."""
  mat = getattr(jax.typeof(x), 'mat', None)
  return frozenset(getattr(mat, 'varying', ()))


def _vary(x, axes):
  """x, marked as varying over `axes` too."""
  missing = tuple(sorted(frozenset(axes) - _varying(x)))
  return lax.pcast(x, missing, to='varying') if missing else x


def _same_varying_axes(*xs):
  """Every operand marked as varying over the union of their axes.

  A tower's kernel varies over 'model' only, the activations also over
  'data', so the kernel gradient (computed from them) varies over both:
  casting the kernel up front makes the types agree, and the cast's own
  transpose sums the kernel gradient over 'data', as the gradient of a
  parameter replicated there must be.
  """
  union = frozenset().union(*map(_varying, xs))
  return tuple(_vary(x, union) for x in xs)


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
  dkernel = kernel_grad(x, dy, kernel.shape[:2], stride, padding)
  return dx, dkernel.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _strided_taps(x, window, stride):
  """The window x window strided views of x: [B, H, W, C] -> [B, Ho, Wo, C]."""
  _, h, w, _ = x.shape
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  return [
      (
          i,
          j,
          x[
              :,
              i : i + stride * (ho - 1) + 1 : stride,
              j : j + stride * (wo - 1) + 1 : stride,
              :,
          ],
      )
      for i in range(window)
      for j in range(window)
  ]


def _reduce_window_max(x, window, stride):
  # A Python scalar init value: lax.reduce_window then recognises the max
  # monoid and differentiates it (an array init makes it opaque to grad).
  return lax.reduce_window(
      x,
      -jnp.inf,
      lax.max,
      (1, window, window, 1),
      (1, stride, stride, 1),
      'VALID',
  )


def max_pool(
    x: Array, window: int, stride: int, *, formulation: str = 'auto'
) -> Array:
  """Max-pool over H, W of x: [B, H, W, C], no padding (VALID).

  The hand-written backward pass runs on CPU only ('auto'); other platforms
  (and formulation='accelerator') differentiate reduce_window as XLA does
  (select_and_scatter, which GPUs and TPUs run natively).
  """
  _check_formulation(formulation)
  plain = functools.partial(_reduce_window_max, window=window, stride=stride)
  if formulation == 'accelerator':
    return plain(x)
  return lax.platform_dependent(
      x, cpu=lambda x: _cpu_max_pool(x, window, stride), default=plain
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _cpu_max_pool(x: Array, window: int, stride: int) -> Array:
  return _reduce_window_max(x, window, stride)


def _max_pool_fwd(x, window, stride):
  y = _cpu_max_pool(x, window, stride)
  return y, (x, y)


def _max_pool_bwd(window, stride, residuals, g):
  x, y = residuals
  b, h, w, c = x.shape
  ho, wo = y.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  # Each output's gradient goes to the first (row-major) maximum of its
  # window, as select_and_scatter and PyTorch do: contribution (i, j) is
  # the gradient of the windows whose max is at offset (i, j).
  claimed = jnp.zeros(y.shape, bool)
  contrib = {}
  for i, j, tap in _strided_taps(x, window, stride):
    hit = (tap == y) & ~claimed
    claimed = claimed | hit
    contrib[i, j] = jnp.where(hit, g, zero)  # [B, Ho, Wo, C]
  # Input row stride*a + r gets offset i = r + stride*q from window a - q:
  # build each (row, column) phase r, t on the output grid, then
  # interleave the phases. Everything stays output-sized (a sum of
  # interior-padded input-sized arrays made XLA keep 9 of those alive).
  shift = -(-window // stride) - 1
  rows, cols = ho + shift, wo + shift
  phases = []
  for r in range(stride):
    row = []
    for t in range(stride):
      acc = jnp.zeros((b, rows, cols, c), g.dtype)
      for (i, j), part in contrib.items():
        if i % stride == r and j % stride == t:
          qi, qj = i // stride, j // stride
          acc = acc + jnp.pad(
              part, ((0, 0), (qi, shift - qi), (qj, shift - qj), (0, 0))
          )
      row.append(acc)
    phases.append(jnp.stack(row, axis=3))  # [B, A, A', s, C]
  dx = jnp.stack(phases, axis=2).reshape(b, rows * stride, cols * stride, c)
  # Rows past the last window get nothing; rows beyond x are dropped.
  dx = jnp.pad(
      dx,
      (
          (0, 0),
          (0, max(0, h - rows * stride)),
          (0, max(0, w - cols * stride)),
          (0, 0),
      ),
  )
  return (dx[:, :h, :w],)


_cpu_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
