"""Every op in the exported graphs must be one TensorRT's ONNX parser supports."""

from pathlib import Path

import onnx
import pytest

SUPPORTED = Path(__file__).resolve().parents[1] / "export" / "trt_supported_ops.txt"


def supported_ops():
    lines = SUPPORTED.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.fixture(params=["compact", "compact-vgg", "compact-chrblock"])
def audited_dir(request, model_dir):
    """The exported graphs of each trunk (wrn, vgg16-res, chrblock) at compact sizes."""
    if request.param == "compact":
        return model_dir
    return request.getfixturevalue("variant_dirs")(request.param).dir


def test_all_ops_are_supported_by_tensorrt(audited_dir):
    model_dir = audited_dir
    allowed = supported_ops()
    assert {"Conv", "Gemm", "MaxPool", "Softmax"} <= allowed
    for name in ("gnet.onnx", "lnet.onnx", "heads.onnx"):
        graph = onnx.load(str(model_dir / name)).graph
        used = {node.op_type for node in graph.node}
        assert used - allowed == set(), f"{name}: ops TensorRT cannot parse: {used - allowed}"


def test_tensorrt_restrictions(audited_dir):
    model_dir = audited_dir
    for name in ("gnet.onnx", "lnet.onnx", "heads.onnx"):
        graph = onnx.load(str(model_dir / name)).graph
        initializers = {i.name for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Conv":
                assert node.input[1] in initializers, f"{name}: Conv weights not an initializer"
            if node.op_type == "MaxPool":
                assert len([o for o in node.output if o]) == 1, f"{name}: MaxPool with indices"
        assert all(node.domain in ("", "ai.onnx") for node in graph.node), "custom-domain op"
