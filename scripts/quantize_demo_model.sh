#!/usr/bin/env bash
# INT8 graphs for the bundled demo model (vfinfer/demo_model/), checked as every INT8 model is
# (vfinfer quantize: >= 99.5 % type agreement with FP32 on held-out images, else refused):
# calibrated on 10 synthetic cells, checked on 30 others of six karyotypes, none of them among
# the training cells (seeds 2026...) or the domain cells (7001). Synthetic cells only: the demo
# model has seen nothing else, and its INT8 says nothing about a model trained on real images.
# Run by scripts/make_demo_model.sh; alone: scripts/quantize_demo_model.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/vfinfer-demo}
mkdir -p "$work"
if [ ! -f "$work/int8-calib/labels.csv" ]; then
  vfinfer synth --karyotype "46,XY" --seed 7000 --cases 5 --out "$work/int8-calib"
  vfinfer synth --karyotype "46,XX" --seed 7100 --cases 5 --out "$work/int8-calib"
fi
if [ ! -f "$work/int8-holdout/labels.csv" ]; then
  seed=8200
  for karyotype in "46,XY" "46,XX" "47,XY,+21" "45,X" "47,XX,+18" "47,XXY"; do
    vfinfer synth --karyotype "$karyotype" --seed $seed --cases 5 --out "$work/int8-holdout"
    seed=$((seed + 100))
  done
fi
calib=() holdout=()
for d in "$work"/int8-calib/*/; do calib+=(--calib "$d"); done
for d in "$work"/int8-holdout/*/; do holdout+=(--holdout "$d"); done
vfinfer quantize vfinfer/demo_model "${calib[@]}" "${holdout[@]}" --threads 2
