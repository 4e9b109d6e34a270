"""What the INT8 conversion quantizes and how: ONNX Runtime's settings, the ops left in float, and
the nodes kept FP32 by rule (each with its reason), checked on the built graph."""

from vfinfer.tools.precision.agreement import (
    LINEAR_OPS,
    bounded_nodes,
    graph_io_types,
    io_and_checker_problems,
)
from vfinfer.tools.precision.onnx_graph import consumers as graph_consumers
from vfinfer.tools.precision.onnx_graph import ordered_records
from vfinfer.tools.precision.onnx_graph import producers as graph_producers

PERCENTILE = 99.999
CALIB_BATCH = 16
NOT_QUANTIZED_OPS = {
    "BatchNormalization": "pre-activation BN: no INT8 kernel on the ORT CPU provider (would "
                          "run as dequantize -> float BN -> quantize) and INT8 scale/variance "
                          "lose small variances",
    "Add": "residual additions: requantizing the residual stream after every unit added "
           "feature error on a trained G-Net, and the float BN after each addition needs "
           "float input anyway (the convolutions still run in INT8)",
}
OP_TYPES_TO_QUANTIZE = ("Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Reshape", "Flatten",
                        "Concat")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
LOCALIZER_PATH_OPS = ("Gemm", "MatMul", "Relu", "Reshape", "Flatten")
BOUNDED_OPS = {
    "Softmax": "softmax output: probabilities feed argmax and the 0.9 dispatch threshold",
    "Sigmoid": "sigmoid output: the localization u of eq. 5 (box = T1 + u * T2)",
}
FEEDS_REASON = {
    "Softmax": "classifier logits FC feeding the softmax (decides the argmax)",
    "Sigmoid": "localization output FC feeding the sigmoid (box coordinates, eq. 5)",
}
LOCALIZER_REASON = ("localizer FC path to the sigmoid (box coordinates, eq. 5; "
                    "a few % of G-Net's MACs)")
INPUT_REASON = ("input layer: reads the z-scored image, whose 8-bit quantization loses band "
                "contrast (the white background stretches the range); under 1 % of the MACs")
ACTIVATION_REASON = "activation in front of an FP32 FC (keeps that FC's input unquantized)"
EXTENDED_REASON = ("every fully connected layer kept FP32: the holdout check failed with "
                   "convolutions and FCs quantized")
ALL_KEPT_REASON = ("every node with weights in this graph is kept FP32, so the rest stays "
                   "FP32 too (quantizing data movement alone adds rounding, no speed)")
SETTINGS = {
    "format": "QDQ", "per_channel": True, "activation_type": "QUInt8 (asymmetric)",
    "weight_type": "QInt8 (symmetric)", "op_types_to_quantize": list(OP_TYPES_TO_QUANTIZE),
    "pre_process": "quant_pre_process(skip_symbolic_shape=True)",
}


class Int8Error(RuntimeError):
    """The INT8 conversion or one of its checks failed; nothing was recorded."""


def sensitive_nodes(model):
    """Nodes kept FP32 by rule, as ``[{"node", "op", "reason"}]`` in graph order.

    Each layer with weights that reads a graph input directly (the trunk's stem convolution
    on the normalized image); each Softmax with the FC feeding it and the activation in front
    of that FC; each Sigmoid with the localizer path behind it (FCs, activations and the
    flatten, back to the pooling).
    """
    producers = graph_producers(model)
    graph_inputs = {v.name for v in model.graph.input}
    kept = {node.name: (node.op_type, INPUT_REASON) for node in model.graph.node
            if node.op_type in WEIGHTED_OPS and node.input[0] in graph_inputs}
    for name, entry in bounded_nodes(model, BOUNDED_OPS, FEEDS_REASON).items():
        kept.setdefault(name, entry)
    for node in model.graph.node:
        source = producers.get(node.input[0]) if node.op_type in BOUNDED_OPS else None
        if source is None or source.op_type not in LINEAR_OPS:
            continue
        current = producers.get(source.input[0])
        if node.op_type == "Softmax":
            if current is not None and current.op_type == "Relu":
                kept.setdefault(current.name, (current.op_type, ACTIVATION_REASON))
            continue
        while current is not None and current.op_type in LOCALIZER_PATH_OPS:
            reason = ACTIVATION_REASON if current.op_type == "Relu" else LOCALIZER_REASON
            kept.setdefault(current.name, (current.op_type, reason))
            current = producers.get(current.input[0])
    return ordered_records(model, kept)


