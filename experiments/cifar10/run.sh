#!/bin/sh
# Trains configs/cifar10.py on the CIFAR-10 JPEGs beside this checkout and
# logs under experiments/cifar10/ (run from the repository root; running it
# again resumes from experiments/cifar10/workdir).
exec python -m alexnet_jax.main --config=configs/cifar10.py \
  --workdir=experiments/cifar10/workdir \
  --config.data.name=folder:../shared/datasets/cifar10 "$@"
