"""INT8 graphs: static QDQ quantization, kept-FP32 nodes, holdout agreement, usable rule."""

import inspect
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vfinfer.backends import BackendError
from vfinfer.model import audits
from vfinfer.model.manifest import load_manifest, sha256_file
from vfinfer.pipeline import Pipeline
from vfinfer.tools.precision import agreement, int8_data, int8_rules, quantize
from vfinfer.tools.synthesis.cells import write_cases
from vfinfer.util.images import read_case

ROLES = ("gnet", "lnet", "heads")
FIGURES = ("images", "type_argmax_agreement", "type_disagreements",
           "polarity_argmax_agreement", "box_iou_mean", "box_iou_min", "prob_max_abs_diff",
           "type_prob_max_abs_diff", "polarity_prob_max_abs_diff", "box_max_abs_diff_px",
           "loc_max_abs_diff", "fp32_distinct_types", "confident_images",
           "type_disagreements_confident")
FAST = {"methods": ("minmax",), "latency_threads": (1,), "latency_repeats": 1}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Three synthetic cells: the first two calibrate, the third is held out."""
    root = tmp_path_factory.mktemp("int8cases")
    write_cases("46,XY", root, seed=21)
    write_cases("47,XY,+21", root, seed=22)
    write_cases("46,XX", root, seed=23)
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def int8_dir(model_dir, cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "compact"
    shutil.copytree(model_dir, out)
    lines = []
    audit = quantize.quantize_model_dir(out, cases, log=lines.append, **FAST)
    return out, audit, lines


def _wiring(model):
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


@pytest.mark.slow
def test_int8_graphs_written_and_recorded(int8_dir, cases):
    out, audit, _lines = int8_dir
    manifest = load_manifest(out)
    for role in ROLES:
        record = manifest.graph(role, "int8")
        path = out / f"{role}_int8.onnx"
        assert record["file"] == path.name and record["files"] == [path.name]
        assert record["sha256"] == sha256_file(path)
        assert manifest.graph_path(role, "int8") == path  # sha verified
        assert record["precision"] == "int8"
        assert record["inputs"] == manifest.graph(role)["inputs"]
        assert record["outputs"] == manifest.graph(role)["outputs"]
        assert record["source_graph"] == f"{role}.onnx"
        assert record["source_sha256"] == manifest.graph(role)["sha256"]
        calibration = record["calibration"]
        assert calibration["case_dirs"] == [str(d) for d in cases[:2]]
        assert calibration["images"] == 46 + 47 and calibration["method"] == "minmax"
        assert calibration["feeds"]
        for entry in record["kept_fp32"]:
            assert set(entry) == {"node", "op", "reason"} and entry["reason"]
        assert record["ops"].get("QuantizeLinear", 0) > 0
        onnx.checker.check_model(str(path))
    for role in ROLES:  # the FP32 graphs are untouched
        assert sha256_file(out / f"{role}.onnx") == manifest.graph(role)["sha256"]
    assert manifest.graph("gnet", "int8")["not_quantized_ops"] == int8_rules.NOT_QUANTIZED_OPS


@pytest.mark.slow
def test_io_stays_float32_and_convs_are_int8(int8_dir):
    out, _audit, _lines = int8_dir
    manifest = load_manifest(out)
    graph_inputs = {role: {i["name"] for i in manifest.graph(role)["inputs"]} for role in ROLES}
    for role in ROLES:
        model = onnx.load(str(out / f"{role}_int8.onnx"))
        for value in list(model.graph.input) + list(model.graph.output):
            assert value.type.tensor_type.elem_type == TensorProto.FLOAT, (role, value.name)
        producers, consumers = _wiring(model)
        inits = {i.name: i for i in model.graph.initializer}
        kept = {e["node"]: e for e in manifest.graph(role, "int8")["kept_fp32"]}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        for node in convs:
            if node.input[0] in graph_inputs[role]:  # the stem reads the image: kept FP32
                assert node.name in kept and "input layer" in kept[node.name]["reason"]
                assert node.input[1] in inits and producers.get(node.input[1]) is None
                continue
            weight = producers[node.input[1]]
            assert weight.op_type == "DequantizeLinear", (role, node.name)
            assert inits[weight.input[0]].data_type == TensorProto.INT8
            scale = onnx.numpy_helper.to_array(inits[weight.input[1]])
            assert scale.size == inits[weight.input[0]].dims[0]  # per output channel
        assert len(convs) == (0 if role == "heads" else 16)
        for node in model.graph.node:  # not quantized (see NOT_QUANTIZED_OPS)
            if node.op_type == "BatchNormalization":  # FP32 scale, bias, mean, variance
                assert all(n in inits and producers.get(n) is None for n in node.input[1:])
            if node.op_type == "Add":  # the residual sum is not requantized
                assert not any(c.op_type == "QuantizeLinear"
                               for c in consumers.get(node.output[0], []))


@pytest.mark.slow
def test_localizer_and_softmax_stay_fp32(int8_dir, model_dir):
    out, _audit, _lines = int8_dir
    manifest = load_manifest(out)
    for role, bounded in (("gnet", "Sigmoid"), ("heads", "Softmax")):
        model = onnx.load(str(out / f"{role}_int8.onnx"))
        source = onnx.load(str(model_dir / f"{role}.onnx"))
        source_inits = {i.name: onnx.numpy_helper.to_array(i) for i in source.graph.initializer}
        source_nodes = {n.name: n for n in source.graph.node}
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        kept = {e["node"]: e for e in manifest.graph(role, "int8")["kept_fp32"]}
        producers, consumers = _wiring(model)
        outputs = [n for n in model.graph.node if n.op_type == bounded]
        assert len(outputs) == (1 if role == "gnet" else 2)
        for node in outputs:
            fc = producers[node.input[0]]
            assert fc.op_type == "Gemm" and {node.name, fc.name} <= set(kept)
            for tested in (node, fc):
                for i, name in enumerate(tested.input):
                    source_node = producers.get(name)
                    assert source_node is None or source_node.op_type not in (
                        "DequantizeLinear", "QuantizeLinear"), (role, tested.name, name)
                    if name in source_inits:  # weights and bias: exact FP32 copies
                        original = source_nodes[tested.name].input[i]
                        assert np.array_equal(inits[name], source_inits[original])
                for name in tested.output:
                    assert not any(c.op_type in ("QuantizeLinear", "DequantizeLinear")
                                   for c in consumers.get(name, [])), (role, tested.name)
    gnet_kept = manifest.graph("gnet", "int8")["kept_fp32"]
    assert [e["op"] for e in gnet_kept].count("Gemm") == 2  # both localizer FCs
    assert any("eq. 5" in e["reason"] for e in gnet_kept if e["op"] == "Gemm")
    lnet_kept = manifest.graph("lnet", "int8")["kept_fp32"]
    assert [(e["op"], "input layer" in e["reason"]) for e in lnet_kept] == [("Conv", True)]


def test_sensitive_nodes_rule_on_a_small_graph():
    """Sigmoid: the whole FC path back to the pooling; Softmax: its FC and that FC's ReLU."""
    def fc(name, x, y, n_in, n_out):
        weight = helper.make_tensor(f"{name}.w", TensorProto.FLOAT, [n_out, n_in],
                                    np.ones(n_in * n_out, np.float32))
        return helper.make_node("Gemm", [x, f"{name}.w"], [y], name=name, transB=1), weight
    nodes, weights = [], []
    nodes.append(helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flat"))
    for name, src, dst in (("fc1", "f", "h"), ("fc2", "hr", "z")):
        node, weight = fc(name, src, dst, 4 if name == "fc1" else 3, 3)
        nodes.append(node)
        weights.append(weight)
    nodes.insert(3, helper.make_node("Relu", ["h"], ["hr"], name="relu"))
    nodes.append(helper.make_node("Sigmoid", ["z"], ["loc"], name="sig"))
    for name, src, dst in (("m1", "f", "m"), ("m2", "mr", "logits")):
        node, weight = fc(name, src, dst, 4 if name == "m1" else 3, 3)
        nodes.append(node)
        weights.append(weight)
    nodes.insert(-1, helper.make_node("Relu", ["m"], ["mr"], name="mrelu"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="soft"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("loc", "probs")],
        initializer=weights)
    model = helper.make_model(graph)
    kept = int8_rules.sensitive_nodes(model)
    assert [e["node"] for e in kept] == ["flat", "fc1", "relu", "fc2", "sig", "mrelu", "m2",
                                         "soft"]
    assert all(e["reason"] for e in kept)
    extended = {e["node"] for e in int8_rules.extended_nodes(model)}
    assert extended == {e["node"] for e in kept} | {"m1"}


@pytest.mark.slow
def test_agreement_report_has_all_figures(int8_dir, cases):
    out, audit, lines = int8_dir
    assert json.loads((out / "manifest.json").read_text())["int8_audit"] == audit
    figures = audit["agreement"]
    assert set(FIGURES) <= set(figures)
    assert figures["images"] == 46  # the held-out cell
    for key in ("type_argmax_agreement", "polarity_argmax_agreement"):
        assert 0.0 <= figures[key] <= 1.0
    assert 0.0 <= figures["box_iou_min"] <= figures["box_iou_mean"] <= 1.0
    assert 0.0 <= figures["prob_max_abs_diff"] <= 1.0
    assert set(audit["per_graph_agreement"]) == set(ROLES)
    assert [a["method"] for a in audit["attempts"]][0] == "minmax"
    assert audit["calibration"]["method"] == audit["attempts"][-1]["method"] or not \
        audit["attempts"][-1]["meets_rule"]
    assert audit["settings"]["format"] == "QDQ" and audit["settings"]["per_channel"]
    latency = audit["latency"]
    assert set(latency["threads_1"]) == set(ROLES) | {"all_graphs"}
    for role in ROLES:
        row = latency["threads_1"][role]
        assert row["fp32"]["median_ms"] > 0 and row["int8"]["median_ms"] > 0
    assert latency["batch"] == 46 and isinstance(latency["busy"], bool) and latency["note"]
    assert audit["built_on"]["onnxruntime"]
    assert any(line.startswith("INT8 vs FP32 on 46 holdout images") for line in lines)
    assert any("too coarse" in w for w in audit["warnings"])  # 46 < 200 holdout images


@pytest.mark.slow
def test_holdout_is_disjoint_from_calibration(int8_dir, cases, tmp_path):
    _out, audit, _lines = int8_dir
    assert audit["holdout"]["case_dirs"] == [str(cases[2])]
    assert audit["holdout"]["disjoint"] is True
    assert not set(audit["holdout"]["case_dirs"]) & set(audit["calibration"]["case_dirs"])
    assert "automatic" in audit["holdout"]["split"]
    assert int8_data.split_case_dirs(cases) == (cases[:2], cases[2:])
    with pytest.raises(ValueError, match="at least two"):
        int8_data.split_case_dirs(cases[:1])
    calib = int8_data.read_case_dirs(cases[:1])
    with pytest.raises(ValueError, match="also calibration directories"):
        int8_data.check_disjoint(cases[:1], cases[:1], calib, calib)
    copied = tmp_path / "copy"
    shutil.copytree(cases[0], copied)
    with pytest.raises(ValueError, match="same pixels"):
        int8_data.check_disjoint(cases[:1], [copied], calib, int8_data.read_case_dirs([copied]))


def test_usable_rule():
    usable, reason = audits.int8_usable({"images": 1000, "type_argmax_agreement": 0.995})
    assert usable and "99.50%" in reason
    usable, reason = audits.int8_usable({"images": 1000, "type_argmax_agreement": 0.994})
    assert not usable and "99.40%" in reason and "99.5%" in reason
    assert audits.int8_usable({"images": 0, "type_argmax_agreement": 1.0})[0] is False
    assert audits.int8_usable({"images": 5, "type_argmax_agreement": float("nan")})[0] is False
    assert audits.int8_usable({"images": 10, "type_argmax_agreement": 0.9},
                                min_type_agreement=0.9)[0]
    assert "no INT8 graphs" in audits.int8_refusal({"graphs": {}})
    assert "no agreement audit" in audits.int8_refusal({"graphs": {"gnet_int8": {}}})
    refusal = audits.int8_refusal({"int8_audit": {"usable": False, "reason": reason}})
    assert "99.40%" in refusal and "unusable" in refusal
    assert audits.int8_refusal({"int8_audit": {"usable": "yes"}})  # only True passes
    assert audits.int8_refusal({"int8_audit": {"usable": True}}) is None


def test_agreement_figures_on_made_up_outputs():
    ref = {"type_probs": np.array([[0.95, 0.05], [0.55, 0.45], [0.2, 0.8]], np.float32),
           "polarity_probs": np.array([[0.9, 0.1]] * 3, np.float32),
           "loc": np.full((3, 3), 0.5, np.float32),
           "boxes": np.array([[0, 0, 10, 10]] * 3, np.float32)}
    got = {**ref, "type_probs": np.array([[0.9, 0.1], [0.45, 0.55], [0.1, 0.9]], np.float32),
           "boxes": np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10]], np.float32)}
    figures = agreement.agreement_figures(ref, got, threshold=0.9)
    assert figures["type_disagreements"] == 1 and figures["type_disagreements_confident"] == 0
    assert figures["confident_images"] == 1 and figures["fp32_distinct_types"] == 2
    assert figures["type_argmax_agreement"] == pytest.approx(2 / 3)
    assert figures["polarity_argmax_agreement"] == 1.0
    assert figures["box_iou_min"] == pytest.approx(1 / 3)
    assert figures["prob_max_abs_diff"] == pytest.approx(0.1)
    assert not audits.int8_usable(figures)[0]


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert np.allclose(agreement.box_iou(a, b), [1.0, 50 / 150, 0.0])


