#!/usr/bin/env bash
# INT8 (static QDQ, ONNX Runtime CPU) of the pki3-trained compact model of pki3_accuracy.sh:
# calibrated on 10 cells of the training slides, checked on all 96 held-out cells, with 8-bit
# and with 7-bit (--reduce-range) weights, each on its own copy of the model directory.
# Usage: benchmarks/pki3_int8.sh [WORK_DIR]   (after benchmarks/pki3_accuracy.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/pki3
work=${1:-/tmp/vfinfer-pki3}
cells() {  # the cells of a split CSV as repeated options; every STEP-th, at most MAX
  python - "$1" "$2" "$3" "$4" <<'PY'
import csv, sys
path, option, step, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cells = sorted({r["cell"] for r in csv.DictReader(open(path))})
step = max(1, len(cells) // step) if step else 1
print(" ".join(f"{option} ../shared/data/pki3/{c}" for c in cells[::step][:limit]))
PY
}
calib=$(cells "$work/split/train.csv" --calib 10 10)
hold=$(cells "$work/split/test.csv" --holdout 0 100000)
for variant in default reduce_range; do
  rm -rf "$work/model_int8_$variant" && cp -r "$work/model" "$work/model_int8_$variant"
  extra=$([ $variant = reduce_range ] && echo --reduce-range)
  # exit 1 when the graphs miss the agreement rule: the audit is still written
  vfinfer quantize "$work/model_int8_$variant" $calib $hold --threads 2 $extra
done
python - "$work" benchmarks/results/int8_pki3_compact.json <<'PY'
import json, sys
work, out = sys.argv[1], sys.argv[2]
report = {"command": "benchmarks/pki3_int8.sh", "model": "compact, pki3-trained (pki3_accuracy.sh)"}
for variant in ("default", "reduce_range"):
    audit = json.load(open(f"{work}/model_int8_{variant}/manifest.json"))["int8_audit"]
    audit["holdout"].pop("case_dirs", None)
    report[variant] = audit
json.dump(report, open(out, "w"), indent=2)
print(f"wrote {out}")
PY
