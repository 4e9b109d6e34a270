#!/usr/bin/env bash
# Rebuild the bundled demo segmentation model (vfinfer/demo_seg_model/) and the example
# metaphase (examples/metaphase-46XY.png) from synthetic data only: no real image is used.
# About 15 minutes on 2 CPU cores. Usage: scripts/make_demo_seg_model.sh [WORK_DIR]
# (needs: pip install -e ".[export]")
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/vfinfer-demo-seg}
mkdir -p "$work"

[ -d "$work/data" ] || vfinfer synth-metaphase --out "$work/data" --count 40 --seed 11
[ -d "$work/tune" ] || vfinfer synth-metaphase --out "$work/tune" --count 6 --seed 12
vfinfer train-seg "$work/data" --out "$work/run" --widths 12,24,48,96 --epochs 20 --threads 2 \
  --describe-data "synthetic metaphases: vfinfer synth-metaphase --count 40 --seed 11" \
  $([ -f "$work/run/last.pt" ] && echo --resume)
vfinfer export-seg "$work/run/seg.pt" --out vfinfer/demo_seg_model --overwrite \
  --tune "$work/tune"

# the example: a metaphase none of the training images is (seed 90 is outside 11000-11039)
python - <<'PY'
import cv2
from vfinfer.tools.synthesis.metaphases import render_metaphase
image, _ = render_metaphase(90, "46,XY", background="light")
cv2.imwrite("examples/metaphase-46XY.png", image)
PY
