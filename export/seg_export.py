"""ONNX export of the segmentation network with its checks (``vfinfer export-seg``; the end of
``vfinfer train-seg``).

Writes ``seg.onnx`` (input ``image`` (N, 1, H, W) with N, H and W dynamic, H and W multiples
of ``SegNet.multiple``; output ``probs`` (N, 3, H, W), the maps of
``vfinfer.segment.channels``), ``seg_fp16.onnx`` and ``manifest.json`` into a fresh
directory that appears only when every check passed:

* ``onnx.checker`` (full) and ONNX Runtime against PyTorch on ``PARITY_SHAPES`` (max abs
  error of the probabilities, tolerance ``PROBABILITY_TOLERANCE``, and the share of pixels on
  the same side of 0.5);
* the TensorRT op audit: every op in ``trt_supported_ops.txt`` (TensorRT's ONNX parser);
* the FP16 graph (``vfinfer.tools.precision.fp16_graph.convert_graph``): the output sigmoid
  and the 1x1 conv feeding it stay FP32, plus whatever the range audit flags on the calibration
  images; its maps against the FP32 graph's are recorded (max abs error, pixel agreement at
  0.5).
"""

import contextlib
import io
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from vfinfer.backends.ort import make_session
from vfinfer.model.manifest import sha256_file, write_json_atomic
from vfinfer.segment.channels import CHANNELS
from vfinfer.segment.instances import InstanceParams
from vfinfer.segment.model import SEG_SCHEMA_VERSION, SegInput, prepare_input
from vfinfer.tools.precision import fp16_graph, fp16_ranges, onnx_graph
from vfinfer.tools.precision.onnx_graph import io_records

from .onnx_export import (
    OPSET,
    ExportError,
    _prepare_destination,
    _publish,
    producer_versions,
    require_parity,
)
from .op_audit import audit_problems, op_audit
from .seg_model import SegExport, macs_per_pixel

PARITY_SHAPES = ((1, 64, 64), (2, 96, 136), (1, 576, 768))
PROBABILITY_TOLERANCE = 1e-4


def _export_graph(net, path):
    module = SegExport(net).eval()
    m = net.multiple
    dims = {0: torch.export.Dim("batch", min=1, max=64),
            2: m * torch.export.Dim("h_blocks", min=1, max=1024),
            3: m * torch.export.Dim("w_blocks", min=1, max=1024)}
    example = torch.zeros(1, 1, 8 * m, 12 * m)
    torch_logger = logging.getLogger("torch.onnx")
    level = torch_logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch_logger.setLevel(logging.ERROR)  # progress notes, not problems
        torch.onnx.export(module, (example,), str(path), input_names=["image"],
                          output_names=["probs"], dynamic_shapes=(dims,), opset_version=OPSET,
                          external_data=False)
    torch_logger.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)


