#!/usr/bin/env bash
# One command for a maintainer on a GPU or TPU host (about 5-10 minutes,
# the install not counted; see docs/scaling.md for the install lines):
#
#   experiments/accelerator/run.sh [OUT.jsonl] [benchmark flags...]
#
# 1. pytest -m accelerator: the formulation GPUs/TPUs run against the CPU
#    one, two towers on two real devices, a short training run;
# 2. benchmark train: one device, float32 and bfloat16 (+ the PyTorch twin
#    on CUDA when a CUDA torch is installed), img/s, step time and the
#    fraction of the device's peak;
# 3. benchmark parallel: one device against two towers on two devices,
#    when there are two;
# 4. benchmark compile --target auto: the same step compiled for this chip,
#    XLA's bytes and FLOPs, and the roofline bound, printed beside the
#    measured img/s (bound_vs_measured.py: how close the chip gets).
# Everything lands as JSON lines in OUT (default:
# experiments/results/accelerator/logs/<host>-<date>.jsonl). Flags after
# OUT go to `python -m alexnet_jax.benchmark accelerator` (--quick,
# --precision highest, --batch N; --simulate=cuda:2 rehearses on a CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-experiments/results/accelerator/logs/$(hostname -s)-$(date +%F).jsonl}"
shift || true
mkdir -p "$(dirname "$out")"
python -m alexnet_jax.benchmark accelerator --out "$out" "$@"
python -m alexnet_jax.benchmark compile --target auto --modes single \
  --dtype float32,bfloat16 --batch 128 --out "$out"
python experiments/accelerator/bound_vs_measured.py "$out"
echo "results: $out"
