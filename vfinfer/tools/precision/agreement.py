"""The skeleton shared by the FP16 (``vfinfer.tools.precision.fp16``) and INT8
(``vfinfer.tools.precision.quantize``) conversions.

Both feed each graph what it sees at run time (``calibration_feeds``), compare the whole
network pass of the converted graphs with the FP32 one (``network_outputs`` and
``agreement_figures``), keep the bounded outputs and the layers that feed them in FP32
(``bounded_nodes``), and leave a model directory as it was when anything fails
(``restore_on_failure``). All sessions come from ``vfinfer.backends.ort.make_session``, with
the settings ``vfinfer run`` uses.
"""

import contextlib
import copy

import numpy as np

from vfinfer.backends.ort import backend_from_paths
from vfinfer.model.manifest import GRAPH_ROLES, MANIFEST_NAME, load_manifest, write_json_atomic
from vfinfer.pipeline.network import run_network_batched
from vfinfer.pipeline.preprocess import preprocess_batch
from vfinfer.tools.precision.onnx_graph import producers as graph_producers

AGREEMENT_BATCH = 64
LINEAR_OPS = ("Gemm", "MatMul")


def network_outputs(paths, images, config, threads=0, batch=AGREEMENT_BATCH,
                    keep_feeds=False):
    """The network pass (``vfinfer.pipeline.network``) of gray uint8 ``images`` on the graph
    files ``paths`` ({role: path}), ONNX Runtime CPU. It compares graphs, so it runs one view
    (no test-time augmentation), and a model with size normalization scales all ``images``
    as one cell: every graph of a comparison sees the same inputs."""
    backend = backend_from_paths(paths, threads)
    try:
        return run_network_batched(backend, preprocess_batch(images, config), config, batch,
                                   keep_feeds=keep_feeds)
    finally:
        backend.close()


def calibration_feeds(model_dir, images, threads=0):
    """Inputs of each FP32 graph for ``images``, as the pipeline computes them.

    ``{role: {input name: array}}``: the preprocessed G inputs, the eq. 5 crops from the FP32
    G-Net's localization and the FP32 G / L features for the heads.
    """
    manifest = load_manifest(model_dir)
    paths = {role: manifest.graph_path(role) for role in GRAPH_ROLES}
    return network_outputs(paths, images, manifest.config, threads, keep_feeds=True)["feeds"]


