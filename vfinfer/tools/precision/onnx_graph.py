"""Small helpers over ONNX graphs shared by export, FP16 and INT8 (onnx imported lazily)."""


def producers(model):
    """{tensor name: the node that writes it}."""
    return {out: node for node in model.graph.node for out in node.output if out}


def consumers(model):
    """{tensor name: [nodes that read it]}."""
    table = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                table.setdefault(name, []).append(node)
    return table


def ensure_node_names(model):
    """Give every node a unique name (block lists and audits refer to nodes by name)."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def ordered_records(model, kept):
    """{node name: (op, reason)} -> [{"node", "op", "reason"}] in graph order."""
    order = {node.name: i for i, node in enumerate(model.graph.node)}
    return [{"node": name, "op": op, "reason": reason}
            for name, (op, reason) in sorted(kept.items(), key=lambda kv: order[kv[0]])]


def io_records(model):
    """(inputs, outputs) of a graph as [{"name", "shape", "dtype"}], initializers left out;
    dynamic dimensions keep their symbolic name (e.g. "batch")."""
    from onnx import helper

    def record(value):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return {"name": value.name, "shape": dims, "dtype": str(dtype)}

    initializers = {i.name for i in model.graph.initializer}
    return ([record(v) for v in model.graph.input if v.name not in initializers],
            [record(v) for v in model.graph.output])
