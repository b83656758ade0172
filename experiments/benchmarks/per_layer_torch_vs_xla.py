"""Per convolution of the torchvision variant at batch 128: PyTorch (oneDNN)
against ops.conv2d's XLA path, forward, input and kernel gradients, in ms.

    ALEXNET_JAX_CONV=xla python experiments/benchmarks/per_layer_torch_vs_xla.py

Output of the 2026-12-01 run: experiments/results/benchmarks/logs/
step_profile_2026-12-01.txt, section 1.
"""

import time

import jax
import jax.numpy as jnp

from alexnet_jax.core import ops
from experiments.benchmarks import layers

try:
  import torch
except ModuleNotFoundError:
  raise SystemExit(
      "error: torch is not installed; the experiments need the 'experiments' "
      "extra: pip install -e '.[experiments]'"
  ) from None

torch.set_num_threads(2)
B = 128
L = layers.TORCHVISION_CONVS


def tm(f, n=3):
  f()
  ts = []
  for _ in range(n):
    t = time.perf_counter()
    f()
    ts.append(time.perf_counter() - t)
  return min(ts) * 1e3


for H, ci, co, k, s, p in L:
  x = torch.randn(B, ci, H, H)
  w = torch.randn(co, ci, k, k) * 0.01
  y = torch.nn.functional.conv2d(x, w, stride=s, padding=p)
  dy = torch.randn_like(y)
  tf = tm(lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=p))
  tbd = tm(
      lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, stride=s, padding=p)
  )
  tbw = tm(
      lambda: torch.ops.aten.convolution_backward(
          dy,
          x,
          w,
          None,
          [s, s],
          [p, p],
          [1, 1],
          False,
          [0, 0],
          1,
          [False, False, True],
      )
  )
  xj = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
  wj = jnp.asarray(w.permute(2, 3, 1, 0).numpy())
  dyj = jnp.asarray(dy.permute(0, 2, 3, 1).numpy())
  pad = ((p, p), (p, p))
  f = jax.jit(lambda x, w: ops.conv2d(x, w, s, pad))
  bd = jax.jit(
      lambda x, w, dy: jax.vjp(lambda x: ops._xla_conv(x, w, s, pad), x)[1](dy)[
          0
      ]
  )
  bw = jax.jit(lambda x, dy: ops.kernel_grad(x, dy, (k, k), s, pad))
  jf = tm(lambda: f(xj, wj).block_until_ready())
  jbd = tm(lambda: bd(xj, wj, dyj).block_until_ready())
  jbw = tm(lambda: bw(xj, dyj).block_until_ready())
  gf = 2 * B * y.shape[2] * y.shape[3] * co * ci * k * k / 1e9
  print(
      f"H{H} {ci}->{co} k{k}: GFLOP {gf:.1f} | torch fwd {tf:.0f} bd {tbd:.0f} bw {tbw:.0f} ms | jax fwd {jf:.0f} bd {jbd:.0f} bw {jbw:.0f} ms",
      flush=True,
  )
