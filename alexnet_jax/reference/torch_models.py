"""Plain-PyTorch AlexNets: the independent references for tests and benchmarks.

Written the way Caffe / cuda-convnet express the model, not the way model.py
does, so agreement between the two checks the tower semantics:

* `PaperAlexNet`: the paper's towers as `nn.Conv2d(groups=2)` in conv2, conv4
  and conv5 (conv1 as one 96-kernel conv, conv3 and the FC layers reading
  every channel), `nn.LocalResponseNorm` (either confined to each tower's
  channels or across all of them as Caffe), conv1 padded like the paper, like
  torchvision or not at all (227 input, Caffe).
* `TorchvisionAlexNet`: an exact twin of `torchvision.models.alexnet` (same
  `features.{0,3,6,8,10}` / `classifier.{1,4,6}` state_dict keys), without
  needing torchvision.

Both take NCHW float32 tensors and return logits. torch is a test and
benchmark dependency only: nothing in the package imports this module.

    from alexnet_jax.reference import torch_models
    net = torch_models.PaperAlexNet()             # paper model, 224 input
    net = torch_models.from_config(config.model)  # what model.py builds
    torch_models.load_flax_params(net, variables['params'])  # same weights
    step = torch_models.TrainStep(net, config.optim)  # the trainer's step
"""

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

PAPER_WIDTHS = (96, 256, 384, 384, 256, 4096, 4096)
TORCHVISION_WIDTHS = (64, 192, 384, 256, 256, 4096, 4096)

# conv1 padding as (left, right, top, bottom) for F.pad, by source.
CONV1_PADDING = {
    'paper': (0, 3, 0, 3),  # 224 input; Krizhevsky's code rounds up
    'torchvision': (2, 2, 2, 2),  # 224 input
    'caffe': (0, 0, 0, 0),  # 227 input
}


def _conv_out(size, kernel, stride, pad=0):
  return (size + pad - kernel) // stride + 1


class _LRN(nn.Module):
  """nn.LocalResponseNorm over all channels or over each tower's own.

  nn.LocalResponseNorm divides alpha by n (Caffe's convention); the paper
  puts alpha on the sum, i.e. torch's alpha = n * paper alpha.
  """

  def __init__(self, *, k, n, alpha, beta, alpha_over_n, groups):
    super().__init__()
    self.groups = groups
    self.norm = nn.LocalResponseNorm(
        n, alpha=alpha if alpha_over_n else alpha * n, beta=beta, k=k
    )

  def forward(self, x):
    if self.groups == 1:
      return self.norm(x)
    return torch.cat([self.norm(h) for h in x.chunk(self.groups, dim=1)], 1)


