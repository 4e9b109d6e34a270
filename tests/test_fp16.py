"""FP16 graphs: conversion, kept-FP32 nodes, range audit, agreement, manifest, FP16 pipeline."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from vfinfer.model.manifest import load_manifest, sha256_file
from vfinfer.pipeline import Pipeline
from vfinfer.tools.precision import agreement

fp16 = pytest.importorskip("vfinfer.tools.precision.fp16",
                           reason="the export extra is not installed")
from vfinfer.tools.precision import fp16_graph, fp16_ranges  # noqa: E402

ROLES = ("gnet", "lnet", "heads")


@pytest.fixture(scope="module")
def fp16_dir(model_dir, tmp_path_factory):
    """A copy of the exported compact model with FP16 graphs added (synthetic calibration)."""
    out = tmp_path_factory.mktemp("fp16") / "compact"
    shutil.copytree(model_dir, out)
    lines = []
    audit = fp16.add_fp16_graphs(out, log=lines.append)
    return out, audit, lines


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.input) + list(inferred.graph.value_info)
             + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


@pytest.mark.slow
def test_fp16_graphs_written_and_recorded(fp16_dir):
    out, _audit, _lines = fp16_dir
    manifest = load_manifest(out)
    for role in ROLES:
        record = manifest.graph(role, "fp16")
        path = out / f"{role}_fp16.onnx"
        assert record["file"] == path.name and record["files"] == [path.name]
        assert record["sha256"] == sha256_file(path)
        assert record["precision"] == "fp16"
        assert record["source_graph"] == f"{role}.onnx"
        assert record["source_sha256"] == manifest.graph(role)["sha256"]
        assert record["inputs"] == manifest.graph(role)["inputs"]
        assert record["outputs"] == manifest.graph(role)["outputs"]
        assert manifest.graph_path(role, "fp16") == path  # sha verified
        for entry in record["kept_fp32"]:
            assert set(entry) == {"node", "op", "reason"} and entry["reason"]
        onnx.checker.check_model(str(path), full_check=True)
    # the FP32 graphs are untouched
    for role in ROLES:
        assert sha256_file(out / f"{role}.onnx") == manifest.graph(role)["sha256"]


@pytest.mark.slow
def test_io_stays_float32_and_weights_are_fp16(fp16_dir):
    out, _audit, _lines = fp16_dir
    for role in ROLES:
        model = onnx.load(str(out / f"{role}_fp16.onnx"))
        for value in list(model.graph.input) + list(model.graph.output):
            assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
        weights = [i for i in model.graph.initializer if len(i.dims) >= 2]
        assert any(i.data_type == TensorProto.FLOAT16 for i in weights), role
        if role != "heads":
            convs = [i for i in weights if len(i.dims) == 4]
            assert convs and all(i.data_type == TensorProto.FLOAT16 for i in convs)


@pytest.mark.slow
def test_softmax_sigmoid_and_their_fc_stay_fp32(fp16_dir):
    out, _audit, _lines = fp16_dir
    manifest = load_manifest(out)
    kept = {role: {e["node"]: e for e in manifest.graph(role, "fp16")["kept_fp32"]}
            for role in ROLES}
    assert {e["op"] for e in kept["heads"].values()} >= {"Softmax", "Gemm"}
    assert {e["op"] for e in kept["gnet"].values()} >= {"Sigmoid", "Gemm"}
    sigmoid_fc = [e for e in kept["gnet"].values() if e["op"] == "Gemm"]
    assert sigmoid_fc and "localization" in sigmoid_fc[0]["reason"]
    for role in ("gnet", "heads"):
        model = onnx.load(str(out / f"{role}_fp16.onnx"))
        source = onnx.load(str(out / f"{role}.onnx"))
        types = _types(model)
        nodes = {n.name: n for n in model.graph.node}
        for node in model.graph.node:
            if node.op_type in ("Softmax", "Sigmoid"):
                assert node.name in kept[role]
        for name in kept[role]:
            node = nodes[name]
            for tensor in list(node.input) + list(node.output):
                assert types[tensor] == TensorProto.FLOAT, (role, name, tensor)
        # the kept FC keeps its exact FP32 weights
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        source_inits = {i.name: onnx.numpy_helper.to_array(i) for i in source.graph.initializer}
        source_nodes = {n.name: n for n in source.graph.node}
        for name, entry in kept[role].items():
            if entry["op"] == "Gemm":
                weight = source_nodes[name].input[1]
                assert np.array_equal(inits[nodes[name].input[1]], source_inits[weight])


@pytest.mark.slow
def test_activation_ranges_reports_every_tensor(model_dir):
    feeds = agreement.calibration_feeds(model_dir, fp16.synthetic_calibration_images(8))
    ranges = fp16_ranges.activation_ranges(model_dir / "gnet.onnx", feeds["gnet"])
    model = onnx.load(str(model_dir / "gnet.onnx"))
    produced = [o for n in model.graph.node for o in n.output]
    assert set(ranges) == set(produced)  # every node output is a float tensor here
    assert list(ranges) == produced  # graph order
    for entry in ranges.values():
        assert entry["max_abs"] >= 0 and 0 <= entry["underflow_fraction"] <= 1
        assert entry["flush_fraction"] <= entry["underflow_fraction"]
        assert entry["producer"] is not None
    assert ranges["loc"]["max_abs"] <= 1.0 and ranges["loc"]["op"] == "Sigmoid"
    assert not any(e["overflow_risk"] for e in ranges.values())  # z-scored input, He init


def test_range_audit_flags_overflow_and_underflow():
    ranges = {
        "big": {"producer": "conv_1", "op": "Conv", "max_abs": 30000.0,
                "underflow_fraction": 0.0, "flush_fraction": 0.0, "overflow_risk": True,
                "underflow_risk": False},
        "tiny": {"producer": "mul_2", "op": "Mul", "max_abs": 1e-3,
                 "underflow_fraction": 0.4, "flush_fraction": 0.1, "overflow_risk": False,
                 "underflow_risk": True},
        "fine": {"producer": "relu", "op": "Relu", "max_abs": 3.0, "underflow_fraction": 0.0,
                 "flush_fraction": 0.0, "overflow_risk": False, "underflow_risk": False},
    }
    flagged = fp16_ranges.flagged_nodes(ranges)
    assert [f["node"] for f in flagged] == ["conv_1", "mul_2"]
    assert "30000" in flagged[0]["reason"] and "40.0%" in flagged[1]["reason"]
    summary = fp16_ranges.summarize_ranges(ranges)
    assert summary["flagged"] == ["big", "tiny"] and summary["max_abs"] == 30000.0


@pytest.mark.slow
def test_flagged_node_is_kept_fp32(model_dir):
    """A node named by the audit goes into the block list and computes in FP32."""
    model = onnx.load(str(model_dir / "lnet.onnx"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    converted = fp16_graph.convert_graph(model, [conv.name])
    fp16_graph.check_fp16_graph(model, converted, [conv.name])
    types = _types(converted)
    node = next(n for n in converted.graph.node if n.name == conv.name)
    assert all(types[t] == TensorProto.FLOAT for t in list(node.input) + list(node.output))


@pytest.mark.slow
def test_agreement_recorded_in_manifest(fp16_dir):
    out, audit, lines = fp16_dir
    data = json.loads((out / "manifest.json").read_text())
    assert data["fp16_audit"] == audit
    figures = audit["agreement"]
    assert figures["images"] == fp16.SYNTHETIC_CALIBRATION_IMAGES
    for key in ("type_argmax_agreement", "polarity_argmax_agreement"):
        assert 0.9 <= figures[key] <= 1.0
    assert figures["type_prob_max_abs_diff"] < 0.02
    assert figures["polarity_prob_max_abs_diff"] < 0.02
    assert figures["box_max_abs_diff_px"] < 0.5  # G-input pixels
    assert set(audit["ranges"]) == set(ROLES)
    assert audit["thresholds"]["fp16_max"] == 65504.0
    assert any(line.startswith("FP16 vs FP32 on 48 images") for line in lines)


@pytest.mark.slow
def test_fp16_pipeline_runs(fp16_dir, case_dirs):
    out, _audit, _lines = fp16_dir
    from vfinfer.util.images import read_case

    images, paths, _ = read_case(case_dirs[0])
    with Pipeline(out, backend="ort", precision="fp16") as pipe:
        result = pipe.run_case(images, name="cell", files=[p.name for p in paths])
    assert result["backend"]["precision"] == "fp16"
    assert result["n_chromosomes"] == len(images) == 46
    assert all(0 <= c["type_prob"] <= 1 for c in result["chromosomes"])
    figures = fp16.fp16_agreement(out, images)
    assert figures["type_argmax_agreement"] >= 0.9 and figures["box_max_abs_diff_px"] < 0.5


@pytest.mark.slow
def test_calibration_from_a_case_dir_and_failure_leaves_manifest(model_dir, case_dirs,
                                                                   tmp_path, monkeypatch):
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    before = (out / "manifest.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("agreement failed")

    monkeypatch.setattr(fp16, "fp16_agreement", broken)
    with pytest.raises(RuntimeError, match="agreement failed"):
        fp16.add_fp16_graphs(out, calib_case_dir=case_dirs[0], log=lambda *a: None)
    assert (out / "manifest.json").read_text() == before
    assert not list(out.glob("*_fp16.onnx"))


@pytest.mark.slow
def test_reconversion_replaces_the_fp16_graphs(fp16_dir, tmp_path):
    out, _audit, _lines = fp16_dir
    again = tmp_path / "again"
    shutil.copytree(out, again)
    lines = []
    fp16.add_fp16_graphs(again, log=lines.append)
    assert lines[0] == "replacing the FP16 graphs of an earlier conversion"
    assert load_manifest(again).graph("gnet", "fp16")["sha256"] == \
        load_manifest(out).graph("gnet", "fp16")["sha256"]  # deterministic
    fp16.remove_fp16_graphs(again)
    data = load_manifest(again).data
    assert "fp16_audit" not in data and not any(k.endswith("_fp16") for k in data["graphs"])
    assert not list(again.glob("*_fp16.onnx"))
