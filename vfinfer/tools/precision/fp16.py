"""Mixed-precision FP16 graphs (FP16 weights and activations, FP32 inputs and outputs).

TensorRT 11 builds FP16 engines only from an FP16 ONNX graph (strong typing; the FP16 builder
flag is gone), and on TensorRT 10 the same list of FP32 nodes is applied as layer precision
constraints. This module writes ``<role>_fp16.onnx`` beside each FP32 graph of a model
directory and records it in the manifest as ``graphs["<role>_fp16"]``.

Which nodes stay in FP32, and why (each kept node is recorded with its reason):

* ``Softmax`` (heads) and ``Sigmoid`` (the localizer's output): bounded outputs whose FP16
  rounding near 1 (step 4.9e-4) moves probabilities across the dispatch threshold and
  boxes by a fraction of a pixel (eq. 5 scales u by T2);
* the fully connected layer that feeds each of them (``Gemm``/``MatMul``): the logits and the
  localizer's last FC decide argmax and box position;
* whatever the range audit flags on calibration images: an intermediate tensor whose largest
  magnitude exceeds ``RANGE_FRACTION`` of the FP16 maximum (65504), or where more than
  ``UNDERFLOW_FRACTION`` of the nonzero values fall below the smallest normal FP16 number
  (6.1e-5, where FP16 loses precision and, below 6e-8, flushes to zero); and any node whose
  weights lie outside the FP16 range.

The conversion itself is onnxconverter-common's ``convert_float_to_float16`` with
``keep_io_types=True`` and the nodes above in ``node_block_list``. Two of its known
limitations are repaired here and then checked: a graph output produced by a blocked node
comes out as FP16 despite ``keep_io_types``, and a graph output that is also read inside the
graph (G-Net's features feed its own classifier) confuses its output casts.

Entry points: ``add_fp16_graphs(model_dir)`` (``vfinfer export --fp16`` and existing model
directories), ``convert_model_dir_to_fp16``, ``activation_ranges``, ``fp16_agreement``.
"""

from pathlib import Path

import numpy as np
import onnx

from vfinfer.model.manifest import (
    GRAPH_ROLES,
    load_manifest,
    remove_precision_graphs,
    sha256_file,
)
from vfinfer.tools.precision import agreement, onnx_graph
from vfinfer.tools.precision.fp16_graph import (
    Fp16Error,
    check_fp16_graph,
    convert_graph,
    merge_kept,
    save_graph,
    sensitive_nodes,
)
from vfinfer.tools.precision.fp16_ranges import (
    FP16_MAX,
    FP16_MIN_NORMAL,
    RANGE_FRACTION,
    UNDERFLOW_FRACTION,
    activation_ranges,
    flagged_nodes,
    graph_session,
    summarize_ranges,
    weight_range_nodes,
)

SYNTHETIC_CALIBRATION_IMAGES = 48
AGREEMENT_WARN_BELOW = 0.99


# --------------------------------------------------------------------------- graph helpers


# --------------------------------------------------------------------------- range audit


# --------------------------------------------------------------------------- conversion


# --------------------------------------------------------------------------- calibration
def synthetic_calibration_images(n=SYNTHETIC_CALIBRATION_IMAGES, seed=2019):
    """Synthetic chromosome cut-outs of all 24 types (vfinfer.tools.synthesis.cells)."""
    from vfinfer.tools.synthesis.cells import render_chromosome

    rng = np.random.default_rng(seed)
    return [render_chromosome(i % 24, rng, scale=rng.uniform(0.8, 1.2)) for i in range(n)]


def calibration_images(calib_case_dir=None):
    """Gray uint8 images of a case directory, or synthetic ones when none is given."""
    if calib_case_dir is None:
        return (synthetic_calibration_images(),
                "synthetic (vfinfer.tools.synthesis.cells.render_chromosome)")
    from vfinfer.util.images import read_case

    images, _paths, _ignored = read_case(calib_case_dir)
    return images, str(calib_case_dir)


# --------------------------------------------------------------------------- model directory


