"""Compiling for a TPU or GPU target on this machine (test_compile): skip,
saying why, where the `compile` extra (requirements-compile.txt) is not
installed."""

import pytest

from alexnet_jax.benchmarks import compile_targets


def need(name: str) -> str:
  """`name` (a compile_targets.TARGETS key), or skip the calling test."""
  reason = compile_targets.unavailable(compile_targets.target(name).platform)
  if reason:
    pytest.skip(f'cannot compile for {name}: {reason}')
  return name
