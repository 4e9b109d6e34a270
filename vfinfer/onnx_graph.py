"""Small helpers over ONNX graphs shared by the FP16 and INT8 converters (no onnx import)."""


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