def convert_model_dir_to_fp16(model_dir, calib_images=None, log=print):
    """Write ``<role>_fp16.onnx`` beside each FP32 graph; return the records and the audit.

    Returns ``(records, audit)``: ``records[role]`` holds the manifest fields of the FP16
    graph (file, files, sha256, inputs, outputs, kept_fp32, source_graph, source_sha256) and
    ``audit[role]`` the range summary. Nothing is written into the manifest here.
    """
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    if calib_images is None:
        calib_images = synthetic_calibration_images()
    feeds = agreement.calibration_feeds(model_dir, calib_images)
    records, audit = {}, {}
    for role in GRAPH_ROLES:
        source = manifest.graph_path(role)
        model = onnx.load(str(source))
        onnx_graph.ensure_node_names(model)
        ranges = activation_ranges(source, feeds[role])
        kept = merge_kept(sensitive_nodes(model), weight_range_nodes(model),
                           flagged_nodes(ranges))
        fp16_model = convert_graph(model, [k["node"] for k in kept])
        half_nodes = check_fp16_graph(model, fp16_model, [k["node"] for k in kept])
        path = model_dir / f"{role}_fp16.onnx"
        files = save_graph(fp16_model, path)
        try:
            outputs = graph_session(path).run(None, feeds[role])  # it loads and runs on ORT CPU
        except Exception as exc:  # onnxruntime raises its own exception types
            raise Fp16Error(f"{path.name}: ONNX Runtime cannot run the FP16 graph ({exc})") \
                from None
        if not all(np.all(np.isfinite(o)) for o in outputs):
            raise Fp16Error(f"{path.name}: non-finite outputs on the calibration images")
        inputs, output_records = onnx_graph.io_records(fp16_model)
        records[role] = {
            "file": path.name, "files": files, "sha256": sha256_file(path),
            "inputs": inputs, "outputs": output_records,
            "precision": "fp16", "kept_fp32": kept,
            "source_graph": source.name, "source_sha256": manifest.graph(role)["sha256"],
            "converter": "onnxconverter-common float16.convert_float_to_float16 "
                         "(keep_io_types=True, node_block_list=kept_fp32)",
        }
        audit[role] = {**summarize_ranges(ranges), "fp16_nodes": half_nodes,
                       "kept_fp32": len(kept)}
        log(f"{role}: {path.name} ({half_nodes} FP16 nodes, {len(kept)} kept in FP32: "
            + ", ".join(f"{k['node']} ({k['op']})" for k in kept) + ")")
    return records, audit


def fp16_agreement(model_dir, images):
    """The network pass in FP32 and FP16 (ONNX Runtime CPU) on the same gray uint8 images:
    ``vfinfer.tools.precision.agreement.agreement_figures`` (type / polarity argmax agreement,
    largest probability, box and localization differences)."""
    manifest = load_manifest(model_dir)
    outputs = [agreement.network_outputs({role: manifest.graph_path(role, kind)
                                          for role in GRAPH_ROLES}, images, manifest.config)
               for kind in ("fp32", "fp16")]
    return agreement.agreement_figures(*outputs, threshold=manifest.threshold)


def add_fp16_graphs(model_dir, calib_case_dir=None, log=print):
    """Convert, audit and record FP16 graphs for a model directory; return the audit.

    Writes ``gnet_fp16.onnx`` etc., lists them in ``manifest.json`` as ``graphs["gnet_fp16"]``
    (the FP32 records' fields plus ``kept_fp32``) and adds an ``fp16_audit`` section (range
    summaries and the FP16-vs-FP32 pipeline agreement). Calibration images come from
    ``calib_case_dir`` (one case directory) or, when none is given, from
    ``vfinfer.tools.synthesis.cells``. FP16 graphs from an earlier conversion are replaced.
    If anything fails, the manifest is left without FP16 graphs (as it was, when it had none)
    and no FP16 file remains.
    """
    model_dir = Path(model_dir)
    images, source = calibration_images(calib_case_dir)
    if agreement.earlier_graphs(model_dir, "fp16"):
        log("replacing the FP16 graphs of an earlier conversion")
        remove_fp16_graphs(model_dir)
    log(f"FP16 conversion of {model_dir} with {len(images)} calibration images ({source})")
    with agreement.restore_on_failure(model_dir, "fp16") as data:
        records, audit = convert_model_dir_to_fp16(model_dir, images, log=log)
        for role, record in records.items():
            data["graphs"][f"{role}_fp16"] = record
        agreement.write_manifest(model_dir, data)  # fp16_agreement reads it
        figures = fp16_agreement(model_dir, images)
        data["fp16_audit"] = {
            "calibration": {"source": source, "images": len(images)},
            "thresholds": {"fp16_max": FP16_MAX, "range_fraction": RANGE_FRACTION,
                           "fp16_min_normal": FP16_MIN_NORMAL,
                           "underflow_fraction": UNDERFLOW_FRACTION},
            "ranges": audit,
            "agreement": figures,
        }
        agreement.write_manifest(model_dir, data)
    log(agreement.format_agreement(figures, "fp16"))
    if figures["type_argmax_agreement"] < AGREEMENT_WARN_BELOW:
        log(f"warning: FP16 changes the type argmax on "
            f"{1 - figures['type_argmax_agreement']:.1%} of the calibration images; check "
            "accuracy on labelled data (vfinfer eval) before using the FP16 engines")
    return data["fp16_audit"]


def remove_fp16_graphs(model_dir):
    """Drop the FP16 graphs and their manifest entries (e.g. before re-converting)."""
    remove_precision_graphs(model_dir, "fp16")


__all__ = ["add_fp16_graphs", "convert_model_dir_to_fp16", "fp16_agreement", "remove_fp16_graphs"]
