r"""Does the paper's recipe learn at full size? configs/paper.py on CIFAR-10.

Command (`python -m experiments.sweep init_scale` runs every variant; one by
hand):

    python -m alexnet_jax.main --config=configs/paper_cifar224.py \
        --workdir=/tmp/paper_cifar224

The network is configs/paper.py's with the paper's exact initialisation
(N(0, 0.01) weights, biases of 1; configs/paper.py's default biases are 0.1
because of this experiment): full width (96-256-384-384-256
kernels, fc 4096), two towers, LRN, overlapping pooling, dropout 0.5, on
random 224x224 crops (and flips and PCA lighting) of the images upscaled to
256x256, with the paper's optimiser (SGD, momentum 0.9, weight decay 5e-4,
lr 0.01). Only the task is smaller: CIFAR-10's 10 classes of real photos
instead of ImageNet's 1,000, so that leaving the chance loss (ln 10 = 2.303)
is visible within a few hundred steps on a CPU. Batch 32 instead of 128
(a 2-core CPU takes about 2 s a step); the lr stays the paper's.

The sweep's variants change the input scale (0-255 vs [0, 1] pixels minus
the mean), the biases of 1 (vs Caffe's 0.1) and the fc6/fc7 weights'
N(0, 0.01) (vs Caffe's N(0, 0.005)): docs/experiments.md has the results.

Data: the CIFAR-10 JPEG copy in $ALEXNET_JAX_DATA/cifar10 (all 50,000
training images; 640 test images evaluated at the end).
"""

from alexnet_jax.configs import cifar10
from alexnet_jax.configs import paper

STEPS = 300

# The sweep's variants (experiments/sweep_definitions.py): the first is the
# paper's recipe as it is; each other changes the input scale, the biases
# of 1 (Caffe's 0.1) or the fc6/fc7 weights' std (Caffe's 0.005), or
# several.
_UNIT_SCALE = {'data.pixel_scale': 1.0, 'data.mean': cifar10.CIFAR10_MEAN}
_CAFFE_INIT = {'model.bias_init': 0.1, 'model.fc_init_std': 0.005}
VARIANTS = {
    'paper': {},
    'bias_0.1': {'model.bias_init': 0.1},
    'fc_0.005': {'model.fc_init_std': 0.005},
    'caffe': dict(_CAFFE_INIT),
    'unit_paper': dict(_UNIT_SCALE),
    'unit_caffe': dict(_UNIT_SCALE, **_CAFFE_INIT),
}


def get_config():
  c = paper.get_config()
  c.model.num_classes = 10
  c.model.bias_init = 1.0  # the paper's (the variants change it)

  d = c.data
  d.name = 'folder:$ALEXNET_JAX_DATA/cifar10'  # the data root: core/paths.py
  d.train_split = 'train'
  d.eval_split = 'test'
  d.pixel_scale = 255.0  # paper.py's: raw 0-255 pixels minus the mean
  d.mean = cifar10.CIFAR10_MEAN_255
  d.shuffle_buffer = 8192
  d.cache = True  # ~45 MB of JPEGs

  o = c.optim
  o.batch_size = 32
  o.schedule = 'constant'

  t = c.train
  t.num_train_steps = STEPS
  t.log_every_steps = 20
  t.eval_every_steps = STEPS
  t.checkpoint_every_steps = STEPS
  t.keep_checkpoints = 1
  t.max_eval_batches = 20  # 640 test images
  return c
