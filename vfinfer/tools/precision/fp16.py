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

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from vfinfer.backends.ort import make_session
from vfinfer.model.manifest import (
    GRAPH_ROLES,
    load_manifest,
    remove_precision_graphs,
    sha256_file,
)
from vfinfer.tools.precision import agreement, onnx_graph

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05  # 2 ** -14
FP16_MIN_SUBNORMAL = 5.960464477539063e-08  # 2 ** -24
RANGE_FRACTION = 0.25  # keep FP32 where |x| exceeds a quarter of the FP16 maximum
UNDERFLOW_FRACTION = 0.01  # ... or where over 1% of nonzero values are below the min normal
SYNTHETIC_CALIBRATION_IMAGES = 48
AGREEMENT_WARN_BELOW = 0.99
PROTOBUF_LIMIT = 2 ** 31 - 1

BOUNDED_OPS = {
    "Softmax": "softmax output: probabilities feed argmax and the 0.9 dispatch threshold; "
               "FP16 rounds them in steps of 4.9e-4 near 1",
    "Sigmoid": "sigmoid output: the localization u of eq. 5 (box = T1 + u * T2); FP16 "
               "rounding moves boxes by a fraction of a pixel",
}
FEEDS_REASON = {
    "Softmax": "classifier logits feeding softmax (decide the argmax)",
    "Sigmoid": "localization output path: the FC feeding the sigmoid (box coordinates, eq. 5)",
}


class Fp16Error(RuntimeError):
    """The FP16 conversion or one of its checks failed; nothing was recorded."""


