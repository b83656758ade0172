"""The paper's ablations as named config variants: one change each.

    python -m alexnet_jax.main --config=configs/ablations.py:cifar10/lrn_off \\
        --workdir=/tmp/lrn_off \\
        --config.data.name=folder:/path/to/cifar10

The argument after ':' is BASE/VARIANT: BASE is `cifar10` (configs/cifar10.py,
this machine's scale) or `paper` (configs/paper.py, ImageNet); VARIANT is a
key of VARIANTS. Each variant is a set of `--config.FIELD=VALUE` overrides,
so the same run is also

    python -m alexnet_jax.main --config=configs/cifar10.py \\
        --config.model.lrn.enabled=False ...

Hardware, time and result: those of the base config (a cifar10 run took
2 h 08 min for 20 epochs on a 2-core CPU). The variants' results at CIFAR
scale, and the commands that ran them, are in docs/experiments.md.

The first variant of each pair is the paper's choice. The names match
`experiments/sweeps.py`, which runs the pairs side by side and collects
their curves.

| pair | the paper reports (ImageNet, top-1 / top-5 error) |
|---|---|
| relu / tanh | Figure 1: 25% CIFAR-10 training error 6x sooner with ReLU |
| lrn_on / lrn_off | LRN: -1.4 / -1.2 points |
| overlap_3s2 / plain_2s2 | overlapping pooling: -0.4 / -0.3 points |
| two_towers / one_tower | two towers vs the one-tower control: -1.7 / -1.2 |
"""

from alexnet_jax.configs import cifar10
from alexnet_jax.configs import paper

BASES = {'cifar10': cifar10.get_config, 'paper': paper.get_config}

VARIANTS = {
    'relu': {'model.activation': 'relu'},
    'tanh': {'model.activation': 'tanh'},
    'lrn_on': {'model.lrn.enabled': True},
    'lrn_off': {'model.lrn.enabled': False},
    'overlap_3s2': {'model.pool.window': 3, 'model.pool.stride': 2},
    'plain_2s2': {'model.pool.window': 2, 'model.pool.stride': 2},
    'two_towers': {'model.towers': 2},
    # The paper's control: one tower with half the kernels in conv1-conv4
    # (model.widths_for halves them when towers=1).
    'one_tower': {'model.towers': 1},
}


def apply_overrides(config, overrides):
  """Sets each dotted field of `overrides` on `config` (fields must exist)."""
  for dotted, value in overrides.items():
    *path, last = dotted.split('.')
    node = config
    for part in path:
      node = node[part]
    if last not in node:
      raise KeyError(f'config.{dotted} does not exist')
    node[last] = value
  return config


def get_config(arg='cifar10/relu'):
  base, sep, variant = arg.partition('/')
  if not sep or base not in BASES or variant not in VARIANTS:
    raise ValueError(
        f'configs/ablations.py:{arg} is not BASE/VARIANT with BASE one of '
        f'{", ".join(BASES)} and VARIANT one of {", ".join(VARIANTS)}')
  return apply_overrides(BASES[base](), VARIANTS[variant])
