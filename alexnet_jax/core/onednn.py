"""oneDNN convolutions for XLA:CPU: build, load and call them.

XLA:CPU's own convolutions (YNNPACK in jaxlib 0.10) run the torchvision
variant's training step at about 0.7x PyTorch on CPU; PyTorch's come from
oneDNN. `csrc/onednn_conv.cc` wraps oneDNN's forward, input-gradient and
kernel-gradient convolutions as XLA FFI custom calls, so a jitted step calls
the same kernels PyTorch does, in place on XLA's buffers (docs/performance.md
"oneDNN"). bfloat16 convolutions run on oneDNN too where the CPU has
bfloat16 instructions (AMX or AVX512-BF16; `bfloat16_unavailable()`).

Shapes and dtypes are checked here when a function is traced (raising as
`lax.conv_general_dilated` does) and again by the C++ before oneDNN sees a
buffer, which fails the call with INVALID_ARGUMENT.

Each call runs on at most the cores meant for its device: the process's
cores divided by its CPU devices, or $ALEXNET_JAX_ONEDNN_THREADS
(`threads_per_call()`), on a few threads of the library's own.

The library is compiled on first use (g++, about ten seconds) against the
headers of the `onednn-devel-cpu-gomp` wheel (the `cpu` extra) and jaxlib's
FFI headers, and cached under $ALEXNET_JAX_CACHE (default
~/.cache/alexnet_jax), keyed by everything that goes into it. The cache is
used only if it is yours and nobody else can write to it; otherwise the
library is built in a private temporary directory for this process alone.
Anything missing (not x86-64 Linux, no compiler, no wheel, a failed or
timed-out build) makes `unavailable()` say why, and ops.conv2d then uses
XLA's convolutions: same maths, slower on CPU.
"""

import _ctypes
import contextlib
import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name('csrc') / 'onednn_conv.cc'
TARGETS = {
    'fwd': 'AlexnetConvFwd',
    'input_grad': 'AlexnetConvBwdData',
    'kernel_grad': 'AlexnetConvBwdKernel',
}
# Symbols the library must export to be used.
SYMBOLS = (*TARGETS.values(), 'AlexnetConvBf16Impl', 'AlexnetConvRunners')
LIBRARY_DIST = 'onednn-cpu-gomp'
HEADERS_DIST = 'onednn-devel-cpu-gomp'
INSTALL_HINT = (
    'the cpu extra installs it on x86-64 Linux: '
    'pip install -r requirements-cpu.txt, or alexnet_jax[cpu]'
)
# Where the cpu extra installs those wheels (its environment markers).
PLATFORM_SUPPORTED = sys.platform == 'linux' and platform.machine() == 'x86_64'

CACHE_ENV = 'ALEXNET_JAX_CACHE'
THREADS_ENV = 'ALEXNET_JAX_ONEDNN_THREADS'
BUILD_TIMEOUT_ENV = 'ALEXNET_JAX_BUILD_TIMEOUT'
# Seconds; the build takes about 10 s on an idle 2-core host.
DEFAULT_BUILD_TIMEOUT = 600
CPUINFO = pathlib.Path('/proc/cpuinfo')
# CPU flags (as /proc/cpuinfo names them) of the instructions oneDNN's
# bfloat16 convolutions need to be fast. Without them oneDNN 3.2 has none
# (AVX2: primitive creation fails) or emulates them (AVX-512 without BF16:
# `jit_bf16:avx512_core`).
BFLOAT16_FLAGS = ('amx_bf16', 'avx512_bf16')

log = logging.getLogger(__name__)


class Unavailable(RuntimeError):
  """The oneDNN convolutions cannot be built or loaded here."""


# --------------------------------------------------------------- the build --


def _dist_file(dist: str, suffix: str) -> pathlib.Path:
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(
        f'the {dist!r} wheel is not installed ({INSTALL_HINT})'
    ) from None
  for f in files:
    if str(f).endswith(suffix):
      return pathlib.Path(f.locate()).resolve()
  raise Unavailable(f'{dist!r} is installed but has no {suffix}')


