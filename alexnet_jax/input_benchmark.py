"""Alias of `python -m alexnet_jax.benchmark input` (the older command name)."""

import sys

from alexnet_jax.benchmarks import input

if __name__ == '__main__':
  sys.exit(input.main())