@pytest.mark.slow
def test_usable_flag_follows_the_rule(int8_dir, model_dir, cases, tmp_path):
    _out, audit, _lines = int8_dir
    agreement = audit["agreement"]["type_argmax_agreement"]
    assert audit["usable"] == (agreement >= audits.MIN_TYPE_AGREEMENT)
    assert audit["reason"] == audits.int8_usable(audit["agreement"])[1]
    # a rule no model can meet: every attempt fails, the all-FC fallback is tried, the best
    # attempt is kept but marked unusable, and the refusal names the figure
    out = tmp_path / "strict"
    shutil.copytree(model_dir, out)
    strict = quantize.quantize_model_dir(out, cases, log=lambda *a: None,
                                         min_type_agreement=1.01, **{**FAST,
                                                                     "latency_threads": ()})
    assert strict["usable"] is False and strict["latency"] is None
    assert [(a["method"], a["kept_fp32_rule"]) for a in strict["attempts"]] == [
        ("minmax", "sensitive"), ("minmax", "all-fc")]
    assert all(a["meets_rule"] is False for a in strict["attempts"])
    refusal = audits.int8_refusal(load_manifest(out).data)
    assert f"{strict['agreement']['type_argmax_agreement']:.2%}" in refusal
    for role in ROLES:  # the graphs stay for inspection
        assert (out / f"{role}_int8.onnx").is_file()


