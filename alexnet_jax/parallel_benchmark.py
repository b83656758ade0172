"""Alias of `python -m alexnet_jax.benchmark parallel` (the older command name)."""

import sys

from alexnet_jax.benchmarks import parallel

if __name__ == '__main__':
  sys.exit(parallel.main())
