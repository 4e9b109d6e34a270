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
import time

import numpy as np
import onnxruntime as ort
import openvino as ov

from vfinfer.crop import crop_and_resize, decode_boxes
from vfinfer.imageio import read_case
from vfinfer.manifest import load_manifest
from vfinfer.pipeline import demo_model_dir
from vfinfer.preprocess import preprocess_batch
from vfinfer.synth import write_cases

ROLES = ("gnet", "lnet", "heads")


def ort_runner(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as vfinfer does
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


def ov_runner(path, threads, precision):
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(feeds):
        result = request.infer(feeds)
        return {name: np.array(result[compiled.output(name)]) for name in names}
    # what OpenVINO compiled (it runs f32 where the CPU lacks bfloat16, whatever the hint)
    run.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return run


def run_cell(runners, g_input, config):
    times = {}
    start = time.perf_counter()
    g = runners["gnet"]({"image": g_input})
    times["gnet"] = time.perf_counter() - start
    crops = crop_and_resize(g_input, decode_boxes(g["loc"], config.t1, config.t2),
                            config.l_input)
    start = time.perf_counter()
    local = runners["lnet"]({"crop": crops})
    times["lnet"] = time.perf_counter() - start
    start = time.perf_counter()
    heads = runners["heads"]({"g_features": g["g_features"], "l_features": local["l_features"]})
    times["heads"] = time.perf_counter() - start
    return heads, {k: v * 1000 for k, v in times.items()}


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
        case = next(p for p in sorted(__import__("pathlib").Path(tmp).iterdir()) if p.is_dir())
        g_input = preprocess_batch(read_case(case)[0], config)

    paths = {role: manifest.graph_path(role) for role in ROLES}
    # built one after the other, ONNX Runtime first, so no runtime's idle worker threads
    # are alive while another is timed
    variants = {
        "onnxruntime fp32": lambda: {r: ort_runner(p, args.threads) for r, p in paths.items()},
        "openvino f32": lambda: {r: ov_runner(p, args.threads, "f32") for r, p in paths.items()},
        "openvino bf16": lambda: {r: ov_runner(p, args.threads, "bf16")
                                  for r, p in paths.items()},
    }
    reference = None
    report = {"model": str(manifest.model_dir), "preset": config.preset, "threads": args.threads,
              "repeats": args.repeats, "chromosomes": int(g_input.shape[0]),
              "openvino": ov.__version__, "onnxruntime": ort.__version__,
              "platform": platform.platform(), "variants": {}}
    for name, build in variants.items():
        runners = build()
        compiled = {getattr(r, "precision", None) for r in runners.values()} - {None}
        if name.endswith("bf16") and compiled != {"bf16"}:
            report["variants"][name] = {"skipped": "this CPU has no bfloat16 support: OpenVINO "
                                                   f"compiled {', '.join(sorted(compiled))}"}
            print(f"{name:18s} skipped: {report['variants'][name]['skipped']}")
            continue
        for _ in range(3):  # warm-up
            run_cell(runners, g_input, config)
        per_graph = {r: [] for r in ROLES}
        totals = []
        for _ in range(args.repeats):
            heads, times = run_cell(runners, g_input, config)
            for role in ROLES:
                per_graph[role].append(times[role])
            totals.append(sum(times.values()))
        if reference is None:
            reference = heads
        entry = {
            "compiled_precision": sorted(compiled) or None,
            "ms_per_cell": {"median": float(np.median(totals)),
                            "p90": float(np.percentile(totals, 90))},
            "ms_per_graph_median": {r: float(np.median(v)) for r, v in per_graph.items()},
            "type_argmax_agreement": float(np.mean(heads["type_probs"].argmax(1)
                                                   == reference["type_probs"].argmax(1))),
            "polarity_argmax_agreement": float(np.mean(
                heads["polarity_probs"].argmax(1) == reference["polarity_probs"].argmax(1))),
            "type_prob_max_abs_diff": float(np.abs(heads["type_probs"]
                                                   - reference["type_probs"]).max()),
        }
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