@pytest.mark.slow
def test_int8_pipeline_runs_when_usable(int8_dir, cases):
    out, audit, _lines = int8_dir
    assert audit["usable"], audit["reason"]
    images, paths, _ = read_case(cases[2])
    with Pipeline(out, backend="ort", precision="int8") as pipe:
        result = pipe.run_case(images, name="cell", files=[p.name for p in paths])
        got = pipe.infer(images)
    assert result["backend"]["precision"] == "int8" and result["n_chromosomes"] == 46
    assert all(0 <= c["type_prob"] <= 1 for c in result["chromosomes"])
    manifest = load_manifest(out)
    checked = agreement.network_outputs({role: manifest.graph_path(role, "int8")
                                         for role in ROLES}, images, manifest.config)
    for key in ("type_probs", "polarity_probs", "loc", "boxes"):  # what the audit measured
        np.testing.assert_allclose(got[key], checked[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif("int8_refusal" not in inspect.getsource(
    __import__("vfinfer.backends.ort", fromlist=["create"])),
    reason="backends/ort.py does not check the INT8 audit yet (wire in audits.int8_refusal)")
def test_backend_refuses_unusable_int8(int8_dir, fresh_copy):
    out, _audit, _lines = int8_dir
    copy = fresh_copy(out, "refused")
    data = json.loads((copy / "manifest.json").read_text())
    data["int8_audit"].update(usable=False, reason="type argmax agreement with FP32 is 97.00%")
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BackendError, match="97.00%"):
        Pipeline(copy, backend="ort", precision="int8")
    del data["int8_audit"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BackendError, match="no agreement audit"):
        Pipeline(copy, backend="ort", precision="int8")
    Pipeline(copy, backend="ort", precision="fp32").close()  # FP32 is unaffected


@pytest.mark.slow
def test_failure_leaves_the_manifest(model_dir, cases, tmp_path, monkeypatch):
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    before = (out / "manifest.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("agreement failed")

    monkeypatch.setattr(quantize, "agreement_figures", broken)
    with pytest.raises(RuntimeError, match="agreement failed"):
        quantize.quantize_model_dir(out, cases, log=lambda *a: None, **FAST)
    assert (out / "manifest.json").read_text() == before
    assert not list(out.glob("*_int8.onnx*"))


def test_runtime_side_does_not_import_torch():
    code = ("import sys, vfinfer.tools.precision.quantize, onnxruntime.quantization, "
            "onnxruntime.quantization.shape_inference; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_cli_latency_options(model_dir, cases, fresh_copy, monkeypatch):
    from click.testing import CliRunner

    from vfinfer.cli import main

    bad = CliRunner().invoke(main, ["quantize", str(model_dir), "--calib", str(cases[0]),
                                    "--latency-threads", "two"])
    assert bad.exit_code == 2 and "'two': give thread counts" in bad.output  # a usage error
    seen = {}

    def fake(model_dir, calib, holdout, **kwargs):
        seen.update(kwargs)
        return {"usable": True}

    monkeypatch.setattr(quantize, "quantize_model_dir", fake)
    ok = CliRunner().invoke(main, ["quantize", str(fresh_copy(model_dir)), "--calib",
                                   str(cases[0]), "--latency-threads", "2",
                                   "--latency-repeats", "3", "--reduce-range"])
    assert ok.exit_code == 0, ok.output
    assert seen["latency_threads"] == (2,) and seen["latency_repeats"] == 3
    assert seen["reduce_range"] is True


@pytest.mark.parametrize("reduce_range, limit", [(False, 127), (True, 64)])
def test_reduce_range_gives_7_bit_weights(tmp_path, reduce_range, limit):
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 1, 3, 3],
                                rng.standard_normal(72).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 8, 8])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    source = tmp_path / "conv.onnx"
    onnx.save(model, str(source))
    pre = tmp_path / "conv_pre.onnx"
    quantize.preprocess_graph(source, pre)
    out = tmp_path / "conv_int8.onnx"
    feeds = {"x": rng.standard_normal((4, 1, 8, 8)).astype(np.float32)}
    quantize.quantize_graph(pre, out, feeds, "minmax", [], batch=2, reduce_range=reduce_range)
    ints = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
            if t.data_type == TensorProto.INT8]
    assert ints and max(int(np.abs(a).max()) for a in ints) in range(limit - 1, limit + 1)


