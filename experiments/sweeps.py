"""Named sweeps: the paper's ablations as config variants.

A sweep is a set of variants, each a few `--config.field=value` overrides of
a dataset's base config: `configs/paper.py` for ImageNet (the paper's
recipe) and `configs/cifar10.py` for CIFAR-10 (this machine's scale). The
first variant is the paper's choice; the others change one thing.
"""

import dataclasses
import pathlib
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / 'shared' / 'datasets' / 'cifar10'


@dataclasses.dataclass(frozen=True)
class Dataset:
  config: str                  # base config file, relative to the repo
  overrides: dict[str, Any]    # applied to every run on this dataset


def datasets() -> dict[str, Dataset]:
  """The datasets a sweep can run on, by name."""
  cifar = {}
  # The real CIFAR-10 JPEGs beside this checkout (../shared/datasets), when
  # present; otherwise configs/cifar10.py's own source (TFDS cifar10). The
  # path is relative to the repository, where the trainer runs.
  if SHARED_CIFAR10.is_dir():
    cifar['data.name'] = 'folder:../shared/datasets/cifar10'
  return {
      'imagenet': Dataset('configs/paper.py', {}),
      'cifar10': Dataset('configs/cifar10.py', cifar),
  }


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  question: str                          # what the sweep measures
  paper: str                             # what the paper reports
  variants: dict[str, dict[str, Any]]    # variant -> overrides
  datasets: tuple[str, ...] = ('cifar10', 'imagenet')
  # Extra overrides by dataset (on top of the dataset's own).
  dataset_overrides: dict[str, dict[str, Any]] = dataclasses.field(
      default_factory=dict)


_ABLATIONS = [
    Sweep('activation', 'ReLU vs tanh in every layer',
          'Figure 1: ReLU reaches 25% training error six times faster '
          '(four-layer CIFAR-10 net)',
          {'relu': {'model.activation': 'relu'},
           'tanh': {'model.activation': 'tanh'}}),
    Sweep('lrn', 'local response normalisation on vs off',
          'LRN lowers top-1/top-5 error by 1.4/1.2 points (ImageNet); '
          '13% -> 11% test error on CIFAR-10 (four-layer conv-local net)',
          {'lrn_on': {'model.lrn.enabled': True},
           'lrn_off': {'model.lrn.enabled': False}}),
    Sweep('pooling', 'overlapping 3/2 vs non-overlapping 2/2 max-pooling',
          'overlapping pooling lowers top-1/top-5 error by 0.4/0.3 points',
          {'overlap_3s2': {'model.pool.window': 3, 'model.pool.stride': 2},
           'plain_2s2': {'model.pool.window': 2, 'model.pool.stride': 2}}),
    Sweep('towers', "two towers vs the paper's one-tower control (half the "
          'kernels in conv1-conv4)',
          'two towers lower top-1/top-5 error by 1.7/1.2 points',
          {'two_towers': {'model.towers': 2},
           'one_tower': {'model.towers': 1}}),
    Sweep('lighting', 'PCA colour augmentation on vs off',
          'PCA lighting lowers top-1 error by over 1 point',
          {'pca_on': {'data.lighting.std': 0.1},
           'pca_off': {'data.lighting.std': 0.0}}),
    Sweep('dropout', 'dropout 0.5 on fc6/fc7 vs none',
          'without dropout the net overfits substantially; dropout roughly '
          'doubles the iterations needed to converge',
          {'dropout': {'model.dropout': 0.5},
           'no_dropout': {'model.dropout': 0.0}}),
]

# Figure 1 (experiments/figure1.py): cuda-convnet's four-layer CIFAR-10 net
# (model.Cifar4), no regularisation and no augmentation, trained with a
# constant learning rate: the paper tuned the rate for each activation.
FIGURE1_OVERRIDES = {
    'model.variant': 'cifar4', 'model.towers': 1, 'model.num_classes': 10,
    'model.dropout': 0.0, 'optim.weight_decay': 0.0,
    'optim.schedule': 'constant',
    'data.image_size': 32, 'data.resize_size': 32, 'data.flip': False,
    'data.lighting.std': 0.0,
    # Unit-variance inputs: CIFAR-10's channel means and stds.
    'data.mean': (0.4914, 0.4822, 0.4465), 'data.std': (0.247, 0.243, 0.261),
    'data.cache': True,          # the encoded JPEGs in memory (~45 MB)
}
FIGURE1_LRS = (0.003, 0.01, 0.03, 0.1)
FIGURE1_SEARCH_EPOCHS = 4.0
FIGURE1_EPOCHS = {'relu': 30.0, 'tanh': 90.0}


