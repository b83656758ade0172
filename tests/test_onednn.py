"""The oneDNN convolutions: values, shape checks, bfloat16, threads, build.

Their maths against XLA's convolutions at small shapes is in test_ops.py
(every conv2d test runs with both backends); here: what the custom calls
add, at the shapes the models run. The build-cache tests run the real
`_library()` in fresh processes (it loads once per process), most with a
stand-in compiler that copies the real library, so that they take seconds.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.core import onednn
from alexnet_jax.core import ops

ONEDNN_EXPECTED = onednn.PLATFORM_SUPPORTED  # the cpu extra installs it
REPO = pathlib.Path(__file__).resolve().parents[1]

needs_onednn = pytest.mark.skipif(
    not ONEDNN_EXPECTED, reason='oneDNN convolutions: x86-64 Linux only'
)


@pytest.fixture
def bfloat16_here():
  """Skips, saying why, where oneDNN has no fast bfloat16 convolutions."""
  reason = onednn.bfloat16_unavailable()
  if reason is not None:
    pytest.skip(f'oneDNN bfloat16: {reason}')


@needs_onednn
def test_onednn_builds_here():
  assert onednn.unavailable() is None


def _xla(x, k, stride, padding):
  return lax.conv_general_dilated(
      x,
      k,
      (stride, stride),
      padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


# ----------------------------------------- every shape the models run --

# (input H=W, kernel, Cin, Cout, stride, padding): conv1-conv5 at 224 as
# the models call ops.conv2d on one device (conv1 and conv3 read one input
# for both towers: one convolution with both towers' kernels), plus the
# per-device shapes of the two-tower split.
PAPER = {
    'paper conv1, paper padding': (224, 11, 3, 96, 4, ((0, 3), (0, 3))),
    'paper conv1, caffe padding': (227, 11, 3, 96, 4, ((0, 0), (0, 0))),
    'paper conv1, torchvision padding': (224, 11, 3, 96, 4, ((2, 2), (2, 2))),
    'paper conv1, one tower': (224, 11, 3, 48, 4, ((0, 3), (0, 3))),
    'paper conv2': (27, 5, 48, 128, 1, ((2, 2), (2, 2))),
    'paper conv3': (13, 3, 256, 384, 1, ((1, 1), (1, 1))),
    'paper conv3, one tower': (13, 3, 256, 192, 1, ((1, 1), (1, 1))),
    'paper conv4': (13, 3, 192, 192, 1, ((1, 1), (1, 1))),
    'paper conv5': (13, 3, 192, 128, 1, ((1, 1), (1, 1))),
}
TORCHVISION = {
    'torchvision conv1': (224, 11, 3, 64, 4, ((2, 2), (2, 2))),
    'torchvision conv2': (27, 5, 64, 192, 1, ((2, 2), (2, 2))),
    'torchvision conv3': (13, 3, 192, 384, 1, ((1, 1), (1, 1))),
    'torchvision conv4': (13, 3, 384, 256, 1, ((1, 1), (1, 1))),
    'torchvision conv5': (13, 3, 256, 256, 1, ((1, 1), (1, 1))),
}
LAYERS = PAPER | TORCHVISION
# One realistic shape per layer kind runs by default, the rest with -m slow.
DEFAULT = ('torchvision conv1', 'paper conv2', 'paper conv3')
BATCH = 8


def _layer_cases(dtype):
  return [
      pytest.param(
          name,
          dtype,
          id=f'{name}-{dtype}',
          marks=(() if name in DEFAULT else pytest.mark.slow),
      )
      for name in LAYERS
  ]


def _operands(name, dtype, batch=BATCH, seed=0):
  size, kh, cin, cout, stride, padding = LAYERS[name]
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, size, size, cin))
  k = rng.normal(size=(kh, kh, cin, cout)) / np.sqrt(kh * kh * cin)
  out = onednn.output_shape('test', x.shape, k.shape, stride, padding)
  dy = rng.normal(size=out)
  # Rounded to the dtype first: XLA's reference then sees the same inputs.
  return [jnp.asarray(a, dtype) for a in (x, k, dy)], stride, padding


def _onednn_all(x, k, dy, stride, padding):
  return (
      onednn.conv(x, k, stride, padding),
      onednn.input_grad(dy, k, x.shape, stride, padding),
      onednn.kernel_grad(x, dy, k.shape, stride, padding),
  )


def _xla_all(x, k, dy, stride, padding):
  y, vjp = jax.vjp(lambda x, k: _xla(x, k, stride, padding), x, k)
  return (y, *vjp(dy))


@needs_onednn
@pytest.mark.parametrize(
    'name,dtype', _layer_cases('float32') + _layer_cases('bfloat16')
)
def test_custom_calls_match_xla_at_the_models_shapes(name, dtype, request):
  if dtype == 'bfloat16':
    request.getfixturevalue('bfloat16_here')
  (x, k, dy), stride, padding = _operands(name, dtype)
  got = jax.jit(_onednn_all, static_argnums=(3, 4))(x, k, dy, stride, padding)
  # The reference in float32 from the same (rounded) inputs.
  f32 = lambda a: a.astype(jnp.float32)
  want = jax.jit(_xla_all, static_argnums=(3, 4))(
      f32(x), f32(k), f32(dy), stride, padding
  )
  for what, g, w in zip(
      ('forward', 'input gradient', 'kernel gradient'), got, want
  ):
    assert g.dtype == jnp.dtype(dtype) and g.shape == w.shape, what
    scale = float(jnp.max(jnp.abs(w)))
    if dtype == 'float32':
      np.testing.assert_allclose(
          g, w, rtol=1e-4, atol=2e-5 * scale, err_msg=what
      )
    else:  # oneDNN sums in float32 and rounds the result to bfloat16
      np.testing.assert_allclose(
          f32(g), w, rtol=2**-7, atol=1e-3 * scale, err_msg=what
      )


def _threads():
  with open('/proc/self/status') as f:
    return int(next(l for l in f if l.startswith('Threads:')).split()[1])


@needs_onednn
def test_devices_calling_at_once_match_one_device(monkeypatch):
  """Four simulated devices run the three calls at once, each on its
  shard; each shard's results equal one device's on that shard alone and
  XLA's. oneDNN adds at most one runner per device, each with its team."""
  (x, k, dy), stride, padding = _operands('paper conv2', 'float32')
  devices = jax.devices()[:4]
  assert len(devices) == 4, 'tests/conftest.py simulates 4 devices'
  mesh = jax.make_mesh((4,), ('d',), devices=devices)

  def shard(x, k, dy):
    y, vjp = jax.vjp(lambda x, k: ops.conv2d(x, k, stride, padding), x, k)
    dx, dk = vjp(dy)
    return y, dx, dk[None]

  specs = (jax.P('d'), jax.P(), jax.P('d'))
  placed = [
      jax.device_put(a, jax.NamedSharding(mesh, spec))
      for a, spec in zip((x, k, dy), specs)
  ]
  together = {}
  for backend in ('xla', 'onednn'):
    monkeypatch.setenv('ALEXNET_JAX_CONV', backend)
    together[backend] = [
        np.asarray(a)
        for a in jax.jit(
            jax.shard_map(
                shard, mesh=mesh, in_specs=specs, out_specs=jax.P('d')
            )
        )(*placed)
    ]
    threads = together.setdefault('threads', {})
    threads[backend] = _threads()
  threads_per_call, runners = onednn.threads_per_call()
  assert runners == 4 and 1 <= onednn.runners_started() <= 4
  assert threads['onednn'] - threads['xla'] <= 4 * threads_per_call, threads
  one = jax.jit(shard)
  x, k, dy = jax.device_put((x, k, dy), devices[0])
  alone = [one(x[i : i + 2], k, dy[i : i + 2]) for i in range(0, BATCH, 2)]
  ys, dxs, dks = zip(*alone)
  # k is replicated: each device's kernel gradient is the sum over shards.
  for got, want, xla in zip(
      together['onednn'],
      (np.concatenate(ys), np.concatenate(dxs), np.stack([sum(dks)[0]] * 4)),
      together['xla'],
  ):
    np.testing.assert_allclose(
        got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max()
    )
    np.testing.assert_allclose(
        got, xla, rtol=1e-4, atol=2e-5 * np.abs(xla).max()
    )