def cache_dir() -> pathlib.Path:
  """$ALEXNET_JAX_CACHE, else ~/.cache/alexnet_jax.

  Raises Unavailable when it is unset and there is no home directory (no
  HOME and no passwd entry for this user).
  """
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV])
  try:
    return pathlib.Path.home() / '.cache' / 'alexnet_jax'
  except (RuntimeError, KeyError) as e:
    raise Unavailable(
        f'no home directory for the cache ({e}); set {CACHE_ENV}'
    ) from None


def untrusted(directory: pathlib.Path) -> str | None:
  """Why a library in `directory` could be someone else's, or None.

  The directory must be yours and writable by nobody else: whoever can
  write there can put a library under the name this process loads. Its
  parents must not be writable by everyone without the sticky bit (/tmp
  has it), or anyone could move the directory away and put theirs there.
  """
  try:
    st = directory.stat()
  except OSError as e:
    return f'{directory} cannot be read ({e.strerror})'
  if not stat.S_ISDIR(st.st_mode):
    return f'{directory} is not a directory'
  if st.st_uid != os.geteuid():
    return (
        f'{directory} is owned by uid {st.st_uid}, not by you '
        f'(uid {os.geteuid()})'
    )
  if st.st_mode & 0o022:
    who = ' and '.join(
        w
        for w, bit in (('group', 0o020), ('others', 0o002))
        if st.st_mode & bit
    )
    return (
        f'{directory} is writable by {who} (mode '
        f'{stat.S_IMODE(st.st_mode):o}; chmod go-w it to use it)'
    )
  for parent in directory.resolve().parents:
    mode = parent.stat().st_mode
    if mode & 0o002 and not mode & stat.S_ISVTX:
      return (
          f'{parent}, above {directory}, is writable by everyone '
          'without the sticky bit'
      )
  return None


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
  """Runs command; on timeout kills it and everything it started (g++
  runs cc1plus and ld as children) and raises subprocess.TimeoutExpired."""
  proc = subprocess.Popen(
      command,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
  )
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    raise
  return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _build_timeout() -> float:
  value = os.environ.get(BUILD_TIMEOUT_ENV, '')
  try:
    timeout = float(value) if value else DEFAULT_BUILD_TIMEOUT
  except ValueError:
    timeout = -1
  if timeout <= 0:
    raise Unavailable(
        f'{BUILD_TIMEOUT_ENV}={value!r} is not a positive number of seconds'
    )
  return timeout


@functools.cache
def _sha256(path: pathlib.Path, size: int, mtime_ns: int) -> str:
  del size, mtime_ns  # (the cache key: a changed file is re-read)
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
  st = path.stat()
  return _sha256(path, st.st_size, st.st_mtime_ns)


class Recipe(NamedTuple):
  """How to compile the library, and the name that identifies the result."""

  command: list[str]
  name: str


