r"""XLA's memory plan for the training step, and the heap a compile leaves.

    python experiments/benchmarks/step_memory.py [--variant torchvision]

Compiles the benchmark's training step (alexnet_jax.benchmark: SGD momentum
+ weight decay, batch 128, 224x224, donated state) without running it and
prints one JSON line per variant: XLA's `memory_analysis()` (argument and
temporary bytes), how many donated parameters XLA copies, and the process's
resident memory after compiling, before and after glibc's malloc_trim(0).
None of these depend on machine load. XLA_FLAGS in the environment apply;
PYTHONPATH=<older checkout> measures an older commit the same way.
"""

import argparse
import json
import re

import jax
import jax.numpy as jnp

from alexnet_jax import benchmark
from alexnet_jax.core import model as model_lib
from alexnet_jax.configs import paper


def _rss_mb():
  status = open('/proc/self/status').read()
  return int(re.search(r'VmRSS:\s+(\d+)', status).group(1)) / 1024


def measure(variant, batch=128, size=224):
  cfg = paper.get_config().model
  cfg.variant = variant
  cfg.towers = 2 if variant == 'paper' else 1
  net = model_lib.from_config(cfg)
  params = model_lib.init(net, jax.random.key(0), size)['params']
  images = jnp.zeros((batch, size, size, 3))
  labels = jnp.zeros((batch,), jnp.int32)
  tx, train_step = benchmark.train_step_fn(net)
  state = (params, tx.init(params))
  compiled = jax.jit(train_step, donate_argnums=(0,)).lower(
      state, images, labels, jax.random.key(1)).compile()
  mem = compiled.memory_analysis()
  rss_compiled = _rss_mb()
  benchmark._release_free_heap()
  return dict(
      variant=variant, batch=batch, jax=jax.__version__,
      argument_mb=mem.argument_size_in_bytes / 2**20,
      temp_mb=mem.temp_size_in_bytes / 2**20,
      copied_params=sum(' copy(%state' in line
                        for line in compiled.as_text().splitlines()),
      rss_after_compile_mb=rss_compiled, rss_after_trim_mb=_rss_mb())


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--variant', default='torchvision,paper')
  for variant in p.parse_args().variant.split(','):
    print(json.dumps(measure(variant)), flush=True)


if __name__ == '__main__':
  main()
