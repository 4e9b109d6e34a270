"""The TensorRT op audit of an exported graph, run on every export and recorded in its manifest.

Every op must be in ``trt_supported_ops.txt`` (TensorRT's ONNX parser, see the file's header),
and the restrictions of the same support table that these graphs could hit must hold: Conv
weights are initializers, MaxPool has no Indices output, no op outside the default domain.
The audit reads the graph structure only (``load_external_data=False``), so it costs little
even for the paper-size graphs.
"""

from pathlib import Path

import onnx

SUPPORTED_OPS = Path(__file__).with_name("trt_supported_ops.txt")


def supported_ops():
    lines = SUPPORTED_OPS.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _restriction_problems(graph):
    initializers = {i.name for i in graph.initializer}
    problems = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] not in initializers:
            problems.append(f"{node.name}: Conv weights are not an initializer")
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            problems.append(f"{node.name}: MaxPool with an Indices output")
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: op {node.op_type} of custom domain {node.domain}")
    return problems


def op_audit(model):
    """``{"ops": [...], "unsupported": [...], "restrictions": [...]}`` for one ONNX file
    (a path) or an already loaded ``onnx.ModelProto``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    used = sorted({node.op_type for node in graph.node})
    allowed = supported_ops()
    return {"ops": used, "unsupported": [op for op in used if op not in allowed],
            "restrictions": _restriction_problems(graph)}


def audit_problems(audits):
    """One line per problem in ``{role: op_audit(...)}``; empty when TensorRT can parse all."""
    lines = []
    for role, audit in audits.items():
        if audit["unsupported"]:
            lines.append(f"{role}: ops TensorRT cannot parse: {', '.join(audit['unsupported'])}")
        lines += [f"{role}: {problem}" for problem in audit["restrictions"]]
    return lines


def format_audit(audits):
    """The export log's line on the audit of ``{role: op_audit(...)}``: a warning, not a refusal,
    since ONNX Runtime and OpenVINO run what TensorRT cannot parse."""
    problems = audit_problems(audits)
    if problems:
        return "warning: TensorRT will not build these graphs: " + "; ".join(problems)
    ops = sorted({op for audit in audits.values() for op in audit["ops"]})
    return f"TensorRT op audit: all {len(ops)} op types supported ({', '.join(ops)})"