def recipe() -> Recipe:
  """The compile command and the library's file name, which hashes
  everything that goes into the library: the source, the oneDNN library's
  content and its headers' version, jaxlib's version (its FFI headers), the
  compiler's version and target, the C library and the command's flags.
  Raises Unavailable, saying why, when something is missing."""
  libdnnl = _dist_file(LIBRARY_DIST, '/libdnnl.so.3')
  header = _dist_file(HEADERS_DIST, '/oneapi/dnnl/dnnl.hpp')
  include = header.parent.parent.parent
  compiler = os.environ.get('CXX', 'g++')
  if shutil.which(compiler) is None:
    raise Unavailable(
        f'no C++ compiler: {compiler!r} is not on PATH (set CXX to one)'
    )
  try:
    identity = [
        _run([compiler, flag], 60).stdout
        for flag in ('--version', '-dumpmachine')
    ]
  except (OSError, subprocess.TimeoutExpired) as e:
    raise Unavailable(
        f'the C++ compiler {compiler!r} does not run: {e}'
    ) from None
  # No -march=native: the library runs on any x86-64 CPU (oneDNN picks its
  # kernels for the CPU at run time), so the key needs the target only.
  command = [
      compiler,
      '-O2',
      '-std=c++17',
      '-shared',
      '-fPIC',
      '-w',
      f'-I{jax.ffi.include_dir()}',
      f'-I{include}',
      str(SOURCE),
      str(libdnnl),
      f'-Wl,-rpath,{libdnnl.parent}',
  ]
  parts = [
      _file_sha256(SOURCE),
      importlib.metadata.version('jaxlib'),
      _file_sha256(libdnnl),
      importlib.metadata.version(HEADERS_DIST),
      *identity,
      platform.machine(),
      '-'.join(platform.libc_ver()),
      *command,
  ]
  key = hashlib.sha256('\0'.join(parts).encode()).hexdigest()[:16]
  return Recipe(command, f'onednn_conv-{key}.so')


class Built(NamedTuple):
  path: pathlib.Path
  from_cache: bool  # found, not compiled by this call
  private: bool  # in a temporary directory of this process


@contextlib.contextmanager
def _locked(directory: pathlib.Path, timeout: float):
  """Holds the directory's build lock: one process compiles, the others
  wait for it and then find its library."""
  with open(directory / '.build.lock', 'a') as f:
    deadline = time.monotonic() + timeout
    while True:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() > deadline:
          raise Unavailable(
              f'another process has been building in '
              f'{directory} for over {timeout:.0f} s'
          ) from None
        time.sleep(0.2)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_builds(directory: pathlib.Path):
  """Build folders of killed builds. Called with the lock held, so no
  build is running in any of them (older releases, which took no lock,
  named theirs tmp*: those go after an hour)."""
  for p in directory.iterdir():
    old = p.name.startswith('tmp') and time.time() - p.stat().st_mtime > 3600
    if p.is_dir() and (p.name.startswith('build-') or old):
      shutil.rmtree(p, ignore_errors=True)


def _compile(command: list[str], out: pathlib.Path, timeout: float):
  """Compiles to a folder beside `out` and renames the result into place,
  so nobody ever sees a half-written library."""
  with tempfile.TemporaryDirectory(prefix='build-', dir=out.parent) as tmp:
    tmp_out = pathlib.Path(tmp) / out.name
    try:
      result = _run(command + ['-o', str(tmp_out)], timeout)
    except subprocess.TimeoutExpired:
      raise Unavailable(
          f'compiling {SOURCE.name} took over {timeout:.0f} s and was '
          f'stopped ({BUILD_TIMEOUT_ENV} sets the limit)'
      ) from None
    if result.returncode:
      raise Unavailable(
          f'compiling {SOURCE.name} failed:\n'
          f'{" ".join(command)}\n{result.stderr[-2000:]}'
      )
    # Whatever the umask: a library others can write is not loaded (_open).
    os.chmod(tmp_out, 0o755)
    os.replace(tmp_out, out)


def build() -> Built:
  """The library: from the cache, else compiled into it (once per recipe;
  concurrent processes wait for one another), else, where the cache is
  missing or cannot be trusted, compiled into a private temporary folder
  with a warning saying why. Raises Unavailable, saying why."""
  command, name = recipe()
  timeout = _build_timeout()
  try:
    cache = cache_dir()
    if not cache.exists():
      cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    why = untrusted(cache)
  except (Unavailable, OSError) as e:
    why = str(e)
  if why is None:
    out = cache / name
    if out.exists():
      return Built(out, True, False)
    with _locked(cache, timeout):
      _remove_stale_builds(cache)
      if out.exists():  # another process built it meanwhile
        return Built(out, True, False)
      _compile(command, out, timeout)
    return Built(out, False, False)
  log.warning(
      'oneDNN convolutions: not using the build cache: %s. '
      'Building in a private temporary directory instead '
      '(about ten seconds, every run).',
      why,
  )
  private = pathlib.Path(tempfile.mkdtemp(prefix='alexnet_jax-onednn-'))
  try:
    _compile(command, private / name, timeout)
  except BaseException:
    shutil.rmtree(private, ignore_errors=True)
    raise
  return Built(private / name, False, True)