class PaperAlexNet(nn.Module):
  """The paper's AlexNet, Caffe-style (grouped convolutions for the towers).

  Args:
    num_classes: fc8 outputs.
    towers: 2 (groups=2 in conv2/4/5) or 1 (no groups; give the widths).
    widths: total kernels of conv1..conv5, fc6, fc7 (PAPER_WIDTHS; the
      one-GPU control halves the first four).
    image_size: input height = width (sets fc6's input size).
    conv1_padding: 'paper' (0 before, 3 after), 'torchvision' (2, 2) or
      'caffe' (none, for 227 input).
    activation: 'relu' | 'tanh'.
    lrn: False to drop both LRN layers.
    lrn_k, lrn_n, lrn_alpha, lrn_beta, lrn_alpha_over_n: the LRN constants;
      alpha_over_n=False is the paper (alpha on the sum).
    lrn_across_towers: True lets windows run over all channels (Caffe);
      False confines them to each tower (paper).
    lrn_order: 'lrn_pool' normalises then pools (the paper, bvlc_alexnet);
      'pool_lrn' pools then normalises (CaffeNet).
    pool_window, pool_stride: 3, 2 (overlapping) or 2, 2.
    dropout: rate after fc6 and fc7 (train mode only).
    flatten: 'chw' flattens pool5 the PyTorch/Caffe way; 'hwc' permutes to
      NHWC first (the TensorFlow port's and model.py's fc6 row order).
  """

  def __init__(
      self,
      num_classes=1000,
      *,
      towers=2,
      widths=PAPER_WIDTHS,
      image_size=224,
      conv1_padding='paper',
      activation='relu',
      lrn=True,
      lrn_k=2.0,
      lrn_n=5,
      lrn_alpha=1e-4,
      lrn_beta=0.75,
      lrn_alpha_over_n=False,
      lrn_across_towers=False,
      lrn_order='lrn_pool',
      pool_window=3,
      pool_stride=2,
      dropout=0.5,
      flatten='chw',
  ):
    super().__init__()
    if conv1_padding not in CONV1_PADDING:
      raise ValueError(
          f'conv1_padding={conv1_padding!r}: use one of '
          f'{", ".join(CONV1_PADDING)}'
      )
    if activation not in ('relu', 'tanh'):
      raise ValueError(f'activation={activation!r}: use relu or tanh')
    if flatten not in ('chw', 'hwc'):
      raise ValueError(f'flatten={flatten!r}: use chw or hwc')
    if lrn_order not in ('lrn_pool', 'pool_lrn'):
      raise ValueError(f'lrn_order={lrn_order!r}: use lrn_pool or pool_lrn')
    self.pool_first = lrn_order == 'pool_lrn'
    c1, c2, c3, c4, c5, f6, f7 = widths
    g = towers
    self.pad = CONV1_PADDING[conv1_padding]
    self.act = torch.relu if activation == 'relu' else torch.tanh
    self.flatten = flatten
    self.conv1 = nn.Conv2d(3, c1, 11, stride=4)
    self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=g)
    self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
    self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=g)
    self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=g)
    lrn_kw = dict(
        k=lrn_k,
        n=lrn_n,
        alpha=lrn_alpha,
        beta=lrn_beta,
        alpha_over_n=lrn_alpha_over_n,
        groups=1 if lrn_across_towers else g,
    )
    self.lrn1 = _LRN(**lrn_kw) if lrn else nn.Identity()
    self.lrn2 = _LRN(**lrn_kw) if lrn else nn.Identity()
    self.pool = nn.MaxPool2d(pool_window, pool_stride)
    s = _conv_out(image_size, 11, 4, sum(self.pad[:2]))
    for _ in range(3):
      s = _conv_out(s, pool_window, pool_stride)
    self.fc6 = nn.Linear(c5 * s * s, f6)
    self.fc7 = nn.Linear(f6, f7)
    self.fc8 = nn.Linear(f7, num_classes)
    self.drop = nn.Dropout(dropout)
    for layer in (
        self.conv1,
        self.conv2,
        self.conv3,
        self.conv4,
        self.conv5,
        self.fc6,
        self.fc7,
        self.fc8,
    ):
      nn.init.normal_(layer.weight, std=0.01)
      nn.init.zeros_(layer.bias)

  def forward(self, x):
    x = F.pad(x, self.pad)
    if self.pool_first:  # CaffeNet: relu, pool, norm
      x = self.lrn1(self.pool(self.act(self.conv1(x))))
      x = self.lrn2(self.pool(self.act(self.conv2(x))))
    else:  # the paper: relu, norm, pool
      x = self.pool(self.lrn1(self.act(self.conv1(x))))
      x = self.pool(self.lrn2(self.act(self.conv2(x))))
    x = self.act(self.conv3(x))
    x = self.act(self.conv4(x))
    x = self.pool(self.act(self.conv5(x)))
    if self.flatten == 'hwc':
      x = x.permute(0, 2, 3, 1)
    x = torch.flatten(x, 1)
    x = self.drop(self.act(self.fc6(x)))
    x = self.drop(self.act(self.fc7(x)))
    return self.fc8(x)


