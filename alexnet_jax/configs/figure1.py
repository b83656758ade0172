r"""Figure 1's network: the four-layer CIFAR-10 CNN, no regularisation.

Command (experiments/figure1.py runs it for each activation and learning
rate; one run by hand):

    python -m alexnet_jax.main --config=configs/figure1.py \
        --workdir=/tmp/fig1_relu --config.model.activation=relu \
        --config.optim.lr=0.01 --config.optim.num_epochs=30

Network: `model.Cifar4`, cuda-convnet's layers-18pct CIFAR-10 net: 5x5 convs
of 32, 32 and 64 kernels (pad 2), each followed by the activation and a 3/2
pool (max, then average, average), then fc10; initial weights N(0, 0.01),
biases 0 (cuda-convnet's conv2/conv3/fc10 std; its conv1's 1e-4 is for 0-255
inputs, about 0.006 at this input scale). No weight decay, no dropout, no
augmentation (no crops, flips or lighting): the paper trained Figure 1's nets
without regularisation. Inputs: 32x32 RGB standardised with CIFAR-10's
channel means and stds. SGD, batch 128, momentum 0.9, constant learning
rate (tuned per activation by experiments/figure1.py).

Data: the CIFAR-10 JPEG copy in $ALEXNET_JAX_DATA/cifar10 (50,000 training
images; the 10,000 test images are evaluated every 5 epochs; docs/data.md).

Hardware: 2-core Xeon CPU, about 3-6 minutes an epoch (the machine shared).
Expected: training error falls below 25% within a few epochs with ReLU,
several times later with tanh (the paper: six times).
"""

from alexnet_jax.configs import paper


def get_config():
  c = paper.get_config()
  m = c.model
  m.variant = 'cifar4'
  m.towers = 1
  m.num_classes = 10
  m.activation = 'relu'
  m.dropout = 0.0
  m.weight_init_std = 0.01
  m.width_scale = 1.0

  d = c.data
  d.name = 'folder:$ALEXNET_JAX_DATA/cifar10'  # the data root: core/paths.py
  d.train_split = 'train'
  d.eval_split = 'test'
  d.image_size = 32
  d.resize_size = 32  # the whole 32x32 image, no crop
  d.flip = False
  d.lighting.std = 0.0
  # [0, 1] pixels standardised: the four-layer net has no LRN, and its
  # N(0, 0.01) init and the searched learning rates were chosen at this
  # scale (Figure 1's results in docs/experiments.md were measured at it).
  d.pixel_scale = 1.0
  d.mean = (0.4914, 0.4822, 0.4465)
  d.std = (0.247, 0.243, 0.261)
  d.cache = True  # the encoded JPEGs in memory (~45 MB)

  o = c.optim
  o.batch_size = 128
  o.lr = 0.01
  o.momentum = 0.9
  o.weight_decay = 0.0
  o.schedule = 'constant'
  o.num_epochs = 30.0

  t = c.train
  t.log_every_steps = 50  # ~8 training-error points an epoch
  t.eval_every_steps = 1955  # ~5 epochs (390.6 steps an epoch)
  t.checkpoint_every_steps = 391
  t.keep_checkpoints = 2
  return c
