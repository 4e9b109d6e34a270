#!/usr/bin/env bash
# The GPU check: what can be verified on a machine with an NVIDIA GPU, CUDA, PyTorch with CUDA,
# CuPy and cuda-bindings but without TensorRT and without network access (docs/gpu.md, "The GPU
# check"). Each step runs under a time limit (about 8 minutes in all), its output in
# OUT/logs/STEP.log; a step that fails is recorded and the next one runs. The end writes
# OUT/gpu_check.json: per step its status (passed / failed / skipped), seconds, the reason and
# the details (measurements) that benchmarks/gpu_check_runner.py wrote to OUT/details/STEP.json.
#
#   OUT=DIR bash benchmarks/gpu_check.sh            # OUT defaults to a new temporary directory
#   OUT=DIR bash benchmarks/gpu_check.sh --dry-run  # no GPU needed: the install and the GPU
#                                                   # steps skipped, the bookkeeping exercised
#
# Steps: install (pip install --no-deps -e .), env (nvidia-smi, torch and CUDA versions, the
# device, its compute capability), trt_runner (the TensorRT runner's CUDA side against the real
# driver, the engine stood in by a CuPy kernel; 1000 runs without device-memory growth),
# torch_fp16 (FP16 speed and FP32/FP16 agreement in PyTorch on the GPU, not TensorRT),
# train_cuda and train_seg_cuda (vfinfer train / train-seg --device cuda on tiny synthetic
# data). Exit status 0 when no step failed.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
elif [ $# -gt 0 ]; then
  echo "usage: OUT=DIR bash benchmarks/gpu_check.sh [--dry-run]" >&2
  exit 2
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/vfinfer-gpu-check.XXXXXX")}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
RUNNER="$ROOT/benchmarks/gpu_check_runner.py"
mkdir -p "$OUT/logs" "$OUT/details" "$OUT/.shim"
rm -f "$OUT/steps.tsv" "$OUT/details/"*.json
# the source tree first on the path (and export/ as vfinfer_export), whatever the install did
ln -sfn "$ROOT/export" "$OUT/.shim/vfinfer_export"
PYTHONPATH="$ROOT:$OUT/.shim${PYTHONPATH:+:$PYTHONPATH}"
export ROOT OUT PYTHON RUNNER DRY_RUN PYTHONPATH

vf() {  # the vfinfer command line from the source tree
  "$PYTHON" -c 'import sys; from vfinfer.cli import main; sys.argv[0] = "vfinfer"; main()' "$@"
}

step_install() {
  # --no-build-isolation: setuptools (and wheel, for setuptools before 70.1) from this
  # environment, nothing fetched from the network
  (cd "$ROOT" && env -u PYTHONPATH "$PYTHON" -m pip install --no-deps --no-build-isolation -e .) \
    || return 1
  # from elsewhere, so that the source tree in the current directory does not stand in
  (cd / && env -u PYTHONPATH "$PYTHON" -c \
    'import vfinfer, vfinfer_export; print(vfinfer.__file__, vfinfer_export.__file__)')
}

step_env() {
  local dry=()
  [ "$DRY_RUN" = 1 ] && dry=(--dry-run)
  nvidia-smi || echo "nvidia-smi: not found or failed"
  "$PYTHON" "$RUNNER" env --json "$OUT/details/env.json" "${dry[@]}"
}

step_trt_runner() {
  "$PYTHON" "$RUNNER" trt-runner --runs 1000 --json "$OUT/details/trt_runner.json"
}

step_torch_fp16() {
  "$PYTHON" "$RUNNER" torch-fp16 --presets compact,paper --json "$OUT/details/torch_fp16.json"
}

step_train_cuda() {
  local work="$OUT/work/train" status
  rm -rf "$work" && mkdir -p "$work"
  "$PYTHON" -c 'import sys
from vfinfer.tools.synthesis.cells import make_training_set
print(make_training_set(sys.argv[1], 0, 3))' "$work/cells" || return 1
  vf train "$work/cells" --out "$work/run" --device cuda --preset compact --limit 96 \
    --batch-size 32 --val-fraction 0.34 --epochs-gnet 1 --epochs-loc 1 --epochs-local 1 \
    --epochs-heads 1
  status=$?
  "$PYTHON" "$RUNNER" train-check --run "$work/run" --exit-status "$status" \
    --json "$OUT/details/train_cuda.json"
}

step_train_seg_cuda() {
  local work="$OUT/work/train_seg" status
  rm -rf "$work" && mkdir -p "$work"
  vf synth-metaphase --count 2 --out "$work/metaphases" || return 1
  vf train-seg "$work/metaphases" --out "$work/run" --device cuda --epochs 1 \
    --crops-per-image 2 --batch-size 4
  status=$?
  "$PYTHON" "$RUNNER" train-check --seg-run "$work/run" --exit-status "$status" \
    --json "$OUT/details/train_seg_cuda.json"
}

export -f vf step_install step_env step_trt_runner step_torch_fp16 step_train_cuda \
  step_train_seg_cuda

record() {  # NAME STATUS SECONDS REASON: one line of OUT/steps.tsv
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUT/steps.tsv"
}

run_step() {  # NAME LIMIT_S FUNCTION [WHY_SKIPPED_IN_A_DRY_RUN]
  local name=$1 limit=$2 fn=$3 dry_skip=${4:-} start rc status reason=""
  if [ "$DRY_RUN" = 1 ] && [ -n "$dry_skip" ]; then
    echo "$name: skipped ($dry_skip)"
    record "$name" skipped 0 "$dry_skip"
    return 0
  fi
  echo "$name: running (limit ${limit} s, log $OUT/logs/$name.log)"
  start=$(date +%s.%N)
  timeout --kill-after=10 "$limit" bash -c "$fn" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=passed ;;
    124 | 137) status=failed; reason="ran past its limit of ${limit} s" ;;
    *) status=failed; reason="exit status $rc: see logs/$name.log" ;;
  esac
  echo "$name: $status in ${seconds} s${reason:+ ($reason)}"
  record "$name" "$status" "$seconds" "$reason"
}

GPU="dry run: needs a CUDA GPU"
run_step install 60 step_install "dry run: installs nothing"
run_step env 30 step_env
run_step trt_runner 75 step_trt_runner "$GPU"
run_step torch_fp16 150 step_torch_fp16 "$GPU"
run_step train_cuda 75 step_train_cuda "$GPU"
run_step train_seg_cuda 90 step_train_seg_cuda "$GPU"

summary_args=(summary --out "$OUT")
[ "$DRY_RUN" = 1 ] && summary_args+=(--dry-run)
"$PYTHON" "$RUNNER" "${summary_args[@]}"
rc=$?
echo "summary: $OUT/gpu_check.json"
exit $rc
