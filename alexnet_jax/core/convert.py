"""Imports published AlexNet weights: torchvision's and Caffe's.

    from alexnet_jax.core import convert
    model, variables = convert.from_torchvision('alexnet.pth')
    model, variables = convert.from_caffemodel('bvlc_alexnet.caffemodel')
    model, variables = convert.from_caffe_npy('bvlc_alexnet.npy')
    logits = model.apply(variables, images, train=False)  # NHWC, normalised

`from_torchvision` reads a `torchvision.models.alexnet` state_dict saved with
`torch.save` and returns the torchvision variant (224x224 input). The images
it wants: RGB in [0, 1], minus mean (0.485, 0.456, 0.406), divided by std
(0.229, 0.224, 0.225) (`preprocessing('torchvision')`).

`from_caffe_npy` reads the layout of the widely used TensorFlow port of
Caffe's bvlc_alexnet: `np.save` of a dict {'conv1'..'conv5', 'fc6'..'fc8':
[W, b]} (or {'weights': W, 'biases': b}), conv W as (kh, kw, in_channels
per group, out) with the grouped layers conv2/4/5 holding both groups'
kernels along `out`, fc W as (in, out) with fc6's rows in (H, W, C) order. It
returns the two-tower paper model with Caffe's constants (227x227 input,
conv1 unpadded, LRN k=1, alpha 1e-4 / n, windows across both towers as
Caffe's grouped convolutions have no towers). The images it wants: BGR in
0..255 minus the per-channel mean (104, 117, 123)
(`preprocessing('caffe-npy')`, which also records Caffe's 256x256 warp).

`from_caffemodel` reads Caffe's own binary .caffemodel (bvlc_alexnet or
CaffeNet, either protobuf layout) with a small wire-format reader
(caffe_proto.py), puts the
blobs into the .npy port's layout and maps them with the same code, so both
give the same model; `read_mean_binaryproto` reads Caffe's mean image.

Loading never runs code from the file (weight_files.py):
`torch.load(weights_only=True)`, and the .npy dict goes through an unpickler that admits numpy arrays, dicts and
lists only (`np.load(allow_pickle=True)` would execute whatever a crafted
file contains); a .caffemodel is only sliced into numbers.

The command line (`alexnet_jax/convert.py`) writes a model export that
`checkpoint.load` reads, with the preprocessing and class names recorded:

    python -m alexnet_jax.convert --format=torchvision --input=alexnet.pth \\
        --output=/tmp/alexnet_torchvision
"""

import dataclasses
import importlib.resources
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.configs import paper
from alexnet_jax.core import caffe_proto
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import weight_files
from alexnet_jax.core.weight_files import WeightFileError

FORMATS = ('torchvision', 'caffe-npy', 'caffemodel')

_PREPROCESSING = {
    'torchvision': dict(
        channel_order='RGB',
        pixel_scale=1.0,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        image_size=224,
        resize_size=256,
        # Resize(256) (shorter side, PIL antialiased bilinear), CenterCrop.
        eval_resize='shorter_side',
        resize_method='antialias',
    ),
    'caffe-npy': dict(
        channel_order='BGR',
        pixel_scale=255.0,
        mean=[104.0, 117.0, 123.0],
        std=[1.0, 1.0, 1.0],
        image_size=227,
        resize_size=256,
        # convert_imageset's 256x256 warp (OpenCV bilinear), centre 227.
        eval_resize='warp',
        resize_method='bilinear',
    ),
}
_PREPROCESSING['caffemodel'] = dict(_PREPROCESSING['caffe-npy'])


def _check_format(fmt):
  if fmt not in FORMATS:
    raise ValueError(
        f'weight format {fmt!r} is not one of {", ".join(FORMATS)}'
    )


def preprocessing(fmt: str) -> dict:
  """What the images fed to the imported weights must look like.

  model input = (pixels in [0, pixel_scale], channel_order - mean) / std,
  the `preprocessing` dict checkpoints carry (see checkpoint.py).
  """
  _check_format(fmt)
  return {
      k: list(v) if isinstance(v, list) else v
      for k, v in _PREPROCESSING[fmt].items()
  }


def _data_file(name):
  return importlib.resources.files('alexnet_jax.assets').joinpath(name)


def imagenet_class_names() -> list[str]:
  """The 1000 ILSVRC-2012 class names, in label order (sorted WNIDs)."""
  return _data_file('imagenet_classes.txt').read_text().splitlines()


