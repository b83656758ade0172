#!/usr/bin/env bash
# Trains configs/cifar10.py on the CIFAR-10 JPEGs under the data root
# ($ALEXNET_JAX_DATA/cifar10, docs/data.md) in a workdir outside the
# repository ($ALEXNET_JAX_RUNS/cifar10, default ~/alexnet_jax_runs/cifar10;
# running it again resumes there), then copies the run's logs into
# experiments/results/cifar10/ and redraws its curves and table. Run from
# the repository root; extra arguments go to alexnet_jax.main.
set -euo pipefail
workdir="${ALEXNET_JAX_RUNS:-$HOME/alexnet_jax_runs}/cifar10"
out=experiments/results/cifar10
mkdir -p "$out/logs"
# Single quotes: alexnet_jax resolves $ALEXNET_JAX_DATA (with its default).
python -m alexnet_jax.main --config=configs/cifar10.py --workdir="$workdir" \
  --config.data.name='folder:$ALEXNET_JAX_DATA/cifar10' "$@" \
  2>&1 | tee -a "$out/logs/train.log"
python -m experiments.cifar10.plot --results="$out" --export="$workdir" \
  --command="experiments/cifar10/run.sh $*"
