"""Run: python experiments/benchmarks/uint8_step.py

The smoke config's train step, float32 batches (host normalised) against
uint8 batches (lighting and normalisation in the step), interleaved."""

import time

import jax
import numpy as np

from alexnet_jax.configs import smoke
from alexnet_jax.core import device_augment
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import train

c = smoke.get_config()
c.data.lighting.std = 0.1
b, size, big = c.optim.batch_size, c.data.image_size, c.data.resize_size
params = input_pipeline._params(c)
m = model_lib.from_config(c.model)
rng = np.random.default_rng(0)
setups = {
    'float32 (host does all)': (
        None,
        rng.normal(size=(b, size, size, 3)).astype(np.float32),
        False,
    ),
    'uint8 crop (augment=host)': (
        device_augment.prepare_fn(params, seed=0, crop=False),
        rng.integers(0, 256, (b, size, size, 3), np.uint8),
        True,
    ),
    'uint8 square (augment=device)': (
        device_augment.prepare_fn(params, seed=0, crop=True),
        rng.integers(0, 256, (b, big, big, 3), np.uint8),
        False,
    ),
}
steps, states, batches = {}, {}, {}
for name, (prep, images, window) in setups.items():
  s = train.make_train_step(
      c, m, sizes=train.Plan(1700, 53.1, 319), prepare=prep
  )
  batch = dict(image=images, label=rng.integers(0, 10, b).astype(np.int32))
  if window:
    batch['window'] = np.concatenate(
        [rng.integers(0, big - size + 1, (b, 2)), rng.integers(0, 2, (b, 1))], 1
    ).astype(np.int32)
  steps[name], states[name], batches[name] = (
      s,
      s.par.place_state(s.init_state()),
      batch,
  )
  states[name], _ = s(states[name], s.par.shard_batch(batch))
  jax.block_until_ready(states[name])
best = {n: float('inf') for n in setups}
for _ in range(15):
  for n in setups:
    placed = steps[n].par.shard_batch(batches[n])
    jax.block_until_ready(placed)
    t = time.perf_counter()
    states[n], met = steps[n](states[n], placed)
    jax.block_until_ready(states[n])
    best[n] = min(best[n], time.perf_counter() - t)
for n in setups:
  print(
      f'{n:32s} best step {best[n]*1e3:7.1f} ms  ({b / best[n]:6.0f} img/s)  bytes/img {batches[n]["image"][0].nbytes}'
  )
