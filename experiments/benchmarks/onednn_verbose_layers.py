"""Runs the torchvision variant's convolutions (batch 128) through the oneDNN custom
calls, for ONEDNN_VERBOSE=1 to name the implementation oneDNN picks and time each call:

    ONEDNN_VERBOSE=1 python experiments/benchmarks/onednn_verbose_layers.py 2>&1 | grep exec

Aggregated output of the 2026-12-01 run: experiments/results/benchmarks/logs/
step_profile_2026-12-01.txt, section 3.
"""

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.core import onednn
from experiments.benchmarks import layers

B = 128
L = layers.TORCHVISION_CONVS
r = np.random.default_rng(0)
for H, ci, co, k, s, p in L:
  pad = ((p, p), (p, p))
  x = jnp.asarray(r.standard_normal((B, H, H, ci), np.float32))
  w = jnp.asarray(r.standard_normal((k, k, ci, co), np.float32) * 0.01)
  y = jax.jit(onednn.conv, static_argnums=(2, 3))(x, w, s, pad)
  dy = jnp.ones_like(y)
  for _ in range(2):
    jax.jit(onednn.input_grad, static_argnums=(2, 3, 4))(
        dy, w, x.shape, s, pad
    ).block_until_ready()
    jax.jit(onednn.kernel_grad, static_argnums=(2, 3, 4))(
        x, dy, w.shape, s, pad
    ).block_until_ready()
    jax.jit(onednn.conv, static_argnums=(2, 3))(
        x, w, s, pad
    ).block_until_ready()
