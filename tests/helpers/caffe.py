"""Caffe's AlexNet for the import tests: a PyTorch net with Caffe's
semantics (caffe_net) and a minimal writer of .caffemodel files (the
protobuf wire format), shared by test_convert, test_caffemodel and
test_notebook."""

import struct

import numpy as np
import torch

from alexnet_jax.core import model as model_lib
from alexnet_jax.reference import torch_models

TINY = 1 / 16


def images(n, size, scale=1.0, seed=2):
  """n random NHWC float32 images, N(0, scale)."""
  return (np.random.RandomState(seed).randn(n, size, size, 3) * scale).astype(
      np.float32
  )


def torch_logits(net, images):
  """The PyTorch net's logits of NHWC images."""
  with torch.no_grad():
    return net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def rel_err(a, b):
  """max |a - b| / max |b|."""
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def randomize(net, seed=0):
  """He-scaled weights and random biases: every layer shows in the logits."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in net.parameters():
      if p.ndim > 1:
        p.copy_(torch.randn(p.shape, generator=gen) * (2 / p[0].numel()) ** 0.5)
      else:
        p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
  return net.eval()


def caffe_net(width_scale, *, pool_first=False, num_classes=1000, seed=1):
  """bvlc_alexnet (CaffeNet with pool_first) as Caffe runs it: groups=2 in
  conv2/4/5, LRN k=1 alpha/n across all channels, 227 input, no conv1
  padding, fc6 over CHW-flat pool5. test_convert, test_caffemodel and test_notebook use it.
  """
  widths = model_lib.widths_for('paper', 2, width_scale)
  return randomize(
      torch_models.PaperAlexNet(
          num_classes,
          widths=widths,
          image_size=227,
          conv1_padding='caffe',
          lrn_k=1.0,
          lrn_n=5,
          lrn_alpha=1e-4,
          lrn_beta=0.75,
          lrn_alpha_over_n=True,
          lrn_across_towers=True,
          flatten='chw',
          lrn_order='pool_lrn' if pool_first else 'lrn_pool',
      ),
      seed=seed,
  )


# --- A minimal protobuf writer ------------------------------------------------


def _varint(n):
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _key(number, wire):
  return _varint(number << 3 | wire)


def _int(number, value):
  return _key(number, 0) + _varint(value)


def length_delimited(number, payload):
  return _key(number, 2) + _varint(len(payload)) + payload


def _float(number, value):
  return _key(number, 5) + struct.pack('<f', value)


def blob_proto(array, legacy, packed=True):
  """BlobProto: legacy num/channels/height/width = 1..4 or shape = 7."""
  array = np.asarray(array, np.float32)
  if legacy:
    dims = (1,) * (4 - array.ndim) + array.shape
    head = b''.join(_int(i + 1, d) for i, d in enumerate(dims))
  else:
    head = length_delimited(
        7, length_delimited(1, b''.join(_varint(d) for d in array.shape))
    )
  if packed:
    data = length_delimited(5, array.astype('<f4').tobytes())
  else:
    data = b''.join(_float(5, v) for v in array.ravel())
  return head + _int(6, 0) + data  # an unknown-to-us diff-ish varint


_V1 = dict(
    Convolution=4,
    InnerProduct=14,
    LRN=15,
    Pooling=17,
    ReLU=18,
    Dropout=6,
    Softmax=20,
    Data=5,
)


def _layer(name, kind, blobs=(), *, v1, lrn=None, packed=True):
  """A V1LayerParameter (layers = 2) or a LayerParameter (layer = 100)."""
  if v1:
    msg = length_delimited(4, name.encode()) + _int(5, _V1[kind])
    msg += b''.join(
        length_delimited(6, blob_proto(b, legacy=True, packed=packed))
        for b in blobs
    )
    if lrn:
      msg += length_delimited(18, lrn)
    return length_delimited(2, msg)
  msg = length_delimited(1, name.encode()) + length_delimited(2, kind.encode())
  msg += length_delimited(3, b'data')  # bottom: skipped
  msg += b''.join(
      length_delimited(7, blob_proto(b, legacy=False)) for b in blobs
  )
  if lrn:
    msg += length_delimited(118, lrn)
  return length_delimited(100, msg)


def lrn_param(alpha=1e-4):
  return _int(1, 5) + _float(2, alpha) + _float(3, 0.75) + _float(5, 1.0)


def caffe_sequence(pool_first):
  """(name, kind) of bvlc_alexnet's deploy net; CaffeNet pools first."""
  seq = []
  for i in (1, 2):
    norm_pool = [(f'norm{i}', 'LRN'), (f'pool{i}', 'Pooling')]
    seq += [(f'conv{i}', 'Convolution'), (f'relu{i}', 'ReLU')]
    seq += norm_pool[::-1] if pool_first else norm_pool
  for i in (3, 4, 5):
    seq += [(f'conv{i}', 'Convolution'), (f'relu{i}', 'ReLU')]
  seq += [('pool5', 'Pooling')]
  for i in (6, 7):
    seq += [
        (f'fc{i}', 'InnerProduct'),
        (f'relu{i}', 'ReLU'),
        (f'drop{i}', 'Dropout'),
    ]
  return seq + [('fc8', 'InnerProduct'), ('prob', 'Softmax')]


def net_blobs(net):
  """Caffe's blobs from the torch twin: OIHW conv weights, (out, in) fc
  weights with fc6's columns in pool5's (C, H, W) order - torch's own."""
  return {
      name: [
          getattr(net, name).weight.detach().numpy(),
          getattr(net, name).bias.detach().numpy(),
      ]
      for name in (
          'conv1',
          'conv2',
          'conv3',
          'conv4',
          'conv5',
          'fc6',
          'fc7',
          'fc8',
      )
  }


def write_caffemodel(
    path, blobs, *, v1, pool_first=False, packed=True, seq=None, lrn=None
):
  seq = seq or caffe_sequence(pool_first)
  out = length_delimited(1, b'CaffeNet' if pool_first else b'AlexNet')
  out += length_delimited(3, b'data') + _int(4, 10)  # input, input_dim: skipped
  for name, kind in seq:
    out += _layer(
        name,
        kind,
        blobs.get(name, ()),
        v1=v1,
        packed=packed,
        lrn=(lrn or lrn_param()) if kind == 'LRN' else None,
    )
  path.write_bytes(out)
  return path
