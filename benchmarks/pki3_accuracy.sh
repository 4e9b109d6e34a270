#!/usr/bin/env bash
# Train the compact preset on the training slides of ../shared/data/pki3 and report the paper's
# metrics on its held-out slides. The weights stay outside the repository (WORK_DIR).
# Usage: benchmarks/pki3_accuracy.sh [WORK_DIR]   (needs: pip install -e ".[export]")
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/pki3
work=${1:-/tmp/vfinfer-pki3}

python benchmarks/split_by_slide.py "$data" --test-fraction 0.2 --seed 0 --out "$work/split"
vfinfer train "$data" --labels "$work/split/train.csv" --out "$work/run" --preset compact \
  --seed 0 --threads 2 $([ -f "$work/run/last.pt" ] && echo --resume)
vfinfer export "$work/run/model.pt" --out "$work/model" --overwrite
vfinfer eval "$data" --labels "$work/split/test.csv" --model "$work/model" --threads 2 \
  --flip-half --json benchmarks/results/pki3_compact_eval.json