@needs_onednn
# The child only calls one C function and exits: JAX's warning about
# forking a multithreaded process does not apply.
@pytest.mark.filterwarnings('ignore:os.fork')
def test_forked_child_starts_with_no_runners():
  """A forked child has none of its parent's threads: it must not wait on
  the parent's runners (or a mutex one of them held)."""
  x = jnp.ones((1, 5, 5, 2))
  jax.block_until_ready(onednn.conv(x, jnp.ones((3, 3, 2, 1)), 1, P1))
  library = onednn._library()[0]
  assert library.AlexnetConvRunners() >= 1
  pid = os.fork()
  if pid == 0:
    os._exit(library.AlexnetConvRunners())
  _, status = os.waitpid(pid, 0)
  assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------ shape checks --


@needs_onednn
def test_unneeded_input_gradient_is_not_computed(monkeypatch):
  """conv1's input gradient (d loss / d images) costs more than conv1
  itself; a kernel-only gradient must compile to the forward and the
  kernel-gradient calls alone."""
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onednn')
  x = jnp.ones((2, 23, 23, 3))
  k = jnp.ones((11, 11, 3, 4))
  loss = lambda k: (ops.conv2d(x, k, 4, 'SAME') ** 2).sum()
  hlo = jax.jit(jax.grad(loss)).lower(k).compile().as_text()
  calls = [t for t in onednn.TARGETS.values() if f'"{t}"' in hlo]
  assert calls == ['AlexnetConvFwd', 'AlexnetConvBwdKernel'], calls