def check_parity(net, path, threads=0):
    """ONNX Runtime against PyTorch on random images of ``PARITY_SHAPES``."""
    session = make_session(path, threads)
    rng = np.random.default_rng(0)
    report = {}
    for n, h, w in PARITY_SHAPES:
        x = rng.normal(0, 1, (n, 1, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = net.probabilities(torch.from_numpy(x)).numpy()
        got = session.run(["probs"], {"image": x})[0]
        report[f"{n}x{h}x{w}"] = {"max_abs": float(np.abs(got - ref).max()),
                                  "agreement": float(np.mean((got > 0.5) == (ref > 0.5)))}
    return report


def _fp16_graph(fp32_path, out_path, feeds):
    """Write the FP16 graph; returns its record (kept nodes, agreement with FP32)."""
    model = onnx.load(str(fp32_path))
    onnx_graph.ensure_node_names(model)
    producers = onnx_graph.producers(model)
    kept = {}
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            kept[node.name] = "output sigmoid: the maps are thresholded at 0.5"
            source = producers.get(node.input[0])
            if source is not None:
                kept[source.name] = "the 1x1 conv producing the logits of the output maps"
    onnx.save(model, str(fp32_path))
    for entry in fp16_ranges.flagged_nodes(fp16_ranges.activation_ranges(fp32_path, feeds)):
        kept.setdefault(entry["node"], entry["reason"])
    converted = fp16_graph.convert_graph(model, sorted(kept))
    fp16_graph.check_fp16_graph(model, converted, sorted(kept))
    onnx.save(converted, str(out_path))
    ref = make_session(fp32_path).run(["probs"], feeds)[0]
    got = make_session(out_path).run(["probs"], feeds)[0]
    return {"kept_fp32": [{"node": k, "reason": v} for k, v in sorted(kept.items())],
            "max_abs_vs_fp32": float(np.abs(got - ref).max()),
            "agreement_vs_fp32": float(np.mean((got > 0.5) == (ref > 0.5)))}


def instance_params(training):
    """The instance step's thresholds; ``min_area`` is half the 1st percentile of the
    training chromosomes' areas (debris is smaller than the smallest chromosome), at least
    10 pixels; the defaults without a training record."""
    params = InstanceParams()
    areas = (training or {}).get("areas")
    if areas:
        params.min_area = max(10, int(round(0.5 * areas["p1"])))
    return params


# touch down to 0.002: a network trained briefly gives the seams between touching chromosomes
# low probabilities, and the best touch threshold of a 12-epoch BioImLab network was 0.005
# (docs/segmentation.md, "Levers on BioImLab"); the tuning keeps what the images say
TUNE_GRID = {"touch": (0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002),
             "chromosome": (0.5, 0.4)}


def tune_instance_params(graph_path, spec, paths, params):
    """The instance step's thresholds chosen on annotated images (labelme ``paths``): the
    combination of ``TUNE_GRID`` with the best instance F1 at IoU 0.5, summed over the
    images. Returns (params, the grid's figures)."""
    from dataclasses import replace

    from vfinfer.backends.ort import OrtRunner
    from vfinfer.io.labelme import polygon_masks, read_labelme
    from vfinfer.segment.instances import instances_from_maps
    from vfinfer.segment.segmenter import network_maps
    from vfinfer.tools.evaluation.segmentation import matched

    runner = OrtRunner(graph_path)
    images = []
    for path in paths:
        metaphase = read_labelme(path)
        images.append((network_maps(runner, spec, metaphase.image),
                       polygon_masks(metaphase.polygons, metaphase.image.shape)))
    grid = []
    for touch in TUNE_GRID["touch"]:
        for chromosome in TUNE_GRID["chromosome"]:
            trial = replace(params, touch=touch, chromosome=chromosome)
            hits = found = truth = 0
            for probs, masks in images:
                shape = masks[0].shape if masks else probs.shape[1:]
                inst = [i.full_mask(shape) for i in instances_from_maps(probs, trial)]
                hits, found, truth = hits + matched(masks, inst), found + len(inst), \
                    truth + len(masks)
            f1 = 2 * hits / max(found + truth, 1)
            grid.append({"touch": touch, "chromosome": chromosome, "f1": round(f1, 4)})
    best = max(grid, key=lambda g: g["f1"])
    return replace(params, touch=best["touch"], chromosome=best["chromosome"]), grid


def _graph_record(path):
    inputs, outputs = io_records(onnx.load(str(path)))
    return {"file": path.name, "sha256": sha256_file(path), "inputs": inputs,
            "outputs": outputs}


def _calibration_feeds(calib_images, spec):
    """A calibration input: the first image (synthetic metaphase when none is given)."""
    if not calib_images:
        from vfinfer.tools.synthesis.metaphases import render_metaphase

        calib_images = [render_metaphase(1, size=(384, 512))[0]]
    x, _ = prepare_input(calib_images[0], spec)
    return {"image": x}


def export_seg(net, out_dir, source, training=None, overwrite=False, threads=0,
               spec=None, params=None, calib_images=None, tune_on=None, log=print):
    """Export ``net`` into ``out_dir``; returns the manifest (see the module doc).
    ``tune_on``: labelme files to choose the instance step's thresholds on
    (``tune_instance_params``)."""
    net = net.eval()
    spec = spec or SegInput(multiple=net.multiple)
    spec.multiple = net.multiple
    tmp = _prepare_destination(out_dir, overwrite)
    try:
        path = tmp / "seg.onnx"
        log(f"exporting the segmentation network -> {path.name}")
        _export_graph(net, path)
        audit = op_audit(path)
        problems = audit_problems({"seg": audit})
        if problems:
            raise ExportError("; ".join(problems))
        parity = check_parity(net, path, threads)
        require_parity(parity, log)
        fp16_record = _fp16_graph(path, tmp / "seg_fp16.onnx",
                                  _calibration_feeds(calib_images, spec))
        log(f"FP16 graph: {len(fp16_record['kept_fp32'])} nodes kept FP32, max abs vs FP32 "
            f"{fp16_record['max_abs_vs_fp32']:.1e}, agreement "
            f"{fp16_record['agreement_vs_fp32']:.4%}")
        params = params or instance_params(training)
        tuning = None
        if tune_on:
            params, grid = tune_instance_params(path, spec, tune_on, params)
            tuning = {"images": [Path(p).name for p in tune_on], "grid": grid}
            log(f"instance step tuned on {len(tune_on)} images: touch {params.touch}, "
                f"chromosome {params.chromosome} (F1 at IoU 0.5 "
                f"{max(g['f1'] for g in grid):.3f})")
        manifest = {
            "schema_version": SEG_SCHEMA_VERSION, "kind": "segmentation",
            "network": {"design": "U-Net", "widths": list(net.widths),
                        "channels": list(CHANNELS),
                        "macs_per_pixel": round(macs_per_pixel(net.widths)),
                        "parameters": int(sum(p.numel() for p in net.parameters()))},
            "input": spec.to_dict(),
            "instances": {**params.to_dict(), "tuned_on": tuning},
            "graphs": {"seg": _graph_record(path),
                       "seg_fp16": {**_graph_record(tmp / "seg_fp16.onnx"), **fp16_record}},
            "parity": {"shapes": parity, "tolerance_abs": PROBABILITY_TOLERANCE},
            "op_audit": audit, "producer": producer_versions(), "source": source,
        }
        if training:
            manifest["training"] = training
        write_json_atomic(tmp / "manifest.json", manifest)
        _publish(tmp, out_dir)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
