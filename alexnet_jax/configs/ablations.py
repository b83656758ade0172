"""The paper's ablations as named config variants: one change each.

    python -m alexnet_jax.main --config=configs/ablations.py:cifar10/lrn_off \\
        --workdir=/tmp/lrn_off

(TFDS cifar10, the base's default; add
--config.data.name='folder:$ALEXNET_JAX_DATA/cifar10' for the JPEG folders,
docs/data.md.)

The argument after ':' is BASE/VARIANT: BASE is `cifar10` (configs/cifar10.py,
this machine's scale) or `paper` (configs/paper.py, ImageNet); VARIANT is a
key of VARIANTS. Each variant is a set of `--config.FIELD=VALUE` overrides,
so the same run is also

    python -m alexnet_jax.main --config=configs/cifar10.py \\
        --config.model.lrn.enabled=False ...

Hardware, time and result: those of the base config (a cifar10 run took
2 h 08 min for 20 epochs on a 2-core CPU). The variants' results at CIFAR
scale, and the commands that ran them, are in docs/experiments.md.

ABLATIONS below is the one list of the pairs: what each changes, what the
paper reports, and the overrides of its two variants (the first is the
paper's choice). `experiments/sweep_definitions.py` builds its sweeps from it, and
`python -m experiments.sweep --list` prints it.
"""

from alexnet_jax.configs import cifar10
from alexnet_jax.configs import paper

BASES = {'cifar10': cifar10.get_config, 'paper': paper.get_config}

# name -> (what changes, what the paper reports, {variant: overrides}).
ABLATIONS = {
    'activation': (
        'ReLU vs tanh in every layer',
        'Figure 1: ReLU reaches 25% training error six times faster '
        '(four-layer CIFAR-10 net)',
        {
            'relu': {'model.activation': 'relu'},
            'tanh': {'model.activation': 'tanh'},
        },
    ),
    'lrn': (
        'local response normalisation on vs off',
        'LRN lowers top-1/top-5 error by 1.4/1.2 points (ImageNet); '
        '13% -> 11% test error on CIFAR-10 (four-layer conv-local net)',
        {
            'lrn_on': {'model.lrn.enabled': True},
            'lrn_off': {'model.lrn.enabled': False},
        },
    ),
    'pooling': (
        'overlapping 3/2 vs non-overlapping 2/2 max-pooling',
        'overlapping pooling lowers top-1/top-5 error by 0.4/0.3 points',
        {
            'overlap_3s2': {'model.pool.window': 3, 'model.pool.stride': 2},
            'plain_2s2': {'model.pool.window': 2, 'model.pool.stride': 2},
        },
    ),
    'towers': (
        "two towers vs the paper's one-tower control (half the kernels in "
        'conv1-conv4)',
        'two towers lower top-1/top-5 error by 1.7/1.2 points',
        # The paper's control: one tower with half the kernels in
        # conv1-conv4 (model.widths_for halves them when towers=1).
        {'two_towers': {'model.towers': 2}, 'one_tower': {'model.towers': 1}},
    ),
    'lighting': (
        'PCA colour augmentation on vs off',
        'PCA lighting lowers top-1 error by over 1 point',
        {
            'pca_on': {'data.lighting.std': 0.1},
            'pca_off': {'data.lighting.std': 0.0},
        },
    ),
    'dropout': (
        'dropout 0.5 on fc6/fc7 vs none',
        'without dropout the net overfits substantially; dropout roughly '
        'doubles the iterations needed to converge',
        {
            'dropout': {'model.dropout': 0.5},
            'no_dropout': {'model.dropout': 0.0},
        },
    ),
}

VARIANTS = {
    variant: overrides
    for _, _, pair in ABLATIONS.values()
    for variant, overrides in pair.items()
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
        f'{", ".join(BASES)} and VARIANT one of {", ".join(VARIANTS)}'
    )
  return apply_overrides(BASES[base](), VARIANTS[variant])