@pytest.mark.parametrize('backend', ['xla', 'onednn'])
def test_mismatched_channels_raise_at_trace_time_as_lax_does(
    monkeypatch, backend
):
  """The issue's scenario: grad of conv2d(x[..., 64], k[3, 3, 4, 8]) read
  64-channel kernel rows from a 4-channel buffer and wrote 64-channel
  gradients into XLA's 4-channel one. Now it fails while tracing."""
  if backend == 'onednn' and not ONEDNN_EXPECTED:
    pytest.skip('oneDNN convolutions: x86-64 Linux only')
  monkeypatch.setenv('ALEXNET_JAX_CONV', backend)
  x, k = jnp.ones((2, 9, 9, 64)), jnp.ones((3, 3, 4, 8))
  loss = lambda x, k: ops.conv2d(x, k, 1, 'SAME').sum()
  with pytest.raises(ValueError, match='64'):
    jax.grad(loss, argnums=(0, 1))(x, k)


P1 = ((1, 1), (1, 1))


# (call, args, error, match): one case per line.
# fmt: off
SHAPE_CHECKS = [
    ('conv', ((2, 9, 9, 64), (3, 3, 4, 8), 1, P1), ValueError, r'x \(2, 9, 9, 64\) has 64 channels but kernel \(3, 3, 4, 8\) takes 4'),
    ('conv', ((9, 9, 4), (3, 3, 4, 8), 1, P1), TypeError, 'rank 4'),
    ('conv', ((2, 9, 9, 4), (3, 3, 4, 8), 0, P1), ValueError, 'stride 0 is not a positive'),
    ('conv', ((2, 9, 9, 4), (3, 3, 4, 8), 1, ((-1, 0), (0, 0))), ValueError, 'negative'),
    ('conv', ((2, 9, 9, 4), (3, 3, 4, 8), 1, 'SAME'), ValueError, r'not \(\(top, bottom\), \(left, right\)\)'),
    ('input_grad', ((2, 9, 9, 8), (3, 3, 4, 8), (2, 9, 9, 64), 1, P1), ValueError, 'has 64 channels but kernel'),
    ('input_grad', ((2, 9, 9, 7), (3, 3, 4, 8), (2, 9, 9, 4), 1, P1), ValueError, r'dy has shape \(2, 9, 9, 7\) but .* has \(2, 9, 9, 8\)'),
    ('input_grad', ((2, 8, 9, 8), (3, 3, 4, 8), (2, 9, 9, 4), 1, P1), ValueError, r'dy has shape \(2, 8, 9, 8\)'),
    ('kernel_grad', ((2, 9, 9, 64), (2, 9, 9, 8), (3, 3, 4, 8), 1, P1), ValueError, 'has 64 channels but kernel'),
    ('kernel_grad', ((3, 9, 9, 4), (2, 9, 9, 8), (3, 3, 4, 8), 1, P1), ValueError, r'dy has shape \(2, 9, 9, 8\) but .* has \(3, 9, 9, 8\)'),
    # The control: stride 2 gives 5x5, and it traces.
    ('kernel_grad', ((2, 9, 9, 4), (2, 5, 5, 8), (3, 3, 4, 8), 2, P1), None, None),
]
# fmt: on


@pytest.mark.parametrize(
    'call,args,error,match',
    SHAPE_CHECKS,
)
def test_python_checks_shapes_when_tracing(call, args, error, match):
  """The two array arguments are given by shape, the others as they are."""
  a, b = (jax.ShapeDtypeStruct(s, jnp.float32) for s in args[:2])
  trace = lambda: jax.eval_shape(
      lambda a, b: getattr(onednn, call)(a, b, *args[2:]), a, b
  )
  if error is None:
    trace()
    return
  with pytest.raises(error, match=match):
    trace()


def test_python_checks_dtypes_as_lax_does():
  x = jax.ShapeDtypeStruct((2, 9, 9, 4), jnp.float32)
  k16 = jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.bfloat16)
  with pytest.raises(TypeError, match='same dtypes'):
    jax.eval_shape(lambda x, k: _xla(x, k, 1, P1), x, k16)
  with pytest.raises(
      TypeError, match='same dtypes, got x float32, kernel bfloat16'
  ):
    jax.eval_shape(lambda x, k: onednn.conv(x, k, 1, P1), x, k16)
  h = jax.ShapeDtypeStruct((2, 9, 9, 4), jnp.float16)
  with pytest.raises(TypeError, match='float32 or bfloat16, not float16'):
    jax.eval_shape(lambda x: onednn.conv(x, x, 1, P1), h)


def test_empty_operands_give_zeros_as_xla_does():
  x, k = jnp.ones((0, 9, 9, 4)), jnp.ones((3, 3, 4, 8))
  assert onednn.conv(x, k, 1, P1).shape == (0, 9, 9, 8)
  x = jnp.ones((1, 2, 2, 4))  # smaller than the kernel: no output rows
  assert onednn.conv(x, k, 1, ((0, 0), (0, 0))).shape == (1, 0, 0, 8)
  dk = onednn.kernel_grad(
      x, jnp.ones((1, 0, 0, 8)), k.shape, 1, ((0, 0), (0, 0))
  )
  np.testing.assert_array_equal(dk, np.zeros(k.shape))


