"""``vfinfer run`` on good and bad cases: one line per problem, other cases still finish."""

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vfinfer.cli import main


@pytest.fixture()
def chromosome(case_dirs):
    """One real-looking synthetic chromosome image (uint8 gray)."""
    return cv2.imread(str(sorted(case_dirs[0].glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)


def make_case(root, name, files):
    case = root / name
    case.mkdir()
    for filename, data in files.items():
        (case / filename).write_bytes(data)
    return case


def png(image):
    return cv2.imencode(".png", image)[1].tobytes()


def bad_input_cases(root, chromosome):
    good = png(chromosome)
    rgb = cv2.cvtColor(chromosome, cv2.COLOR_GRAY2BGR)
    rgba = np.dstack([rgb, np.where(chromosome < 250, 255, 0).astype(np.uint8)])
    tiff16 = cv2.imencode(".tiff", chromosome.astype(np.uint16) * 16)[1].tobytes()
    return {
        "zero_byte": ({"a.png": good, "b.png": b""}, "failed", "empty file (0 bytes)"),
        "text_as_png": ({"a.png": good, "b.png": b"hello, not an image"}, "failed",
                        "not a readable image"),
        "truncated_png": ({"a.png": good, "b.png": good[: len(good) * 2 // 3]}, "failed",
                          "truncated PNG"),
        "tiff16": ({"a.tif": tiff16}, "ok", None),
        "rgb_jpeg": ({"a.jpg": cv2.imencode(".jpg", rgb)[1].tobytes()}, "ok", None),
        "rgba_png": ({"a.png": png(rgba)}, "ok", None),
        "one_by_one": ({"a.png": png(np.zeros((1, 1), np.uint8))}, "ok", None),
        "huge": ({"a.png": png(np.full((6000, 6000), 255, np.uint8))}, "ok", None),
        "one_image": ({"a.png": good, "notes.txt": b"x"}, "ok", None),
        "empty": ({}, "failed", "no chromosome images found"),
        "many": ({f"c{i:03d}.png": good for i in range(120)}, "ok", None),
    }


@pytest.mark.slow
def test_bad_inputs_never_stop_the_run(tmp_path, model_dir, chromosome):
    cases = bad_input_cases(tmp_path, chromosome)
    dirs = [make_case(tmp_path, name, files) for name, (files, _, _) in cases.items()]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", *map(str, dirs), "--model", str(model_dir),
                                       "--out", str(out)])
    assert "Traceback" not in result.output
    assert result.exit_code == 1  # some cases failed, after all others finished
    lines = result.output.splitlines()
    for name, (files, expected, message) in cases.items():
        [line] = [x for x in lines if x.startswith(f"{name}: ")]
        if expected == "failed":
            assert "failed" in line and message in line, line
            assert not (out / name).exists()
        else:
            saved = json.loads((out / name / "result.json").read_text())
            images = [f for f in files if not f.endswith(".txt")]
            assert saved["n_chromosomes"] == len(images), line
            assert (out / name / "karyogram.png").stat().st_size > 0
            assert (out / name / "result.csv").read_text().count("\n") == len(images) + 1
    one_by_one = json.loads((out / "one_by_one" / "result.json").read_text())
    assert any("too small" in w for w in one_by_one["warnings"])
    one_image = json.loads((out / "one_image" / "result.json").read_text())
    assert one_image["ignored_files"] == ["notes.txt"]


@pytest.mark.slow
def test_second_run_leaves_results_untouched(tmp_path, model_dir, case_dirs):
    out = tmp_path / "out"
    args = ["run", *map(str, case_dirs), "--model", str(model_dir), "--out", str(out)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    written = {p: p.read_bytes() for p in out.glob("*/*")}
    assert len(written) == 4 * len(case_dirs)  # result.json, .csv, karyogram, report
    second = CliRunner().invoke(main, args + ["--no-karyogram"])
    assert second.exit_code == 0
    assert second.output.count("already holds results") == len(case_dirs)
    assert {p: p.read_bytes() for p in out.glob("*/*")} == written
    third = CliRunner().invoke(main, args + ["--overwrite", "--dispatch", "none"])
    assert third.exit_code == 0
    saved = json.loads(next(out.glob("*/result.json")).read_text())
    assert saved["dispatch"] == "none"


def test_missing_model_is_one_line(tmp_path, case_dirs):
    result = CliRunner().invoke(main, ["run", str(case_dirs[0]), "--model",
                                       str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}: model directory not found"]


@pytest.mark.slow
def test_tensorrt_backend_is_refused_clearly(model_dir, case_dirs):
    result = CliRunner().invoke(main, ["run", str(case_dirs[0]), "--model", str(model_dir),
                                       "--backend", "trt"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "TensorRT" in result.output


@pytest.mark.slow
def test_an_engine_error_fails_only_its_case(tmp_path, model_dir, chromosome, monkeypatch):
    from vfinfer.backends import BackendError
    from vfinfer.pipeline import Pipeline

    real_infer = Pipeline.infer_prepared

    def infer_prepared(self, g_input, timing=None):
        if len(g_input) != 2:  # the bad case has 3 images, the good one 2
            raise BackendError("gnet.onnx: simulated engine failure")
        return real_infer(self, g_input, timing)

    monkeypatch.setattr(Pipeline, "infer_prepared", infer_prepared)
    good = make_case(tmp_path, "good", {"a.png": png(chromosome), "b.png": png(chromosome)})
    bad = make_case(tmp_path, "bad", {"a.png": png(chromosome), "b.png": png(chromosome),
                                      "c.png": png(np.full((13, 13), 90, np.uint8))})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(good), str(bad), "--model", str(model_dir),
                                       "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bad: failed: gnet.onnx: simulated engine failure" in result.output
    assert (out / "good" / "result.json").exists() and not (out / "bad").exists()


@pytest.mark.slow
def test_patient_json_is_not_replaced_without_overwrite(tmp_path, model_dir, case_dirs):
    out = tmp_path / "out"
    args = ["run", *map(str, case_dirs), "--model", str(model_dir), "--out", str(out),
            "--dispatch", "optimal", "--patient-from", "^(syn)"]
    assert CliRunner().invoke(main, args).exit_code == 0
    patient = out / "syn" / "patient.json"
    patient.write_text("{}")  # stands for an earlier result
    second = CliRunner().invoke(main, args)
    assert "left untouched" in second.output and patient.read_text() == "{}"
    CliRunner().invoke(main, args + ["--overwrite"])
    assert patient.read_text() != "{}"


@pytest.mark.slow
def test_batch_size_must_be_positive(model_dir, case_dirs):
    result = CliRunner().invoke(main, ["run", str(case_dirs[0]), "--model", str(model_dir),
                                       "--batch-size", "0"])
    assert result.exit_code == 2 and "batch-size" in result.output


@pytest.mark.slow
def test_cli_keeps_defaults_with_too_few_abnormal_cells(synth_root, model_dir, fresh_copy):
    model = fresh_copy(model_dir, "calibrated_model")
    before = (model / "manifest.json").read_text()
    args = ["calibrate", str(synth_root), "--labels", "labels.csv", "--model", str(model)]
    refused = CliRunner().invoke(main, args + ["--simulate", "0"])
    assert refused.exit_code == 1 and "only 1 abnormal cells" in refused.output
    assert (model / "manifest.json").read_text() == before
    refused = CliRunner().invoke(main, args)  # 1 real + 3 simulated from the one normal cell
    assert refused.exit_code == 1 and "only 4 abnormal cells" in refused.output
    assert (model / "manifest.json").read_text() == before
    stored = CliRunner().invoke(main, args + ["--simulate", "0", "--allow-few-abnormal"])
    assert stored.exit_code == 0, stored.output
    assert "optimal" in json.loads((model / "manifest.json").read_text())["dispatch"]


@pytest.mark.slow
def test_cli_calibrates_with_simulated_abnormal_cells(synth_root, model_dir, fresh_copy):
    model = fresh_copy(model_dir, "simulated_model")
    args = ["calibrate", str(synth_root), "--labels", "labels.csv", "--model", str(model),
            "--simulate", "9"]
    stored = CliRunner().invoke(main, args)
    assert stored.exit_code == 0, stored.output
    assert "with 9 abnormal cells simulated" in stored.output
    assert "10 abnormal, 9 of them simulated" in stored.output
    assert "simulated abnormal cells:" in stored.output
    calibration = json.loads((model / "manifest.json").read_text())["dispatch"]["calibration"]
    assert calibration["n_simulated"] == 9 and calibration["n_abnormal_real"] == 1
    assert calibration["simulated"]["n"] == 9


@pytest.mark.slow
def test_lines_follow_the_case_order(tmp_path, model_dir, chromosome):
    """Reading, engines and writing overlap, but the report keeps the order of the cases."""
    good = {"a.png": png(chromosome), "b.png": png(chromosome)}
    names = ["c1_ok", "c2_skipped", "c3_empty", "c4_ok", "c5_ok"]
    dirs = [make_case(tmp_path, name, {} if name == "c3_empty" else good) for name in names]
    out = tmp_path / "out"
    (out / "c2_skipped").mkdir(parents=True)
    (out / "c2_skipped" / "result.json").write_text("{}")  # an earlier result
    result = CliRunner().invoke(main, ["run", *map(str, dirs), "--model", str(model_dir),
                                       "--out", str(out), "--batch-size", "64"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("model ") and lines[1].startswith("dispatch ")
    lines = lines[2:-1]  # between the model and dispatch lines and the summary line
    assert [line.split(":")[0] for line in lines] == names
    assert "skipped" in lines[1] and "failed" in lines[2]
    assert result.output.strip().splitlines()[-1] == "3 done, 1 skipped, 1 failed"
    assert (out / "c2_skipped" / "result.json").read_text() == "{}"
    for name in ("c1_ok", "c4_ok", "c5_ok"):
        saved = json.loads((out / name / "result.json").read_text())
        assert saved["case"] == name and saved["n_chromosomes"] == 2


@pytest.mark.slow
def test_a_failed_write_fails_only_its_case(tmp_path, model_dir, chromosome, monkeypatch):
    import vfinfer.io.results

    real_render = vfinfer.io.results.karyogram_layers

    def render(images, *args, title="", **kwargs):
        if title.startswith("bad"):
            raise ValueError("simulated drawing failure")
        return real_render(images, *args, title=title, **kwargs)

    monkeypatch.setattr(vfinfer.io.results, "karyogram_layers", render)
    files = {"a.png": png(chromosome)}
    dirs = [make_case(tmp_path, name, files) for name in ("first", "bad", "last")]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", *map(str, dirs), "--model", str(model_dir),
                                       "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bad: failed: cannot write results (simulated drawing failure)" in result.output
    assert (out / "first" / "result.json").exists() and (out / "last" / "result.json").exists()
    assert not (out / "bad" / "result.json").exists()


def test_the_first_line_names_a_precision_other_than_fp32():
    from vfinfer.io.runner import backend_line

    assert backend_line({"name": "onnxruntime-cpu", "precision": "fp32"}) == "onnxruntime-cpu"
    assert backend_line({"name": "onnxruntime-cpu"}) == "onnxruntime-cpu"
    every = {"name": "onnxruntime-cpu", "precision": "int8",
             "int8_graphs": ["gnet", "lnet", "heads"]}
    assert backend_line(every) == "onnxruntime-cpu, precision int8"
    some = {**every, "int8_graphs": ["lnet", "heads"]}
    assert backend_line(some) == ("onnxruntime-cpu, precision int8 (lnet, heads; the others "
                                  "fp32)")
    assert backend_line({"name": "tensorrt", "precision": "fp16"}) == "tensorrt, precision fp16"


@pytest.mark.slow
def test_the_demo_model_runs_its_int8_graphs(tmp_path, case_dirs):
    """The bundled demo model ships INT8 graphs that its audit lets run: --precision int8
    names them on the first line and calls the cells as FP32 does."""
    from vfinfer.model.manifest import demo_model_dir, load_manifest

    assert load_manifest(demo_model_dir()).data["int8_audit"]["usable"]
    lines = {}
    for precision in ("fp32", "int8"):
        result = CliRunner().invoke(main, ["run", *map(str, case_dirs), "--out",
                                           str(tmp_path / precision), "--precision", precision,
                                           "--threads", "1"])
        assert result.exit_code == 0, result.output
        lines[precision] = result.output.splitlines()
    assert lines["int8"][0].endswith("backend onnxruntime-cpu, precision int8")
    assert lines["fp32"][0].endswith("backend onnxruntime-cpu")
    calls = {p: [line.split(", ")[1] for line in out if " chromosomes, " in line]
             for p, out in lines.items()}
    assert calls["int8"] == calls["fp32"] and calls["fp32"]
