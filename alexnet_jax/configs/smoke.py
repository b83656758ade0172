"""Smoke run: a small AlexNet on the CIFAR-10 sample shipped with the package.

Command (no dataset to download: the 2,040 CIFAR-10 JPEGs in
alexnet_jax/assets/cifar10_mini are found through the installed package):

    python -m alexnet_jax.main --config=configs/smoke.py --workdir=/tmp/alexnet_smoke

Hardware and time: any CPU. 52 s wall, compilation included, on a 2-core
Xeon (2026-12-01; log in experiments/results/smoke/). It trains, evaluates, checkpoints and writes TensorBoard +
metrics.jsonl exactly as the full recipe does, so it is the quickest check
that an installation works.

Expected result: 319 steps (6 epochs of the 1,700 training images); the
training loss falls from about 2.4 to 1.9 and the top-1 error on the
sample's 340 test images ends at about 72% (chance: 90%): far from
converged by design. Run it again with the same command: it finds the
finished checkpoint and only re-evaluates.

The model is the paper's AlexNet (two towers, LRN, overlapping pooling) at
a quarter of its width on 64x64 inputs: 64 is the smallest input the paper
layers accept (conv1 15x15 -> pool 7 -> conv2 7 -> pool 3 -> conv3-5 3 ->
pool 1x1, so fc6 reads 1x1x64).
"""

import importlib.resources

from alexnet_jax.configs import paper


def sample_root() -> str:
  """The embedded CIFAR-10 sample, wherever the package is installed."""
  return str(importlib.resources.files('alexnet_jax.assets') / 'cifar10_mini')


def get_config():
  c = paper.get_config()
  c.model.num_classes = 10
  c.model.width_scale = 0.25
  c.model.bias_init = 0.1  # bias 1 stalls small nets (docs/faithfulness.md)
  # std 0.01 starves a quarter-width net of signal (its fan-ins are 4x
  # smaller): with it the loss sat at ln(10) for 6 epochs; 0.05 learns.
  c.model.weight_init_std = 0.05
  c.model.fc_init_std = 0.05

  d = c.data
  d.name = 'folder:' + sample_root()
  d.train_split = 'train'  # 1,700 images, 170 per class
  d.eval_split = 'test'  # 340 images; a smoke run has no holdout
  d.image_size = 64
  d.resize_size = 72  # 32x32 sources upscaled, random 64x64 crops
  # [0, 1] pixels standardised by CIFAR-10's channel stds, not the paper's
  # raw 0-255: the smoke run checks an install in a minute, and its
  # N(0, 0.05) init is tuned for inputs of about unit size. LRN is nearly
  # a constant factor at this scale (docs/faithfulness.md, input scale).
  d.pixel_scale = 1.0
  d.mean = (0.49, 0.48, 0.45)  # CIFAR-10's channel means
  d.std = (0.25, 0.24, 0.26)
  d.lighting.std = 0.0  # ImageNet's PCA does not fit CIFAR-10
  d.shuffle_buffer = 2048
  d.cache = True

  c.optim.batch_size = 32
  c.optim.lr = 0.01
  c.optim.schedule = 'constant'
  c.optim.num_epochs = 6.0  # about 320 steps

  t = c.train
  t.log_every_steps = 20
  t.eval_every_steps = 100
  t.checkpoint_every_steps = 100
  t.keep_checkpoints = 2
  return c