# ---------------------------------------------------------------- loading --


def _open(path: pathlib.Path) -> ctypes.CDLL:
  """Loads the library if it is yours and nobody else can write to it.

  It is checked and loaded through one file descriptor, so it cannot be
  swapped between the check and the load. Raises OSError.
  """
  fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
  try:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
      raise OSError(
          f'{path} is owned by uid {st.st_uid} with mode '
          f'{stat.S_IMODE(st.st_mode):o}: not loading it'
      )
    library = ctypes.CDLL(f'/proc/self/fd/{fd}')
  finally:
    os.close(fd)
  missing = [s for s in SYMBOLS if not hasattr(library, s)]
  if missing:
    # Unloaded, or the loader would hand this one back for the next
    # /proc/self/fd/N of the same number.
    _ctypes.dlclose(library._handle)
    raise OSError(f'{path} has no {", ".join(missing)}')
  return library


def _load() -> ctypes.CDLL:
  """Builds (or finds) and loads the library. A cached library that does
  not load (corrupt, built against another C library, not yours) is
  rebuilt once. Raises Unavailable."""
  built = build()
  try:
    try:
      return _open(built.path)
    except OSError as e:
      if not built.from_cache:
        raise Unavailable(
            f'the library just built does not load: {e}'
        ) from None
      log.warning(
          'oneDNN convolutions: the cached %s does not load (%s); '
          'rebuilding it.',
          built.path,
          e,
      )
      built.path.unlink(missing_ok=True)
      built = build()
      try:
        return _open(built.path)
      except OSError as e:
        raise Unavailable(f'the rebuilt library does not load: {e}') from None
  finally:
    if built.private:  # loaded (or not): nobody else may use it
      shutil.rmtree(built.path.parent, ignore_errors=True)


@functools.cache
def _library():
  """(the loaded library with its targets registered, None) or (None, why).

  Anything that goes wrong falls back to XLA's convolutions, with the
  reason: a CPU user always gets a working step.
  """
  try:
    library = _load()
  except Unavailable as e:
    return None, str(e)
  except Exception as e:  # pylint: disable=broad-except
    return None, f'{type(e).__name__}: {e}'
  for name in TARGETS.values():
    jax.ffi.register_ffi_target(
        name, jax.ffi.pycapsule(getattr(library, name)), platform='cpu'
    )
  return library, None


def unavailable() -> str | None:
  """None if the oneDNN convolutions can run here, else why not."""
  return _library()[1]


def runners_started() -> int:
  """The library's runner threads so far (0 if it is not loaded)."""
  library = _library()[0]
  return 0 if library is None else library.AlexnetConvRunners()


# --------------------------------------------------------------- bfloat16 --


def cpu_bfloat16_flags(cpuinfo: pathlib.Path = CPUINFO) -> tuple[str, ...]:
  """Which of BFLOAT16_FLAGS this CPU has (from /proc/cpuinfo)."""
  try:
    text = cpuinfo.read_text()
  except OSError:
    return ()
  for line in text.splitlines():
    if line.startswith('flags'):
      flags = set(line.partition(':')[2].split())
      return tuple(f for f in BFLOAT16_FLAGS if f in flags)
  return ()


@functools.cache
def bfloat16_implementation() -> str:
  """The kernel oneDNN picks for a bfloat16 convolution on this CPU."""
  library, reason = _library()
  if library is None:
    raise Unavailable(reason)
  out = ctypes.create_string_buffer(256)
  status = library.AlexnetConvBf16Impl(out, len(out))
  text = out.value.decode()
  return text if status == 0 else f'unsupported: {text}'