# --------------------------------------------------------------------------- graph helpers
def _float_tensor_types(model):
    """{tensor name: elem_type} for inputs, outputs and value_info after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + \
            list(inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


def sensitive_nodes(model):
    """The fixed rules: bounded outputs and the linear layers that feed them.

    Returns a list of ``{"node", "op", "reason"}`` in graph order. Works on the FP32 graph.
    """
    kept = agreement.bounded_nodes(model, BOUNDED_OPS, FEEDS_REASON)
    return onnx_graph.ordered_records(model, kept)


def weight_range_nodes(model):
    """Nodes whose float initializers do not fit FP16 (overflow, or flushed to zero)."""
    inits = {i.name: i for i in model.graph.initializer}
    flagged = []
    for node in model.graph.node:
        for name in node.input:
            init = inits.get(name)
            if init is None or init.data_type != TensorProto.FLOAT:
                continue
            values = np.abs(onnx.numpy_helper.to_array(init))
            nonzero = values[values > 0]
            if values.size and float(values.max()) > FP16_MAX:
                flagged.append({"node": node.name, "op": node.op_type,
                                "reason": f"weights {name}: max |w| = {values.max():.3g} "
                                          f"exceeds the FP16 maximum {FP16_MAX:g}"})
                break
            if nonzero.size and np.mean(nonzero < FP16_MIN_SUBNORMAL) > UNDERFLOW_FRACTION:
                frac = float(np.mean(nonzero < FP16_MIN_SUBNORMAL))
                flagged.append({"node": node.name, "op": node.op_type,
                                "reason": f"weights {name}: {frac:.1%} of nonzero values "
                                          "flush to zero in FP16"})
                break
    return flagged


# --------------------------------------------------------------------------- range audit
def _session(model_or_path, optimize=True):
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else model_or_path
    return make_session(source, optimize=optimize)


def activation_ranges(graph_path, feeds, range_fraction=RANGE_FRACTION,
                      underflow_fraction=UNDERFLOW_FRACTION):
    """Every float tensor of an FP32 graph on ``feeds``, against the FP16 range.

    The graph is copied with every intermediate tensor appended as a graph output and run on
    ONNX Runtime (CPU, no graph optimizations, so the tensors are the graph's own). Returns
    ``{tensor: {"producer", "op", "max_abs", "underflow_fraction", "flush_fraction",
    "overflow_risk", "underflow_risk"}}`` in graph order: ``underflow_fraction`` is the share
    of nonzero values below the smallest normal FP16 number (6.1e-5), ``flush_fraction`` the
    share below the smallest subnormal (6e-8, they become 0).
    """
    model = onnx.load(str(graph_path))
    onnx_graph.ensure_node_names(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    declared = {v.name: v for v in inferred.graph.value_info}
    existing = {o.name for o in model.graph.output}
    producers = onnx_graph.producers(model)
    names = [out for node in model.graph.node for out in node.output if out]
    probe = copy.deepcopy(model)
    for name in names:
        if name in existing:
            continue
        value = declared.get(name)
        if value is None or value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        probe.graph.output.append(value)
    outputs = [o.name for o in probe.graph.output]
    values = _session(probe, optimize=False).run(outputs, feeds)
    report = {}
    for name, value in zip(outputs, values):
        if value.dtype != np.float32:
            continue
        magnitude = np.abs(value)
        nonzero = magnitude[magnitude > 0]
        max_abs = float(magnitude.max()) if magnitude.size else 0.0
        under = float(np.mean(nonzero < FP16_MIN_NORMAL)) if nonzero.size else 0.0
        flush = float(np.mean(nonzero < FP16_MIN_SUBNORMAL)) if nonzero.size else 0.0
        node = producers.get(name)
        report[name] = {
            "producer": node.name if node is not None else None,
            "op": node.op_type if node is not None else None,
            "max_abs": max_abs,
            "underflow_fraction": under,
            "flush_fraction": flush,
            "overflow_risk": max_abs > range_fraction * FP16_MAX,
            "underflow_risk": under > underflow_fraction,
        }
    order = {name: i for i, name in enumerate(names)}
    return dict(sorted(report.items(), key=lambda kv: order.get(kv[0], -1)))


def flagged_nodes(ranges):
    """Producer nodes of the tensors the range audit flags, with the reason."""
    kept = []
    for tensor, entry in ranges.items():
        if entry["producer"] is None:
            continue  # a graph input: nothing to keep
        if entry["overflow_risk"]:
            kept.append({"node": entry["producer"], "op": entry["op"],
                         "reason": f"range audit: {tensor} reaches |x| = {entry['max_abs']:.6g}"
                                   f", over {RANGE_FRACTION:g} of the FP16 maximum"})
        elif entry["underflow_risk"]:
            kept.append({"node": entry["producer"], "op": entry["op"],
                         "reason": f"range audit: {entry['underflow_fraction']:.1%} of the "
                                   f"nonzero values of {tensor} are below the smallest normal "
                                   "FP16 number (6.1e-5)"})
    return kept


def summarize_ranges(ranges, top=5):
    """A short, JSON-friendly summary of ``activation_ranges`` for the manifest."""
    biggest = sorted(ranges.items(), key=lambda kv: -kv[1]["max_abs"])[:top]
    under = sorted(ranges.items(), key=lambda kv: -kv[1]["underflow_fraction"])[:top]
    return {
        "tensors": len(ranges),
        "max_abs": max((e["max_abs"] for e in ranges.values()), default=0.0),
        "largest": [{"tensor": t, "max_abs": round(e["max_abs"], 6)} for t, e in biggest],
        "most_underflow": [{"tensor": t, "fraction": round(e["underflow_fraction"], 6)}
                           for t, e in under],
        "flagged": sorted(t for t, e in ranges.items()
                          if e["overflow_risk"] or e["underflow_risk"]),
    }


# --------------------------------------------------------------------------- conversion
def _split_consumed_outputs(model, kept):
    """Graph outputs that nodes also read get a private name plus an Identity to the output.

    onnxconverter-common rewires a graph output's producer to a cast and leaves the other
    readers on the (now FP32) output name; reading a private tensor avoids that. The Identity
    inherits the producer's precision (kept FP32 or not) so no FP16 round trip is added.
    """
    consumers = onnx_graph.consumers(model)
    producers = onnx_graph.producers(model)
    for output in model.graph.output:
        name = output.name
        if name not in consumers or name not in producers:
            continue
        private = f"{name}__internal"
        producer = producers[name]
        for i, out in enumerate(producer.output):
            if out == name:
                producer.output[i] = private
        for node in consumers[name]:
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = private
        for value in model.graph.value_info:
            if value.name == name:
                value.name = private
        identity = helper.make_node("Identity", [private], [name], name=f"{name}__output")
        model.graph.node.append(identity)
        if producer.name in kept:
            kept.add(identity.name)


def _restore_output_types(model, original):
    """Put back the FP32 type of graph outputs the converter turned into FP16."""
    producers = onnx_graph.producers(model)
    consumers = onnx_graph.consumers(model)
    for output in model.graph.output:
        want = original[output.name]
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type == want:
            continue
        node = producers[output.name]
        if node.op_type == "Cast":
            # the cast's input is already FP32 (a blocked node wrote it): drop the cast
            source = node.input[0]
            writer = producers.get(source)
            if writer is not None and len(consumers.get(source, [])) == 1:
                for i, out in enumerate(writer.output):
                    if out == source:
                        writer.output[i] = output.name
                model.graph.node.remove(node)
            else:
                for attr in node.attribute:
                    if attr.name == "to":
                        attr.i = want
        else:
            half = f"{output.name}__fp16"
            for i, out in enumerate(node.output):
                if out == output.name:
                    node.output[i] = half
            model.graph.node.append(helper.make_node(
                "Cast", [half], [output.name], to=want, name=f"{output.name}__cast_fp32"))
        tensor_type.elem_type = want
        for value in list(model.graph.value_info):
            if value.name == output.name:
                model.graph.value_info.remove(value)


def _restore_kept_weights(model, original):
    """Give kept-FP32 nodes their original FP32 weights back.

    The converter rounds a blocked node's weight to FP16 and casts it back to FP32 (its block
    list is checked after the node's inputs were renamed to casts). Here each Cast-to-FP32 of
    an FP16 initializer is replaced by an FP32 initializer holding the original values.
    """
    originals = {i.name: i for i in original.graph.initializer
                 if i.data_type == TensorProto.FLOAT}
    inits = {i.name: i for i in model.graph.initializer}
    consumers = onnx_graph.consumers(model)
    for node in list(model.graph.node):
        if node.op_type != "Cast" or node.input[0] not in inits:
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        source = originals.get(node.input[0])
        if to != TensorProto.FLOAT or source is None or \
                inits[node.input[0]].data_type != TensorProto.FLOAT16:
            continue
        restored = copy.deepcopy(source)
        restored.name = f"{source.name}__fp32"
        model.graph.initializer.append(restored)
        for reader in consumers.get(node.output[0], []):
            for i, name in enumerate(reader.input):
                if name == node.output[0]:
                    reader.input[i] = restored.name
        model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)


def _clear_inferred_value_info(model):
    """Drop value_info entries: shape inference recomputes them from the (typed) graph."""
    del model.graph.value_info[:]


def convert_graph(model, kept_nodes):
    """An FP16 copy of ``model`` with ``kept_nodes`` (names) in FP32 and FP32 graph I/O."""
    from onnxconverter_common import float16

    model = copy.deepcopy(model)
    onnx_graph.ensure_node_names(model)
    original = {v.name: v.type.tensor_type.elem_type
                for v in list(model.graph.input) + list(model.graph.output)}
    kept = set(kept_nodes)
    _split_consumed_outputs(model, kept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns per clamped weight; we audit weights ourselves
        converted = float16.convert_float_to_float16(
            model, min_positive_val=FP16_MIN_SUBNORMAL, max_finite_val=FP16_MAX,
            keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
            node_block_list=sorted(kept))
    _restore_output_types(converted, original)
    _restore_kept_weights(converted, model)
    _clear_inferred_value_info(converted)
    converted = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    converted.doc_string = ("vfinfer mixed-precision FP16 graph; FP32 nodes: "
                            + ", ".join(sorted(kept_nodes)))
    return converted


def check_fp16_graph(fp32_model, fp16_model, kept_nodes):
    """Raise Fp16Error unless the FP16 graph keeps the contract.

    Inputs and outputs keep their names and FP32 types; every kept node reads and writes FP32
    tensors only; some node computes in FP16; onnx.checker (full) passes.
    """
    problems = agreement.io_and_checker_problems(fp32_model, fp16_model, full_check=True)
    types = _float_tensor_types(fp16_model)
    by_name = {node.name: node for node in fp16_model.graph.node}
    for name in kept_nodes:
        node = by_name.get(name)
        if node is None:
            problems.append(f"kept node {name} is missing from the FP16 graph")
            continue
        for tensor in list(node.input) + list(node.output):
            if tensor and types.get(tensor) == TensorProto.FLOAT16:
                problems.append(f"kept node {name} ({node.op_type}) touches FP16 tensor {tensor}")
    source_nodes = {node.name: node for node in fp32_model.graph.node}
    source_inits = {i.name: i for i in fp32_model.graph.initializer}
    inits = {i.name: i for i in fp16_model.graph.initializer}
    for name in kept_nodes:
        node, source = by_name.get(name), source_nodes.get(name)
        if node is None or source is None:
            continue
        for got, want in zip(node.input, source.input):
            if want in source_inits and source_inits[want].data_type == TensorProto.FLOAT:
                if got not in inits or not np.array_equal(
                        onnx.numpy_helper.to_array(inits[got]),
                        onnx.numpy_helper.to_array(source_inits[want])):
                    problems.append(f"kept node {name} lost its FP32 weights {want}")
    half_nodes = [n for n in fp16_model.graph.node if n.op_type not in ("Cast", "Identity")
                  and any(types.get(t) == TensorProto.FLOAT16 for t in n.output)]
    if not half_nodes:
        problems.append("no node computes in FP16")
    if problems:
        raise Fp16Error("FP16 graph check failed: " + "; ".join(problems))
    return len(half_nodes)


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
def _save(model, path):
    """One file unless the protobuf limit forces external data; returns the files written."""
    path = Path(path)
    for old in path.parent.glob(path.name + ".*"):
        old.unlink()
    external = model.ByteSize() > 0.9 * PROTOBUF_LIMIT
    tmp = path.with_name(f".{path.name}.tmp")
    if external:
        onnx.save(model, str(path), save_as_external_data=True,
                  location=path.name + ".data")
        return [path.name, path.name + ".data"]
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return [path.name]


def _merge_kept(*lists):
    merged, seen = [], set()
    for entries in lists:
        for entry in entries:
            if entry["node"] not in seen:
                seen.add(entry["node"])
                merged.append(entry)
    return merged


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
        kept = _merge_kept(sensitive_nodes(model), weight_range_nodes(model),
                           flagged_nodes(ranges))
        fp16_model = convert_graph(model, [k["node"] for k in kept])
        half_nodes = check_fp16_graph(model, fp16_model, [k["node"] for k in kept])
        path = model_dir / f"{role}_fp16.onnx"
        files = _save(fp16_model, path)
        try:
            outputs = _session(path).run(None, feeds[role])  # it loads and runs on ORT CPU
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


__all__ = ["activation_ranges", "add_fp16_graphs", "convert_model_dir_to_fp16",
           "fp16_agreement", "sensitive_nodes", "convert_graph", "check_fp16_graph",
           "remove_fp16_graphs", "Fp16Error"]
