"""ONNX export: graphs, manifest, parity with PyTorch, atomic output, CLI errors."""

import json

import onnx
import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.model.manifest import load_manifest, sha256_file
from vfinfer_export import onnx_export
from vfinfer_export.checkpoint import save_checkpoint


@pytest.mark.slow
def test_manifest_contents(model_dir, compact_model):
    data = json.loads((model_dir / "manifest.json").read_text())
    assert data["schema_version"] == 1 and data["preset"] == "compact"
    assert data["config"] == compact_model.config.to_dict()
    assert data["preprocess"]["canvas"] == 176 and data["preprocess"]["pad_value"] == 255
    assert data["crop"] == {**data["crop"], "t1": 32, "t2": 64, "l_input": 64}
    assert data["dispatch"]["threshold"] == 0.9
    assert data["classes"]["type"][22:] == ["X", "Y"] and len(data["classes"]["type"]) == 24
    assert data["classes"]["polarity"][1] == "q-arm down"
    for key in ("vfinfer", "torch", "onnx", "onnxruntime", "opset"):
        assert key in data["producer"]
    gnet = data["graphs"]["gnet"]
    assert [i["name"] for i in gnet["inputs"]] == ["image"]
    assert gnet["inputs"][0]["shape"] == ["batch", 1, 128, 128]
    assert [o["name"] for o in gnet["outputs"]] == ["g_features", "loc", "g_type_logits",
                                                     "g_polarity_logits"]
    assert [o["name"] for o in data["graphs"]["heads"]["outputs"]] == ["type_probs",
                                                                        "polarity_probs"]
    for record in data["graphs"].values():
        assert sha256_file(model_dir / record["file"]) == record["sha256"]
        assert record["files"] == [record["file"]]  # one file per graph
    assert load_manifest(model_dir).config == compact_model.config


@pytest.mark.slow
def test_graphs_pass_the_full_checker(model_dir):
    for name in ("gnet.onnx", "lnet.onnx", "heads.onnx"):
        onnx.checker.check_model(str(model_dir / name), full_check=True)


@pytest.mark.slow
def test_parity_recorded_for_every_output_and_batch(model_dir):
    parity = load_manifest(model_dir).data["parity"]
    assert parity["batches"] == [1, 7, 46]
    outputs = parity["outputs"]
    names = {role: set(per) for role, per in outputs.items()}
    assert names == {"gnet": {"g_features", "loc", "g_type_logits", "g_polarity_logits"},
                     "lnet": {"l_features"}, "heads": {"type_probs", "polarity_probs"}}
    for per_output in outputs.values():
        for per_batch in per_output.values():
            assert set(per_batch) == {"1", "7", "46"}
            for entry in per_batch.values():
                assert entry["relative"] <= 1e-5  # the foundation's parity bar
                assert entry.get("argmax_agreement", 1.0) == 1.0


@pytest.mark.slow
def test_parity_failure_writes_nothing(compact_model, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "PROBABILITY_TOLERANCE", -1.0)  # nothing can pass
    out = tmp_path / "model"
    with pytest.raises(onnx_export.ExportError, match="parity check failed"):
        onnx_export.export_model(compact_model, out, {}, batches=(1,), log=lambda *a: None)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial directory left behind


def test_refuses_a_non_empty_destination(compact_model, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(onnx_export.ExportError, match="--overwrite"):
        onnx_export.export_model(compact_model, out, {}, batches=(1,), log=lambda *a: None)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_exports_a_checkpoint(compact_model, tmp_path):
    ckpt = tmp_path / "model.pt"
    save_checkpoint(compact_model, ckpt)
    result = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "type_probs" in result.output and "max abs err" in result.output
    source = load_manifest(tmp_path / "m").data["source"]
    assert source["kind"] == "checkpoint" and source["sha256"] == sha256_file(ckpt)


@pytest.mark.parametrize("args, message", [
    (["missing.pt", "--out", "{tmp}/m"], "missing.pt: checkpoint file not found"),
    (["--random-init", "--out", "{tmp}/file.txt/m"], "cannot write there"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--random-init", "--preset", "huge", "--out", "{tmp}/m"], "'huge' is not one of"),
    (["--out", "{tmp}/m"], "give a CHECKPOINT"),
    (["--random-init", "--calib", "{tmp}", "--out", "{tmp}/m"], "--calib only applies"),
    (["x.pt", "--random-init", "--out", "{tmp}/m"], "not both"),
])
def test_cli_usage_errors_exit_2_through_click(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == 2 and "Usage: " in result.output
    assert "Error: " in result.output and message in result.output
    assert "Traceback" not in result.output
