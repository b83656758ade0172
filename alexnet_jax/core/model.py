"""AlexNet in Flax Linen: the paper's layer table, its towers and variants.

Parameters of tower layers carry a leading tower axis (conv2's kernel is
f32[T, 5, 5, 48, 128] in the paper model), so parallel.py can hand tower t
to device t by sharding that axis, without renaming anything. On one device
the towers run as separate convolutions, one per tower, on every platform,
rather than as one grouped convolution (`feature_group_count=2`):
  * CPU: XLA:CPU's backward pass of the grouped convolution is about 4x
    slower (and oneDNN's custom calls, ops.py, take one group);
  * GPU: the grouped backward pass runs as slowly as an ungrouped
    convolution of the full width (jax#13800, jax#26266: the forward pass
    gains, the input and kernel gradients do not), i.e. twice the work of
    two tower convolutions;
  * TPU: we found no published measurement either way; two convolutions
    with 128-192 output channels each fill the MXU's 128-wide tiles, and
    keeping one formulation means the exported TPU program is the one the
    GPU tests check (tests/test_accelerator_export.py).

Inside `jax.shard_map` the same module runs with `tower_axis='model'`: it then
holds one tower (its parameters' tower axis has size 1) and joins the towers
with collectives exactly where the paper's GPUs talked: before conv3, fc6,
fc7 and fc8 (and to assemble fc8's logits). Nothing here knows about devices.

Layer table (paper model, 224x224 input, per tower in brackets):

    conv1  96 (48)  11x11/4  -> 55x55  ReLU, LRN, max-pool 3/2 -> 27x27
    conv2 256 (128)  5x5     -> 27x27  own tower;  ReLU, LRN, pool -> 13x13
    conv3 384 (192)  3x3     -> 13x13  reads BOTH towers; ReLU
    conv4 384 (192)  3x3     -> 13x13  own tower;  ReLU
    conv5 256 (128)  3x3     -> 13x13  own tower;  ReLU, pool -> 6x6
    fc6  4096 (2048)         reads both towers; ReLU, dropout 0.5
    fc7  4096 (2048)         reads both towers; ReLU, dropout 0.5
    fc8  num_classes         reads both towers (columns split by tower)
"""

from collections.abc import Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax.core import lrn as lrn_lib
from alexnet_jax.core import ops

Array = jnp.ndarray

# Total kernels of conv1..conv5, fc6, fc7 for each variant (cifar4: conv1-3).
WIDTHS = {
    'paper': (96, 256, 384, 384, 256, 4096, 4096),
    'torchvision': (64, 192, 384, 256, 256, 4096, 4096),
    'cifar4': (32, 32, 64),
}

# conv1's padding by source; each gives 55x55 from its input size.
CONV1_PADDING = {
    'paper': ((0, 3), (0, 3)),  # 224: Krizhevsky's code rounds up
    'torchvision': ((2, 2), (2, 2)),  # 224
    'caffe': 'VALID',  # 227
}


