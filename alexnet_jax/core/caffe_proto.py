"""Caffe's binary files, read straight from the protobuf wire format.

A .caffemodel is a protobuf NetParameter, a .binaryproto a BlobProto. Only
the few fields below are read (no protobuf library, no caffe.proto):
varints, length-delimited fields and fixed32/64 values; everything else is
skipped. Reading only slices bytes and calls np.frombuffer, so no code in
the file can run. convert.py maps the layers onto the model.
"""

import pathlib

import numpy as np

from alexnet_jax.core.weight_files import WeightFileError

# V1LayerParameter.LayerType values (caffe.proto) as the newer type strings;
# only the first four matter, the rest make error messages readable.
_V1_TYPES = {
    4: 'Convolution',
    14: 'InnerProduct',
    15: 'LRN',
    17: 'Pooling',
    1: 'Accuracy',
    3: 'Concat',
    5: 'Data',
    6: 'Dropout',
    12: 'ImageData',
    18: 'ReLU',
    20: 'Softmax',
    21: 'SoftmaxWithLoss',
    22: 'Split',
    25: 'Eltwise',
    39: 'Deconvolution',
}
_LRN_FIELD = {'v1': 18, 'v2': 118}  # lrn_param in each layer message


class Truncated(Exception):
  pass


def _varint(buf, pos, end):
  value = shift = 0
  while True:
    if pos >= end or shift > 63:
      raise Truncated
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, pos


def _next_field(buf, pos, end):
  """(number, wire_type, value, pos_after) of the field at buf[pos].

  value: an int (varint), (begin, end) (length-delimited) or the start of
  the 4/8 raw bytes (fixed32/fixed64).
  """
  key, pos = _varint(buf, pos, end)
  number, wire = key >> 3, key & 7
  if number == 0:
    raise Truncated
  if wire == 0:
    value, pos = _varint(buf, pos, end)
  elif wire == 2:
    size, pos = _varint(buf, pos, end)
    value = (pos, pos + size)
    pos += size
  elif wire in (1, 5):
    value = pos
    pos += 8 if wire == 1 else 4
  else:  # groups (3, 4): never in Caffe
    raise Truncated
  if pos > end:
    raise Truncated
  return number, wire, value, pos


def _fields(buf, start, end):
  pos = start
  while pos < end:
    number, wire, value, pos = _next_field(buf, pos, end)
    yield number, wire, value


def _packed_varints(buf, begin, end):
  out, pos = [], begin
  while pos < end:
    value, pos = _varint(buf, pos, end)
    out.append(value)
  return out


def blob(buf, begin, end):
  """A BlobProto: (float32 values, stored shape (shape or legacy dims))."""
  legacy, dims, chunks = {}, None, []
  pos = begin
  while pos < end:
    number, wire, value, pos = _next_field(buf, pos, end)
    if number in (1, 2, 3, 4) and wire == 0:  # num, channels, h, w
      legacy[number] = value
    elif number == 7 and wire == 2:  # BlobShape
      dims = []
      for n, w, v in _fields(buf, *value):
        if n == 1 and w == 2:  # packed int64 dims
          dims += _packed_varints(buf, *v)
        elif n == 1 and w == 0:
          dims.append(v)
    elif number in (5, 8) and wire == 2:  # packed float / double
      a, b = value
      size = 4 if number == 5 else 8
      if (b - a) % size:
        raise Truncated
      chunks.append(
          np.frombuffer(buf, '<f4' if size == 4 else '<f8', (b - a) // size, a)
      )
    elif number == 5 and wire == 5:
      # Unpacked floats: a run of (tag 0x2d, 4 bytes), read in one go.
      start = value - 1
      raw = np.frombuffer(buf, np.uint8, end - start, start)
      count = (end - start) // 5
      is_tag = raw[: 5 * count : 5] == 0x2D
      run = count if is_tag.all() else int(np.argmin(is_tag))
      rows = raw[: 5 * run].reshape(run, 5)[:, 1:]
      chunks.append(np.ascontiguousarray(rows).view('<f4').ravel())
      pos = start + 5 * run
  values = (np.concatenate(chunks) if chunks else np.zeros(0)).astype(
      np.float32
  )
  if dims is None:
    dims = [legacy.get(i, 1) for i in (1, 2, 3, 4)] if legacy else [values.size]
  return values, tuple(int(d) for d in dims)


def _lrn_param(buf, begin, end):
  """LRNParameter with Caffe's defaults for absent fields."""
  p = dict(local_size=5, alpha=1.0, beta=0.75, k=1.0)
  names = {2: 'alpha', 3: 'beta', 5: 'k'}
  for number, wire, value in _fields(buf, begin, end):
    if number == 1 and wire == 0:
      p['local_size'] = value
    elif number in names and wire == 5:
      p[names[number]] = float(np.frombuffer(buf, '<f4', 1, value)[0])
  return p


def net_layers(buf):
  """[(name, type, [blobs], lrn_param)] of a NetParameter, in file order."""
  layers = []
  for number, wire, value in _fields(buf, 0, len(buf)):
    if wire != 2 or number not in (2, 100):
      continue
    v1 = number == 2
    name_f, type_f, blob_f = (4, 5, 6) if v1 else (1, 2, 7)
    lrn_f = _LRN_FIELD['v1' if v1 else 'v2']
    name, kind, blobs, lrn = '', None, [], None
    for n, w, v in _fields(buf, *value):
      if n == name_f and w == 2:
        name = bytes(buf[v[0] : v[1]]).decode('utf-8', 'replace')
      elif n == type_f and v1 and w == 0:
        kind = _V1_TYPES.get(v, f'V1 type {v}')
      elif n == type_f and not v1 and w == 2:
        kind = bytes(buf[v[0] : v[1]]).decode('utf-8', 'replace')
      elif n == blob_f and w == 2:
        blobs.append(blob(buf, *v))
      elif n == lrn_f and w == 2:
        lrn = _lrn_param(buf, *v)
    layers.append((name, kind, blobs, lrn))
  return layers


def read_caffemodel(path):
  """The layers of a .caffemodel, or one WeightFileError saying why not."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'weight file {path} does not exist')
  buf = path.read_bytes()
  try:
    layers = net_layers(buf)
  except (Truncated, ValueError):
    raise WeightFileError(
        f'{path} is not a Caffe .caffemodel (a protobuf NetParameter): its '
        'bytes do not parse as protobuf fields (a file cut off mid-layer '
        'or another kind of file)'
    ) from None
  if not layers:
    raise WeightFileError(
        f'{path} holds no Caffe layers (NetParameter.layer = 100 or the '
        'deprecated .layers = 2): not a .caffemodel'
    )
  return layers
