"""One graph to FP16: the conversion with chosen nodes kept FP32 (their weights and the tensors
they read and write in float), and the check that the converted graph keeps the contract."""

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from vfinfer.tools.precision import agreement, onnx_graph
from vfinfer.tools.precision.fp16_ranges import FP16_MAX, FP16_MIN_SUBNORMAL, float_tensor_types

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

def sensitive_nodes(model):
    """The fixed rules: bounded outputs and the linear layers that feed them.

    Returns a list of ``{"node", "op", "reason"}`` in graph order. Works on the FP32 graph.
    """
    kept = agreement.bounded_nodes(model, BOUNDED_OPS, FEEDS_REASON)
    return onnx_graph.ordered_records(model, kept)


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
    types = float_tensor_types(fp16_model)
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


def save_graph(model, path):
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


def merge_kept(*lists):
    merged, seen = [], set()
    for entries in lists:
        for entry in entries:
            if entry["node"] not in seen:
                seen.add(entry["node"])
                merged.append(entry)
    return merged
