"""The paper's recipe: AlexNet on ImageNet (ILSVRC-2012), Krizhevsky et al. 2012.

Command (after `pip install -r requirements.txt -e .` and preparing ImageNet as
docs/data.md says):

    python -m alexnet_jax.main --config=configs/paper.py --workdir=/tmp/alexnet \\
        --config.data.data_dir=DATA_DIR

On GPUs and TPUs, train from the prepared dataset: each image stored once
at the paper's geometry (shorter side 256, centre square), so the host only
crops, flips and adds lighting, about 5x fewer CPU-seconds per image than
decoding the original photos (docs/data.md#prepared-datasets; the host
cores per chip are in docs/scaling.md):

    python -m alexnet_jax.prepare_data --data=imagenet2012:5.*.* \
        --data_dir=DATA_DIR --out=PREPARED
    python -m alexnet_jax.main --config=configs/paper.py --workdir=/tmp/alexnet \
        --config.data.name=prepared:PREPARED

Hardware and time: not run here. 90 epochs are 115M images: the paper took
5-6 days on two GTX 580 GPUs (about 240 img/s); at 2,500 img/s (one modern
GPU, an estimate) it is about 13 hours; on a 2-core CPU, at the 20-30 img/s
of the train step (docs/performance.md), about two months: use
configs/cifar10.py there.

Expected result (the paper, one CNN, 10-crop testing, ILSVRC-2012 val):
40.7% top-1 / 18.2% top-5 error. Centre-crop testing (`data.eval_crops=1`)
is about 1.5 points worse (the paper's ILSVRC-2010 figures: 39.0/18.3 vs
37.5/17.0).

Every other config imports this one and overrides a few fields, so this file
is also the schema: a field that is not here does not exist (overrides of
unknown fields fail, and `config_checks.validate` rejects them in saved
configs).
"""

import ml_collections

