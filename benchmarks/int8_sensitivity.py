"""Where a G-Net's INT8 error comes from, measured on real cells (why ``vfinfer quantize``
keeps the G-Net in FP32 on the pki3 model, and what would change that).

Three measurements, each against the FP32 network pass on the holdout images (``vfinfer
quantize``'s settings: static QDQ, per-channel, entropy calibration on the calibration cells,
the kept-FP32 rule "sensitive"; L-Net and heads in FP32 throughout):

1. ``layers``: each convolution of the G-Net alone in INT8 (every other one FP32): type
   agreement on the holdout images, the mean total-variation distance of the type
   probabilities on the calibration-side selection images, and the convolution's share of the
   G-Net's multiply-accumulates.
2. ``greedy``: every convolution in INT8, then the most sensitive ones (by the selection
   images' distance, not the holdout's) kept FP32 one more at a time: agreement, and with
   ``--latency`` the G-Net's median ms at batch 46 on 2 threads.
3. ``paths``: the INT8 G-Net's two outputs taken one at a time: its features with the FP32
   boxes, the FP32 features with its boxes; and the FP32 network with the localizer's u moved
   by Gaussian noise of the INT8 error's size (how much of the disagreement is the L-Net's
   sensitivity to where its crop lies, eq. 5).

    python benchmarks/int8_sensitivity.py MODEL_DIR --calib CELL ... --select CELL ...
        --holdout CELL ... [--latency] --json benchmarks/results/X.json
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from vfinfer.backends.ort import backend_from_paths, make_session
from vfinfer.model.manifest import GRAPH_ROLES, load_manifest
from vfinfer.pipeline.crop import crop_and_resize, decode_boxes
from vfinfer.pipeline.preprocess import preprocess_batch
from vfinfer.tools.precision.agreement import (
    agreement_figures,
    calibration_feeds,
    network_outputs,
)
from vfinfer.tools.precision.int8_data import read_case_dirs, read_inputs
from vfinfer.tools.precision.int8_latency import session_times
from vfinfer.tools.precision.int8_rules import complete_kept, sensitive_nodes
from vfinfer.tools.precision.quantize import preprocess_graph, quantize_graph

METHOD = "entropy"
JITTER_SEED = 0


def conv_macs(model):
    """{conv node name: multiply-accumulates per image}, from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    return {n.name: int(np.prod(shapes[n.output[0]][2:]) * np.prod(weights[n.input[1]]))
            for n in model.graph.node if n.op_type == "Conv"}


class Setup:
    """The model, its FP32 reference outputs and the G-Net prepared for quantization."""

    def __init__(self, model_dir, args, work):
        self.manifest = load_manifest(model_dir)
        self.fp32 = {role: self.manifest.graph_path(role) for role in GRAPH_ROLES}
        data = read_inputs(args.calib, args.holdout, 256)
        self.holdout = data["holdout"][0]
        self.select = read_case_dirs(args.select)[0]
        self.feeds = calibration_feeds(model_dir, data["calib_images"], args.threads)["gnet"]
        self.threads, self.work = args.threads, work
        self.pre_path = work / "gnet_pre.onnx"
        self.pre = preprocess_graph(self.fp32["gnet"], self.pre_path)
        self.kept = complete_kept(self.pre, sensitive_nodes(self.pre))
        kept_names = {k["node"] for k in self.kept}
        self.macs = conv_macs(self.pre)
        self.convs = [name for name in self.macs if name not in kept_names]
        self.ref = {"holdout": self._outputs(self.fp32["gnet"], self.holdout),
                    "select": self._outputs(self.fp32["gnet"], self.select)}

    def _outputs(self, gnet_path, images):
        return network_outputs({**self.fp32, "gnet": gnet_path}, images,
                               self.manifest.config, self.threads)

    def build(self, fp32_convs, name):
        """The G-Net in INT8 with ``fp32_convs`` kept FP32 besides the rule's nodes."""
        path = self.work / f"{name}.onnx"
        extra = [{"node": c, "op": "Conv", "reason": "benchmark"} for c in fp32_convs]
        quantize_graph(self.pre_path, path, self.feeds, METHOD, self.kept + extra)
        return path

    def score(self, gnet_path):
        got = {"holdout": self._outputs(gnet_path, self.holdout),
               "select": self._outputs(gnet_path, self.select)}
        held = agreement_figures(self.ref["holdout"], got["holdout"], self.manifest.threshold)
        tv = np.abs(self.ref["select"]["type_probs"] - got["select"]["type_probs"]).sum(1) / 2
        return {"holdout_type_agreement": held["type_argmax_agreement"],
                "holdout_disagreements": held["type_disagreements"],
                "holdout_box_iou_mean": held["box_iou_mean"],
                "select_type_tv_mean": float(tv.mean())}


