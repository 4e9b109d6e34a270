"""Engine records and the pure parts of the TensorRT build: no GPU, no TensorRT needed."""

import json

import pytest

from vfinfer.backends.trt import engine_problems
from vfinfer.model.config import preset
from vfinfer.model.engine_record import (
    RECORD_FIELDS,
    check_engine_record,
    engine_record_notes,
    make_engine_record,
    version_tuple,
)
from vfinfer.model.manifest import build_manifest, load_manifest, sha256_file, write_json_atomic
from vfinfer.tools.precision.engines import (
    BuildError,
    build_recipe,
    describe_parser_errors,
    kept_layer_indices,
    onnx_nodes_of_layer,
    precision_verdict,
    profile_shapes,
    tensorrt_major,
)

MACHINE = {"tensorrt": "10.7.0.23", "cuda": "12.6", "gpu": "NVIDIA H100 80GB HBM3",
           "compute_capability": "9.0"}
GNET_INPUTS = [{"name": "image", "shape": ["batch", 1, 128, 128], "dtype": "float32"}]
HEADS_INPUTS = [{"name": "g_features", "shape": ["batch", 128, 4, 4], "dtype": "float32"},
                {"name": "l_features", "shape": ["batch", 128, 4, 4], "dtype": "float32"}]


@pytest.fixture()
def built_dir(tmp_path):
    """A model directory with a real manifest, stand-in graph files and engine records."""
    graphs = {}
    for role in ("gnet", "lnet", "heads"):
        path = tmp_path / f"{role}.onnx"
        path.write_bytes(f"graph {role}".encode())
        graphs[role] = {"file": path.name, "files": [path.name], "sha256": sha256_file(path),
                        "inputs": GNET_INPUTS if role != "heads" else HEADS_INPUTS,
                        "outputs": []}
    data = build_manifest(preset("compact"), graphs, {"vfinfer": "test"}, {"kind": "test"})
    data["engines"] = {}
    for role in ("gnet", "lnet", "heads"):
        plan = tmp_path / f"{role}.engine"
        plan.write_bytes(f"plan {role}".encode())
        profile = profile_shapes(graphs[role]["inputs"], 64, 46)
        data["engines"][role] = make_engine_record(
            plan.name, MACHINE, profile, f"{role}.onnx", graphs[role]["sha256"],
            sha256_file(plan), built="2026-11-22T10:00:00+00:00")
    write_json_atomic(tmp_path / "manifest.json", data)
    return tmp_path


def _edit(model_dir, change):
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    write_json_atomic(path, data)
    return load_manifest(model_dir)


# -- the record and its check -------------------------------------------------------------
def test_record_has_every_field(built_dir):
    record = load_manifest(built_dir).data["engines"]["gnet"]
    assert set(RECORD_FIELDS) <= set(record)
    assert record["profile"] == {"image": [[1, 1, 128, 128], [46, 1, 128, 128],
                                           [64, 1, 128, 128]]}
    assert record["precision"] == "fp16" and record["compute_capability"] == "9.0"


def test_matching_record_has_no_problems(built_dir):
    manifest = load_manifest(built_dir)
    for role in ("gnet", "lnet", "heads"):
        assert engine_problems(manifest, MACHINE, role) == []
    # a different patch/build of the same TensorRT major.minor loads
    assert engine_problems(manifest, {**MACHINE, "tensorrt": "10.7.1"}, "gnet") == []


def test_tensorrt_version_mismatch_is_refused(built_dir):
    manifest = load_manifest(built_dir)
    problems = engine_problems(manifest, {**MACHINE, "tensorrt": "11.4.0"}, "gnet")
    assert len(problems) == 1
    assert "built with TensorRT 10.7.0.23" in problems[0] and "11.4.0" in problems[0]
    assert f"vfinfer build {built_dir}" in problems[0]
    minor = engine_problems(manifest, {**MACHINE, "tensorrt": "10.8.0"}, "lnet")
    assert len(minor) == 1 and "TensorRT" in minor[0]