def _raw_call(
    target,
    out,
    a,
    b,
    *,
    stride=1,
    pads=(1, 1, 1, 1),
    threads=1,
    dtype=(jnp.float32,) * 3,
):
  """A custom call as XLA would run it, with no Python check in front."""
  a = jnp.ones(a, dtype[0])
  b = jnp.ones(b, dtype[1])
  t, bo, l, r = pads
  return jax.jit(
      lambda a, b: jax.ffi.ffi_call(
          target, jax.ShapeDtypeStruct(out, dtype[2])
      )(
          a,
          b,
          stride=np.int64(stride),
          pad_top=np.int64(t),
          pad_bottom=np.int64(bo),
          pad_left=np.int64(l),
          pad_right=np.int64(r),
          threads=np.int64(threads),
          runners=np.int64(1),
      )
  )(a, b)


FWD, DATA, KERNEL = onednn.TARGETS.values()


# (target, out, a, b, kw, match): one case per line.
# fmt: off
NATIVE_CHECKS = [
    # The scenario, in each of the three calls.
    (FWD, (2, 9, 9, 8), (2, 9, 9, 64), (3, 3, 4, 8), {}, r'kernel \[3,3,4,8\] has 4 input channels but x \[2,9,9,64\] has 64'),
    (DATA, (2, 9, 9, 64), (2, 9, 9, 8), (3, 3, 4, 8), {}, r'kernel \[3,3,4,8\] has 4 input channels but input gradient \(result\) \[2,9,9,64\] has 64'),
    (KERNEL, (3, 3, 4, 8), (2, 9, 9, 64), (2, 9, 9, 8), {}, r'kernel gradient \(result\) \[3,3,4,8\] has 4 input channels but x \[2,9,9,64\] has 64'),
    (FWD, (3, 9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), {}, r'output \[3,9,9,8\] has 3 images but x \[2,9,9,4\] has 2'),
    (FWD, (2, 9, 9, 16), (2, 9, 9, 4), (3, 3, 4, 8), {}, r'output \[2,9,9,16\] has 16 channels but kernel'),
    (KERNEL, (3, 3, 4, 8), (2, 9, 9, 4), (2, 9, 9, 16), {}, r'dy \[2,9,9,16\] has 16 channels'),
    (FWD, (2, 9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), dict(stride=2), r'output \[2,9,9,8\] has 9 rows but .* stride 2 and its padding give 5'),
    (DATA, (2, 9, 9, 4), (2, 9, 8, 8), (3, 3, 4, 8), {}, r'dy \[2,9,8,8\] has 8 columns but .* give 9'),
    (FWD, (2, 9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), dict(pads=(1, 1, 2, 0)), None),
    (FWD, (9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), {}, 'output has rank 3, not 4'),
    (FWD, (2, 9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), dict(dtype=(jnp.float32, jnp.bfloat16, jnp.float32)), 'kernel has another dtype than x'),
    (FWD, (2, 9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), dict(dtype=(jnp.float16,) * 3), 'x is neither float32 nor bfloat16'),
    (FWD, (2, 9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), dict(stride=0), 'stride 0 < 1'),
    (FWD, (2, 11, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), dict(pads=(-1, 4, 1, 1)), 'negative padding'),
    (FWD, (2, 9, 9, 8), (2, 9, 9, 4), (3, 3, 4, 8), dict(threads=0), 'threads and runners must be >= 1'),
    (FWD, (2, 1, 1, 8), (2, 2, 2, 4), (3, 3, 4, 8), dict(pads=(0, 0, 0, 0)), r'kernel \[3,3,4,8\] is larger than x \[2,2,2,4\] padded'),
]
# fmt: on


@needs_onednn
@pytest.mark.parametrize(
    'target,out,a,b,kw,match',
    NATIVE_CHECKS,
)
def test_custom_calls_check_every_dimension(target, out, a, b, kw, match):
  """The C++ checks on its own (no Python in front): INVALID_ARGUMENT
  naming the mismatch, before oneDNN touches a buffer."""
  onednn.unavailable()  # registers the targets
  if match is None:
    assert _raw_call(target, out, a, b, **kw).shape == out
    return
  with pytest.raises(
      Exception, match=rf'(?s)INVALID_ARGUMENT.*{target}: ' + match
  ):
    _raw_call(target, out, a, b, **kw).block_until_ready()


# ----------------------------------------------------- choosing a backend --


def test_backend_choice(monkeypatch):
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'xla')
  assert ops.conv_backend() == 'xla'
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onedn')
  with pytest.raises(
      ValueError,
      match="ALEXNET_JAX_CONV='onedn' is not one of auto, xla, onednn",
  ):
    ops.conv_backend()
  # float16 always runs XLA's; asking oneDNN for it is an error.
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'auto')
  assert ops.conv_backend(jnp.float16) == 'xla'
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onednn')
  with pytest.raises(
      ValueError, match='float32 or bfloat16 on CPU only, not float16'
  ):
    ops.conv_backend(jnp.float16)


@needs_onednn
def test_negative_padding_is_a_crop_then_onednn(monkeypatch):
  """Negative padding is cropped by a slice (ops._crop), so oneDNN runs
  what is left; the values are checked against NumPy in test_ops.py."""
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onednn')
  x, k = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 1))
  pads = ((-1, 1), (0, 0))
  hlo = jax.jit(lambda x, k: ops.conv2d(x, k, 1, pads)).lower(x, k).as_text()
  assert 'AlexnetConvFwd' in hlo
  assert 'pad=-' not in hlo and 'padding = dense<-' not in hlo
  # Rows 1-5 and one zero row: 3x3x2 ones per full window, 2x3x2 in the last.
  want = np.full((1, 4, 4, 1), 18.0, np.float32)
  want[:, 3] = 12.0
  np.testing.assert_array_equal(ops.conv2d(x, k, 1, pads), want)


