"""Every op in the exported graphs must be one TensorRT's ONNX parser supports."""


import onnx
import pytest
from onnx import TensorProto, helper

from vfinfer.model.manifest import load_manifest
from vfinfer_export.op_audit import audit_problems, format_audit, op_audit, supported_ops


@pytest.fixture(params=["compact", "compact-vgg", "compact-chrblock"])
def audited_dir(request, model_dir):
    """The exported graphs of each trunk (wrn, vgg16-res, chrblock) at compact sizes."""
    if request.param == "compact":
        return model_dir
    return request.getfixturevalue("variant_dirs")(request.param).dir


@pytest.mark.slow
def test_all_ops_are_supported_by_tensorrt(audited_dir):
    assert {"Conv", "Gemm", "MaxPool", "Softmax"} <= supported_ops()
    for name in ("gnet.onnx", "lnet.onnx", "heads.onnx"):
        audit = op_audit(audited_dir / name)
        assert audit["unsupported"] == [], f"{name}: ops TensorRT cannot parse"
        assert audit["restrictions"] == [], f"{name}: {audit['restrictions']}"


@pytest.mark.slow
def test_export_records_a_clean_audit(audited_dir):
    manifest = load_manifest(audited_dir).data
    if "op_audit" not in manifest:
        pytest.skip("the bundled demo model (no torch here) was exported before the audit")
    audits = manifest["op_audit"]
    assert audits == {role: op_audit(audited_dir / f"{role}.onnx") for role in audits}
    assert set(audits) == {"gnet", "lnet", "heads"}
    assert audit_problems(audits) == []
    assert {"Conv", "Gemm", "Softmax"} <= set(audits["gnet"]["ops"]) | set(audits["heads"]["ops"])
    assert format_audit(audits).startswith("TensorRT op audit: all ")


def test_audit_flags_what_tensorrt_cannot_parse(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv_from_input"),
             helper.make_node("NonZero", ["c"], ["nz"], name="nonzero"),
             helper.make_node("Mystery", ["c"], ["m"], name="custom", domain="com.lab")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("nz", "m")]
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "bad", [x, w], outputs)), str(path))
    audit = op_audit(path)
    assert "NonZero" in audit["unsupported"] and "Mystery" in audit["unsupported"]
    problems = audit_problems({"gnet": audit})
    assert any("conv_from_input: Conv weights are not an initializer" in p for p in problems)
    assert any("custom domain com.lab" in p for p in problems)
    assert format_audit({"gnet": audit}).startswith("warning: TensorRT will not build")
