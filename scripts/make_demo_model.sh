#!/usr/bin/env bash
# Rebuild the bundled demo model (vfinfer/demo_model/) and the example cells (examples/) from
# synthetic data only: no real-patient image is used. Takes about 40 minutes on 2 CPU cores.
# Usage: scripts/make_demo_model.sh [WORK_DIR]   (needs: pip install -e ".[export]"); then
# scripts/make_demo_seg_model.sh, which adds this model's figures on segmented cells.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/vfinfer-demo}
mkdir -p "$work"

if [ ! -f "$work/data/labels.csv" ]; then
  python -c "from vfinfer.tools.synthesis.cells import make_training_set as m; m('$work/data', seed=2026, n_cases=300)"
fi
vfinfer train "$work/data" --out "$work/run" --preset compact --seed 0 --threads 2 \
  $([ -f "$work/run/last.pt" ] && echo --resume)
# then fine-tuned on segmented chromosomes too (Render-Attention's "eliminating differences
# between training data and segmentation output"): the typed polygons of 100 synthetic
# metaphases cut out as the pipeline cuts an instance, beside the cells above
[ -d "$work/metaphases" ] || vfinfer synth-metaphase --out "$work/metaphases" --count 100 --seed 11
[ -f "$work/combined/labels.csv" ] || python benchmarks/segmented_cutouts.py "$work/metaphases" \
  --cells "$work/data" --cells-labels "$work/data/labels.csv" --out "$work/combined"
vfinfer train "$work/combined" --out "$work/run-segmented" --preset compact --seed 0 --threads 2 \
  --init "$work/run/model.pt" --epochs-gnet 4 --epochs-local 2 --epochs-heads 2 \
  $([ -f "$work/run-segmented/last.pt" ] && echo --resume)
# the bundled model's domain figures come from 40 more synthetic cells (not the trainer's
# validation slides, which a plain export would use): they are what --dispatch auto reads
vfinfer export "$work/run-segmented/model.pt" --out vfinfer/demo_model --overwrite --no-fit
if [ ! -f "$work/domain/labels.csv" ]; then
  python -c "from vfinfer.tools.synthesis.cells import make_training_set as m; m('$work/domain', seed=7001, n_cases=40)"
fi
vfinfer domain "$work"/domain/*/ --model vfinfer/demo_model --labels "$work/domain/labels.csv"
scripts/quantize_demo_model.sh "$work"  # INT8 graphs, checked on 30 more synthetic cells

rm -rf examples/syn* examples/labels.csv && mkdir -p examples
vfinfer synth --karyotype "46,XX" --seed 9001 --out examples
vfinfer synth --karyotype "47,XY,+21" --seed 9002 --out examples
vfinfer synth --karyotype "45,X" --seed 9003 --out examples