def _figures(value):
    return {**dict.fromkeys(FIGURES, 0), "images": 500, "type_argmax_agreement": value}


@pytest.mark.parametrize("alone, mixed, want", [
    ({"gnet": 0.98, "lnet": 0.999, "heads": 1.0}, {("lnet", "heads"): 0.997},
     ["lnet", "heads"]),
    ({"gnet": 0.98, "lnet": 0.99, "heads": 1.0}, {("heads",): 1.0}, ["heads"]),
    ({"gnet": 0.98, "lnet": 0.999, "heads": 1.0},
     {("lnet", "heads"): 0.994, ("lnet",): 0.996}, ["lnet"]),
    ({"gnet": 0.98, "lnet": 0.99, "heads": 0.99}, {}, []),
])
def test_int8_for_the_graphs_that_keep_the_rule(alone, mixed, want):
    """When INT8 for all three graphs misses the rule, the graphs that keep it (each alone
    and together) run INT8 and the others FP32."""
    built = {role: (f"{role}_int8", None) for role in ROLES}
    fp32 = {role: f"{role}_fp32" for role in ROLES}
    checked = []

    def check(paths):
        roles = tuple(role for role in ROLES if paths[role].endswith("_int8"))
        checked.append(roles)
        return _figures(mixed.get(roles, 0.9))

    failed = {"meets_rule": False}
    roles, figures = quantize.int8_roles(failed, {r: _figures(v) for r, v in alone.items()},
                                         built, fp32, check, 0.995, lambda *a: None)
    assert roles == want
    assert (figures is None) == (not want)
    assert all(alone[role] >= 0.995 for tried in checked for role in tried)
    assert quantize.int8_roles({"meets_rule": True}, {}, built, fp32, check, 0.995,
                               print) == (list(ROLES), None)


@pytest.mark.slow
def test_a_partial_int8_model_runs_those_graphs_only(int8_dir, cases, fresh_copy):
    out, _audit, _lines = int8_dir
    copy = fresh_copy(out, "partial")
    data = json.loads((copy / "manifest.json").read_text())
    data["int8_audit"].update(usable=True, int8_roles=["lnet", "heads"])
    (copy / "manifest.json").write_text(json.dumps(data))
    images, _, _ = read_case(cases[2])
    with Pipeline(copy, backend="ort", precision="int8") as pipe:
        got = pipe.infer(images)
        assert pipe.backend.describe()["int8_graphs"] == ["lnet", "heads"]
    manifest = load_manifest(copy)
    mixed = {"gnet": manifest.graph_path("gnet"), "lnet": manifest.graph_path("lnet", "int8"),
             "heads": manifest.graph_path("heads", "int8")}
    checked = agreement.network_outputs(mixed, images, manifest.config)
    for key in ("type_probs", "polarity_probs", "loc", "boxes"):
        np.testing.assert_allclose(got[key], checked[key], rtol=1e-5, atol=1e-6)
