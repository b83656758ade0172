"""What XLA:CPU compiles for the benchmark's train step: a few counts.

    PYTHONPATH=<a checkout> python experiments/accelerator/cpu_hlo_summary.py \
        [--batch 32] [--dtype float32]

Prints one JSON line: instruction counts by kind in the optimised HLO
(conditionals, custom calls, while loops, fusions, convolutions), and the
compiled step's temporary memory. Run once against the tree before a change
and once after (the timings: results/benchmarks/formulation_before_after_*): equal counts show that
lax.platform_dependent leaves nothing behind on CPU (its single-branch
conditionals are folded away when the step is lowered for one platform).
"""

import argparse
import collections
import json
import re

import jax
import jax.numpy as jnp


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--dtype', default='float32')
  args = parser.parse_args()
  from alexnet_jax import benchmark
  from alexnet_jax.configs import paper
  from alexnet_jax.core import model as model_lib
  from alexnet_jax.core import xla_flags

  xla_flags.set_defaults()
  cfg = paper.get_config().model
  cfg.dtype = args.dtype
  net = model_lib.from_config(cfg)
  tx, step = benchmark.train_step_fn(net)
  params = jax.eval_shape(lambda: model_lib.init(net, jax.random.key(0), 224))[
      'params'
  ]
  opt_state = jax.eval_shape(tx.init, params)
  images = jax.ShapeDtypeStruct((args.batch, 224, 224, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((args.batch,), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(3))
  compiled = (
      jax.jit(step, donate_argnums=(0,))
      .lower((params, opt_state), images, labels, key)
      .compile()
  )
  hlo = compiled.as_text()
  ops = collections.Counter(
      re.findall(
          r'= \S+ (conditional|custom-call|while|fusion|convolution)\(', hlo
      )
  )
  targets = collections.Counter(re.findall(r'custom_call_target="(\w+)"', hlo))
  mem = compiled.memory_analysis()
  print(
      json.dumps(
          dict(
              module=model_lib.__file__,
              batch=args.batch,
              dtype=args.dtype,
              ops=dict(sorted(ops.items())),
              custom_call_targets=dict(targets),
              instructions=len(re.findall(r'^\s+\S+ = ', hlo, re.M)),
              temp_mb=mem.temp_size_in_bytes / 2**20,
          )
      )
  )


if __name__ == '__main__':
  main()
