"""Reading weight files without running code from them.

A pickle can run any function it names, so: the dict `np.save` writes (the
caffe-npy format) goes through an unpickler that admits numpy arrays, dicts
and lists only (`np.load(allow_pickle=True)` would execute whatever a
crafted file contains), and a torch.save state_dict through
`torch.load(weights_only=True)`. convert.py maps what these return onto the
model's parameters; caffe_proto.py reads Caffe's binary files.
"""

import os
import pathlib
import pickle
import re

import numpy as np


class WeightFileError(ValueError):
  """A weight file is unreadable, unsafe, or not the expected layout."""


def _numpy_reconstruct():
  try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
  except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
  return _reconstruct


# The only globals a pickled dict/list of numpy arrays refers to: how an
# ndarray and its dtype rebuild themselves (module names of numpy 1 and 2).
_ALLOWED_GLOBALS = {
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Builds numpy arrays, dicts, lists and plain values; refuses the rest.

  Any other class or function (os.system, builtins.eval, ...) is refused
  before it is looked up, so nothing in the file can run.
  """

  def find_class(self, module, name):
    make = _ALLOWED_GLOBALS.get((module, name))
    if make is None:
      raise pickle.UnpicklingError(
          f'refusing to load {module}.{name}: a weight file may hold only '
          'numpy arrays in dicts and lists'
      )
    return make()

  def persistent_load(self, pid):
    raise pickle.UnpicklingError('refusing a persistent id in a weight file')


def read_npy_dict(path) -> dict:
  """The dict stored by `np.save(path, {...})`, read without running code."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'weight file {path} does not exist')
  fmt = np.lib.format
  with open(path, 'rb') as f:
    try:
      version = fmt.read_magic(f)
      header = {
          (1, 0): fmt.read_array_header_1_0,
          (2, 0): fmt.read_array_header_2_0,
      }.get(version)
      if header is None:
        raise ValueError(f'unsupported .npy version {version}')
      shape, _, dtype = header(f)
    except ValueError as e:
      raise WeightFileError(
          f'{path} is not a .npy file ({e}); the caffe-npy format is '
          "np.save('FILE.npy', {'conv1': [W, b], ...})"
      ) from None
    if dtype != np.dtype(object) or shape != ():
      raise WeightFileError(
          f'{path} holds an array of shape {shape} and dtype {dtype}, not the '
          "dict of layers np.save('FILE.npy', {'conv1': [W, b], ...}) writes"
      )
    try:
      obj = _ArraysOnlyUnpickler(f, encoding='latin1').load()
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises any kind
      raise WeightFileError(f'{path}: {e}') from None
  if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
    obj = obj.item()
  if not isinstance(obj, dict):
    raise WeightFileError(
        f'{path} holds a {type(obj).__name__}, not a dict '
        "{'conv1': [W, b], ..., 'fc8': [W, b]}"
    )
  return {
      k.decode('latin1') if isinstance(k, bytes) else k: v
      for k, v in obj.items()
  }


def read_torch_state_dict(path) -> dict:
  """A state_dict saved by torch.save, as numpy arrays; never runs code."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'weight file {path} does not exist')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        'reading torchvision weights needs PyTorch: pip install '
        'torch==2.13.0 (see requirements-test.txt)'
    ) from None
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise WeightFileError(
        f'{path} is empty (0 bytes): not a torch.save file; an interrupted '
        'download?'
    )
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    # torch's message suggests weights_only=False; keep only the reason.
    reason = re.search(r'WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)', str(e))
    raise WeightFileError(
        f'{path} was refused by torch.load(weights_only=True) '
        f'({reason.group(1) if reason else e}): only a state_dict of tensors '
        '(torch.save(model.state_dict(), FILE)) is read, never code'
    ) from None
  except Exception as e:  # noqa: BLE001 - torch raises many kinds
    # Some say nothing (EOFError of a truncated file): name the kind then.
    reason = str(e).strip() or f'{type(e).__name__}, the file ends early'
    raise WeightFileError(
        f'{path} is not a torch.save file: {reason}'
    ) from None
  # Common wrappers: {'state_dict': ...}, {'model': ...}, DataParallel names.
  for key in ('state_dict', 'model'):
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
  if not isinstance(state, dict):
    raise WeightFileError(
        f'{path} holds a {type(state).__name__}, not a '
        'state_dict (a dict of tensors)'
    )
  out = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise WeightFileError(
          f'{path}: {key!r} is a {type(value).__name__}, not a tensor'
      )
    out[key.removeprefix('module.')] = value.detach().float().numpy()
  return out
