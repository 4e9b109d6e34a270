"""The FP16 range audit: weights and activations (on calibration images, ONNX Runtime CPU) whose
magnitudes leave FP16's range, and the nodes that must stay FP32 because of them."""

import copy

import numpy as np
import onnx
from onnx import TensorProto

from vfinfer.backends.ort import make_session
from vfinfer.tools.precision import onnx_graph

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05  # 2 ** -14
FP16_MIN_SUBNORMAL = 5.960464477539063e-08  # 2 ** -24
RANGE_FRACTION = 0.25  # keep FP32 where |x| exceeds a quarter of the FP16 maximum
UNDERFLOW_FRACTION = 0.01  # ... or where over 1% of nonzero values are below the min normal


def float_tensor_types(model):
    """{tensor name: elem_type} for inputs, outputs and value_info after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + \
            list(inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


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


def graph_session(model_or_path, optimize=True):
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
    values = graph_session(probe, optimize=False).run(outputs, feeds)
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
