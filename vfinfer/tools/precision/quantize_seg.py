"""INT8 for a segmentation model directory (``vfinfer quantize-seg``): the U-Net's graph
quantized as the classifier's are (``vfinfer.tools.precision.quantize``: static QDQ,
per-channel, ONNX Runtime CPU, the stem convolution kept FP32) and checked by what the
segmentation is for, the COCO mask AP of ``vfinfer eval-seg`` on labelled metaphases that
were not used to calibrate, FP32 against INT8.

The graph is usable (``--seg-precision int8``) when neither AP50 nor mAP falls by more than
``MAX_AP_DROP`` points; the manifest gets ``graphs.seg_int8`` and ``int8_audit`` (both
precisions' figures, the rule, the calibration, the CPU), whether usable or not.
"""

import tempfile
from pathlib import Path

import numpy as np

from vfinfer.io.labelme import read_metaphase_image
from vfinfer.segment.model import MANIFEST_NAME, load_seg_model, prepare_input
from vfinfer.tools.precision.int8_rules import complete_kept, sensitive_nodes
from vfinfer.tools.precision.quantize import preprocess_graph, quantize_graph
from vfinfer.util.atomic import write_atomic, write_json_atomic
from vfinfer.util.machine import int8_facts

MAX_AP_DROP = 1.0  # points of AP50 and of mAP that INT8 may lose against FP32
MAX_CALIB_IMAGES = 16
FIGURES = ("AP50", "AP75", "mAP", "precision50", "recall50", "found", "matched")


def calibration_inputs(paths, spec, limit=MAX_CALIB_IMAGES):
    """The network inputs (1, 1, H, W) of at most ``limit`` metaphases (image files or
    labelme JSON files), evenly spaced."""
    paths = list(paths)
    if not paths:
        raise ValueError("no calibration metaphases given")
    step = max(1, len(paths) // limit)
    return [prepare_input(read_metaphase_image(path), spec)[0] for path in paths[::step][:limit]]


def seg_reader(inputs):
    """A CalibrationDataReader giving one metaphase at a time (their sizes differ), with the
    ``__len__`` / ``set_range`` of the strided calibration ``quantize_graph`` asks for."""
    from onnxruntime.quantization import CalibrationDataReader

    class OneAtATime(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(inputs))

        def __len__(self):
            return len(inputs)

        def set_range(self, start_index, end_index):
            self.pending = iter(inputs[start_index:end_index])

        def get_next(self):
            x = next(self.pending, None)
            return None if x is None else {"image": np.ascontiguousarray(x)}

    return OneAtATime()


def ap_figures(model_dir, precision, holdout_dir, threads):
    """``evaluate_segmentation``'s figures of one precision of the graph."""
    from vfinfer.segment.segmenter import Segmenter
    from vfinfer.tools.evaluation.segmentation import evaluate_segmentation

    segmenter = Segmenter(model_dir, threads=threads, precision=precision, check_audit=False)
    report = evaluate_segmentation(holdout_dir, segmenter, log=lambda *_: None)
    return {**{key: report[key] for key in FIGURES}, "images": report["images"],
            "timing_ms": report["timing_ms"]["total"]}


def verdict(fp32, int8, max_drop):
    """(usable, reason) of the AP rule."""
    drops = {key: round(fp32[key] - int8[key], 2) for key in ("AP50", "mAP")}
    text = (f"AP50 {fp32['AP50']:.2f} -> {int8['AP50']:.2f}, mAP {fp32['mAP']:.2f} -> "
            f"{int8['mAP']:.2f} on {int8['images']} held-out metaphases (allowed: a drop of "
            f"at most {max_drop:g} point)")
    return all(drop <= max_drop for drop in drops.values()), text


def quantize_seg_model_dir(seg_dir, calib_paths, holdout_dir, method="entropy", threads=0,
                           max_ap_drop=MAX_AP_DROP, log=print):
    """Write ``seg_int8.onnx`` and its audit into ``seg_dir``; return the audit."""
    model = load_seg_model(seg_dir)
    inputs = calibration_inputs(calib_paths, model.input)
    log(f"INT8 of {seg_dir}: calibrating on {len(inputs)} metaphases ({method})")
    with tempfile.TemporaryDirectory(prefix="vfinfer-seg-int8-") as tmp:
        pre_path = Path(tmp) / "seg_pre.onnx"
        pre_model = preprocess_graph(model.graph_path(), pre_path)
        kept = complete_kept(pre_model, sensitive_nodes(pre_model))
        out = Path(tmp) / "seg_int8.onnx"
        quantize_graph(pre_path, out, None, method, kept, reader=seg_reader(inputs))
        write_atomic(Path(seg_dir) / "seg_int8.onnx", out.read_bytes())
    record_graph(seg_dir, kept, method, len(inputs))
    log(f"checking FP32 and INT8 on the labelled metaphases of {holdout_dir}")
    fp32 = ap_figures(seg_dir, "fp32", holdout_dir, threads)
    int8 = ap_figures(seg_dir, "int8", holdout_dir, threads)
    usable, reason = verdict(fp32, int8, max_ap_drop)
    audit = {"usable": usable, "reason": reason,
             "rule": {"max_ap_drop_points": max_ap_drop, "figures": ["AP50", "mAP"],
                      "measured_on": f"{int8['images']} labelled metaphases of "
                                     f"{Path(holdout_dir).name}/, not used to calibrate"},
             "fp32": fp32, "int8": int8, "kept_fp32": kept,
             "calibration": {"method": method, "metaphases": len(inputs)},
             "built_on": {"cpu": int8_facts()}}
    data = load_seg_model(seg_dir).data
    data["int8_audit"] = audit
    write_json_atomic(Path(seg_dir) / MANIFEST_NAME, data)
    log(("INT8 segmentation usable: " if usable else "INT8 segmentation NOT usable: ") + reason)
    return audit


def record_graph(seg_dir, kept, method, n_calib):
    """List ``seg_int8.onnx`` in the manifest (file, sha256, what it was made from)."""
    from vfinfer.model.manifest import sha256_file

    data = load_seg_model(seg_dir).data
    data["graphs"]["seg_int8"] = {
        "file": "seg_int8.onnx", "sha256": sha256_file(Path(seg_dir) / "seg_int8.onnx"),
        "source_sha256": data["graphs"]["seg"].get("sha256"),
        "kept_fp32": [entry["node"] for entry in kept],
        "calibration": {"method": method, "metaphases": n_calib}}
    write_json_atomic(Path(seg_dir) / MANIFEST_NAME, data)
