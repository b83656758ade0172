"""Named sweeps: the paper's ablations as config variants.

A sweep is a set of variants, each a few `--config.field=value` overrides of
a dataset's base config: `configs/paper.py` for ImageNet (the paper's
recipe) and `configs/cifar10.py` for CIFAR-10 (this machine's scale). The
first variant is the paper's choice; the others change one thing. The
ablations and their variants are defined once, in configs/ablations.py.
"""

import dataclasses
import pathlib
from typing import Any

from alexnet_jax.configs import ablations as ablations_config
from alexnet_jax.configs import paper_cifar224
from alexnet_jax.core import paths

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR10 = 'cifar10'  # its folder under the data root (docs/data.md)


@dataclasses.dataclass(frozen=True)
class Dataset:
  config: str  # base config file, relative to the repo
  overrides: dict[str, Any]  # applied to every run on this dataset


def datasets() -> dict[str, Dataset]:
  """The datasets a sweep can run on, by name."""
  cifar = {}
  # The CIFAR-10 JPEGs under the data root, when there; otherwise
  # configs/cifar10.py's own source (TFDS cifar10). Written with the
  # $ALEXNET_JAX_DATA token, which the trainer resolves: overrides, logs
  # and results then name no directory of this machine.
  if paths.dataset_dir(CIFAR10).is_dir():
    cifar['data.name'] = 'folder:' + paths.in_data_root(CIFAR10)
  return {
      'imagenet': Dataset('configs/paper.py', {}),
      'cifar10': Dataset('configs/cifar10.py', cifar),
  }


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  question: str  # what the sweep measures
  paper: str  # what the paper reports
  variants: dict[str, dict[str, Any]]  # variant -> overrides
  datasets: tuple[str, ...] = ('cifar10', 'imagenet')
  # Extra overrides by dataset (on top of the dataset's own).
  dataset_overrides: dict[str, dict[str, Any]] = dataclasses.field(
      default_factory=dict
  )
  # A config file of the sweep's own (configs/), used instead of
  # the dataset's base config and its overrides.
  config: str | None = None


_ABLATIONS = [
    Sweep(name, question, paper, variants)
    for name, (question, paper, variants) in ablations_config.ABLATIONS.items()
]

# Figure 1 (experiments/figure1.py): configs/figure1.py (the
# four-layer CIFAR-10 net, no regularisation, constant learning rate) with
# the rate tuned for each activation, as the paper did.
FIGURE1_CONFIG = 'configs/figure1.py'
# Initial gradients are small (all weights start at std 0.01), so the grid
# reaches up to 0.3; a diverging rate is stopped by the trainer's NaN guard.
FIGURE1_LRS = (0.01, 0.03, 0.1, 0.3)
FIGURE1_SEARCH_EPOCHS = 3.0
FIGURE1_EPOCHS = {'relu': 20.0, 'tanh': 60.0}


def figure1_search() -> Sweep:
  """The learning-rate search: each activation at each of FIGURE1_LRS."""
  variants = {
      f'{act}_lr{lr:g}': dict(
          ablations_config.VARIANTS[act],
          **{'optim.lr': lr, 'optim.num_epochs': FIGURE1_SEARCH_EPOCHS},
      )
      for act in ('relu', 'tanh')
      for lr in FIGURE1_LRS
  }
  return Sweep(
      'figure1_lr',
      'learning-rate search for Figure 1 (training '
      f'error after {FIGURE1_SEARCH_EPOCHS:g} epochs)',
      'the paper tuned the learning rate separately for each '
      'activation to make training as fast as possible',
      variants,
      datasets=('cifar10',),
      config=FIGURE1_CONFIG,
  )


def figure1(lrs: dict[str, float]) -> Sweep:
  """Figure 1's two runs at the learning rates the search chose."""
  variants = {
      act: dict(
          ablations_config.VARIANTS[act],
          **{'optim.lr': lrs[act], 'optim.num_epochs': FIGURE1_EPOCHS[act]},
      )
      for act in ('relu', 'tanh')
  }
  return Sweep(
      'figure1',
      'ReLU vs tanh, four-layer CIFAR-10 net, training error vs epochs',
      'ReLU reaches 25% training error six times faster than tanh',
      variants,
      datasets=('cifar10',),
      config=FIGURE1_CONFIG,
  )


# LRN on CIFAR-10 (the paper: 13% -> 11% test error): cuda-convnet's
# conv-local net with and without its cross-map LRN, recipe and budget in
# configs/lrn_cifar.py.
def lrn_cifar() -> Sweep:
  return Sweep(
      'lrn_cifar',
      "cross-map LRN on vs off in cuda-convnet's conv-local CIFAR-10 net",
      '13% test error without LRN, 11% with (about 450 '
      'epochs, 10-view testing)',
      {v: ablations_config.VARIANTS[v] for v in ('lrn_on', 'lrn_off')},
      datasets=('cifar10',),
      config='configs/lrn_cifar.py',
  )


# Does the paper's recipe leave the chance loss at full size? Its network on
# CIFAR-10 at 224 with the input scale, the biases of 1 and the fc6/fc7 init
# each changed (configs/paper_cifar224.py defines the variants).
def init_scale() -> Sweep:
  return Sweep(
      'init_scale',
      "whether configs/paper.py's network leaves the chance loss within "
      f'{paper_cifar224.STEPS} steps (batch 32, CIFAR-10 at 224): input '
      'scale 0-255 vs [0, 1], biases 1 vs 0.1, fc6/fc7 weights N(0, 0.01) '
      'vs N(0, 0.005)',
      'the paper trains on raw 0-255 pixels minus the mean, N(0, 0.01) '
      'weights, biases of 1 in conv2/4/5 and fc6/7, "which accelerates the '
      'early stages of learning"',
      dict(paper_cifar224.VARIANTS),
      datasets=('cifar10',),
      config='configs/paper_cifar224.py',
  )


def ablations() -> Sweep:
  """All six ablations against one shared baseline: 7 runs instead of 12.

  The first variant of every ablation sweep is the same config (the paper's
  choices), so training it once and each single change once answers all six
  questions at 7/12 of the cost, which is what fits this machine.
  """
  variants = {'paper': {}}
  papers = []
  for s in _ABLATIONS:
    ((name, change),) = list(s.variants.items())[1:]
    variants[name] = change
    papers.append(f'{s.name}: {s.paper}')
  return Sweep(
      'ablations',
      "the paper's network against six single "
      'changes (tanh, no LRN, 2/2 pooling, one tower, no PCA '
      'lighting, no dropout)',
      '; '.join(papers),
      variants,
  )


SWEEPS = {s.name: s for s in _ABLATIONS}
SWEEPS['ablations'] = ablations()
SWEEPS['figure1_lr'] = figure1_search()
SWEEPS['lrn_cifar'] = lrn_cifar()
SWEEPS['init_scale'] = init_scale()


def get(name: str) -> Sweep:
  if name not in SWEEPS:
    raise KeyError(f'no sweep named {name!r}; sweeps: {", ".join(SWEEPS)}')
  return SWEEPS[name]