FAKE_CPUS = {  # flags lines of /proc/cpuinfo, cut down
    'AVX2 only (many AMD hosts, CI runners)': ('fpu sse4_2 avx avx2 fma', ()),
    'AVX-512 without BF16 (Skylake-SP, Cascade Lake)': (
        'fpu avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl '
        'avx512_vnni',
        (),
    ),
    'AVX512-BF16 (Cooper Lake, Zen 4)': (
        'fpu avx2 avx512f avx512bw avx512vl avx512_bf16',
        ('avx512_bf16',),
    ),
    'AMX (Sapphire Rapids)': (
        'fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8',
        ('amx_bf16', 'avx512_bf16'),
    ),
}


@needs_onednn
@pytest.mark.parametrize('cpu', FAKE_CPUS)
def test_bfloat16_decided_from_the_cpus_instructions(tmp_path, cpu):
  flags, want = FAKE_CPUS[cpu]
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(
      f'processor\t: 0\nmodel name\t: {cpu}\n'
      f'flags\t\t: {flags}\n\nprocessor\t: 1\n'
      f'flags\t\t: {flags}\n'
  )
  assert onednn.cpu_bfloat16_flags(cpuinfo) == want
  reason = onednn.bfloat16_unavailable(cpuinfo)
  if not want:
    assert 'this CPU has no bfloat16 instructions' in reason, reason
  elif onednn.cpu_bfloat16_flags():  # and this host really has them
    assert reason is None, reason


_PROBE_BF16 = """
import json, os
import jax.numpy as jnp
from alexnet_jax.core import onednn, ops
out = dict(impl=onednn.bfloat16_implementation(),
           why=onednn.bfloat16_unavailable(),
           auto=ops.conv_backend(jnp.bfloat16),
           f32=ops.conv_backend(jnp.float32))
os.environ['ALEXNET_JAX_CONV'] = 'onednn'
try:
  ops.conv_backend(jnp.bfloat16)
except onednn.Unavailable as e:
  out['forced'] = str(e)
print(json.dumps(out))
"""


@needs_onednn
@pytest.mark.parametrize(
    'isa,impl',
    [
        ('AVX512_CORE', 'jit_bf16:avx512_core'),
        pytest.param('AVX2', 'unsupported', marks=pytest.mark.slow),
    ],
)
def test_bfloat16_without_the_instructions_runs_xla_with_one_line(isa, impl):
  """oneDNN's own answer on CPUs without bfloat16 instructions, made by
  capping oneDNN's instruction set (ONEDNN_MAX_CPU_ISA; /proc/cpuinfo
  still has the flags here, so the check of oneDNN's choice decides): on
  AVX-512 it emulates bfloat16 (which bfloat16_fast() took for fast before),
  on AVX2 it has no bfloat16 convolution at all."""
  out, err = _finish(_start(_PROBE_BF16, dict(ONEDNN_MAX_CPU_ISA=isa)))
  if onednn.cpu_bfloat16_flags():  # else capping changes nothing
    assert out['impl'].startswith(impl), out
  assert out['why'] is not None
  assert (out['auto'], out['f32']) == ('xla', 'onednn')
  assert 'oneDNN bfloat16 convolutions' in out['forced']
  lines = [l for l in err.splitlines() if 'bfloat16' in l]
  assert len(lines) == 1 and "using XLA's for bfloat16" in lines[0], err


# ------------------------------------------------------------------ threads --

_PROBE_THREADS = """
import json, os, sys
sys.path.insert(0, {tests!r})
import jax
from helpers import tiny_model as tm
from alexnet_jax.core import onednn

def threads():
  with open('/proc/self/status') as f:
    return int(next(l for l in f if l.startswith('Threads:')).split()[1])

counts = {{}}
for backend in ('xla', 'onednn'):
  os.environ['ALEXNET_JAX_CONV'] = backend
  # The trainer's step (train.make_train_step) of the tiny two-tower model.
  step = tm.make_step('model' if jax.device_count() == 2 else 'hybrid',
                      dropout=0.0)
  state = step.par.place_state(tm.initial_state(step))
  for i in range(3):
    batch = step.par.shard_batch(tm.batch(i, tm.STEP_SIZE))
    state, metrics = step(state, batch)
    step.par.to_host(metrics.compute())
  counts[backend] = threads()
print(json.dumps(dict(counts, runners=onednn.runners_started(),
                      per_call=onednn.threads_per_call(),
                      cores=len(os.sched_getaffinity(0)))))
"""

