"""LRN formulations compiled for TPU v5e and H100 on this CPU machine.

    JAX_PLATFORMS=cpu python experiments/accelerator/compiled_lrn_probe.py \
        block v5e,h100 none,slices,matmul,reduce_window
    JAX_PLATFORMS=cpu python experiments/accelerator/compiled_lrn_probe.py \
        towers v5e,h100 towers:slices,grouped:slices,towers:matmul,...

Needs the `compile` extra. Prints XLA's bytes accessed (and FLOPs, and the
temporaries) of small programs, faster to compile than the whole step:

* block: conv1 of one tower (11x11/4, 48 channels, batch 128, 224x224,
  bfloat16), ReLU, LRN (`lrn.lrn(impl=...)`, or none), max-pool 3/2;
  forward and the kernel's gradient;
* towers: conv1 (96 channels) and conv2 of both towers on one device,
  each with ReLU, LRN and pool, as the model runs them today ('towers': a
  slice per tower, one convolution per tower) or as one grouped
  convolution ('grouped': feature_group_count=2, LRN over [..., 2, C]).

core/lrn.py's per-platform choice and docs/performance.md cite its output
(experiments/results/compile/lrn_probe.txt).
"""

import sys
import time

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax.benchmarks import compile_targets
from alexnet_jax.benchmarks import deviceless
from alexnet_jax.core import lrn as lrn_lib

LRN = dict(k=2.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=False)


def _conv(x, k, stride, pad, groups=1):
  return lax.conv_general_dilated(
      x,
      k,
      (stride, stride),
      pad,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups,
  )


def _pool(y):
  return lax.reduce_window(
      y, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), 'VALID'
  )


def _norm(impl):
  if impl == 'none':
    return lambda y: y
  return lambda y: lrn_lib.lrn(y, impl=impl, **LRN)


def block(impl):
  norm = _norm(impl)

  def loss(k, x, r):
    y = jax.nn.relu(_conv(x, k, 4, ((0, 3), (0, 3))))
    y = _pool(norm(y))
    return jnp.sum(y.astype(jnp.float32) * r)

  shapes = ((11, 11, 3, 48), (128, 224, 224, 3), (128, 27, 27, 48))
  return jax.grad(loss), shapes


def towers(variant):
  form, impl = variant.split(':')
  norm = _norm(impl)

  def grouped_norm(y):
    z = y.reshape(y.shape[:-1] + (2, y.shape[-1] // 2))
    return norm(z).reshape(y.shape)

  def loss(k1, k2, x, r):
    y = jax.nn.relu(_conv(x, k1, 4, ((0, 3), (0, 3))))  # [B, 55, 55, 96]
    if form == 'grouped':
      y = _pool(grouped_norm(y))
      y = jax.nn.relu(_conv(y, k2, 1, ((2, 2), (2, 2)), groups=2))
      out = _pool(grouped_norm(y))
    else:
      hs = [_pool(norm(y[..., :48])), _pool(norm(y[..., 48:]))]
      k2t = k2.reshape(5, 5, 48, 2, 128)
      hs = [
          _pool(norm(jax.nn.relu(_conv(h, k2t[:, :, :, t], 1, ((2, 2),) * 2))))
          for t, h in enumerate(hs)
      ]
      out = jnp.concatenate(hs, -1)
    return jnp.sum(out.astype(jnp.float32) * r)

  shapes = (
      (11, 11, 3, 96),
      (5, 5, 48, 256),
      (128, 224, 224, 3),
      (128, 13, 13, 256),
  )
  return jax.grad(loss, argnums=(0, 1)), shapes


def main(argv):
  kind, targets, variants = argv
  for name in targets.split(','):
    mesh = jax.sharding.Mesh(compile_targets.devices(name, 1), ('x',))
    s = NamedSharding(mesh, P())
    for variant in variants.split(','):
      fn, shapes = (block if kind == 'block' else towers)(variant)
      args = [
          jax.ShapeDtypeStruct(
              sh,
              jnp.float32 if i == len(shapes) - 1 else jnp.bfloat16,
              sharding=s,
          )
          for i, sh in enumerate(shapes)
      ]
      start = time.time()
      compiled = jax.jit(fn).trace(*args).lower().compile()
      hlo = deviceless.hlo_text(compiled)
      platform = compile_targets.target(name).platform
      flops, accessed, _ = deviceless.cost(compiled, platform, hlo)
      temp = compiled.memory_analysis().temp_size_in_bytes
      print(
          f'{kind} {name} {variant:24s} GB {accessed / 1e9:.3f} '
          f'GFLOP {flops / 1e9:.2f} temp MB {temp / 1e6:.0f} '
          f'({time.time() - start:.0f} s)',
          flush=True,
      )


if __name__ == '__main__':
  main(sys.argv[1:])