def gnet_ms(path, image, threads=2, repeats=30):
    """Median ms of one G-Net session run on ``image`` (batch 46)."""
    session = make_session(str(path), threads)
    inputs = {session.get_inputs()[0].name: image}
    return float(np.median(session_times(session, inputs, repeats, warmup=3)))


def layers(setup):
    total = sum(setup.macs.values())
    rows = {}
    for conv in setup.convs:
        path = setup.build([c for c in setup.convs if c != conv], f"only_{conv}")
        rows[conv] = {**setup.score(path), "mac_share": setup.macs[conv] / total}
        print(conv, rows[conv], flush=True)
    return rows


def greedy(setup, rows, steps, latency):
    order = sorted(setup.convs, key=lambda c: -rows[c]["select_type_tv_mean"])
    image = setup.feeds["image"][:46]
    total = sum(setup.macs.values())
    out = {"order": order, "fp32_gnet_ms": gnet_ms(setup.fp32["gnet"], image) if latency
           else None, "steps": []}
    for k in range(steps + 1):
        path = setup.build(order[:k], f"greedy_{k}")
        row = {"fp32_convs": order[:k],
               "fp32_mac_share": sum(setup.macs[c] for c in order[:k]) / total,
               **setup.score(path), "gnet_ms": gnet_ms(path, image) if latency else None}
        out["steps"].append(row)
        print(k, row, flush=True)
    return out


def paths(setup, int8_path):
    """Type agreement with the INT8 G-Net's features or boxes alone, and with noisy u."""
    config = setup.manifest.config
    g_input = preprocess_batch(setup.holdout, config)
    backend = backend_from_paths(setup.fp32, setup.threads)
    int8 = backend_from_paths({**setup.fp32, "gnet": int8_path}, setup.threads)

    def gnet(runner):
        parts = [runner.gnet.infer({"image": g_input[s:s + 64]})
                 for s in range(0, len(g_input), 64)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def types(g_features, loc):
        out = []
        for s in range(0, len(g_input), 64):
            boxes = decode_boxes(loc[s:s + 64], config.t1, config.t2)
            crops = crop_and_resize(g_input[s:s + 64], boxes, config.l_input)
            l_features = backend.lnet.infer({"crop": crops})["l_features"]
            out.append(backend.heads.infer({"g_features": g_features[s:s + 64],
                                            "l_features": l_features})["type_probs"])
        return np.concatenate(out).argmax(1)

    ref, low = gnet(backend), gnet(int8)
    int8.close()
    base = types(ref["g_features"], ref["loc"])
    u_error = float(np.abs(low["loc"] - ref["loc"]).mean())
    noisy = ref["loc"] + np.random.default_rng(JITTER_SEED).normal(
        0, u_error * np.sqrt(np.pi / 2), ref["loc"].shape).astype(np.float32)
    figures = {
        "int8_features_fp32_boxes": float(np.mean(types(low["g_features"], ref["loc"]) == base)),
        "fp32_features_int8_boxes": float(np.mean(types(ref["g_features"], low["loc"]) == base)),
        "int8_both": float(np.mean(types(low["g_features"], low["loc"]) == base)),
        "u_mean_abs_error_int8": u_error,
        "fp32_with_u_noise_of_that_size": float(np.mean(
            types(ref["g_features"], np.clip(noisy, 0, 1)) == base)),
    }
    backend.close()
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    for name in ("--calib", "--select", "--holdout"):
        parser.add_argument(name, type=Path, action="append", required=True)
    parser.add_argument("--steps", type=int, default=8, help="greedy steps")
    parser.add_argument("--skip-layers", action="store_true",
                        help="paths only (no per-layer sweep, no greedy steps)")
    parser.add_argument("--latency", action="store_true", help="time each greedy G-Net")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vfinfer-int8-sens-") as tmp:
        setup = Setup(args.model_dir, args, Path(tmp))
        report = {"command": " ".join(["python", *sys.argv]), "method": METHOD,
                  "holdout_images": len(setup.holdout), "select_images": len(setup.select),
                  "kept_by_rule": [k["node"] for k in setup.kept]}
        every_conv = setup.build([], "all")
        report["all_convs_int8"] = setup.score(every_conv)
        report["paths"] = paths(setup, every_conv)
        print(report["paths"], flush=True)
        if not args.skip_layers:
            report["layers"] = layers(setup)
            report["greedy"] = greedy(setup, report["layers"], args.steps, args.latency)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