# Every affinity query answers $FAKE_CPUS CPUs: XLA (tsl's
# NumSchedulableCPUs), libgomp and Python then size their thread pools as on
# a host with that many cores, which the real ones run.
FAKE_CPUS_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
static void fill(size_t size, cpu_set_t* mask) {
  int n = atoi(getenv("FAKE_CPUS"));
  memset(mask, 0, size);
  for (int i = 0; i < n; i++) CPU_SET_S(i, size, mask);
}
int sched_getaffinity(pid_t pid, size_t size, cpu_set_t* mask) {
  fill(size, mask);
  return 0;
}
int pthread_getaffinity_np(pthread_t t, size_t size, cpu_set_t* mask) {
  fill(size, mask);
  return 0;
}
"""


@needs_onednn
@pytest.mark.slow
@pytest.mark.parametrize('devices', [2, 4])
def test_two_tower_runs_keep_onednn_threads_bounded(devices, tmp_path):
  """On an emulated 16-core host. oneDNN (GNU OpenMP) gave every thread
  that called it a team of its own, and XLA calls from any of its workers:
  before the fix this run added 30 threads on 2 devices and 75 on 4 (and 15
  on one; experiments/results/benchmarks/onednn_before_after_*). Now at
  most one runner per device, each with its device's share of the cores:
  16 threads in all."""
  shim = tmp_path / 'fakecpus.so'
  (tmp_path / 'fakecpus.c').write_text(FAKE_CPUS_C)
  subprocess.run(
      [
          os.environ.get('CC', 'cc'),
          '-O2',
          '-shared',
          '-fPIC',
          str(tmp_path / 'fakecpus.c'),
          '-o',
          str(shim),
      ],
      check=True,
  )
  env = {
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'LD_PRELOAD': str(shim),
      'FAKE_CPUS': '16',
  }
  out, _ = _finish(
      _start(_PROBE_THREADS.format(tests=str(REPO / 'tests')), env)
  )
  assert out['cores'] == 16
  assert out['per_call'] == [16 // devices, devices]
  assert 1 <= out['runners'] <= devices
  # Each runner and its team: the only threads oneDNN may add.
  assert out['onednn'] - out['xla'] <= 16, out


# ------------------------------------------------------------- the build --


def _start(code, env=None, *args, base=None, **kw):
  """`python -c code args` in the checkout, on one CPU device unless env
  says otherwise; env adds to `base` (default: this process's)."""
  full = dict(os.environ if base is None else base, **(env or {}))
  full.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  return subprocess.Popen(
      [sys.executable, '-c', textwrap.dedent(code), *args],
      env=full,
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      **kw,
  )


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err
  return json.loads(out.strip().splitlines()[-1]), err


_PROBE = """
import json, os
from alexnet_jax.core import onednn
print(json.dumps(dict(why=onednn.unavailable())))
"""

FAKE_CXX = """#!/bin/sh
# Stands in for g++: copies the real library (built by this test session)
# to -o, after $FAKE_CXX_SLEEP seconds; logs each build to $FAKE_CXX_LOG.
case "$1" in
  --version) echo "fake c++ 1.0"; exit 0 ;;
  -dumpmachine) echo "x86_64-linux-gnu"; exit 0 ;;
esac
[ -n "$FAKE_CXX_LOG" ] && echo "build" >> "$FAKE_CXX_LOG"
if [ -n "$FAKE_CXX_SLEEP" ]; then
  sleep "$FAKE_CXX_SLEEP" &
  echo $! > "$FAKE_CXX_LOG.sleep"
  wait $!
fi
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
cp "$FAKE_CXX_LIBRARY" "$out"
"""


@pytest.fixture
def fake_cxx(tmp_path):
  """env for a fresh process: a stand-in compiler, and a cache of its own."""
  if not ONEDNN_EXPECTED:
    pytest.skip('oneDNN convolutions: x86-64 Linux only')
  assert onednn.unavailable() is None
  cxx = tmp_path / 'fake-c++'
  cxx.write_text(FAKE_CXX)
  cxx.chmod(0o755)
  cache = tmp_path / 'cache'
  (tmp_path / 'tmp').mkdir()
  return dict(
      CXX=str(cxx),
      ALEXNET_JAX_CACHE=str(cache),
      FAKE_CXX_LIBRARY=str(onednn.build().path),
      FAKE_CXX_LOG=str(tmp_path / 'builds.log'),
      TMPDIR=str(tmp_path / 'tmp'),
  )


def _library_name(monkeypatch, env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  return onednn.recipe().name


_PROBE_FALLBACK = """
import json, os, sys
import jax, jax.numpy as jnp
from alexnet_jax.core import onednn, ops
if sys.argv[-1] == 'no-wheel':
  onednn.LIBRARY_DIST = 'onednn-cpu-gomp-not-installed'
why = onednn.unavailable()
x = jnp.ones((1, 5, 5, 2))
grad = jax.jit(jax.grad(lambda k: ops.conv2d(x, k, 1, 'SAME').sum()))
dk = grad(jnp.ones((3, 3, 2, 1)))
y = jax.jit(lambda x: ops.conv2d(x, jnp.ones((3, 3, 2, 1)), 1, 'SAME'))(x)
os.environ['ALEXNET_JAX_CONV'] = 'onednn'
try:
  ops.conv_backend()
  forced = None
except onednn.Unavailable as e:
  forced = str(e)
print(json.dumps(dict(why=why, y=float(y[0, 2, 2, 0]),
                      dk=float(dk[1, 1, 0, 0]), forced=forced)))
"""


@pytest.mark.parametrize(
    'run,why',
    [
        ('no-compiler', 'no C++ compiler'),
        pytest.param('no-wheel', 'not installed', marks=pytest.mark.slow),
    ],
)
def test_without_compiler_or_wheel_xla_runs_with_one_line(tmp_path, run, why):
  """PATH without g++, or no oneDNN wheel (an install without the cpu
  extra): the real _library() says so, conv2d runs XLA's convolutions (same
  values) with one warning line, and asking for oneDNN is an error naming
  why."""
  env = dict(os.environ, ALEXNET_JAX_CACHE=str(tmp_path / 'cache'))
  env.pop('CXX', None)
  if run == 'no-compiler':
    (tmp_path / 'bin').mkdir()
    env['PATH'] = str(tmp_path / 'bin')
  out, err = _finish(_start(_PROBE_FALLBACK, None, run, base=env))
  assert why in out['why'], out
  assert (out['y'], out['dk']) == (18.0, 25.0)
  assert out['forced'] == out['why']
  lines = [l for l in err.splitlines() if 'oneDNN' in l]
  assert len(lines) == 1 and why in lines[0], err
  if run == 'no-wheel':
    assert 'requirements-cpu.txt' in lines[0]
  assert not (tmp_path / 'cache').exists()


def test_corrupt_cached_library_is_rebuilt_once(fake_cxx, monkeypatch):
  name = _library_name(monkeypatch, fake_cxx)
  cache = pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE'])
  cache.mkdir(mode=0o700)
  (cache / name).write_bytes(b'\x7fELF but truncated')
  out, err = _finish(_start(_PROBE, fake_cxx))
  assert out['why'] is None, out
  assert 'does not load' in err and 'rebuilding it' in err
  assert (cache / name).read_bytes() == pathlib.Path(
      fake_cxx['FAKE_CXX_LIBRARY']
  ).read_bytes()


@pytest.mark.slow
def test_cached_library_without_our_symbols_is_rebuilt(fake_cxx, monkeypatch):
  """A real shared library, not ours: it loads, lacks the targets, and is
  unloaded again so that the rebuilt one (opened through a descriptor of
  the same number, hence the same name) is not mistaken for it."""
  name = _library_name(monkeypatch, fake_cxx)
  cache = pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE'])
  cache.mkdir(mode=0o700)
  with open('/proc/self/maps') as f:  # the C maths library, loaded here
    libm = next(l.split()[-1] for l in f if '/libm.so' in l)
  (cache / name).write_bytes(pathlib.Path(libm).read_bytes())
  out, err = _finish(_start(_PROBE, fake_cxx))
  assert out['why'] is None, out
  assert 'has no AlexnetConvFwd' in err and 'rebuilding it' in err


@pytest.mark.slow
def test_rebuilt_library_that_does_not_load_falls_back(
    fake_cxx, tmp_path, monkeypatch
):
  name = _library_name(monkeypatch, fake_cxx)
  cache = pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE'])
  cache.mkdir(mode=0o700)
  (cache / name).write_bytes(b'not a library')
  bad = tmp_path / 'bad.so'
  bad.write_bytes(b'not a library either')
  out, _ = _finish(_start(_PROBE, dict(fake_cxx, FAKE_CXX_LIBRARY=str(bad))))
  assert 'the rebuilt library does not load' in out['why']
  assert (tmp_path / 'builds.log').read_text().count('build') == 1


@pytest.mark.parametrize(
    'mode',
    [
        pytest.param(0o770, id='group'),
        pytest.param(0o707, id='others', marks=pytest.mark.slow),
    ],
)
def test_cache_others_can_write_is_not_used(fake_cxx, mode):
  cache = pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE'])
  cache.mkdir()
  cache.chmod(mode)
  out, err = _finish(_start(_PROBE, fake_cxx))
  assert out['why'] is None  # built privately, and loaded
  who = 'group' if mode == 0o770 else 'others'
  assert f'is writable by {who}' in err and 'not using the build cache' in err
  assert not list(cache.iterdir())
  # The private build's folder is gone once the library is loaded.
  assert not list(pathlib.Path(fake_cxx['TMPDIR']).iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to chown')
def test_library_someone_else_owns_is_not_loaded(fake_cxx, monkeypatch):
  name = _library_name(monkeypatch, fake_cxx)
  cache = pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE'])
  cache.mkdir(mode=0o700)
  planted = cache / name
  planted.write_bytes(b'planted')
  os.chown(planted, 4321, 4321)
  out, err = _finish(_start(_PROBE, fake_cxx))
  assert out['why'] is None
  assert 'owned by uid 4321' in err
  assert planted.stat().st_uid == os.geteuid()  # replaced by our build


@pytest.mark.slow
def test_cache_owned_by_another_user_is_not_used(fake_cxx):
  if os.geteuid() != 0:
    pytest.skip('needs root to chown')
  cache = pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE'])
  cache.mkdir(mode=0o700)
  os.chown(cache, 4321, 4321)
  out, err = _finish(_start(_PROBE, fake_cxx))
  assert out['why'] is None
  assert 'is owned by uid 4321, not by you' in err


def test_compile_that_hangs_is_stopped(fake_cxx, tmp_path):
  env = dict(fake_cxx, FAKE_CXX_SLEEP='300', ALEXNET_JAX_BUILD_TIMEOUT='3')
  start = time.monotonic()
  out, _ = _finish(_start(_PROBE, env))
  assert time.monotonic() - start < 60
  assert 'took over 3 s and was stopped' in out['why']
  # The compiler's own children are gone too, and so is its folder.
  sleeper = int((tmp_path / 'builds.log.sleep').read_text())
  stat_file = pathlib.Path(f'/proc/{sleeper}/stat')
  assert not stat_file.exists() or stat_file.read_text().split()[2] == 'Z'
  assert not list(pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE']).glob('build-*'))


def test_two_processes_building_at_once_compile_once(
    fake_cxx, tmp_path, monkeypatch
):
  env = dict(fake_cxx, FAKE_CXX_SLEEP='2')
  cache = pathlib.Path(fake_cxx['ALEXNET_JAX_CACHE'])
  cache.mkdir(mode=0o700)
  stale = cache / 'build-killed'  # a build killed half way
  stale.mkdir()
  procs = [_start(_PROBE, env) for _ in range(2)]
  for proc in procs:
    out, _ = _finish(proc)
    assert out['why'] is None
  assert (tmp_path / 'builds.log').read_text().count('build') == 1
  assert sorted(p.name for p in cache.iterdir()) == [
      '.build.lock',
      _library_name(monkeypatch, fake_cxx),
  ]


def test_no_home_directory_builds_privately(fake_cxx):
  code = """
  import json, pwd
  def no_entry(uid):
    raise KeyError(f'getpwuid(): uid not found: {uid}')
  pwd.getpwuid = no_entry        # a uid with no passwd entry
  from alexnet_jax.core import onednn
  print(json.dumps(dict(why=onednn.unavailable())))
  """
  env = {k: v for k, v in fake_cxx.items() if k != 'ALEXNET_JAX_CACHE'}
  full = dict(os.environ, **env)
  for k in ('HOME', 'ALEXNET_JAX_CACHE'):
    full.pop(k, None)
  out, err = _finish(_start(code, base=full))
  assert out['why'] is None
  assert 'no home directory' in err and 'not using the build cache' in err
  assert not list(pathlib.Path(fake_cxx['TMPDIR']).iterdir())


@needs_onednn
def test_build_is_cached_by_what_goes_into_it(monkeypatch, tmp_path):
  built = onednn.build()  # _library() built or found it already
  assert built.from_cache and built.path.parent == onednn.cache_dir()
  assert built.path.name == onednn.recipe().name
  assert built.path.stat().st_mode & 0o022 == 0
  names = {onednn.recipe().name}
  # Another source, oneDNN library or compiler is another library.
  source = tmp_path / 'changed.cc'
  source.write_text(onednn.SOURCE.read_text() + '\n// changed\n')
  with monkeypatch.context() as m:
    m.setattr(onednn, 'SOURCE', source)
    names.add(onednn.recipe().name)
  sha256 = onednn._file_sha256
  with monkeypatch.context() as m:  # another libdnnl.so.3
    m.setattr(
        onednn,
        '_file_sha256',
        lambda p: 'another' if p.name.startswith('libdnnl') else sha256(p),
    )
    names.add(onednn.recipe().name)
  fake = tmp_path / 'c++'
  fake.write_text('#!/bin/sh\necho "another 2.0"\n')
  fake.chmod(0o755)
  monkeypatch.setenv('CXX', str(fake))
  names.add(onednn.recipe().name)
  assert len(names) == 4


def test_missing_wheel_is_reported(monkeypatch, tmp_path):
  monkeypatch.setenv('ALEXNET_JAX_CACHE', str(tmp_path))
  monkeypatch.setattr(onednn, 'LIBRARY_DIST', 'no-such-onednn-wheel')
  with pytest.raises(
      onednn.Unavailable,
      match=r"'no-such-onednn-wheel' wheel is not installed \(the cpu extra",
  ):
    onednn.build()
  assert not list(tmp_path.iterdir())


# -------------------------------------------------------------- packaging --


def test_onednn_is_the_cpu_extra_only():
  """GPU/TPU installs (requirements.txt, the package's dependencies) leave
  oneDNN out; the CPU install and CI (requirements-cpu.txt, -test.txt, the
  `cpu` extra) have it."""
  import tomllib

  lines = lambda f: [
      l.split('#')[0].strip() for l in (REPO / f).read_text().splitlines()
  ]
  has = lambda ls: any(l.startswith('onednn') for l in ls)
  assert not has(lines('requirements.txt'))
  cpu = lines('requirements-cpu.txt')
  assert '-r requirements.txt' in cpu and has(cpu)
  assert '-r requirements-cpu.txt' in lines('requirements-test.txt')
  project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
  assert not has(project['dependencies'])
  extra = project['optional-dependencies']['cpu']
  assert {d.split('>=')[0].split('==')[0] for d in extra} == {
      onednn.LIBRARY_DIST,
      onednn.HEADERS_DIST,
  }
