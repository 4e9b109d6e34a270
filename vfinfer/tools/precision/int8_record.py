"""What an INT8 conversion leaves in the model directory: the graphs in place, their manifest
records and the ``int8_audit`` section (the figures, the warnings, how it was made)."""

import shutil

from vfinfer.model.audits import MIN_TYPE_AGREEMENT, int8_usable
from vfinfer.model.manifest import (
    GRAPH_ROLES,
    sha256_file,
)
from vfinfer.tools.precision.agreement import (
    op_counts,
    write_manifest,
)
from vfinfer.tools.precision.int8_rules import CALIB_BATCH, NOT_QUANTIZED_OPS, PERCENTILE, SETTINGS
from vfinfer.tools.precision.onnx_graph import io_records
from vfinfer.util.machine import int8_facts

BOX_IOU_WARN_MEAN = 0.95  # box agreement below these is reported as a warning
BOX_IOU_WARN_MIN = 0.8
SMALL_HOLDOUT = 200  # below this one disagreement is more than 0.5 %: the rule cannot resolve


def agreement_warnings(figures, min_agreement=MIN_TYPE_AGREEMENT):
    """What the type rule does not cover but a user should know (not gating)."""
    notes = []
    if figures["fp32_distinct_types"] <= 2 < figures["images"]:
        notes.append(f"the FP32 model predicts only {figures['fp32_distinct_types']} type(s) "
                     f"on {figures['images']} holdout images (untrained model?): type agreement "
                     "says little here")
    if figures["polarity_argmax_agreement"] < min_agreement:
        notes.append(f"polarity argmax agreement is {figures['polarity_argmax_agreement']:.2%}")
    if figures["box_iou_mean"] < BOX_IOU_WARN_MEAN or figures["box_iou_min"] < BOX_IOU_WARN_MIN:
        notes.append(f"INT8 moves the eq. 5 boxes: IoU with FP32 mean "
                     f"{figures['box_iou_mean']:.3f}, min {figures['box_iou_min']:.3f} (up to "
                     f"{figures['box_max_abs_diff_px']:.1f} G-input px)")
    return notes


def _save_final(src, dst):
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return [dst.name]


def _graph_record(built_path, final, kept):
    """Copy a built INT8 graph to its final name; its manifest record (without provenance)."""
    import onnx

    files = _save_final(built_path, final)
    model = onnx.load(str(final))
    inputs, outputs = io_records(model)
    present = {n.op_type for n in model.graph.node}
    return {
        "file": final.name, "files": files, "sha256": sha256_file(final),
        "inputs": inputs, "outputs": outputs, "precision": "int8",
        "kept_fp32": kept,
        "not_quantized_ops": {op: why for op, why in NOT_QUANTIZED_OPS.items() if op in present},
        "ops": op_counts(model),
        "quantizer": "onnxruntime.quantization quant_pre_process + quantize_static (QDQ, "
                     "per_channel=True, activations QUInt8, weights QInt8, "
                     "nodes_to_exclude=kept_fp32)",
    }


def record_int8(model_dir, data, data_in, found, settings):
    """Copy the chosen graphs into place and write their records and the audit."""
    chosen, min_agreement = found["chosen"], settings["min_type_agreement"]
    n_holdout = len(data_in["holdout"][0])
    usable, reason = int8_usable(chosen["agreement"], min_agreement)
    if not usable and found["int8_roles"]:
        usable, reason = True, partial_reason(found, reason, min_agreement)
    warnings = agreement_warnings(found["subset_agreement"] or chosen["agreement"],
                                  min_agreement)
    if n_holdout < SMALL_HOLDOUT:
        warnings.append(f"only {n_holdout} holdout images: one disagreement is "
                        f"{1 / max(n_holdout, 1):.2%}, too coarse for the "
                        f"{min_agreement:.1%} rule; hold out at least {SMALL_HOLDOUT}")
    calibration = {"case_dirs": [str(d) for d in data_in["calib_dirs"]],
                   "images": len(data_in["calib_images"]),
                   "images_available": len(data_in["calib"][0]), "method": chosen["method"]}
    for role in GRAPH_ROLES:
        path, kept = chosen["_built"][role]
        record = _graph_record(path, model_dir / f"{role}_int8.onnx", kept)
        record["calibration"] = {**calibration, "feeds": FEEDS[role]}
        record["source_graph"] = found["fp32_paths"][role].name
        record["source_sha256"] = data["graphs"][role]["sha256"]
        data["graphs"][f"{role}_int8"] = record
    data["int8_audit"] = _audit(data_in, found, calibration, usable, reason, warnings,
                                settings)
    write_manifest(model_dir, data)


def partial_reason(found, whole, min_agreement):
    """Why only some graphs run in INT8: the mix's agreement and the whole set's."""
    roles = found["int8_roles"]
    kept = [role for role in GRAPH_ROLES if role not in roles]
    figure = found["subset_agreement"]["type_argmax_agreement"]
    return (f"INT8 for {' and '.join(roles)} only, {' and '.join(kept)} in FP32: type argmax "
            f"agreement with FP32 {figure:.2%} on {found['subset_agreement']['images']} "
            f"holdout images (required: >= {min_agreement:.1%}); all graphs in INT8: {whole}")


def _audit(data_in, found, calibration, usable, reason, warnings, settings):
    """The ``int8_audit`` section of the manifest."""
    import onnx
    import onnxruntime as ort

    chosen = found["chosen"]
    selection = "the first attempt meeting the rule, in the order tried"
    if not usable:
        selection = ("the first attempt meeting the rule, in the order tried (methods in "
                     "order, then all FCs in FP32); none did: the best is kept and marked "
                     "unusable")
    n_used, n_available = calibration["images"], calibration["images_available"]
    return {
        "usable": usable,
        "reason": reason,
        "rule": {"min_type_argmax_agreement": settings["min_type_agreement"],
                 "measured_on": "holdout images (not used for calibration)"},
        "calibration": {**calibration, "batch": CALIB_BATCH,
                        "selection": "all" if n_used == n_available
                        else f"{n_used} evenly spaced",
                        "percentile": PERCENTILE if chosen["method"] == "percentile" else None},
        "holdout": {"case_dirs": [str(d) for d in data_in["holdout_dirs"]],
                    "images": len(data_in["holdout"][0]), "split": data_in["split"],
                    **data_in["disjoint"]},
        "int8_roles": found["int8_roles"],
        "agreement": found["subset_agreement"] or chosen["agreement"],
        "all_graphs_agreement": chosen["agreement"],
        "warnings": warnings,
        "kept_fp32_rule": chosen["kept_fp32_rule"],
        "per_graph_agreement": found["per_graph"],
        "attempts": [{k: v for k, v in a.items() if k != "_built"} for a in found["attempts"]],
        "selection": selection,
        "settings": {**SETTINGS, "reduce_range": bool(settings["reduce_range"])},
        "latency": found["latency"],
        "built_on": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                     "cpu": int8_facts()},
    }


FEEDS = {
    "gnet": "preprocessed G inputs of the calibration images",
    "lnet": "eq. 5 crops cut by the FP32 G-Net's localization from those G inputs",
    "heads": "FP32 G-Net and L-Net features of those images",
}