class TorchvisionAlexNet(nn.Module):
  """torchvision.models.AlexNet, layer for layer (same state_dict keys)."""

  def __init__(
      self, num_classes=1000, *, widths=TORCHVISION_WIDTHS, dropout=0.5
  ):
    super().__init__()
    c1, c2, c3, c4, c5, f6, f7 = widths
    self.features = nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(c5 * 6 * 6, f6),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(f6, f7),
        nn.ReLU(inplace=True),
        nn.Linear(f7, num_classes),
    )

  def forward(self, x):
    x = self.features(x)
    x = self.avgpool(x)
    x = torch.flatten(x, 1)
    return self.classifier(x)


def from_config(model_config, *, image_size=224, flatten='hwc'):
  """The PyTorch twin of `model.from_config(model_config)` (paper/torchvision).

  Widths come from `model.widths_for` so width_scale and towers agree; the
  layer semantics are this module's own. flatten='hwc' makes the fc6 weights
  interchangeable with model.py's (see load_flax_params).
  """
  from alexnet_jax.core import model as model_lib  # the width table, LRN fields

  m = model_config
  widths = model_lib.widths_for(m.variant, m.towers, m.width_scale)
  if m.variant == 'torchvision':
    return TorchvisionAlexNet(m.num_classes, widths=widths, dropout=m.dropout)
  if m.variant != 'paper':
    raise ValueError(
        f'no PyTorch reference for model.variant={m.variant!r}; '
        'use paper or torchvision'
    )
  return PaperAlexNet(
      m.num_classes,
      towers=m.towers,
      widths=widths,
      image_size=image_size,
      conv1_padding=m.conv1_padding,
      activation=m.activation,
      **model_lib.lrn_kwargs(m),
      pool_window=m.pool.window,
      pool_stride=m.pool.stride,
      dropout=m.dropout,
      flatten=flatten,
  )


def _all_towers(a, axis):
  """Concatenates a leading tower axis T into `axis` (a numpy array)."""
  return np.concatenate(list(np.asarray(a, np.float32)), axis=axis)


def _conv_weight(kernel):
  """model.py kernel [T, kh, kw, cin, cout/T] -> torch [cout, cin, kh, kw]."""
  return _all_towers(kernel, axis=-1).transpose(3, 2, 0, 1)