def bfloat16_unavailable(cpuinfo: pathlib.Path = CPUINFO) -> str | None:
  """None if oneDNN's bfloat16 convolutions are fast here, else why not.

  Decided from the CPU's instruction set: oneDNN's own choice is not enough,
  as it emulates bfloat16 on AVX-512 CPUs without it (`jit_bf16:
  avx512_core`, slow) and has nothing on AVX2 ones. oneDNN's choice must
  use the instructions too (ONEDNN_MAX_CPU_ISA can forbid them).
  """
  reason = unavailable()
  if reason is not None:
    return reason
  if not cpu_bfloat16_flags(cpuinfo):
    return (
        f'this CPU has no bfloat16 instructions (none of '
        f'{", ".join(BFLOAT16_FLAGS)} in {cpuinfo})'
    )
  impl = bfloat16_implementation()
  isa = impl.partition(':')[2]
  if impl.startswith(('ref', 'unsupported')) or not (
      'bf16' in isa or 'amx' in isa
  ):
    return f'oneDNN does not use them here: it picks {impl!r}'
  return None


def bfloat16_fast() -> bool:
  """Whether oneDNN has real bfloat16 kernels here (AMX, AVX512-BF16)."""
  return bfloat16_unavailable() is None


# ------------------------------------------------------------------ calls --