def widths_for(variant: str, towers: int, width_scale: float = 1.0):
  """Total widths of the layers; towers=1 is the paper's one-GPU control.

  The paper's control (section 3.2) halves the kernels of conv1-conv4 only:
  conv5 and the fully connected layers keep their widths.
  """
  widths = list(WIDTHS[variant])
  if variant == 'paper' and towers == 1:
    widths[:4] = [w // 2 for w in widths[:4]]
  # Scaled widths stay divisible by the tower count.
  return tuple(
      max(towers, round(w * width_scale / towers) * towers) for w in widths
  )


# The paper's convolutional layers (section 3.5 and Figure 2), input to
# output. reads: 'image' (every tower reads the whole image), 'own' (its own
# tower's channels) or 'both' (both towers': where the GPUs talked). pad:
# per side, or None for conv1 (CONV1_PADDING[model.conv1_padding]). bias:
# 'one' for the layers the paper starts at 1 (model.bias_init), else 0.
# then: what follows the activation ('norm,pool': the variant's
# normalisation and a max-pool; model.lrn.order may swap them).
#
# Their widths are WIDTHS' (widths_for).
#
#    name   kernel stride pad  reads    bias    then
CONVS = (
    ('conv1', 11, 4, None, 'image', 'zero', 'norm,pool'),
    ('conv2', 5, 1, 2, 'own', 'one', 'norm,pool'),
    ('conv3', 3, 1, 1, 'both', 'zero', ''),
    ('conv4', 3, 1, 1, 'own', 'one', ''),
    ('conv5', 3, 1, 1, 'own', 'one', 'pool'),
)
# fc6 and fc7 (widths[5], widths[6]) read both towers and start at bias
# 'one'; fc8 reads both towers, starts at 0 and gives the logits.


@dataclasses.dataclass(frozen=True)
class Variant:
  """What a variant of AlexNet does differently from the table above."""

  ones: bool  # 'one' biases start at model.bias_init (else 0)
  norm: bool  # LRN after conv1 and conv2 (if model.lrn.enabled)
  avg_pool: int | None  # pool5 -> adaptive average pool to this side
  dropout: str  # 'after' fc6 and fc7's activations, or 'before' fc6 and fc7


VARIANTS = {
    'paper': Variant(ones=True, norm=True, avg_pool=None, dropout='after'),
    'torchvision': Variant(
        ones=False, norm=False, avg_pool=6, dropout='before'
    ),
}


def _normal(std):
  return nn.initializers.normal(stddev=std)


class TowerConv(nn.Module):
  """One convolution per tower: kernel f32[T, kh, kw, cin, cout_per_tower]."""

  towers: int  # towers held here (1 inside shard_map)
  features: int  # output channels per tower
  kernel_size: int
  stride: int = 1
  padding: Any = 'SAME'
  kernel_std: float = 0.01
  bias_init: float = 0.0
  dtype: Any = jnp.float32
  formulation: str = 'auto'  # ops.FORMULATIONS
  precision: Any = None  # lax.Precision of the convolutions

  @nn.compact
  def __call__(self, xs: Sequence[Array]) -> list[Array]:
    """xs: one input per tower (or one input shared by every tower)."""
    cin = xs[0].shape[-1]
    kh = kw = self.kernel_size
    kernel = self.param(
        'kernel',
        _normal(self.kernel_std),
        (self.towers, kh, kw, cin, self.features),
    )
    bias = self.param(
        'bias',
        nn.initializers.constant(self.bias_init),
        (self.towers, self.features),
    )
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    conv = lambda x, k: ops.conv2d(
        x.astype(self.dtype),
        k,
        self.stride,
        self.padding,
        formulation=self.formulation,
        precision=self.precision,
    )
    if len(xs) == 1 and self.towers > 1:
      # Every tower reads the same input (conv1, conv3): one convolution
      # with all towers' kernels side by side, split after.
      # kernel: [T, kh, kw, cin, f] -> [kh, kw, cin, T*f]
      y = conv(
          xs[0],
          jnp.moveaxis(kernel, 0, 3).reshape(
              kh, kw, cin, self.towers * self.features
          ),
      ) + bias.reshape(-1)
      f = self.features
      return [y[..., t * f : (t + 1) * f] for t in range(self.towers)]
    if len(xs) == 1:
      xs = list(xs) * self.towers
    return [conv(xs[t], kernel[t]) + bias[t] for t in range(self.towers)]


class TowerDense(nn.Module):
  """One dense layer per tower: kernel f32[T, din, dout_per_tower]."""

  towers: int
  features: int
  kernel_std: float = 0.01
  bias_init: float = 0.0
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> list[Array]:
    """x: [B, din], read by every tower (fully connected layers see all)."""
    kernel = self.param(
        'kernel',
        _normal(self.kernel_std),
        (self.towers, x.shape[-1], self.features),
    )
    bias = self.param(
        'bias',
        nn.initializers.constant(self.bias_init),
        (self.towers, self.features),
    )
    x = x.astype(self.dtype)
    if self.towers == 1:  # (kernel[0] is free; the batched form below
      # makes XLA transpose the weight gradient in the SGD update)
      return [
          jnp.matmul(x, kernel[0].astype(self.dtype), precision=self.precision)
          + bias[0].astype(self.dtype)
      ]
    # One dot batched over the tower axis: slicing kernel[t] would copy each
    # tower's [din, dout] block every step (fc6: 75 MB per tower).
    xs = jnp.broadcast_to(x, (self.towers,) + x.shape)
    y = jnp.einsum(
        'tbd,tdo->tbo', xs, kernel.astype(self.dtype), precision=self.precision
    )
    y = y + bias.astype(self.dtype)[:, None, :]
    return [y[t] for t in range(self.towers)]


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """torch.nn.AdaptiveAvgPool2d((size, size)) for x: [B, H, W, C]."""
  _, h, w, _ = x.shape
  if (h, w) == (size, size):
    return x

  def pool_axis(x, axis, n):
    # torch's bins: [floor(i*n/size), ceil((i+1)*n/size)).
    parts = []
    for i in range(size):
      start, end = (i * n) // size, -((-(i + 1) * n) // size)
      parts.append(
          jax.lax.slice_in_dim(x, start, end, axis=axis).mean(
              axis=axis, keepdims=True
          )
      )
    return jnp.concatenate(parts, axis=axis)

  return pool_axis(pool_axis(x, 1, h), 2, w)


class AlexNet(nn.Module):
  """The paper's AlexNet (variant='paper') or torchvision's (='torchvision').

  Attributes mirror `config.model` (see configs/paper.py). `tower_axis` is
  set only by parallel.py, inside `jax.shard_map` over that mesh axis.
  """

  variant: str = 'paper'
  num_classes: int = 1000
  towers: int = 2
  activation: str = 'relu'
  lrn: bool = True
  lrn_k: float = 2.0
  lrn_n: int = 5
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  lrn_alpha_over_n: bool = False
  lrn_across_towers: bool = False
  lrn_order: str = 'lrn_pool'  # 'pool_lrn': CaffeNet's order
  pool_window: int = 3
  pool_stride: int = 2
  dropout: float = 0.5
  conv1_padding: str = 'paper'  # a key of CONV1_PADDING
  weight_init_std: float = 0.01
  fc_init_std: float = 0.01  # fc6 and fc7 (Caffe: 0.005)
  bias_init: float = 1.0
  width_scale: float = 1.0
  dtype: Any = jnp.float32
  # ops.FORMULATIONS: 'auto' picks per platform when the step is lowered
  # (CPU-tuned on CPU, plain XLA on GPU/TPU); 'accelerator' runs plain XLA
  # on CPU too.
  formulation: str = 'auto'
  precision: str = 'default'  # a key of ops.PRECISIONS
  tower_axis: str | None = None

  @property
  def local_towers(self) -> int:
    return 1 if self.tower_axis else self.towers

  def _tower_index(self, t: int):
    """The global index of local tower t (a traced value under shard_map)."""
    if self.tower_axis is None:
      return t
    return jax.lax.axis_index(self.tower_axis) + t

  def _all_towers(self, hs: list[Array], invariant: bool = False) -> Array:
    """Concatenates every tower's channels: where the paper's GPUs talked.

    Under shard_map, `invariant=True` marks the result as equal on every
    tower (jax.lax.all_gather to='invarying'), so its gradient needs no
    communication (the transpose is a slice); the default gather's
    transpose is a reduce-scatter, right for inputs of tower-local layers.
    """
    if self.tower_axis is None:
      return hs[0] if len(hs) == 1 else jnp.concatenate(hs, axis=-1)
    (h,) = hs
    return jax.lax.all_gather(
        h,
        self.tower_axis,
        axis=h.ndim - 1,
        tiled=True,
        to='invarying' if invariant else 'varying',
    )

  def _act(self, hs):
    fn = activation_fn(self.activation)
    return [fn(h) for h in hs]

  def _pool(self, hs):
    w, s = self.pool_window, self.pool_stride
    # ops.max_pool: nn.max_pool's maths with a backward pass XLA:CPU runs
    # several times faster than select_and_scatter.
    return [ops.max_pool(h, w, s, formulation=self.formulation) for h in hs]

  def _norm_and_pool(self, hs, variant):
    if not variant.norm:
      return self._pool(hs)
    if self.lrn_order == 'pool_lrn':  # CaffeNet: pool1/2 before norm1/2
      return self._lrn(self._pool(hs))
    return self._pool(self._lrn(hs))

  def _lrn(self, hs):
    if not self.lrn:
      return hs
    norm = lambda h: lrn_lib.lrn(
        h,
        k=self.lrn_k,
        n=self.lrn_n,
        alpha=self.lrn_alpha,
        beta=self.lrn_beta,
        alpha_over_n=self.lrn_alpha_over_n,
    )
    if not self.lrn_across_towers or self.towers == 1:
      return [norm(h) for h in hs]  # windows confined to a tower (paper)
    # Caffe: one window over all channels, then split back into towers.
    split = [h.shape[-1] for h in hs]
    full = norm(jnp.concatenate(hs, axis=-1))
    return jnp.split(
        full, [sum(split[: i + 1]) for i in range(len(split) - 1)], axis=-1
    )

  def _dropout(self, hs, train):
    if not train or self.dropout == 0:
      return hs
    rng = self.make_rng('dropout')
    keep = 1.0 - self.dropout
    out = []
    for t, h in enumerate(hs):
      # A key per global tower: the same mask on one device or on two.
      mask = jax.random.bernoulli(
          jax.random.fold_in(rng, self._tower_index(t)), keep, h.shape
      )
      out.append(jnp.where(mask, h / keep, 0).astype(h.dtype))
    return out

  def _hidden_fc(self, name, x, width, bias, variant, train, **layer):
    """fc6 or fc7: reads x (both towers' activations), returns its
    towers' activations, with the variant's dropout before or after."""
    if variant.dropout == 'before':
      (x,) = self._dropout([x], train)
    h = TowerDense(
        self.local_towers,
        width // self.towers,
        bias_init=bias,
        name=name,
        kernel_std=self.fc_init_std,
        **layer,
    )(x)
    h = self._act(h)
    return self._dropout(h, train) if variant.dropout == 'after' else h

  def _logits(self, hs, dtype, precision):
    """fc8. Its columns are split by tower only under shard_map, and only
    when num_classes is even (otherwise each device holds all of fc8 and
    reads an invariant copy of fc7's output); on one device it is a single
    [4096, num_classes] layer."""
    split = self.tower_axis is not None and self.num_classes % self.towers == 0
    full = self._all_towers(
        hs, invariant=self.tower_axis is not None and not split
    )  # [B, 4096]
    logits = nn.Dense(
        self.num_classes // self.towers if split else self.num_classes,
        kernel_init=_normal(self.weight_init_std),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        precision=precision,
        name='fc8',
    )(full)
    if split:
      logits = self._all_towers([logits], invariant=True)  # [B, num_classes]
    return logits.astype(jnp.float32)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """x: f32[B, H, W, 3], normalised. Returns logits f32[B, num_classes].

    Shapes for the paper model at 224x224, per tower: conv1 [B, 55, 55, 48]
    -> pool 27x27; conv2 128 -> pool 13x13; conv3 192 (reads both towers);
    conv4 192; conv5 128 -> pool 6x6; fc6 2048 and fc7 2048 (each reads
    both towers); fc8 num_classes.
    """
    variant = VARIANTS[self.variant]
    widths = widths_for(self.variant, self.towers, self.width_scale)
    bias = {'one': self.bias_init if variant.ones else 0.0, 'zero': 0.0}
    layer = dict(
        dtype=jnp.dtype(self.dtype), precision=ops.precision_of(self.precision)
    )
    h = None
    for (name, kernel, stride, pad, reads, start, then), width in zip(
        CONVS, widths
    ):
      if reads == 'image':
        inputs = [x]
      elif reads == 'both':
        inputs = [self._all_towers(h)]
      else:
        inputs = h
      padding = (
          CONV1_PADDING[self.conv1_padding]
          if pad is None
          else ((pad, pad),) * 2
      )
      h = TowerConv(
          self.local_towers,
          width // self.towers,
          kernel,
          stride,
          padding,
          kernel_std=self.weight_init_std,
          bias_init=bias[start],
          formulation=self.formulation,
          name=name,
          **layer,
      )(inputs)
      h = self._act(h)
      if then == 'norm,pool':
        h = self._norm_and_pool(h, variant)
      elif then == 'pool':
        h = self._pool(h)
    if variant.avg_pool:
      h = [adaptive_avg_pool(t, variant.avg_pool) for t in h]
    # Flattened in (H, W, C) order, C = [tower 0's channels, tower 1's].
    flat = self._all_towers(h)
    flat = flat.reshape(flat.shape[0], -1)  # [B, 9216]
    h = self._hidden_fc(
        'fc6', flat, widths[5], bias['one'], variant, train, **layer
    )
    h = self._hidden_fc(
        'fc7',
        self._all_towers(h),
        widths[6],
        bias['one'],
        variant,
        train,
        **layer,
    )
    return self._logits(h, **layer)


def activation_fn(name: str):
  """The activation `model.activation` names: 'relu' or 'tanh'."""
  return nn.relu if name == 'relu' else jnp.tanh


class _CifarNet(nn.Module):
  """What the two CIFAR-10 nets share: fields and the start of the call."""

  num_classes: int = 10
  activation: str = 'relu'
  width_scale: float = 1.0
  dtype: Any = jnp.float32
  precision: str = 'default'  # a key of ops.PRECISIONS

  def _setup_call(self, x):
    """(activation, compute dtype, precision, x in that dtype)."""
    dtype = jnp.dtype(self.dtype)
    return (
        activation_fn(self.activation),
        dtype,
        ops.precision_of(self.precision),
        x.astype(dtype),
    )


class Cifar4(_CifarNet):
  """The paper's Figure 1 network: cuda-convnet's CIFAR-10 layers-18pct.

  Three 5x5 convolutions (32, 32, 64 kernels, pad 2), each followed by the
  activation and a 3/2 pool (max after conv1, average after conv2 and
  conv3), then a fully connected layer to the classes. cuda-convnet's
  within-channel `rnorm` layers are left out (the paper trained Figure 1's
  nets without regularisation). Pools are padded so 32 -> 16 -> 8 -> 4, as
  cuda-convnet's rounding-up does.
  """

  weight_init_std: float = 0.01

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train  # no dropout in this net
    fn, dtype, precision, h = self._setup_call(x)
    widths = widths_for('cifar4', 1, self.width_scale)
    pools = (nn.max_pool, nn.avg_pool, nn.avg_pool)
    for i, (width, pool) in enumerate(zip(widths, pools)):
      h = nn.Conv(
          width,
          (5, 5),
          padding=((2, 2), (2, 2)),
          dtype=dtype,
          kernel_init=_normal(self.weight_init_std),
          precision=precision,
          name=f'conv{i + 1}',
      )(h)
      h = pool(fn(h), (3, 3), (2, 2), padding=((0, 1), (0, 1)))
    h = h.reshape(h.shape[0], -1)
    h = nn.Dense(
        self.num_classes,
        dtype=dtype,
        kernel_init=_normal(self.weight_init_std),
        precision=precision,
        name='fc',
    )(h)
    return h.astype(jnp.float32)


class CifarLocal(_CifarNet):
  """cuda-convnet's CIFAR-10 "conv-local" nets: the paper's LRN-on-CIFAR pair.

  layers-conv-local-11pct (LRN on) and -13pct (LRN off), which the paper's
  "13% vs 11% test error" refers to: conv 64 5x5 (pad 2), ReLU, [cross-map
  LRN], max-pool 3/2; conv 64 5x5, ReLU, [LRN], max-pool 3/2; two locally
  connected (unshared) 3x3 layers of 32 (pad 1), ReLU; fc to the classes.
  cuda-convnet's LRN is k=1, n=5, alpha=0.001 divided by n, beta=0.75 (set
  with model.lrn.*). Initial weight stds are the files' (conv1 1e-4, conv2
  0.01, local 0.04, fc 0.01; model.weight_init_std is not used), which
  expect inputs on the 0-255 scale: data.std = 1/255. Biases start at 0.
  """

  lrn: bool = True
  lrn_k: float = 1.0
  lrn_n: int = 5
  lrn_alpha: float = 1e-3
  lrn_beta: float = 0.75
  lrn_alpha_over_n: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train  # no dropout in this net
    fn, dtype, precision, h = self._setup_call(x)  # h: [B, 24, 24, 3]
    w = lambda n: max(1, round(n * self.width_scale))
    for i, std in ((1, 1e-4), (2, 0.01)):
      h = fn(
          nn.Conv(
              w(64),
              (5, 5),
              padding=((2, 2), (2, 2)),
              dtype=dtype,
              kernel_init=_normal(std),
              precision=precision,
              name=f'conv{i}',
          )(h)
      )
      if self.lrn:
        h = lrn_lib.lrn(
            h,
            k=self.lrn_k,
            n=self.lrn_n,
            alpha=self.lrn_alpha,
            beta=self.lrn_beta,
            alpha_over_n=self.lrn_alpha_over_n,
        )
      h = nn.max_pool(h, (3, 3), (2, 2), padding=((0, 1), (0, 1)))
    for i in (3, 4):  # [B, 6, 6, 64]
      h = fn(
          nn.ConvLocal(
              w(32),
              (3, 3),
              padding=((1, 1), (1, 1)),
              dtype=dtype,
              kernel_init=_normal(0.04),
              precision=precision,
              name=f'local{i}',
          )(h)
      )
    h = h.reshape(h.shape[0], -1)
    h = nn.Dense(
        self.num_classes,
        dtype=dtype,
        kernel_init=_normal(0.01),
        precision=precision,
        name='fc',
    )(h)
    return h.astype(jnp.float32)


# The paper model's (and the torchvision variant's) weighted layers, input
# to output.
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


def lrn_kwargs(m: ml_collections.ConfigDict) -> dict:
  """The LRN fields of `config.model` as model keyword arguments (the
  PyTorch twins take the same)."""
  return dict(
      lrn=m.lrn.enabled,
      lrn_k=m.lrn.k,
      lrn_n=m.lrn.n,
      lrn_alpha=m.lrn.alpha,
      lrn_beta=m.lrn.beta,
      lrn_alpha_over_n=m.lrn.alpha_over_n,
      lrn_across_towers=m.lrn.across_towers,
      lrn_order=m.lrn.order,
  )


def from_config(model_config: ml_collections.ConfigDict, **overrides):
  """The model `config.model` describes (see configs/paper.py): AlexNet
  (paper, torchvision), Cifar4 or CifarLocal, given the fields it has."""
  m = model_config
  module = {'cifar4': Cifar4, 'cifar_local': CifarLocal}.get(m.variant, AlexNet)
  kwargs = dict(
      variant=m.variant,
      num_classes=m.num_classes,
      towers=m.towers,
      activation=m.activation,
      **lrn_kwargs(m),
      pool_window=m.pool.window,
      pool_stride=m.pool.stride,
      dropout=m.dropout,
      conv1_padding=m.conv1_padding,
      weight_init_std=m.weight_init_std,
      fc_init_std=m.fc_init_std,
      bias_init=m.bias_init,
      width_scale=m.width_scale,
      dtype=jnp.dtype(m.dtype),
      formulation=m.formulation,
      precision=m.precision,
  )
  # The CIFAR nets have fewer fields (no towers, their own inits).
  fields = {f.name for f in dataclasses.fields(module)}
  kwargs = {k: v for k, v in kwargs.items() if k in fields}
  kwargs.update(overrides)
  return module(**kwargs)


def with_precision(model: nn.Module, precision: str) -> nn.Module:
  """`model` with its matmul/convolution precision set (ops.PRECISIONS).

  evaluate and predict use it for 'highest' by default: published
  accuracies are float32 figures, which the platform default (TF32 on
  A100/H100, bf16 passes on TPU) can move.
  """
  ops.precision_of(precision)  # one clear error for a bad name
  return model.clone(precision=precision)


def init(model: nn.Module, rng: jax.Array, image_size: int):
  """Initial variables for `model` at image_size x image_size inputs."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.jit(lambda r: model.init({'params': r}, x, train=False))(rng)