def _chw_columns(weight, channels):
  """Reorders fc6 columns from (H, W, C) to (C, H, W) flatten order."""
  out, n = weight.shape
  side = int(round((n // channels) ** 0.5))
  return (
      weight.reshape(out, side, side, channels)
      .transpose(0, 3, 1, 2)
      .reshape(out, n)
  )


@torch.no_grad()
def load_flax_params(net, params):
  """Copies model.py's params (paper or torchvision variant) into `net`.

  The inverse direction of convert.py, written independently: the tower
  axis is concatenated back into the channel axis, which is where
  nn.Conv2d(groups=2) keeps its groups.
  """
  conv = [params[f'conv{i}'] for i in range(1, 6)]
  fc = [params['fc6'], params['fc7']]
  if isinstance(net, TorchvisionAlexNet):
    convs = [net.features[i] for i in (0, 3, 6, 8, 10)]
    fcs = [net.classifier[1], net.classifier[4]]
    fc8, flatten = net.classifier[6], 'chw'
  else:
    convs = [net.conv1, net.conv2, net.conv3, net.conv4, net.conv5]
    fcs = [net.fc6, net.fc7]
    fc8, flatten = net.fc8, net.flatten

  def put(module, weight, bias):
    for name, value in (('weight', weight), ('bias', bias)):
      target = getattr(module, name)
      if tuple(target.shape) != value.shape:
        raise ValueError(
            f'{name} of {module} has shape {tuple(target.shape)}'
            f', the Flax params give {value.shape}'
        )
      target.copy_(torch.from_numpy(np.array(value, np.float32)))  # a copy

  for module, p in zip(convs, conv):
    put(module, _conv_weight(p['kernel']), _all_towers(p['bias'], -1))
  for i, (module, p) in enumerate(zip(fcs, fc)):
    weight = _all_towers(p['kernel'], axis=-1).T
    if i == 0 and flatten == 'chw':
      weight = _chw_columns(weight, convs[-1].out_channels)
    put(module, weight, _all_towers(p['bias'], -1))
  put(
      fc8,
      np.asarray(params['fc8']['kernel'], np.float32).T,
      np.asarray(params['fc8']['bias'], np.float32),
  )
  return net


class TrainStep:
  """The trainer's train step (alexnet_jax.core.train) for a PyTorch twin.

  The same work as train.make_train_step's step, so that timing one against
  the other compares like with like: forward with dropout, mean softmax
  cross-entropy, backward, the paper's update (optim.paper_sgd:
  v <- momentum v - lr mult (g + decay w), w <- w + v, with Caffe's bias
  switches) at the learning rate lr_fn(step), then the top-1 and top-5
  errors, the gradient norm and the norm of the updated parameters.
  torch.optim.SGD puts lr after the momentum (a drop rescales the whole
  velocity), so the rule is written here with the same multi-tensor
  (`_foreach`) kernels SGD uses.

  `step(images, labels)` takes NCHW float32 images and int64 labels and
  returns 0-d tensors: loss, top1_error, top5_error, learning_rate,
  grad_norm, param_norm (nothing is read back to Python: the caller reads
  what it needs, as the trainer does).

  Args:
    net: the twin (from_config).
    optim_config: config.optim (momentum, weight_decay, decay_biases,
      bias_lr_mult, lr).
    lr_fn: step -> learning rate; default the constant optim_config.lr.
    autocast: a dtype (torch.bfloat16) to run forward and loss under
      autocast (on the images' device), or None.
  """

  def __init__(self, net, optim_config, lr_fn=None, autocast=None):
    o = optim_config
    self.net = net
    self.lr_fn = lr_fn or (lambda step: o.lr)
    self.momentum = o.momentum
    self.autocast = autocast
    self.step = 0
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    self.params = [p for _, p in named]
    # (params, momentum buffers, weight decay, lr multiplier) per group.
    self.groups = []
    for bias in (False, True):
      ps = [p for n, p in named if n.endswith('bias') == bias]
      if ps:
        decay = o.weight_decay if (o.decay_biases or not bias) else 0.0
        self.groups.append(
            (
                ps,
                [torch.zeros_like(p) for p in ps],
                decay,
                o.bias_lr_mult if bias else 1.0,
            )
        )

  def __call__(self, images, labels):
    self.net.train()
    with torch.autocast(
        images.device.type,
        dtype=self.autocast or torch.bfloat16,
        enabled=self.autocast is not None,
    ):
      logits = self.net(images)
      losses = F.cross_entropy(logits, labels, reduction='none')
    loss = losses.mean()
    for p in self.params:
      p.grad = None
    loss.backward()
    lr = float(self.lr_fn(self.step))
    with torch.no_grad():
      grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
      for params, velocity, decay, mult in self.groups:
        grads = [p.grad for p in params]
        if decay:
          grads = torch._foreach_add(grads, params, alpha=decay)
        torch._foreach_mul_(velocity, self.momentum)
        torch._foreach_add_(velocity, grads, alpha=-lr * mult)
        torch._foreach_add_(params, velocity)
      param_norm = torch.nn.utils.get_total_norm(self.params)
      # The label's rank: how many classes score strictly higher.
      logits = logits.float()
      rank = (logits > logits.gather(1, labels[:, None])).sum(1)
      k = min(5, logits.shape[1])
      metrics = dict(
          loss=loss.detach(),
          top1_error=(rank >= 1).float().mean(),
          top5_error=(rank >= k).float().mean(),
          learning_rate=torch.tensor(lr, device=loss.device),
          grad_norm=grad_norm,
          param_norm=param_norm,
      )
    self.step += 1
    return metrics