def figure1_search() -> Sweep:
  """The learning-rate search: each activation at each of FIGURE1_LRS."""
  variants = {
      f'{act}_lr{lr:g}': dict(FIGURE1_OVERRIDES, **{
          'model.activation': act, 'optim.lr': lr,
          'optim.num_epochs': FIGURE1_SEARCH_EPOCHS})
      for act in ('relu', 'tanh') for lr in FIGURE1_LRS}
  return Sweep('figure1_lr', 'learning-rate search for Figure 1 (training '
               f'error after {FIGURE1_SEARCH_EPOCHS:g} epochs)',
               'the paper tuned the learning rate separately for each '
               'activation to make training as fast as possible',
               variants, datasets=('cifar10',))


def figure1(lrs: dict[str, float]) -> Sweep:
  """Figure 1's two runs at the learning rates the search chose."""
  variants = {
      act: dict(FIGURE1_OVERRIDES, **{
          'model.activation': act, 'optim.lr': lrs[act],
          'optim.num_epochs': FIGURE1_EPOCHS[act]})
      for act in ('relu', 'tanh')}
  return Sweep('figure1', 'ReLU vs tanh, four-layer CIFAR-10 net, training '
               'error vs epochs', 'ReLU reaches 25% training error six times '
               'faster than tanh', variants, datasets=('cifar10',))


# LRN on CIFAR-10 (the paper: 13% -> 11% test error): cuda-convnet's
# conv-local nets (model.CifarLocal), whose 13pct and 11pct files differ only
# by the cross-map normalisation, trained as their layer-params file says
# (lr 0.001, bias lr 0.002, momentum 0.9, weight decay 0.004 - the file has 0
# on the two conv layers, which one config field cannot express), on random
# 24x24 crops of the 32x32 images with flips, inputs on the 0-255 scale
# minus the channel means (cuda-convnet subtracts the mean image). cuda-convnet
# trained ~450 epochs; this machine affords LRN_CIFAR_EPOCHS, with the lr
# divided by 10 twice at the end as its methodology does.
LRN_CIFAR_EPOCHS = 30.0
LRN_CIFAR_OVERRIDES = {
    'model.variant': 'cifar_local', 'model.towers': 1,
    'model.num_classes': 10, 'model.dropout': 0.0,
    'model.lrn.k': 1.0, 'model.lrn.n': 5, 'model.lrn.alpha': 1e-3,
    'model.lrn.alpha_over_n': True, 'model.lrn.beta': 0.75,
    'data.image_size': 24, 'data.resize_size': 32, 'data.train_crop': 'paper',
    'data.flip': True, 'data.lighting.std': 0.0,
    'data.mean': (0.4914, 0.4822, 0.4465), 'data.std': (1 / 255,) * 3,
    'data.cache': True,
    'optim.lr': 0.001, 'optim.bias_lr_mult': 2.0, 'optim.momentum': 0.9,
    'optim.weight_decay': 0.004, 'optim.decay_biases': False,
    'optim.schedule': 'step', 'optim.num_epochs': LRN_CIFAR_EPOCHS,
    'optim.step_epochs': (LRN_CIFAR_EPOCHS - 6, LRN_CIFAR_EPOCHS - 3),
}


def lrn_cifar() -> Sweep:
  return Sweep(
      'lrn_cifar', "cross-map LRN on vs off in cuda-convnet's conv-local "
      'CIFAR-10 net', '13% test error without LRN, 11% with (about 450 '
      'epochs, 10-view testing)',
      {'lrn_on': dict(LRN_CIFAR_OVERRIDES, **{'model.lrn.enabled': True}),
       'lrn_off': dict(LRN_CIFAR_OVERRIDES, **{'model.lrn.enabled': False})},
      datasets=('cifar10',))


SWEEPS = {s.name: s for s in _ABLATIONS}
SWEEPS['figure1_lr'] = figure1_search()
SWEEPS['lrn_cifar'] = lrn_cifar()


def get(name: str) -> Sweep:
  if name not in SWEEPS:
    raise KeyError(f'no sweep named {name!r}; sweeps: {", ".join(SWEEPS)}')
  return SWEEPS[name]
