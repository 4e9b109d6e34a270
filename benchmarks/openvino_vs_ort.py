"""OpenVINO (f32, bf16) against ONNX Runtime (fp32) on the same graphs and the same cells.

    pip install openvino      # not a vfinfer dependency: this script decides whether it should be
    python benchmarks/openvino_vs_ort.py [--model DIR] [--threads 2] [--repeats 20] \
        --json benchmarks/results/openvino_vs_ort.json

For each runtime it runs the whole network part of the pipeline (G-Net -> eq. 5 crop in NumPy
-> L-Net -> heads) on one synthetic 46-chromosome cell per repeat and reports the median and
p90 milliseconds per cell and per graph, and the agreement with ONNX Runtime FP32 (type and
polarity argmax, max probability difference).
"""

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov

from vfinfer import backends
from vfinfer.model.manifest import demo_model_dir, load_manifest
from vfinfer.pipeline.network import run_network
from vfinfer.pipeline.preprocess import preprocess_batch
from vfinfer.tools.synthesis.cells import write_cases
from vfinfer.util.images import read_case
from vfinfer.util.stats import percentiles

ROLES = ("gnet", "lnet", "heads")
# built one after the other, ONNX Runtime first, so no runtime's idle worker threads are alive
# while another is timed; the backends are vfinfer's own (ONNX Runtime: make_session)
VARIANTS = {"onnxruntime fp32": ("ort", "fp32"), "openvino f32": ("openvino", "fp32"),
            "openvino bf16": ("openvino", "bf16")}


def time_variant(backend, g_input, config, repeats):
    """Median / p90 ms per cell and per graph of ``repeats`` network passes, and the last
    outputs."""
    for _ in range(3):  # warm-up
        run_network(backend, g_input, config)
    per_graph = {r: [] for r in ROLES}
    totals = []
    for _ in range(repeats):
        timing = {}
        out = run_network(backend, g_input, config, timing)
        for role in ROLES:
            per_graph[role].append(timing[role])
        totals.append(sum(timing[role] for role in ROLES))
    return out, {"ms_per_cell": percentiles(totals),
                 "ms_per_graph_median": {r: float(np.median(v)) for r, v in per_graph.items()}}


def agreement(out, reference):
    return {
        "type_argmax_agreement": float(np.mean(out["type_probs"].argmax(1)
                                               == reference["type_probs"].argmax(1))),
        "polarity_argmax_agreement": float(np.mean(
            out["polarity_probs"].argmax(1) == reference["polarity_probs"].argmax(1))),
        "type_prob_max_abs_diff": float(np.abs(out["type_probs"]
                                               - reference["type_probs"]).max()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    manifest = load_manifest(args.model or demo_model_dir())
    config = manifest.config
    with tempfile.TemporaryDirectory() as tmp:
        write_cases("46,XY", tmp, seed=77)
        case = next(p for p in sorted(Path(tmp).iterdir()) if p.is_dir())
        g_input = preprocess_batch(read_case(case)[0], config)

    reference = None
    report = {"model": str(manifest.model_dir), "preset": config.preset, "threads": args.threads,
              "repeats": args.repeats, "chromosomes": int(g_input.shape[0]),
              "openvino": ov.__version__, "onnxruntime": ort.__version__,
              "platform": platform.platform(), "variants": {}}
    for name, (backend_name, precision) in VARIANTS.items():
        try:
            backend = backends.create(backend_name, manifest, args.threads, precision)
        except backends.BackendError as exc:  # bf16 on a CPU without bfloat16 support
            report["variants"][name] = {"skipped": str(exc)}
            print(f"{name:18s} skipped: {exc}")
            continue
        try:
            out, entry = time_variant(backend, g_input, config, args.repeats)
        finally:
            backend.close()
        reference = out if reference is None else reference
        entry.update({"compiled_precision": precision, **agreement(out, reference)})
        report["variants"][name] = entry
        print(f"{name:18s} {entry['ms_per_cell']['median']:8.1f} ms/cell (p90 "
              f"{entry['ms_per_cell']['p90']:.1f})  type agreement "
              f"{entry['type_argmax_agreement']:.1%}  max prob diff "
              f"{entry['type_prob_max_abs_diff']:.1e}")
    base = report["variants"]["onnxruntime fp32"]["ms_per_cell"]["median"]
    for entry in report["variants"].values():
        if "ms_per_cell" in entry:
            entry["speedup_vs_onnxruntime"] = base / entry["ms_per_cell"]["median"]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