def imagenet_wnids() -> list[str]:
  """The 1000 ILSVRC-2012 WordNet ids, sorted (= label order)."""
  return _data_file('imagenet_wnids.txt').read_text().splitlines()


def class_names(num_classes: int) -> list[str]:
  """ImageNet's names for 1000 classes; 'class i' for a fine-tuned head."""
  if num_classes == 1000:
    return imagenet_class_names()
  return [f'class {i}' for i in range(num_classes)]


def config_for(
    fmt: str,
    *,
    num_classes: int = 1000,
    width_scale: float = 1.0,
    lrn_order: str = 'lrn_pool',
) -> ml_collections.ConfigDict:
  """configs/paper.py, changed to describe the imported model.

  config.data gets the input size and, as far as its fields can say it, the
  normalisation. It has no channel-order field, so for the Caffe weights
  the mean is Caffe's 0..255 one in RGB order and the input must still be
  given in BGR: the `preprocessing(fmt)` dict recorded in the export is the
  authority.
  """
  _check_format(fmt)
  config = paper.get_config()
  m, d = config.model, config.data
  m.num_classes = num_classes
  m.width_scale = width_scale
  if fmt == 'torchvision':
    m.variant = 'torchvision'
    m.towers = 1
    m.lrn.enabled = False
    m.conv1_padding = 'torchvision'
    m.bias_init = 0.0
    d.pixel_scale = 1.0
    d.mean = (0.485, 0.456, 0.406)
    d.std = (0.229, 0.224, 0.225)
  else:
    m.variant = 'paper'
    m.towers = 2
    m.conv1_padding = 'caffe'
    m.lrn.update(
        dict(
            enabled=True,
            k=1.0,
            n=5,
            alpha=1e-4,
            beta=0.75,
            alpha_over_n=True,
            across_towers=True,
            order=lrn_order,
        )
    )
    m.bias_init = 0.1
    m.fc_init_std = 0.005
    d.pixel_scale = 255.0
    d.mean = (123.0, 117.0, 104.0)  # RGB order, 0-255
    d.std = (1.0, 1.0, 1.0)
  d.image_size = _PREPROCESSING[fmt]['image_size']
  d.resize_size = _PREPROCESSING[fmt]['resize_size']
  d.normalization = 'channel'
  return config


# --- Layouts ------------------------------------------------------------------


def _check_layout(path, got: dict, expected: dict):
  """Every expected key present with its shape, and nothing else."""
  problems = []
  for key, shape in expected.items():
    if key not in got:
      problems.append(f'missing {key!r} (expected shape {shape})')
    elif tuple(np.shape(got[key])) != shape:
      problems.append(
          f'{key!r} has shape {tuple(np.shape(got[key]))}, expected {shape}'
      )
  extra = sorted(set(got) - set(expected))
  if extra:
    problems.append(f'unexpected keys {", ".join(map(repr, extra))}')
  if problems:
    raise WeightFileError(
        f'{path} does not hold the expected AlexNet '
        f'weights: {"; ".join(problems)}'
    )


def _num_classes(value, default=1000):
  shape = np.shape(value) if value is not None else ()
  return int(shape[0]) if len(shape) == 1 and shape[0] > 0 else default


def _towers(a, towers):
  """[..., out] -> [towers, ..., out / towers]: tower t = out block t."""
  a = np.asarray(a, np.float32)
  split = a.reshape(*a.shape[:-1], towers, a.shape[-1] // towers)
  return np.moveaxis(split, -2, 0)


def _finish(fmt, path, params, num_classes, width_scale, **config_fields):
  config = config_for(
      fmt, num_classes=num_classes, width_scale=width_scale, **config_fields
  )
  module = model_lib.from_config(config.model)
  size = config.data.image_size
  # Self-check: the tree is exactly what the model builds (free: no compute).
  want = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
  )['params']
  want = jax.tree_util.tree_map(lambda s: s.shape, want)
  got = jax.tree_util.tree_map(np.shape, params)
  if want != got:
    raise WeightFileError(
        f'{path}: converted parameters {got} do not fit the model {want}'
    )
  return module, {'params': jax.tree_util.tree_map(jnp.asarray, params)}


_TV_CONVS = (
    'features.0',
    'features.3',
    'features.6',
    'features.8',
    'features.10',
)
_TV_KERNELS = (11, 5, 3, 3, 3)