def box_iou(a, b):
    """Elementwise IoU of (N, 4) boxes [x0, y0, x1, y1]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = width * height
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
             + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def agreement_figures(ref, got, threshold=0.9):
    """Task-level agreement of two ``network_outputs`` / ``Pipeline.infer`` outputs.

    ``threshold`` (the dispatch threshold) splits off the images whose FP32 type probability
    is confident: disagreements there matter more than on near-ties that dispatch flags anyway.
    """
    n = len(ref["type_probs"])
    type_same = ref["type_probs"].argmax(1) == got["type_probs"].argmax(1)
    confident = ref["type_probs"].max(1) >= threshold
    iou = box_iou(ref["boxes"], got["boxes"])
    type_diff = float(np.max(np.abs(ref["type_probs"] - got["type_probs"])))
    polarity_diff = float(np.max(np.abs(ref["polarity_probs"] - got["polarity_probs"])))
    return {
        "images": int(n),
        "type_argmax_agreement": float(np.mean(type_same)),
        "type_disagreements": int(n - type_same.sum()),
        "confident_images": int(confident.sum()),
        "type_disagreements_confident": int((~type_same & confident).sum()),
        "polarity_argmax_agreement": float(np.mean(ref["polarity_probs"].argmax(1)
                                                   == got["polarity_probs"].argmax(1))),
        "box_iou_mean": float(iou.mean()),
        "box_iou_min": float(iou.min()),
        "prob_max_abs_diff": max(type_diff, polarity_diff),
        "type_prob_max_abs_diff": type_diff,
        "polarity_prob_max_abs_diff": polarity_diff,
        "box_max_abs_diff_px": float(np.max(np.abs(ref["boxes"] - got["boxes"]))),
        "loc_max_abs_diff": float(np.max(np.abs(ref["loc"] - got["loc"]))),
        "fp32_distinct_types": int(len(np.unique(ref["type_probs"].argmax(1)))),
    }


def format_agreement(figures, precision, images="images"):
    """One line: ``"INT8 vs FP32 on 4415 holdout images (ONNX Runtime CPU): ..."``."""
    return (f"{precision.upper()} vs FP32 on {figures['images']} {images} (ONNX Runtime CPU): "
            f"type argmax agreement {figures['type_argmax_agreement']:.2%} "
            f"({figures['type_disagreements']} differ, "
            f"{figures['type_disagreements_confident']} of them confident in FP32), polarity "
            f"{figures['polarity_argmax_agreement']:.2%}, box IoU mean "
            f"{figures['box_iou_mean']:.4f} / min {figures['box_iou_min']:.4f}, max |prob diff| "
            f"{figures['prob_max_abs_diff']:.3g}, max box diff "
            f"{figures['box_max_abs_diff_px']:.3f} px")


def bounded_nodes(model, bounded_reasons, feeds_reasons):
    """``{node: (op, reason)}`` for each bounded output (Softmax, Sigmoid: the keys of
    ``bounded_reasons``) and the fully connected layer feeding it (``feeds_reasons``).

    Only nodes that produce a graph output count (the localizer's ``loc``, the heads'
    probabilities): a sigmoid inside a trunk (the channel attention of ChrNet4's ChrBlock)
    gates features and is left to the range audit like any other activation."""
    producers = graph_producers(model)
    outputs = {value.name for value in model.graph.output}
    kept = {}
    for node in model.graph.node:
        if node.op_type not in bounded_reasons or not outputs & set(node.output):
            continue
        kept.setdefault(node.name, (node.op_type, bounded_reasons[node.op_type]))
        source = producers.get(node.input[0])
        if source is not None and source.op_type in LINEAR_OPS:
            kept.setdefault(source.name, (source.op_type, feeds_reasons[node.op_type]))
    return kept


def graph_io_types(model):
    """{input or output name: ONNX element type}."""
    return {v.name: v.type.tensor_type.elem_type
            for v in list(model.graph.input) + list(model.graph.output)}


def io_and_checker_problems(fp32_model, converted, full_check=False):
    """What breaks the contract every converted graph keeps: the same input and output
    names and types as the FP32 graph, and a clean ``onnx.checker``."""
    import onnx

    problems = []
    before, after = graph_io_types(fp32_model), graph_io_types(converted)
    if before != after:
        problems.append(f"graph inputs/outputs changed: {before} -> {after}")
    try:
        onnx.checker.check_model(converted, full_check=full_check)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0]}")
    return problems


def op_counts(model):
    """{op type: number of nodes}, sorted by op type."""
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def write_manifest(model_dir, data):
    """Replace ``model_dir``'s manifest.json atomically."""
    write_json_atomic(model_dir / MANIFEST_NAME, data)


def earlier_graphs(model_dir, precision):
    """True when the model directory already records ``<role>_<precision>`` graphs."""
    graphs = load_manifest(model_dir).data["graphs"]
    return any(f"{role}_{precision}" in graphs for role in GRAPH_ROLES)


@contextlib.contextmanager
def restore_on_failure(model_dir, precision):
    """Yield a copy of the manifest data; on any exception (Ctrl-C included) write the
    original manifest back and remove every ``<role>_<precision>.onnx*`` file and temporary."""
    manifest_path = model_dir / MANIFEST_NAME
    original = load_manifest(model_dir).data
    try:
        yield copy.deepcopy(original)
    except BaseException:
        write_json_atomic(manifest_path, original)
        for role in GRAPH_ROLES:
            for pattern in (f"{role}_{precision}.onnx*", f".{role}_{precision}.onnx.tmp"):
                for path in model_dir.glob(pattern):
                    path.unlink(missing_ok=True)
        raise