def extended_nodes(model):
    """``sensitive_nodes`` plus every FC and the activations right after FCs."""
    kept = {e["node"]: (e["op"], e["reason"]) for e in sensitive_nodes(model)}
    producers = graph_producers(model)
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS:
            kept.setdefault(node.name, (node.op_type, EXTENDED_REASON))
        elif node.op_type == "Relu":
            source = producers.get(node.input[0])
            if source is not None and source.op_type in LINEAR_OPS:
                kept.setdefault(node.name, (node.op_type, EXTENDED_REASON))
    return ordered_records(model, kept)


KEPT_RULES = {"sensitive": sensitive_nodes, "all-fc": extended_nodes}


def complete_kept(model, kept):
    """Keep the whole graph FP32 when every node with weights is kept already: quantizing
    the reshapes and concatenations alone would only add rounding, no speed."""
    names = {e["node"] for e in kept}
    if any(n.op_type in WEIGHTED_OPS and n.name not in names for n in model.graph.node):
        return kept
    rest = {n.name: (n.op_type, ALL_KEPT_REASON) for n in model.graph.node
            if n.name not in names}
    return ordered_records(model, {**{e["node"]: (e["op"], e["reason"]) for e in kept}, **rest})


def check_int8_graph(fp32_model, int8_model, kept):
    """Raise Int8Error unless the INT8 graph keeps the contract; return the count of
    quantized weight tensors.

    Graph inputs and outputs keep their names and float32 type; every kept node is present,
    reads its weights as FP32 initializers and feeds no QuantizeLinear; a kept FC, Sigmoid or
    Softmax reads no DequantizeLinear output; something is quantized; onnx.checker passes.
    """
    import onnx

    problems = io_and_checker_problems(fp32_model, int8_model)
    if any(t != onnx.TensorProto.FLOAT for t in graph_io_types(int8_model).values()):
        problems.append("a graph input or output is not float32")
    producers, consumers = graph_producers(int8_model), graph_consumers(int8_model)
    inits = {i.name for i in int8_model.graph.initializer}
    nodes = {n.name: n for n in int8_model.graph.node}
    for entry in kept:
        node = nodes.get(entry["node"])
        if node is None:
            problems.append(f"kept node {entry['node']} is missing from the INT8 graph")
            continue
        feeds_bounded = any(c.op_type in BOUNDED_OPS for o in node.output
                            for c in consumers.get(o, []))
        for i, name in enumerate(node.input):
            source = producers.get(name)
            from_dq = source is not None and source.op_type == "DequantizeLinear"
            if from_dq and source.input[0] in inits:
                problems.append(f"kept node {node.name} reads quantized weights {name}")
            elif from_dq and i == 0 and (node.op_type in BOUNDED_OPS or feeds_bounded):
                problems.append(f"kept node {node.name} ({node.op_type}) reads the "
                                f"DequantizeLinear output {name}")
        for name in node.output:
            if any(c.op_type == "QuantizeLinear" for c in consumers.get(name, [])):
                problems.append(f"kept node {node.name} ({node.op_type}) feeds a QuantizeLinear")
    quantized_weights = sum(
        1 for n in int8_model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    kept_names = {e["node"] for e in kept}
    if not quantized_weights and any(n.op_type in WEIGHTED_OPS and n.name not in kept_names
                                     for n in int8_model.graph.node):
        problems.append("no weight was quantized")
    if problems:
        raise Int8Error("; ".join(problems))
    return quantized_weights