def _torchvision_layout(num_classes, width_scale):
  c = model_lib.widths_for('torchvision', 1, width_scale)
  expected = {}
  cin = 3
  for name, k, cout in zip(_TV_CONVS, _TV_KERNELS, c[:5]):
    expected[f'{name}.weight'] = (cout, cin, k, k)
    expected[f'{name}.bias'] = (cout,)
    cin = cout
  for name, din, dout in (
      ('classifier.1', c[4] * 36, c[5]),
      ('classifier.4', c[5], c[6]),
      ('classifier.6', c[6], num_classes),
  ):
    expected[f'{name}.weight'] = (dout, din)
    expected[f'{name}.bias'] = (dout,)
  return expected


def from_torchvision(path, *, width_scale: float = 1.0):
  """(model, variables) from a torchvision alexnet state_dict (torch.save).

  num_classes is read from classifier.6 (a fine-tuned head works);
  width_scale < 1 reads a proportionally narrower model (tests).
  """
  sd = weight_files.read_torch_state_dict(path)
  num_classes = _num_classes(sd.get('classifier.6.bias'))
  _check_layout(path, sd, _torchvision_layout(num_classes, width_scale))
  params = {}
  for i, name in enumerate(_TV_CONVS):
    w = sd[f'{name}.weight'].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    params[f'conv{i + 1}'] = dict(kernel=w[None], bias=sd[f'{name}.bias'][None])
  # fc6: torchvision flattens pool5 as (C, H, W); the model as (H, W, C).
  w6 = sd['classifier.1.weight'].T  # [C*6*6, 4096]
  c5 = w6.shape[0] // 36
  w6 = w6.reshape(c5, 6, 6, -1).transpose(1, 2, 0, 3).reshape(36 * c5, -1)
  params['fc6'] = dict(kernel=w6[None], bias=sd['classifier.1.bias'][None])
  params['fc7'] = dict(
      kernel=sd['classifier.4.weight'].T[None],
      bias=sd['classifier.4.bias'][None],
  )
  params['fc8'] = dict(
      kernel=sd['classifier.6.weight'].T, bias=sd['classifier.6.bias']
  )
  return _finish('torchvision', path, params, num_classes, width_scale)


# Caffe's AlexNet names its weighted layers as ours are named.
_CAFFE_LAYERS = model_lib.LAYERS