def test_compute_capability_mismatch_is_refused(built_dir):
    manifest = load_manifest(built_dir)
    machine = {**MACHINE, "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    problems = engine_problems(manifest, machine, "heads")
    assert len(problems) == 1
    assert "compute capability 9.0" in problems[0] and "8.9 (NVIDIA L4)" in problems[0]
    assert "vfinfer build" in problems[0]


def test_graph_sha_mismatch_is_refused(built_dir):
    (built_dir / "gnet.onnx").write_bytes(b"re-exported graph")
    manifest = _edit(built_dir, lambda d: d["graphs"]["gnet"].update(
        sha256=sha256_file(built_dir / "gnet.onnx")))
    problems = engine_problems(manifest, MACHINE, "gnet")
    assert len(problems) == 1 and "re-exported or re-converted" in problems[0]
    assert engine_problems(manifest, MACHINE, "lnet") == []


def test_plan_sha_mismatch_and_missing_plan_are_refused(built_dir):
    (built_dir / "lnet.engine").write_bytes(b"another plan")
    (built_dir / "heads.engine").unlink()
    manifest = load_manifest(built_dir)
    lnet = engine_problems(manifest, MACHINE, "lnet")
    heads = engine_problems(manifest, MACHINE, "heads")
    assert len(lnet) == 1 and "sha256 differs" in lnet[0]
    assert len(heads) == 1 and "missing" in heads[0]


def test_fp32_engine_and_missing_engine_are_refused(built_dir):
    manifest = _edit(built_dir, lambda d: (d["engines"]["gnet"].update(precision="fp32"),
                                           d["engines"].pop("lnet")))
    gnet = engine_problems(manifest, MACHINE, "gnet")
    assert len(gnet) == 1 and "'fp32', not 'fp16'" in gnet[0]
    lnet = engine_problems(manifest, MACHINE, "lnet")
    assert lnet == [f"no TensorRT engine for lnet in {built_dir}: run vfinfer build {built_dir}"]


def test_incomplete_record_and_unlisted_graph(built_dir):
    record = dict(load_manifest(built_dir).data["engines"]["gnet"])
    del record["plan_sha256"]
    problems = check_engine_record(record, MACHINE, "x")
    assert len(problems) == 1 and "lacks plan_sha256" in problems[0]
    assert "vfinfer build DIR" in problems[0]
    full = load_manifest(built_dir).data["engines"]["gnet"]
    unlisted = check_engine_record(full, MACHINE, None)
    assert len(unlisted) == 1 and "no longer listed" in unlisted[0]


def test_several_problems_are_all_reported(built_dir):
    manifest = load_manifest(built_dir)
    machine = {"tensorrt": "11.0.0", "gpu": "NVIDIA A100", "compute_capability": "8.0"}
    assert len(engine_problems(manifest, machine, "gnet")) == 2


def test_other_gpu_model_is_a_note_not_a_refusal(built_dir):
    record = load_manifest(built_dir).data["engines"]["gnet"]
    machine = {**MACHINE, "gpu": "NVIDIA H100 PCIe"}
    assert check_engine_record(record, machine, record["source_sha256"]) == []
    notes = engine_record_notes(record, machine)
    assert len(notes) == 1 and "rebuild for best speed" in notes[0]


def test_version_tuple():
    assert version_tuple("10.7.0.23") == (10, 7)
    assert version_tuple("11.4.1", parts=3) == (11, 4, 1)
    assert version_tuple("10.13.0.post1") == (10, 13)
    with pytest.raises(ValueError):
        version_tuple("unknown")


# -- pure build helpers -----------------------------------------------------------------------
def test_build_recipe_by_major_version():
    assert tensorrt_major("10.7.0.23") == 10 and tensorrt_major("11.4.0") == 11
    trt10 = build_recipe(10)
    assert trt10["graph_precision"] == "fp32" and trt10["fp16_flag"]
    assert trt10["precision_constraints"]
    trt11 = build_recipe(11)
    assert trt11["graph_precision"] == "fp16" and not trt11["fp16_flag"]
    assert not trt11["precision_constraints"] and trt11["note"] is None
    assert build_recipe(12)["graph_precision"] == "fp16" and "newer" in build_recipe(12)["note"]
    with pytest.raises(BuildError, match="too old"):
        build_recipe(8)


def test_profile_shapes():
    assert profile_shapes(HEADS_INPUTS, 64, 46) == {
        "g_features": [[1, 128, 4, 4], [46, 128, 4, 4], [64, 128, 4, 4]],
        "l_features": [[1, 128, 4, 4], [46, 128, 4, 4], [64, 128, 4, 4]]}
    numeric = [{"name": "x", "shape": [0, 3]}, {"name": "y", "shape": [-1, 2]}]
    assert profile_shapes(numeric, 8, 8) == {"x": [[1, 3], [8, 3], [8, 3]],
                                             "y": [[1, 2], [8, 2], [8, 2]]}
    assert profile_shapes([{"name": "s", "shape": [4, 2]}], 8, 2) == {"s": [[4, 2]] * 3}
    with pytest.raises(BuildError, match="opt batch"):
        profile_shapes(GNET_INPUTS, 16, 46)
    with pytest.raises(BuildError, match="only the batch axis"):
        profile_shapes([{"name": "x", "shape": ["batch", "h", 4]}], 8, 4)
    with pytest.raises(BuildError, match="at least 1"):
        profile_shapes(GNET_INPUTS, 0, 0)


def test_layer_to_onnx_node_matching():
    meta = "[ONNX Layer: node_Gemm_257]\x1f[ONNX Layer: node_sigmoid]"
    assert onnx_nodes_of_layer("fused", meta) == {"node_Gemm_257", "node_sigmoid"}
    assert onnx_nodes_of_layer("node_softmax", "") == {"node_softmax"}
    layers = [("node_Conv_1", "[ONNX Layer: node_Conv_1]"),
              ("node_Gemm_25", "[ONNX Layer: node_Gemm_25]"),
              ("node_Gemm_257", "[ONNX Layer: node_Gemm_257]"),
              ("bias add", "[ONNX Layer: node_Gemm_257]"),
              ("node_sigmoid", "")]
    indices, unmatched = kept_layer_indices(layers, ["node_Gemm_257", "node_sigmoid", "gone"])
    assert indices == [2, 3, 4] and unmatched == ["gone"]


def _layer(name, out_type, layer_type="CaskConvolution", meta=""):
    return {"Name": name, "LayerType": layer_type, "Metadata": meta,
            "Inputs": [{"Name": "in", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "out", "Format/Datatype": out_type}]}


def test_precision_verdict_fp16_engine():
    info = {"Layers": [
        _layer("Reformatting CopyNode for Input Tensor 0", "Row major linear FP16 format",
               "Reformat"),
        _layer("node_Conv_1 + node_relu", "Channel major FP16 format where channel % 8 == 0",
               meta="[ONNX Layer: node_Conv_1]\x1f[ONNX Layer: node_relu]"),
        _layer("node_Gemm_257", "Row major linear FP32", "gemm", "[ONNX Layer: node_Gemm_257]"),
        _layer("node_sigmoid", "Float", "PointWiseV2", "[ONNX Layer: node_sigmoid]"),
    ], "Bindings": ["image", "loc"]}
    verdict = precision_verdict(json.dumps(info), ["node_Gemm_257", "node_sigmoid"])
    assert verdict["ok"] and verdict["problem"] is None
    assert verdict["layers"] == 4 and verdict["half_layers"] == 2
    assert verdict["half_compute_layers"] == 1 and verdict["kept_fp32_in_half"] == []


def test_precision_verdict_trt11_split_fields_and_kgen_types():
    info = {"Layers": [
        {"Name": "__myl_ConvRelu", "LayerType": "kgen",
         "Outputs": [{"Name": "t", "DataType": "Half", "Format": "Row major linear"}],
         "Metadata": "[ONNX Layer: node_Conv_1]"},
        {"Name": "node_softmax", "LayerType": "kgen",
         "Outputs": [{"Name": "p", "DataType": "Half"}],
         "Metadata": "[ONNX Layer: node_softmax]"}],
        "I/O Tensors": [{"Name": "image", "IOMode": "Input", "DataType": "Float"}]}
    verdict = precision_verdict(info, ["node_softmax"])
    assert verdict["ok"] and verdict["half_compute_layers"] == 2
    assert verdict["kept_fp32_in_half"] == ["node_softmax"]


def test_precision_verdict_refuses_fp32_engines():
    fp32 = {"Layers": [_layer("conv", "Row major linear FP32"), _layer("fc", "Float", "gemm"),
                       _layer("bf", "Row major linear BFloat16 format")]}
    verdict = precision_verdict(fp32)
    assert not verdict["ok"] and "FP32 engine" in verdict["problem"]
    only_reformat = {"Layers": [_layer("Reformatting CopyNode", "Half", "Reformat"),
                                _layer("conv", "Float")]}
    assert not precision_verdict(only_reformat)["ok"]
    names_only = precision_verdict({"Layers": ["conv", "fc"], "Bindings": []})
    assert not names_only["ok"] and "DETAILED" in names_only["problem"]
    assert not precision_verdict("not json")["ok"]
    assert not precision_verdict({"Layers": []})["ok"]


def test_parser_errors_are_reported_per_node():
    class Error:
        def __init__(self, node, desc, name=None, op=None):
            self._v = (node, desc, name, op)

        def node(self):
            return self._v[0]

        def desc(self):
            return self._v[1]

        def node_name(self):
            return self._v[2]

        def node_operator(self):
            return self._v[3]

    class Parser:
        errors = [Error(12, "Unsupported attribute", "node_grid", "GridSample"),
                  Error(-1, "Protobuf parse failed")]
        num_errors = 2

        def get_error(self, i):
            return self.errors[i]

    assert describe_parser_errors(Parser()) == [
        "node 12 (node_grid, GridSample): Unsupported attribute",
        "graph: Protobuf parse failed"]
