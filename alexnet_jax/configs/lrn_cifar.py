r"""LRN on CIFAR-10: cuda-convnet's conv-local net with and without LRN.

Command (`python -m experiments.sweep lrn_cifar` runs both; one by hand):

    python -m alexnet_jax.main --config=configs/lrn_cifar.py \
        --workdir=/tmp/lrn_on --config.model.lrn.enabled=True

Network: `model.CifarLocal`, the layers-conv-local-11pct (cross-map LRN) and
-13pct (none) files of cuda-convnet, which the paper's "13% vs 11% test error
on CIFAR-10" compares: conv 64 5x5, ReLU, [LRN], max-pool 3/2; conv 64 5x5,
ReLU, [LRN], max-pool 3/2; two locally connected 3x3 layers of 32, ReLU;
fc10. LRN as cuda-convnet computes it: k=1, n=5, alpha=0.001/n, beta=0.75.

Recipe from the layer-params file: lr 0.001 (biases 0.002), momentum 0.9,
weight decay 0.004 (the file has none on the two conv layers; one config
field cannot say that, so it applies to all weights), biases not decayed;
random 24x24 crops of the 32x32 images and horizontal flips; inputs on the
0-255 scale minus CIFAR-10's channel means (cuda-convnet subtracts the mean
image). cuda-convnet trained about 450 epochs (300 on 40k images, 150 on
50k, then the lr divided by 10 twice for 10 epochs each) and tested on 10
views; this machine affords `num_epochs` (the lr divided by 10 at
num_epochs - 6 and - 3) and centre-crop testing.

Data: the CIFAR-10 JPEG copy in $ALEXNET_JAX_DATA/cifar10: all 50,000
training images; the 10,000 test images evaluated every 5 epochs (no
decision uses them: the schedule is fixed).

Hardware: 2-core Xeon CPU, about 6-12 minutes an epoch (the machine shared).
"""

from alexnet_jax.configs import cifar10
from alexnet_jax.configs import paper

EPOCHS = 30.0


def get_config():
  c = paper.get_config()
  m = c.model
  m.variant = 'cifar_local'
  m.towers = 1
  m.num_classes = 10
  m.dropout = 0.0
  m.width_scale = 1.0
  m.lrn.enabled = True
  m.lrn.k = 1.0
  m.lrn.n = 5
  m.lrn.alpha = 1e-3
  m.lrn.alpha_over_n = True
  m.lrn.beta = 0.75

  d = c.data
  d.name = 'folder:$ALEXNET_JAX_DATA/cifar10'  # the data root: core/paths.py
  d.train_split = 'train'
  d.eval_split = 'test'
  d.image_size = 24
  d.resize_size = 32  # random 24x24 crops of the 32x32 image
  d.train_crop = 'paper'
  d.flip = True
  d.lighting.std = 0.0
  # 0-255 inputs minus the mean, as cuda-convnet's: its LRN constants
  # (alpha=0.001/n) are sized for that scale.
  d.pixel_scale = 255.0
  d.mean = cifar10.CIFAR10_MEAN_255
  d.std = (1.0, 1.0, 1.0)
  d.cache = True

  o = c.optim
  o.batch_size = 128
  o.lr = 0.001
  o.bias_lr_mult = 2.0
  o.momentum = 0.9
  o.weight_decay = 0.004
  o.decay_biases = False
  o.schedule = 'step'
  o.num_epochs = EPOCHS
  o.step_epochs = (EPOCHS - 6, EPOCHS - 3)

  t = c.train
  t.log_every_steps = 100
  t.eval_every_steps = 1955  # ~5 epochs
  t.checkpoint_every_steps = 391
  t.keep_checkpoints = 2
  return c
