"""The oneDNN convolutions: values, the choice of backend, and the build.

Their maths against XLA's convolutions is in test_ops.py (every conv2d test
runs with both backends); here: what the custom calls add.
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.core import onednn
from alexnet_jax.core import ops

ONEDNN_EXPECTED = onednn.PLATFORM_SUPPORTED   # requirements.txt installs it

needs_onednn = pytest.mark.skipif(
    not ONEDNN_EXPECTED, reason='oneDNN convolutions: x86-64 Linux only')


@needs_onednn
def test_onednn_builds_here():
  assert onednn.unavailable() is None


@needs_onednn
@pytest.mark.parametrize('shape,kernel,stride,padding', [
    ((3, 227, 227, 3), (11, 11, 3, 16), 4, ((0, 0), (0, 0))),    # Caffe conv1
    ((2, 13, 13, 24), (3, 3, 24, 40), 1, ((1, 1), (1, 1))),
])
def test_custom_calls_match_xla_at_alexnet_shapes(shape, kernel, stride,
                                                  padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  xla = lambda x, k: lax.conv_general_dilated(
      x, k, (stride, stride), padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y, vjp = jax.vjp(xla, x, k)
  dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  want_dx, want_dk = vjp(dy)
  got_y = jax.jit(onednn.conv, static_argnums=(2, 3))(x, k, stride, padding)
  got_dx = jax.jit(onednn.input_grad, static_argnums=(2, 3, 4))(
      dy, k, x.shape, stride, padding)
  got_dk = jax.jit(onednn.kernel_grad, static_argnums=(2, 3, 4))(
      x, dy, k.shape, stride, padding)
  scale = lambda a: float(jnp.max(jnp.abs(a)))
  np.testing.assert_allclose(got_y, y, atol=1e-5 * scale(y))
  np.testing.assert_allclose(got_dx, want_dx, atol=1e-5 * scale(want_dx))
  np.testing.assert_allclose(got_dk, want_dk, atol=1e-5 * scale(want_dk))


@needs_onednn
def test_unneeded_input_gradient_is_not_computed(monkeypatch):
  """conv1's input gradient (d loss / d images) costs more than conv1
  itself; a kernel-only gradient must compile to the forward and the
  kernel-gradient calls alone."""
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onednn')
  x = jnp.ones((2, 23, 23, 3))
  k = jnp.ones((11, 11, 3, 4))
  loss = lambda k: (ops.conv2d(x, k, 4, 'SAME')**2).sum()
  hlo = jax.jit(jax.grad(loss)).lower(k).compile().as_text()
  calls = [t for t in onednn.TARGETS.values() if f'"{t}"' in hlo]
  assert calls == ['AlexnetConvFwd', 'AlexnetConvBwdKernel'], calls


def test_backend_choice(monkeypatch):
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'xla')
  assert ops.conv_backend() == 'xla'
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onedn')
  with pytest.raises(ValueError, match="ALEXNET_JAX_CONV='onedn' is not one "
                     'of auto, xla, onednn'):
    ops.conv_backend()
  # float16 always runs XLA's; asking oneDNN for it is an error.
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'auto')
  assert ops.conv_backend(jnp.float16) == 'xla'
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onednn')
  with pytest.raises(ValueError, match='float32 or bfloat16 on CPU only, '
                     'not float16'):
    ops.conv_backend(jnp.float16)


@needs_onednn
@pytest.mark.parametrize('fast', [True, False])
def test_auto_runs_bfloat16_on_onednn_only_where_it_is_fast(monkeypatch,
                                                            fast):
  monkeypatch.setattr(onednn, 'bfloat16_fast', lambda: fast)
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'auto')
  assert ops.conv_backend(jnp.bfloat16) == ('onednn' if fast else 'xla')
  assert ops.conv_backend(jnp.float32) == 'onednn'
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onednn')   # forced: always
  assert ops.conv_backend(jnp.bfloat16) == 'onednn'


@needs_onednn
def test_bfloat16_convolutions_match_float32_to_bfloat16_precision():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 13, 13, 32)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 32, 16)) / 17, jnp.float32)
  dy = jnp.asarray(rng.normal(size=(2, 13, 13, 16)), jnp.float32)
  pads = ((1, 1), (1, 1))
  b = lambda a: a.astype(jnp.bfloat16)
  run = lambda dtype: (
      jax.jit(onednn.conv, static_argnums=(2, 3))(
          dtype(x), dtype(k), 1, pads),
      jax.jit(onednn.input_grad, static_argnums=(2, 3, 4))(
          dtype(dy), dtype(k), x.shape, 1, pads),
      jax.jit(onednn.kernel_grad, static_argnums=(2, 3, 4))(
          dtype(x), dtype(dy), k.shape, 1, pads))
  for got, want in zip(run(b), run(lambda a: a)):
    assert got.dtype == jnp.bfloat16
    err = jnp.max(jnp.abs(got.astype(jnp.float32) - want))
    assert err < 2e-2 * jnp.max(jnp.abs(want)), err


def test_auto_falls_back_to_xla_when_onednn_cannot_build(monkeypatch,
                                                         caplog):
  monkeypatch.setattr(onednn, 'unavailable', lambda: 'no compiler here')
  ops._warn_once.cache_clear()
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'auto')
  assert ops.conv_backend() == 'xla'
  assert 'no compiler here' in caplog.text
  # The fallback computes the same convolution.
  x = jnp.ones((1, 5, 5, 2))
  y = jax.jit(lambda x: ops.conv2d(x, jnp.ones((3, 3, 2, 1)), 1, 'SAME'))(x)
  assert float(y[0, 2, 2, 0]) == 18.0
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'onednn')
  with pytest.raises(onednn.Unavailable, match='no compiler here'):
    ops.conv_backend()


def test_missing_compiler_or_wheel_is_reported(monkeypatch, tmp_path):
  monkeypatch.setenv('ALEXNET_JAX_CACHE', str(tmp_path))
  monkeypatch.setattr(onednn, 'LIBRARY_DIST', 'no-such-onednn-wheel')
  with pytest.raises(onednn.Unavailable,
                     match="'no-such-onednn-wheel' wheel is not installed"):
    onednn.build()
  if ONEDNN_EXPECTED:
    monkeypatch.setattr(onednn, 'LIBRARY_DIST', 'onednn-cpu-gomp')
    monkeypatch.setenv('CXX', 'no-such-compiler')
    with pytest.raises(onednn.Unavailable, match="'no-such-compiler' is not "
                       'on PATH'):
      onednn.build()
  assert not list(tmp_path.iterdir())


@needs_onednn
def test_build_is_cached_by_what_goes_into_it(monkeypatch, tmp_path):
  monkeypatch.setenv('ALEXNET_JAX_CACHE', str(tmp_path))
  first = onednn.build()
  mtime = first.stat().st_mtime_ns
  assert onednn.build() == first and first.stat().st_mtime_ns == mtime
  assert [p.name for p in tmp_path.iterdir()] == [first.name]
  # Another source is another library.
  source = tmp_path / 'changed.cc'
  source.write_text(onednn.SOURCE.read_text() + '\n// changed\n')
  monkeypatch.setattr(onednn, 'SOURCE', source)
  assert onednn.build() != first
