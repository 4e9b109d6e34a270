#!/usr/bin/env bash
# Train a preset (default compact) on the training slides of ../shared/data/pki3 and report the
# paper's metrics on its held-out slides, with optimal dispatch uncalibrated and then calibrated
# on the trainer's validation slides (part of the training slides; with simulated abnormal
# cells). The same split, seed and schedule for every preset, so the trunks compare
# (compact-vgg, compact-chrblock: one WORK_DIR each). The weights stay outside the repository.
# Usage: benchmarks/pki3_accuracy.sh [WORK_DIR] [PRESET]   (needs: pip install -e ".[export]")
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/pki3
work=${1:-/tmp/vfinfer-pki3}
preset=${2:-compact}
results=benchmarks/results

python benchmarks/split_by_slide.py "$data" --test-fraction 0.2 --seed 0 --out "$work/split"
vfinfer train "$data" --labels "$work/split/train.csv" --out "$work/run" --preset "$preset" \
  --seed 0 --threads 2 --epochs-gnet 16 --epochs-local 4 --epochs-heads 4 \
  $([ -f "$work/run/last.pt" ] && echo --resume)
# --no-fit: first the uncalibrated defaults, then the calibration below, as measured
vfinfer export "$work/run/model.pt" --out "$work/model" --overwrite --no-fit

# held-out slides, optimal dispatch with its uncalibrated defaults
vfinfer eval "$data" --labels "$work/split/test.csv" --model "$work/model" --threads 2 \
  --flip-half --json "$results/pki3_${preset}_eval_default_optimal.json"

# calibrate on the trainer's validation slides (training slides the network did not fit)
python - "$work/run/model.pt" "$work/val_slides.json" <<'EOF'
import json, sys, torch
split = torch.load(sys.argv[1], map_location="cpu", weights_only=False)["extra"]["split"]
json.dump(sorted(split["val"]), open(sys.argv[2], "w"))
EOF
vfinfer calibrate "$data" --labels "$work/split/train.csv" --model "$work/model" --threads 2 \
  --slides-from "$work/val_slides.json" --simulate 3 \
  --json "$results/pki3_${preset}_calibration.json"
vfinfer eval "$data" --labels "$work/split/test.csv" --model "$work/model" --threads 2 \
  --flip-half --json "$results/pki3_${preset}_eval.json"