def _caffe_layout(num_classes, width_scale):
  c1, c2, c3, c4, c5, f6, f7 = model_lib.widths_for('paper', 2, width_scale)
  shapes = {
      'conv1': (11, 11, 3, c1),
      'conv2': (5, 5, c1 // 2, c2),  # group 2: half the inputs per group
      'conv3': (3, 3, c2, c3),
      'conv4': (3, 3, c3 // 2, c4),  # group 2
      'conv5': (3, 3, c4 // 2, c5),  # group 2
      'fc6': (6 * 6 * c5, f6),
      'fc7': (f6, f7),
      'fc8': (f7, num_classes),
  }
  expected = {}
  for name, shape in shapes.items():
    expected[f'{name}/W'] = shape
    expected[f'{name}/b'] = (shape[-1],)
  return expected


def _caffe_flat(path, layers: dict) -> dict:
  """{'conv1': [W, b]} (or {'weights': W, 'biases': b}) -> {'conv1/W': W}."""
  flat = {}
  for name, value in layers.items():
    if isinstance(value, dict) and set(value) == {'weights', 'biases'}:
      value = [value['weights'], value['biases']]
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
      raise WeightFileError(
          f'{path}: layer {name!r} must be [W, b], got '
          f'{type(value).__name__}'
      )
    for part, array in zip(('W', 'b'), value):
      if not isinstance(array, np.ndarray):
        raise WeightFileError(
            f'{path}: {name!r} {part} is a '
            f'{type(array).__name__}, not a numpy array'
        )
      flat[f'{name}/{part}'] = array
  return flat


def from_caffe_npy(path, *, width_scale: float = 1.0):
  """(model, variables) from the Caffe bvlc_alexnet port's .npy dict.

  The grouped layers' two groups become the model's two towers (group g's
  kernels are columns [g*out/2, (g+1)*out/2) of W, and read group g's
  inputs, exactly a tower). num_classes is read from fc8.
  """
  flat = _caffe_flat(path, weight_files.read_npy_dict(path))
  return _from_caffe_layers('caffe-npy', path, flat, width_scale)


def _from_caffe_layers(fmt, path, flat, width_scale, **config_fields):
  """The one Caffe -> model mapping, from the .npy port's layout.

  Both Caffe importers end here: {'conv1/W': (kh, kw, in/group, out),
  'fc6/W': (H*W*C rows, out), ..., 'fc8/b'}.
  """
  num_classes = _num_classes(flat.get('fc8/b'))
  _check_layout(path, flat, _caffe_layout(num_classes, width_scale))
  params = {}
  for name in _CAFFE_LAYERS[:-1]:
    params[name] = dict(
        kernel=_towers(flat[f'{name}/W'], 2), bias=_towers(flat[f'{name}/b'], 2)
    )
  params['fc8'] = dict(
      kernel=np.asarray(flat['fc8/W'], np.float32),
      bias=np.asarray(flat['fc8/b'], np.float32),
  )
  return _finish(fmt, path, params, num_classes, width_scale, **config_fields)


def _names(layers, limit=8):
  shown = [f'{name or "?"} ({kind})' for name, kind, *_ in layers[:limit]]
  if len(layers) > limit:
    shown.append(f'... {len(layers)} in all')
  return ', '.join(shown)


_CAFFE_KINDS = ('Convolution',) * 5 + ('InnerProduct',) * 3


def _check_caffe_net(path, layers):
  """8 weight layers in AlexNet's order, LRN as Caffe's AlexNet has it.

  Returns the LRN order ('lrn_pool' bvlc_alexnet, 'pool_lrn' CaffeNet).
  Layers are matched by position, not name: fine-tuned copies rename fc8.
  """
  weighted = [layer for layer in layers if layer[2]]
  kinds = tuple(kind for _, kind, *_ in weighted)
  if kinds != _CAFFE_KINDS:
    if len(kinds) < 8 and kinds == _CAFFE_KINDS[: len(kinds)]:
      raise WeightFileError(
          f'{path} holds only {len(kinds)} layers with weights '
          f'({_names(weighted)}); AlexNet has 8 (conv1-conv5, fc6-fc8): the '
          'file looks truncated'
      )
    raise WeightFileError(
        f'{path} is not an AlexNet or CaffeNet caffemodel: its layers with '
        f'weights are {_names(weighted)}; expected 5 Convolution then 3 '
        'InnerProduct layers (conv1-conv5, fc6-fc8)'
    )
  kinds = [kind for _, kind, *_ in layers]
  lrns = [(name, lrn) for name, kind, _, lrn in layers if kind == 'LRN']
  if len(lrns) != 2 or 'Pooling' not in kinds:
    raise WeightFileError(
        f'{path} has {len(lrns)} LRN layers and {kinds.count("Pooling")} '
        'Pooling layers; AlexNet and CaffeNet have 2 LRN (norm1, norm2) and '
        f'3 Pooling layers (layers: {_names(layers, 24)})'
    )
  want = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
  for name, lrn in lrns:
    got = lrn or dict(local_size=5, alpha=1.0, beta=0.75, k=1.0)
    if got['local_size'] != 5 or not all(
        np.isclose(got[key], want[key], rtol=1e-5)
        for key in ('alpha', 'beta', 'k')
    ):
      raise WeightFileError(
          f'{path}: LRN layer {name!r} has {got}; bvlc_alexnet and CaffeNet '
          f'use {want}'
      )
  return (
      'lrn_pool' if kinds.index('LRN') < kinds.index('Pooling') else 'pool_lrn'
  )


def _caffe_blob_layout(num_classes, width_scale):
  """_caffe_layout's shapes as Caffe stores them: OIHW and (out, in)."""
  out = {}
  for key, shape in _caffe_layout(num_classes, width_scale).items():
    if key.endswith('/W'):
      shape = (
          (shape[3], shape[2], shape[0], shape[1])
          if len(shape) == 4
          else shape[::-1]
      )
    out[key] = shape
  return out


def _caffemodel_flat(path, layers) -> dict:
  """{'conv1/W': OIHW, 'conv1/b': [O], 'fc6/W': [out, in], ...}."""
  weighted = [layer for layer in layers if layer[2]]
  flat = {}
  for ours, (name, _, blobs, _) in zip(_CAFFE_LAYERS, weighted):
    if len(blobs) != 2:
      raise WeightFileError(
          f'{path}: layer {name!r} has {len(blobs)} blobs; '
          'expected 2 (weights and biases)'
      )
    for part, (values, dims) in zip(('W', 'b'), blobs):
      if values.size != int(np.prod(dims)):
        raise WeightFileError(
            f'{path}: layer {name!r} {part} holds {values.size} values for '
            f'shape {dims}: the file is truncated or corrupt'
        )
      rank = (
          4
          if part == 'W' and ours.startswith('conv')
          else (2 if part == 'W' else 1)
      )
      # Legacy 4-D dims pad inner-product weights and biases with 1s.
      while len(dims) > rank and dims[0] == 1:
        dims = dims[1:]
      flat[f'{ours}/{part}'] = values.reshape(dims)
  return flat


def from_caffemodel(path, *, width_scale: float = 1.0):
  """(model, variables) from Caffe's binary .caffemodel (bvlc_alexnet or
  bvlc_reference_caffenet), the same model `from_caffe_npy` gives.

  Either layout (`layer` or the deprecated `layers`) and either BlobProto
  shape form; CaffeNet's pool-before-norm order becomes model.lrn.order.
  """
  model, variables, _ = _import_caffemodel(path, width_scale)
  return model, variables


def _import_caffemodel(path, width_scale):
  layers = caffe_proto.read_caffemodel(path)
  lrn_order = _check_caffe_net(path, layers)
  flat = _caffemodel_flat(path, layers)
  num_classes = _num_classes(flat.get('fc8/b'))
  _check_layout(path, flat, _caffe_blob_layout(num_classes, width_scale))
  # Caffe's layout -> the .npy port's, which _from_caffe_layers maps to ours.
  for name in _CAFFE_LAYERS:
    w = flat[f'{name}/W']
    if w.ndim == 4:
      flat[f'{name}/W'] = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif name == 'fc6':  # columns (C, H, W)
      c5 = flat['conv5/W'].shape[-1]
      side = int(round((w.shape[1] // c5) ** 0.5))
      flat[f'{name}/W'] = (
          w.reshape(-1, c5, side, side)
          .transpose(2, 3, 1, 0)
          .reshape(-1, w.shape[0])
      )  # rows (H, W, C)
    else:
      flat[f'{name}/W'] = w.T
  model, variables = _from_caffe_layers(
      'caffemodel', path, flat, width_scale, lrn_order=lrn_order
  )
  return model, variables, lrn_order


def read_mean_binaryproto(path, resize_size: int = 256) -> np.ndarray:
  """Caffe's mean image (e.g. ilsvrc_2012_mean.binaryproto: a BlobProto,
  1x3x256x256 BGR 0..255 CHW) as the pipeline's mean image: float32
  [resize_size, resize_size, 3] RGB in [0, 1] (preprocess.Params)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'mean file {path} does not exist')
  buf = path.read_bytes()
  try:
    values, dims = caffe_proto.blob(buf, 0, len(buf))
  except (caffe_proto.Truncated, ValueError):
    values, dims = np.zeros(0), ()
  while len(dims) > 3 and dims[0] == 1:
    dims = dims[1:]
  want = (3, resize_size, resize_size)
  if dims != want or values.size != np.prod(want):
    raise WeightFileError(
        f'{path} is not a Caffe mean .binaryproto of shape {want} (BGR, '
        f'0..255, like ilsvrc_2012_mean.binaryproto): it holds '
        f'{values.size} values of shape {dims}'
    )
  bgr = values.reshape(want)
  return np.ascontiguousarray(bgr[::-1].transpose(1, 2, 0) / 255.0, np.float32)


# --- Everything an export needs -----------------------------------------------


@dataclasses.dataclass
class Imported:
  model: object
  variables: dict
  config: ml_collections.ConfigDict
  preprocessing: dict
  class_names: list
  mean_image: np.ndarray | None = None  # preprocess.Params.mean_image


def load(
    fmt: str, path, *, width_scale: float = 1.0, mean_file=None
) -> Imported:
  """The model plus its config, preprocessing and class names.

  mean_file: Caffe's mean .binaryproto (caffemodel and caffe-npy); its
  image goes into `Imported.mean_image` and the export, and the
  preprocessing subtracts it instead of the per-channel mean.
  """
  _check_format(fmt)
  fields = {}
  if fmt == 'caffemodel':
    module, variables, lrn_order = _import_caffemodel(path, width_scale)
    fields['lrn_order'] = lrn_order
  else:
    reader = from_torchvision if fmt == 'torchvision' else from_caffe_npy
    module, variables = reader(path, width_scale=width_scale)
  record = preprocessing(fmt)
  mean_image = None
  if mean_file is not None:
    if fmt == 'torchvision':
      raise ValueError(
          "a mean .binaryproto is Caffe's; torchvision weights "
          'use per-channel mean/std (drop --mean_file)'
      )
    mean_image = read_mean_binaryproto(mean_file, record['resize_size'])
  num_classes = module.num_classes
  return Imported(
      module,
      variables,
      config_for(
          fmt, num_classes=num_classes, width_scale=width_scale, **fields
      ),
      record,
      class_names(num_classes),
      mean_image,
  )
