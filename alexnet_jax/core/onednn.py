"""oneDNN convolutions for XLA:CPU: build, load and call them.

XLA:CPU's own convolutions (YNNPACK in jaxlib 0.10) run the torchvision
variant's training step at about 0.7x PyTorch on CPU; PyTorch's come from
oneDNN. `csrc/onednn_conv.cc` wraps oneDNN's forward, input-gradient and
kernel-gradient convolutions as XLA FFI custom calls, so a jitted step calls
the same kernels PyTorch does, in place on XLA's buffers (README "Speed").
bfloat16 convolutions run on oneDNN too where it has fast kernels for
them on this CPU (AMX or AVX512-BF16; `bfloat16_fast()`).

The library is compiled on first use (g++, about ten seconds) against the
headers of the `onednn-devel-cpu-gomp` wheel and jaxlib's FFI headers, and
cached under $ALEXNET_JAX_CACHE (default ~/.cache/alexnet_jax), keyed by
everything that goes into it. Anything missing (not x86-64 Linux, no
compiler, no wheel) makes `unavailable()` say why, and ops.conv2d then uses
XLA's convolutions: same maths, slower on CPU.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np

SOURCE = pathlib.Path(__file__).with_name('csrc') / 'onednn_conv.cc'
TARGETS = {'fwd': 'AlexnetConvFwd', 'input_grad': 'AlexnetConvBwdData',
           'kernel_grad': 'AlexnetConvBwdKernel'}
LIBRARY_DIST = 'onednn-cpu-gomp'
HEADERS_DIST = 'onednn-devel-cpu-gomp'
# Where requirements.txt installs those wheels (its environment markers).
PLATFORM_SUPPORTED = (sys.platform == 'linux'
                      and platform.machine() == 'x86_64')


class Unavailable(RuntimeError):
  """The oneDNN convolutions cannot be built or loaded here."""


def _dist_file(dist: str, suffix: str) -> pathlib.Path:
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(
        f'the {dist!r} wheel is not installed (requirements.txt installs it '
        'on x86-64 Linux)') from None
  for f in files:
    if str(f).endswith(suffix):
      return pathlib.Path(f.locate()).resolve()
  raise Unavailable(f'{dist!r} is installed but has no {suffix}')


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      'ALEXNET_JAX_CACHE', pathlib.Path.home() / '.cache' / 'alexnet_jax'))


def build() -> pathlib.Path:
  """Compiles the custom calls (once per source/oneDNN/jaxlib) and returns
  the shared library's path. Raises Unavailable, saying why."""
  libdnnl = _dist_file(LIBRARY_DIST, '/libdnnl.so.3')
  header = _dist_file(HEADERS_DIST, '/oneapi/dnnl/dnnl.hpp')
  include = header.parent.parent.parent
  compiler = os.environ.get('CXX', 'g++')
  if shutil.which(compiler) is None:
    raise Unavailable(f'no C++ compiler: {compiler!r} is not on PATH '
                      '(set CXX to one)')
  command = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w',
             f'-I{jax.ffi.include_dir()}', f'-I{include}', str(SOURCE),
             str(libdnnl), f'-Wl,-rpath,{libdnnl.parent}']
  key = hashlib.sha256('\0'.join(
      [SOURCE.read_text(), jax.__version__, str(libdnnl.stat().st_size)]
      + command).encode()).hexdigest()[:16]
  out = cache_dir() / f'onednn_conv-{key}.so'
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target and rename: concurrent builders never see a
  # half-written library.
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = pathlib.Path(tmp) / out.name
    result = subprocess.run(command + ['-o', str(tmp_out)],
                            capture_output=True, text=True)
    if result.returncode:
      raise Unavailable(f'compiling {SOURCE.name} failed:\n'
                        f'{" ".join(command)}\n{result.stderr[-2000:]}')
    os.replace(tmp_out, out)
  return out


@functools.cache
def _library():
  """(the loaded library with its targets registered, None) or (None, why)."""
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
  except (Unavailable, OSError) as e:
    return None, str(e)
  for name in TARGETS.values():
    jax.ffi.register_ffi_target(
        name, jax.ffi.pycapsule(getattr(library, name)), platform='cpu')
  return library, None


def unavailable() -> str | None:
  """None if the oneDNN convolutions can run here, else why not."""
  return _library()[1]


@functools.cache
def bfloat16_implementation() -> str:
  """The kernel oneDNN picks for a bfloat16 convolution on this CPU."""
  library, reason = _library()
  if library is None:
    raise Unavailable(reason)
  out = ctypes.create_string_buffer(256)
  status = library.AlexnetConvBf16Impl(out, len(out))
  return out.value.decode() if status == 0 else 'unsupported: ' + (
      out.value.decode())


def bfloat16_fast() -> bool:
  """Whether oneDNN has real bfloat16 kernels here (AMX, AVX512-BF16), not
  its reference loops or nothing."""
  return unavailable() is None and not bfloat16_implementation().startswith(
      ('ref', 'unsupported'))


def _call(kind, out_shape, a, b, stride, padding):
  reason = unavailable()
  if reason:
    raise Unavailable(reason)
  (top, bottom), (left, right) = padding
  return jax.ffi.ffi_call(
      TARGETS[kind], jax.ShapeDtypeStruct(out_shape, a.dtype))(
          a, b, stride=np.int64(stride), pad_top=np.int64(top),
          pad_bottom=np.int64(bottom), pad_left=np.int64(left),
          pad_right=np.int64(right))


def conv(x, kernel, stride: int, padding):
  """conv_general_dilated(x [B,H,W,C], kernel [kh,kw,C,O]), NHWC/HWIO.

  padding: ((top, bottom), (left, right)).
  """
  (top, bottom), (left, right) = padding
  b, h, w, _ = x.shape
  kh, kw, _, o = kernel.shape
  out = (b, (h + top + bottom - kh) // stride + 1,
         (w + left + right - kw) // stride + 1, o)
  return _call('fwd', out, x, kernel, stride, padding)


def input_grad(dy, kernel, x_shape, stride: int, padding):
  """d(loss)/dx of conv(x, kernel), from dy = d(loss)/d(output)."""
  return _call('input_grad', tuple(x_shape), dy, kernel, stride, padding)


def kernel_grad(x, dy, kernel_shape, stride: int, padding):
  """d(loss)/d(kernel) of conv(x, kernel), from dy = d(loss)/d(output)."""
  return _call('kernel_grad', tuple(kernel_shape), x, dy, stride, padding)