# ImageNet's RGB PCA for the lighting augmentation (the one copy: the
# preprocessing defaults and the input benchmark use these). Columns are
# the eigenvectors (docs/faithfulness.md), stored row-major as a 3x3 tuple.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def get_config():
  c = ml_collections.ConfigDict()

  c.model = m = ml_collections.ConfigDict()
  # 'paper' | 'torchvision' | 'cifar4' | 'cifar_local' (model.py says what
  # each is).
  m.variant = 'paper'
  m.num_classes = 1000
  # 2 = the paper's two GPUs; 1 = its one-GPU control (half the kernels in
  # conv1-conv4).
  m.towers = 2
  m.activation = 'relu'  # 'relu' | 'tanh'
  m.lrn = ml_collections.ConfigDict(
      dict(
          enabled=True,
          k=2.0,
          n=5,
          alpha=1e-4,
          beta=0.75,
          # False: the paper (alpha on the sum); True: Caffe / PyTorch /
          # cuda-convnet2 (alpha / n).
          alpha_over_n=False,
          across_towers=False,  # True: Caffe's windows over all channels
          # 'lrn_pool': normalise, then pool (the paper, bvlc_alexnet);
          # 'pool_lrn': pool, then normalise (CaffeNet, bvlc_reference_caffenet).
          order='lrn_pool',
      )
  )
  m.pool = ml_collections.ConfigDict(dict(window=3, stride=2))
  m.dropout = 0.5
  # 'paper': pad 0 before and 3 after (Krizhevsky's code rounds conv1's
  # output up); 'torchvision': 2 and 2; 'caffe': none, for 227x227 input.
  # All three give 55x55 (see model.CONV1_PADDING).
  m.conv1_padding = 'paper'
  m.weight_init_std = 0.01  # N(0, std) for every weight but fc6/fc7's
  m.fc_init_std = 0.01  # fc6, fc7 (the paper: 0.01; Caffe: 0.005)
  # Biases of conv2, conv4, conv5, fc6, fc7. The paper's 1.0 did not leave
  # the chance loss: this network on CIFAR-10 at 224, at the paper's input
  # scale, stayed at ln(10) for 300 steps (batch 32, val error 90%), where
  # 0.1 (Caffe's, the one change) fell to 1.99 by step 200. So 0.1 is the
  # default; --config.model.bias_init=1.0 is the paper's value
  # (docs/faithfulness.md#the-initialisation; experiments/results/
  # init_scale-cifar10).
  m.bias_init = 0.1
  m.width_scale = 1.0  # < 1 for tiny test and CPU models
  m.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'
  # (bfloat16 on TPUs and recent GPUs; the
  # parameters and optimiser stay float32)
  # Float32 matmul/convolution precision: 'default' (the platform's: TF32
  # on A100/H100, bf16 passes on TPU) | 'high' | 'highest' (true float32).
  # evaluate/predict run at 'highest' unless --precision says otherwise.
  m.precision = 'default'
  # 'auto': per platform when the step is lowered (CPU-tuned formulations
  # on CPU, plain XLA on GPU/TPU) | 'accelerator': plain XLA everywhere.
  m.formulation = 'auto'

  c.data = d = ml_collections.ConfigDict()
  # TFDS name | 'folder:/path' | 'prepared:/path' (prepare_data) | 'fake'
  d.name = 'imagenet2012:5.*.*'
  d.data_dir = ''  # TFDS data_dir ('' = TFDS default)
  d.manual_dir = ''  # where the ImageNet archives are ('' = TFDS's)
  d.train_split = 'train'
  d.eval_split = 'validation'
  d.test_split = ''  # optional split reported after training
  d.image_size = 224  # 224 (paper, torchvision) or 227 (Caffe)
  d.resize_size = 256
  d.train_crop = 'paper'  # 'paper' | 'inception' (torchvision's recipe)
  # 'area' (box filter when shrinking; fast, alias-free) | 'antialias'
  # (PIL/torchvision's triangle filter; slower) | 'bilinear' (Caffe's).
  d.resize_method = 'area'
  d.flip = True
  # A prepared dataset's batches cross to the device as uint8; PCA lighting
  # and normalisation run in the jitted step. Its random crop and flip run
  # on the 'host' (the 224 crop crosses) or the 'device' (the 256 square
  # crosses); 'auto': device on GPU/TPU, host on CPU (device_augment.place
  # says why). Both give equally valid images, each deterministic.
  d.augment = 'auto'  # 'auto' | 'host' | 'device'
  d.lighting = ml_collections.ConfigDict(
      dict(
          std=0.1,  # 0 turns PCA colour augmentation off
          scale='lambda',  # 'lambda' (paper) | 'sqrt_lambda' (cuda-convnet)
          eigval=IMAGENET_EIGVAL,
          eigvec=IMAGENET_EIGVEC,
      )
  )
  # The paper trains "on the (centered) raw RGB values of the pixels": 0-255
  # minus the mean. Its LRN constants and initialisation are sized for that
  # scale; at [0, 1] (pixel_scale=1) every activation is 255x smaller and
  # LRN divides by the constant k^beta (docs/faithfulness.md, input scale).
  # Model input = (pixels in [0, pixel_scale] - mean) / std.
  d.pixel_scale = 255.0  # 255.0 (the paper, Caffe) | 1.0 (torchvision)
  # Mean subtraction: per-channel `mean`/`std` in pixel_scale units, or
  # 'image' to subtract the per-pixel mean image in `mean_image` (the paper).
  d.normalization = 'channel'  # 'channel' | 'image'
  d.mean = (123.675, 116.28, 103.53)  # ImageNet's RGB means, 0-255
  d.std = (1.0, 1.0, 1.0)  # the paper subtracts the mean only
  d.mean_image = ''  # .npy file from `python -m alexnet_jax.data_stats`
  d.eval_crops = 1  # 1 (centre) | 10 (the paper's test procedure)
  d.shuffle_buffer = 16384
  d.cache = False  # True: hold the encoded images in memory
  d.prefetch = 2
  d.threads = 0  # tf.data threads per process; 0 = all cores

  c.parallel = p = ml_collections.ConfigDict()
  p.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
  p.data_parallel = 'jit'  # 'jit' (NamedSharding) | 'pmap' (classic path)
  p.cpu_devices = 0  # N > 0: simulate N CPU devices
  # Multi-host: process 0's HOST:PORT, or 'auto' (JAX detects Cloud TPU pod
  # slices, SLURM, Open MPI); '' = single process unless the environment
  # sets JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID).
  p.coordinator_address = ''
  p.num_processes = 1
  p.process_id = 0

  c.optim = o = ml_collections.ConfigDict()
  o.batch_size = 128  # global
  o.lr = 0.01
  o.momentum = 0.9
  o.weight_decay = 5e-4
  o.decay_biases = True  # the paper decays every weight; Caffe: False
  o.bias_lr_mult = 1.0  # Caffe: 2.0
  o.schedule = 'plateau'  # 'plateau' | 'step' | 'cosine' | 'constant'
  # 'plateau': lr x factor when the validation top-1 error has not improved
  # by min_delta for more than `patience` evaluations in a row (PyTorch's
  # ReduceLROnPlateau counting), at most max_drops times (the paper: 3).
  o.plateau = ml_collections.ConfigDict(
      dict(factor=0.1, patience=2, max_drops=3, min_delta=1e-3)
  )
  o.step_epochs = (30, 60, 80)  # 'step': drop by 10 at these epochs
  o.warmup_epochs = 0.0  # 'cosine'
  o.num_epochs = 90.0

  c.train = t = ml_collections.ConfigDict()
  t.seed = 0
  t.num_train_steps = -1  # -1: from optim.num_epochs
  t.num_train_examples = -1  # -1: from the dataset (needed for epochs)
  t.log_every_steps = 100
  t.eval_every_steps = 10000  # also the plateau schedule's period
  t.checkpoint_every_steps = 5000
  t.keep_checkpoints = 3
  t.max_eval_batches = -1  # -1: the whole eval split
  t.profile = False
  return c