def threads_per_call() -> tuple[int, int]:
  """(OpenMP threads per call, calls that may run at once).

  $ALEXNET_JAX_ONEDNN_THREADS, else the cores this process may use
  divided among its CPU devices, which run their programs at the same
  time: two simulated devices on 8 cores get 4 each. At most one call per
  device runs at once, so the calls' threads stay within the cores
  (several processes on one host each count all the cores: set the
  variable there).
  """
  devices = len(jax.local_devices(backend='cpu'))
  value = os.environ.get(THREADS_ENV, '')
  if value:
    try:
      threads = int(value)
    except ValueError:
      threads = 0
    if threads < 1:
      raise ValueError(
          f'{THREADS_ENV}={value!r} is not a positive whole '
          'number of threads'
      )
  else:
    threads = max(1, len(os.sched_getaffinity(0)) // devices)
  return threads, devices


def _attrs(call, stride, padding):
  """stride and ((top, bottom), (left, right)) as ints, checked."""
  if isinstance(stride, (tuple, list)):
    if len(set(stride)) != 1:
      raise ValueError(
          f'onednn.{call}: strides {stride} differ; the '
          'custom calls take one stride for both axes'
      )
    stride = stride[0]
  try:
    (top, bottom), (left, right) = padding
    padding = tuple((int(a), int(b)) for a, b in ((top, bottom), (left, right)))
  except (TypeError, ValueError):
    raise ValueError(
        f'onednn.{call}: padding {padding!r} is not '
        '((top, bottom), (left, right))'
    ) from None
  if int(stride) != stride or stride < 1:
    raise ValueError(
        f'onednn.{call}: stride {stride!r} is not a positive integer'
    )
  if min(p for pair in padding for p in pair) < 0:
    raise ValueError(
        f'onednn.{call}: padding {padding} is negative; the '
        'custom calls take padding >= 0 (lax.conv for others)'
    )
  return int(stride), padding


def _dtype(call, **arrays):
  """The arrays' one dtype, float32 or bfloat16 (else TypeError)."""
  dtypes = {name: jnp.dtype(a.dtype) for name, a in arrays.items()}
  if len(set(dtypes.values())) != 1:
    raise TypeError(
        f'onednn.{call} requires arguments to have the same '
        f'dtypes, got ' + ', '.join(f'{n} {d.name}' for n, d in dtypes.items())
    )
  dtype = next(iter(dtypes.values()))
  if dtype not in (jnp.float32, jnp.bfloat16):
    raise TypeError(
        f'onednn.{call} takes float32 or bfloat16, not {dtype.name}'
    )
  return dtype


def output_shape(call, x_shape, kernel_shape, stride, padding) -> tuple:
  """conv(x, kernel)'s shape [B, Ho, Wo, O] for x [B, H, W, C] and kernel
  [kh, kw, C, O], raising as lax.conv_general_dilated does when they do
  not fit (TypeError for ranks, ValueError for channels)."""
  x_shape, kernel_shape = tuple(x_shape), tuple(kernel_shape)
  if len(x_shape) != 4 or len(kernel_shape) != 4:
    raise TypeError(
        f'onednn.{call}: x [B, H, W, C] and kernel [kh, kw, C, O]'
        f' must have rank 4, got x {x_shape} and kernel '
        f'{kernel_shape}'
    )
  if x_shape[3] != kernel_shape[2]:
    raise ValueError(
        f'onednn.{call}: x {x_shape} has {x_shape[3]} channels '
        f'but kernel {kernel_shape} takes {kernel_shape[2]}'
    )
  (top, bottom), (left, right) = padding
  b, h, w, _ = x_shape
  kh, kw, _, o = kernel_shape
  return (
      b,
      max(0, (h + top + bottom - kh) // stride + 1),
      max(0, (w + left + right - kw) // stride + 1),
      o,
  )


def _call(kind, out_shape, a, b, stride, padding):
  if 0 in out_shape or 0 in a.shape or 0 in b.shape:
    return jnp.zeros(out_shape, a.dtype)  # as XLA's: nothing to add
  reason = unavailable()
  if reason:
    raise Unavailable(reason)
  (top, bottom), (left, right) = padding
  threads, runners = threads_per_call()
  return jax.ffi.ffi_call(
      TARGETS[kind], jax.ShapeDtypeStruct(out_shape, a.dtype)
  )(
      a,
      b,
      stride=np.int64(stride),
      pad_top=np.int64(top),
      pad_bottom=np.int64(bottom),
      pad_left=np.int64(left),
      pad_right=np.int64(right),
      threads=np.int64(threads),
      runners=np.int64(runners),
  )


def conv(x, kernel, stride: int, padding):
  """conv_general_dilated(x [B,H,W,C], kernel [kh,kw,C,O]), NHWC/HWIO.

  padding: ((top, bottom), (left, right)), each >= 0.
  """
  stride, padding = _attrs('conv', stride, padding)
  _dtype('conv', x=x, kernel=kernel)
  out = output_shape('conv', x.shape, kernel.shape, stride, padding)
  return _call('fwd', out, x, kernel, stride, padding)


def input_grad(dy, kernel, x_shape, stride: int, padding):
  """d(loss)/dx of conv(x, kernel), from dy = d(loss)/d(output)."""
  stride, padding = _attrs('input_grad', stride, padding)
  _dtype('input_grad', dy=dy, kernel=kernel)
  want = output_shape('input_grad', x_shape, kernel.shape, stride, padding)
  if tuple(dy.shape) != want:
    raise ValueError(
        f'onednn.input_grad: dy has shape {tuple(dy.shape)} but '
        f'conv(x {tuple(x_shape)}, kernel {kernel.shape}) has '
        f'{want}'
    )
  return _call('input_grad', tuple(x_shape), dy, kernel, stride, padding)


def kernel_grad(x, dy, kernel_shape, stride: int, padding):
  """d(loss)/d(kernel) of conv(x, kernel), from dy = d(loss)/d(output)."""
  stride, padding = _attrs('kernel_grad', stride, padding)
  _dtype('kernel_grad', x=x, dy=dy)
  want = output_shape('kernel_grad', x.shape, kernel_shape, stride, padding)
  if tuple(dy.shape) != want:
    raise ValueError(
        f'onednn.kernel_grad: dy has shape {tuple(dy.shape)} '
        f'but conv(x {x.shape}, kernel {tuple(kernel_shape)}) '
        f'has {want}'
    )
  return _call('kernel_grad', tuple(kernel_shape), x, dy, stride, padding)
