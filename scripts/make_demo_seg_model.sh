#!/usr/bin/env bash
# Rebuild the bundled demo segmentation model (vfinfer/demo_seg_model/) and the example
# metaphase (examples/metaphase-46XY.png) from synthetic data only: no real image is used.
# About 35 minutes on 2 CPU cores; run it after scripts/make_demo_model.sh. Usage: scripts/make_demo_seg_model.sh [WORK_DIR]
# (needs: pip install -e ".[export]")
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/vfinfer-demo-seg}
mkdir -p "$work"

[ -d "$work/data" ] || vfinfer synth-metaphase --out "$work/data" --count 100 --seed 11
[ -d "$work/tune" ] || vfinfer synth-metaphase --out "$work/tune" --count 20 --seed 12
vfinfer train-seg "$work/data" --out "$work/run" --widths 12,24,48,96 --epochs 24 --threads 2 \
  --describe-data "synthetic metaphases: vfinfer synth-metaphase --count 100 --seed 11" \
  $([ -f "$work/run/last.pt" ] && echo --resume)
vfinfer export-seg "$work/run/seg.pt" --out vfinfer/demo_seg_model --overwrite \
  --tune "$work/tune"

# the example: a metaphase none of the training images is (seed 90 is outside 11000-11099)
python - <<'PY'
import cv2
from vfinfer.tools.synthesis.metaphases import render_metaphase
image, _ = render_metaphase(90, "46,XY", background="light")
cv2.imwrite("examples/metaphase-46XY.png", image)
PY

# INT8 of the segmentation graph (--seg-precision int8), calibrated on 16 training metaphases
# and checked by mask AP against FP32 on 20 others (seed 13, the figures of the docs)
[ -d "$work/test" ] || vfinfer synth-metaphase --out "$work/test" --count 20 --seed 13
vfinfer quantize-seg vfinfer/demo_seg_model $(ls "$work"/data/*.json | head -16 | sed 's/^/--calib /') \
  --holdout "$work/test" --threads 2

# the demo classifier's figures on segmented chromosomes (its domain_segmented section, by
# which the verdict judges a metaphase's cut-outs): 30 more synthetic metaphases (seed 14)
# through this segmentation
[ -d "$work/domain" ] || vfinfer synth-metaphase --out "$work/domain" --count 30 --seed 14
rm -rf "$work/segmented"
vfinfer segment "$work"/domain/*.png --out "$work/segmented"
# vfinfer domain on those folders, with the true karyotypes (the polygons' type labels), so
# that the share of exactly right karyotypes is recorded and the verdict can act on it
python - "$work" <<'PY'
import sys
from pathlib import Path
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.io.labelme import polygon_types, read_labelme
from vfinfer.model.classes import TYPE_NAMES
from vfinfer.tools.evaluation.domain import domain_lines, store_domain

work = Path(sys.argv[1])
cells = sorted(p for p in (work / "segmented").iterdir() if p.is_dir())
truth = {cell.name: karyotype_summary([TYPE_NAMES.index(t) for t in polygon_types(
    read_labelme(work / "domain" / f"{cell.name}.json"))])[0] for cell in cells}
print("\n".join(domain_lines(store_domain("vfinfer/demo_model", cells, labels_csv=truth))))
PY
