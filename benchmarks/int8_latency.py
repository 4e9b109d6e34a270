"""FP32 against INT8 graph latency of a quantized model directory, on its own (``vfinfer
quantize`` times the graphs too, but after minutes of agreement checks and only once):
``vfinfer.tools.precision.int8_latency.measure_latency`` on real G-Net, L-Net and heads inputs
made from one case directory, at batch 46, 1 and 2 threads. The INT8 graphs that the audit
lets run (``int8_roles``) are also summed as used, the others in FP32.

    python benchmarks/int8_latency.py MODEL_DIR CASE_DIR --json benchmarks/results/X.json
"""

import argparse
import json
import sys
from pathlib import Path

from vfinfer.model.manifest import GRAPH_ROLES, load_manifest
from vfinfer.tools.precision.agreement import calibration_feeds
from vfinfer.tools.precision.int8_latency import measure_latency
from vfinfer.tools.precision.quantize import mix_ms
from vfinfer.util.images import read_case


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("case_dir", type=Path, help="real cut-outs to make the graphs' inputs")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    manifest = load_manifest(args.model_dir)
    audit = manifest.data.get("int8_audit") or sys.exit(f"{args.model_dir}: no INT8 graphs")
    images, _, _ = read_case(args.case_dir)
    feeds = calibration_feeds(args.model_dir, images, 2)
    fp32 = {role: manifest.graph_path(role) for role in GRAPH_ROLES}
    int8 = {role: manifest.graph_path(role, "int8") for role in GRAPH_ROLES}
    timed = measure_latency(fp32, int8, feeds, threads=(1, 2), repeats=args.repeats)
    roles = audit.get("int8_roles", list(GRAPH_ROLES))
    report = {"command": " ".join(["python", *sys.argv]), "int8_roles": roles,
              "usable": audit["usable"], "agreement": audit["agreement"]["type_argmax_agreement"],
              "cpu": audit["built_on"]["cpu"], **timed}
    for key in ("threads_1", "threads_2"):
        totals = timed[key]["all_graphs"]
        report[key]["as_used_ms"] = round(mix_ms(timed[key], roles), 3)
        print(f"{key}: FP32 {totals['fp32_median_ms']:.1f} ms, all INT8 "
              f"{totals['int8_median_ms']:.1f} ms (x{totals['speedup']:.2f}), as used "
              f"(INT8 {', '.join(roles) or 'none'}) {report[key]['as_used_ms']:.1f} ms")
    print(timed["note"])
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
