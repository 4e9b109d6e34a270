"""The structural score: its metrics, training on synthetic chromosomes, the ONNX export with
parity and the manifest section, the runtime's scores, flags and warnings, the karyogram's
mark, "not screened" without the section, and ``vfinfer run`` end to end. Synthetic
chromosomes only; the network is tiny so that everything runs in seconds."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.io.karyogram import render_karyogram
from vfinfer.model.classes import type_index
from vfinfer.model.manifest import ModelDirError, demo_model_dir, sha256_file
from vfinfer.pipeline import Pipeline
from vfinfer.pipeline.result import NOT_SCREENED
from vfinfer.pipeline.structural import (
    TTA_GATE,
    StructuralScorer,
    fit_canvas,
    homologues,
    structural_crop,
    structural_inputs,
    tta_gate,
)
from vfinfer.tools.synthesis.cells import render_chromosome, write_cases
from vfinfer.util.images import read_gray8

ISCN_MARKS = ("del(", "dup(", "inv(", "t(", "i(", "der(")


def _red(picture):
    """Pixels drawn in the karyogram's red (BGR 0, 0, 255, anti-aliased)."""
    if picture.ndim == 2:
        return np.zeros(picture.shape, bool)
    b, g, r = (picture[..., k].astype(int) for k in range(3))
    return (r > 200) & (g < 80) & (b < 80)


def _reference(net, x, cond, threshold, tta="mirror"):
    """The PyTorch reference of the runtime's (scores, arm probabilities or None): one view,
    or with ``tta`` "mirror" the mean with the mirrored canvas where the first view reaches
    ``tta_gate(threshold)``."""
    import torch

    from vfinfer_export.structural_model import StructuralExport

    export = StructuralExport(net).eval()

    def view(image):
        with torch.no_grad():
            out = export(torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(cond))
        return [o.numpy().reshape(len(image), -1) for o in
                (out if isinstance(out, tuple) else (out,))]

    first = view(x)
    if tta == "mirror":
        again = first[0][:, 0] >= tta_gate(threshold)
        first = [np.where(again[:, None], (f + m) / 2, f) for f, m in zip(first, view(
            x[..., ::-1]))]
    return first[0][:, 0], first[1] if len(first) > 1 else None


# -- pure functions -----------------------------------------------------------------------------
def test_auc_and_threshold_for_specificity():
    from vfinfer.tools.evaluation import structural as metrics
    labels = np.r_[np.zeros(5), np.ones(5)]
    assert metrics.roc_auc(np.arange(10.0), labels) == 1.0
    assert metrics.roc_auc(-np.arange(10.0), labels) == 0.0
    assert metrics.roc_auc(np.ones(10), labels) == 0.5
    normals = np.linspace(0, 1, 200).astype(np.float32)  # scores are float32
    threshold = metrics.threshold_for_specificity(normals, 0.99)
    assert (normals >= threshold).sum() == 2  # 1 % of 200
    third = np.sort(normals)[-3]
    assert 0 < threshold - third < 1e-6  # the lowest such threshold: just above the third


def test_inputs_crop_fit_and_condition():
    image = render_chromosome(4, np.random.default_rng(0))
    padded = np.pad(image, 20, constant_values=255)
    padded[2, 2] = 0  # a speck outside the chromosome is whitened by the mask
    crop = structural_crop(padded)
    assert crop.shape[0] <= image.shape[0] and crop.shape[1] <= image.shape[1]  # no speck
    assert crop.min() < 200 and (crop[0] < 255).any() and (crop[-1] < 255).any()
    canvas = fit_canvas(crop, 48, 16)
    assert canvas.shape == (48, 16) and canvas.dtype == np.uint8
    long = cv2.resize(image, (image.shape[1], 2 * image.shape[0]))  # twice its length
    x, cond = structural_inputs([image, long, image], [4, 4, 4], 48, 16)
    assert x.shape == (3, 1, 48, 16) and cond.shape == (3, 25)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x[0, 0, 0, 0] == 0.0  # white is 0
    assert (cond[:, 4] == 1).all() and cond[:, :24].sum() == 3
    assert cond[1, 24] == pytest.approx(np.log(2.0), abs=0.05) and cond[0, 24] == 0.0


def test_homologue_is_the_nearest_other_copy_of_the_type():
    rng = np.random.default_rng(3)
    canvases = rng.integers(0, 255, (5, 8, 4)).astype(np.uint8)
    canvases[3] = canvases[0] // 2 + 100  # nearer to 0 than 1 is
    assert homologues(canvases, [2, 2, 7, 2, 5]).tolist() == [3, 3, -1, 0, -1]
    assert homologues(canvases[:0], []).tolist() == []


def test_homologue_inputs_pair_each_chromosome_with_its_copy():
    rng = np.random.default_rng(4)
    a, b, x = (render_chromosome(t, rng) for t in (4, 4, 22))
    short = a[: a.shape[0] // 2]
    x_single, cond_single = structural_inputs([a, b, x, short], [4, 4, 22, 9], 48, 16)
    x_pair, cond_pair = structural_inputs([a, b, x, short], [4, 4, 22, 9], 48, 16,
                                          homologue=True)
    assert x_pair.shape == (4, 2, 48, 16) and cond_pair.shape == (4, 27)
    np.testing.assert_array_equal(x_pair[:, :1], x_single)  # channel 0 as without
    np.testing.assert_array_equal(cond_pair[:, :25], cond_single)
    np.testing.assert_array_equal(x_pair[0, 1], x_single[1, 0])  # 5 <-> 5
    np.testing.assert_array_equal(x_pair[1, 1], x_single[0, 0])
    assert not x_pair[2, 1].any() and not x_pair[3, 1].any()  # single copies: white
    assert cond_pair[:2, 25].tolist() == [1, 1] and cond_pair[2:, 25].tolist() == [0, 0]
    assert cond_pair[0, 26] == cond_single[1, 24] and cond_pair[2, 26] == 0


def test_homologue_examples_hold_the_partners_of_aberrant_chromosomes(cells):
    from vfinfer.io.labels import by_cell, read_labels
    from vfinfer_export.structural_data import ExampleOptions, cell_examples

    name, items = sorted(by_cell(read_labels(cells)).items())[0]
    options = ExampleOptions(32, 16, normals_per_cell=0, aberrant_per_cell=6, homologue=True)
    examples = cell_examples(name, items, 0, options)
    aberrant = examples.label == 1
    assert examples.canvas.shape[1:] == (2, 32, 16) and examples.cond.shape[1] == 27
    assert 0 < aberrant.sum() <= 8  # at most one chromosome per type (t: two)
    types = examples.cond[:, :24].argmax(1)
    assert len(set(types[aberrant].tolist())) == aberrant.sum()  # one per type
    partners = np.flatnonzero(~aberrant)[len(items):]  # after the cell's normals
    assert len(partners) > 0 and set(types[partners]) <= set(types[aberrant])
    for i in partners:  # a partner's homologue is the aberrant copy of its type
        j = np.flatnonzero(aberrant & (types == types[i]))[0]
        np.testing.assert_array_equal(examples.canvas[i, 1], examples.canvas[j, 0])
    single = cell_examples(name, items, 0, ExampleOptions(32, 16, normals_per_cell=0,
                                                          aberrant_per_cell=6))
    assert single.canvas.ndim == 3 and len(single) == len(items) + single.label.sum()


def test_cell_operating_point_flags_one_normal_cell_in_twenty():
    from vfinfer.tools.evaluation.structural_screen import cell_operating_point

    tops = np.linspace(0.05, 0.9, 20, dtype=np.float32)  # each normal cell's highest score
    normal = {(f"c{k}", "top"): (float(t), 0, 0) for k, t in enumerate(tops)}
    normal.update({(f"c{k}", "low"): (0.01, 0, 0) for k in range(20)})
    aberrant = [{"score": 0.95, "size": 0.2}, {"score": 0.86, "size": 0.3},
                {"score": 0.5, "size": 0.06}]
    point = cell_operating_point(normal, aberrant, 0.95)
    threshold = point["threshold_for_cell_specificity"]
    assert tops[-2] < threshold <= tops[-1] + 1e-6  # the top cell alone is flagged
    assert point["sensitivity_there"] == pytest.approx(2 / 3, abs=1e-4)
    assert point["sensitivity_ge_10pct_there"] == 1.0


def test_karyogram_marks_flagged_chromosome():
    rng = np.random.default_rng(1)
    images = [render_chromosome(t, rng) for t in (0, 0, 4, 4)]
    types, polarities, low = [0, 0, 4, 4], [1] * 4, [False] * 4
    plain = render_karyogram(images, types, polarities, low)
    marked = render_karyogram(images, types, polarities, low, structural=[False, False, True,
                                                                        False])
    assert not _red(plain).any()
    red = _red(marked)
    assert red.sum() > 50
    ys, xs = np.nonzero(red[:plain.shape[0] - 200])  # the body: the marks, not the legend
    assert xs.max() > plain.shape[1] * 0.6  # chromosome 5 sits in the right group of row 1
    with pytest.raises(ValueError, match="structural flags"):
        render_karyogram(images, types, polarities, low, structural=[True])


def test_model_without_section_is_not_screened():
    rng = np.random.default_rng(2)
    images = [render_chromosome(t % 24, rng) for t in range(10)]
    with Pipeline(demo_model_dir(), backend="ort") as pipe:
        assert pipe.structural is None
        result = pipe.run_case(images)
    assert result["structural"] == {"screened": False, "note": NOT_SCREENED}
    assert all("structural" not in row for row in result["chromosomes"])
    from vfinfer.io.results import result_csv

    table = list(csv.DictReader(result_csv(result).splitlines()))
    assert table[0]["structural_score"] == "" and table[0]["structural_flagged"] == ""


# -- trained and exported -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """Two slides of synthetic normal cells."""
    folder = tmp_path_factory.mktemp("cells")
    write_cases("46,XY", folder, seed=11, cases=2)
    write_cases("46,XX", folder, seed=12, cases=1)
    return folder


@pytest.fixture(scope="module")
def trained(cells, tmp_path_factory):
    """A tiny structural net trained for one epoch on the synthetic cells."""
    pytest.importorskip("torch")
    from vfinfer_export.structural_data import ExampleOptions
    from vfinfer_export.structural_model import StructuralNet
    from vfinfer_export.structural_train import train_structural

    net = StructuralNet(widths=(4, 8), hidden=8, height=32, width=16)
    options = ExampleOptions(32, 16, normals_per_cell=12, aberrant_per_cell=4)
    out = tmp_path_factory.mktemp("run")
    path = train_structural(cells, out, epochs=1, seed=0, threads=1, val_share=0.5,
                            options=options, net=net, log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    """A copy of the demo model with the structural score added."""
    from vfinfer_export.structural_export import export_structural

    folder = tmp_path_factory.mktemp("model") / "demo"
    shutil.copytree(demo_model_dir(), folder)
    export_structural(trained, folder, threads=1, log=lambda _: None)
    return folder


def _tiny_model(cells, run_dir, model_dir, tta="mirror", **net_options):
    """(A copy of the demo model with a tiny structural net of ``net_options`` trained one
    epoch on the synthetic cells (scored with ``tta``) and exported into it, the
    checkpoint)."""
    pytest.importorskip("torch")
    from vfinfer_export.structural_data import ExampleOptions
    from vfinfer_export.structural_export import export_structural
    from vfinfer_export.structural_model import StructuralNet
    from vfinfer_export.structural_train import train_structural

    net = StructuralNet(widths=(4, 8), hidden=8, height=32, width=16, **net_options)
    options = ExampleOptions(32, 16, normals_per_cell=12, aberrant_per_cell=4,
                             homologue=net.homologue, fit=net.fit)
    path = train_structural(cells, run_dir, epochs=1, seed=0, threads=1, val_share=0.5,
                            options=options, net=net, log=lambda _: None, tta=tta)
    folder = model_dir / "demo"
    shutil.copytree(demo_model_dir(), folder)
    export_structural(path, folder, threads=1, log=lambda _: None)
    return folder, path


@pytest.fixture(scope="module")
def homologue_model(cells, tmp_path_factory):
    """A copy of the demo model with a tiny structural net that sees the homologue."""
    return _tiny_model(cells, tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("model"),
                       tta="none", homologue=True)


def _with_threshold(model, tmp_path, threshold):
    folder = tmp_path / "forced"
    shutil.copytree(model, folder)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["structural"]["threshold"] = threshold
    path.write_text(json.dumps(data))
    return folder


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_training_writes_threshold_and_validation(trained):
    from vfinfer_export.structural_train import load_structural

    net, payload = load_structural(trained)
    val = payload["validation"]
    assert 0.0 <= payload["threshold"] <= 1.0 and payload["target_specificity"] == 0.99
    assert val["n_normal"] > 0 and val["n_aberrant"] > 0
    assert val["specificity"] >= 0.99 or val["n_normal"] < 100
    normals_flagged = round((1 - val["specificity"]) * val["n_normal"])
    assert normals_flagged <= int(0.01 * val["n_normal"])
    training = payload["training"]
    assert training["val_cells"] == 1 and training["train_cells"] == 2
    assert training["aberrations"]["size_min"] == 0.05 and len(training["history"]) == 1
    assert net.spec() == {"widths": [4, 8], "hidden": 8, "height": 32, "width": 16}


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_export_parity_and_manifest_section(model, trained):
    import onnxruntime as ort
    import torch

    from vfinfer_export.structural_export import random_inputs
    from vfinfer_export.structural_train import load_structural

    section = json.loads((model / "manifest.json").read_text())["structural"]
    net, payload = load_structural(trained)
    assert section["file"] == "structural.onnx"
    assert section["sha256"] == sha256_file(model / "structural.onnx")
    assert section["threshold"] == payload["threshold"]
    assert section["validation"] == payload["validation"]
    assert section["input"]["height"] == 32 and section["input"]["width"] == 16
    assert [i["name"] for i in section["inputs"]] == ["image", "cond"]
    assert set(section["parity"]["batches"]) == {"batch_1", "batch_7", "batch_46"}
    for record in section["parity"]["batches"].values():
        assert record["max_abs"] <= 1e-4 and record["agreement"] == 1.0
    session = ort.InferenceSession(str(model / "structural.onnx"))
    image, cond = random_inputs(net, 13, seed=5)
    got = session.run(["score"], {"image": image, "cond": cond})[0]
    with torch.no_grad():
        ref = net.score(torch.from_numpy(image), torch.from_numpy(cond)).numpy()
    assert got.shape == (13, 1) and np.abs(got - ref).max() < 1e-4


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_export_refuses_unfinished_checkpoint(trained, tmp_path):
    from vfinfer_export.onnx_export import ExportError
    from vfinfer_export.structural_export import export_structural

    folder = tmp_path / "demo"
    shutil.copytree(demo_model_dir(), folder)
    with pytest.raises(ExportError, match="no threshold"):
        export_structural(trained.parent / "last.pt", folder, log=lambda _: None)
    assert not (folder / "structural.onnx").exists()
    assert "structural" not in json.loads((folder / "manifest.json").read_text())


def _cell_images(cells):
    case = sorted(p for p in cells.iterdir() if p.is_dir())[0]
    files = sorted(case.glob("*.png"))
    return [read_gray8(f) for f in files], [f.name for f in files]


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_runtime_scores_conditioned_on_called_type(model, cells, trained):
    from vfinfer_export.structural_train import load_structural

    images, files = _cell_images(cells)
    with Pipeline(model, backend="ort") as pipe:
        result = pipe.run_case(images, files=files)
        threshold = pipe.structural.threshold
    rows = result["chromosomes"]
    scores = np.array([row["structural"]["score"] for row in rows])
    assert result["structural"]["screened"] is True and result["structural"]["threshold"] == \
        threshold
    assert all(row["structural"]["flagged"] == (row["structural"]["score"] >= threshold)
               for row in rows)
    assert "structural" in result["timing_ms"]
    types = [type_index(row["type"]) for row in rows]
    x, cond = structural_inputs(images, types, 32, 16)  # demo model: polarity q-arm down
    net, _ = load_structural(trained)
    np.testing.assert_allclose(scores, _reference(net, x, cond, threshold)[0], atol=1e-5)
    other = [(t + 1) % 24 for t in types]  # another type: another score
    moved = _reference(net, x, structural_inputs(images, other, 32, 16)[1], threshold)[0]
    assert np.abs(moved - scores).max() > 1e-4


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_size_normalized_model_scores_the_cut_outs_unscaled(model, trained, cells, tmp_path):
    """The score was trained on cut-outs as they are: a model that size-normalizes its
    classifier's input still gives the score the unscaled cut-outs."""
    from vfinfer_export.structural_train import load_structural

    folder = tmp_path / "size-norm"
    shutil.copytree(model, folder)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["config"]["size_norm"] = 30.0  # every cell scaled well away from 1
    path.write_text(json.dumps(data))
    images, files = _cell_images(cells)
    with Pipeline(folder, backend="ort") as pipe:
        rows = pipe.run_case(images, files=files)["chromosomes"]
    types = [type_index(row["type"]) for row in rows]
    x, cond = structural_inputs(images, types, 32, 16)
    net, payload = load_structural(trained)
    np.testing.assert_allclose([row["structural"]["score"] for row in rows],
                               _reference(net, x, cond, payload["threshold"])[0], atol=1e-5)


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_homologue_score_runtime_matches_reference(homologue_model, cells):
    """Trained with one view (``tta`` "none"): the runtime scores each chromosome once."""
    from vfinfer_export.structural_train import load_structural

    folder, checkpoint = homologue_model
    section = json.loads((folder / "manifest.json").read_text())["structural"]
    assert section["input"]["homologue"] is True and section["network"]["homologue"] is True
    assert section["tta"] == "none" and "tta_note" not in section
    assert [i["shape"][1] for i in section["inputs"]] == [2, 27]
    images, files = _cell_images(cells)
    with Pipeline(folder, backend="ort") as pipe:
        rows = pipe.run_case(images, files=files)["chromosomes"]
    types = [type_index(row["type"]) for row in rows]
    x, cond = structural_inputs(images, types, 32, 16, homologue=True)
    net, payload = load_structural(checkpoint)
    assert payload["training"]["homologue"] is True and payload["tta"] == "none"
    np.testing.assert_allclose([row["structural"]["score"] for row in rows],
                               _reference(net, x, cond, payload["threshold"], "none")[0],
                               atol=1e-5)


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_flag_above_threshold_warns(model, cells, tmp_path):
    images, files = _cell_images(cells)
    with Pipeline(model, backend="ort") as pipe:
        scores = [r["structural"]["score"] for r in pipe.run_case(images, files=files)
                  ["chromosomes"]]
    top = np.sort(scores)
    assert top[-2] - top[-3] > 1e-5  # scores of a trained net differ
    threshold = float(top[-3] + top[-2]) / 2  # the two highest scores reach it
    with Pipeline(_with_threshold(model, tmp_path, threshold), backend="ort") as pipe:
        result = pipe.run_case(images, files=files)
    flagged = [r for r in result["chromosomes"] if r["structural"]["flagged"]]
    assert len(flagged) == 2 and result["structural"]["flagged"] == 2
    notes = [w for w in result["warnings"] if w.startswith("possible structural abnormality")]
    assert len(notes) == 2
    for row, note in zip(flagged, notes):
        assert f"of chromosome {row['type']} ({row['file']}," in note and note.endswith("review")
    assert not any(mark in w for w in result["warnings"] for mark in ISCN_MARKS)


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_changed_graph_is_refused(model, tmp_path):
    folder = tmp_path / "changed"
    shutil.copytree(model, folder)
    with open(folder / "structural.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelDirError, match="sha256 differs"):
        Pipeline(folder, backend="ort")


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_cli_export_and_run_end_to_end(trained, cells, tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo_model_dir(), folder)
    runner = CliRunner()
    done = runner.invoke(main, ["export-structural", str(trained), "--model", str(folder)])
    assert done.exit_code == 0, done.output
    assert "parity (ONNX Runtime vs PyTorch)" in done.output and "added structural.onnx" in \
        done.output
    forced = _with_threshold(folder, tmp_path, 0.0)  # every chromosome flagged
    case = sorted(p for p in cells.iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    done = runner.invoke(main, ["run", str(case), "--model", str(forced), "--out", str(out),
                                "--backend", "ort"])
    assert done.exit_code == 0, done.output
    result = json.loads((out / case.name / "result.json").read_text())
    assert all(row["structural"]["flagged"] for row in result["chromosomes"])
    with open(out / case.name / "result.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["structural_flagged"] for r in table] == ["1"] * len(table)
    assert [float(r["structural_score"]) for r in table] == [
        row["structural"]["score"] for row in result["chromosomes"]]
    picture = cv2.imread(str(out / case.name / "karyogram.png"), cv2.IMREAD_UNCHANGED)
    assert picture.ndim == 3 and _red(picture).sum() > 46 * 20
    missing = runner.invoke(main, ["export-structural", str(tmp_path / "nope.pt"), "--model",
                                   str(folder)])
    assert missing.exit_code != 0 and "checkpoint file not found" in missing.output
    (tmp_path / "not.pt").write_text("{}")
    bad = runner.invoke(main, ["export-structural", str(tmp_path / "not.pt"), "--model",
                               str(folder)])
    assert bad.exit_code == 1 and "not a structural-score checkpoint" in bad.output


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_eval_structural_reports_kinds_sizes_and_curves(model, cells, tmp_path):
    out = tmp_path / "eval" / "screen.json"
    done = CliRunner().invoke(main, ["eval-structural", str(cells), "--model", str(model),
                                     "--copies", "1", "--per-cell", "2", "--json", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    chrom = report["chromosomes"]
    assert chrom["n_normal"] == sum(1 for _ in cells.glob("*/*.png"))
    assert chrom["n_aberrant"] >= 2 * 3  # 2 per copy of 3 cells (a translocation gives two)
    assert set(chrom["by_size"]) == {"5-10%", ">=10%"} and chrom["by_kind"]
    assert sum(v["n"] for v in chrom["by_kind"].values()) == chrom["n_aberrant"]
    assert set(chrom["by_group"]) == set("ABCDEFG")
    assert sum(v["n_aberrant"] for v in chrom["by_group"].values()) == chrom["n_aberrant"]
    assert sum(v["n_normal"] for v in chrom["by_group"].values()) == chrom["n_normal"]
    assert 0.0 <= chrom["auc"] <= 1.0 and report["normal_cells"]["n"] == 3
    assert report["aberrant_copies"]["copies"] == 3
    assert report["normal_cells"]["cell_specificity"] == 0.95
    point = report["at_test_specificity"]
    assert point["specificity"] == 0.99 and 0.0 <= point["sensitivity_there"] <= 1.0
    assert "99 % specificity on these normal chromosomes" in done.output
    for name in ("roc", "pr"):
        picture = cv2.imread(str(out.with_name(f"screen_{name}.png")))
        assert picture is not None and picture.shape[0] > 400
    assert "sensitivity by kind" in done.output and "sensitivity by group: A" in done.output
    plain = CliRunner().invoke(main, ["eval-structural", str(cells), "--model",
                                      str(demo_model_dir()), "--json", str(tmp_path / "x.json")])
    assert plain.exit_code == 1 and "has no structural score" in plain.output


@pytest.mark.slow  # trains a tiny network (a few seconds)
def test_train_structural_command_defaults_to_row_pooling_and_the_arm(cells, tmp_path):
    pytest.importorskip("torch")
    from vfinfer_export.structural_train import load_structural

    args = ["train-structural", str(cells), "--epochs", "1", "--canvas", "32x16", "--widths",
            "4,8", "--normals-per-cell", "12", "--aberrant-per-cell", "4", "--threads", "1"]
    done = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "rows")])
    assert done.exit_code == 0, done.output
    net, payload = load_structural(tmp_path / "rows" / "structural.pt")
    assert net.spec()["pool"] == "rows" and "homologue" not in net.spec()
    assert net.spec()["arm_head"] is True and payload["tta"] == "mirror"
    paired = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "pairs"), "--homologue",
                                       "--pool", "global", "--no-arm", "--tta", "none"])
    assert paired.exit_code == 0, paired.output
    net, payload = load_structural(tmp_path / "pairs" / "structural.pt")
    assert net.spec()["homologue"] is True and "pool" not in net.spec()
    assert "arm_head" not in net.spec() and "arm" not in payload["validation"]
    assert payload["training"]["homologue"] is True and payload["tta"] == "none"
    done = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cell"), "--fit", "cell"])
    assert done.exit_code == 0, done.output
    assert load_structural(tmp_path / "cell" / "structural.pt")[0].spec()["fit"] == "cell"


# -- the arm output -----------------------------------------------------------------------------
def test_arm_text_names_the_arm_only_when_clear():
    from vfinfer.pipeline.result import ARM_CLEAR, arm_text

    assert arm_text("q", 0.9) == "q arm" and arm_text("p", ARM_CLEAR) == "p arm"
    assert arm_text("pq", 0.8) == "both arms (across the centromere)"
    assert arm_text("q", ARM_CLEAR - 0.01) == "arm not clear"


def test_arm_figures_count_the_flagged_ones():
    from vfinfer.tools.evaluation.structural import arm_figures, arm_names

    named = arm_names(np.array([[0.8, 0.1, 0.1], [0.1, 0.5, 0.4], [0.2, 0.2, 0.6],
                                [0.1, 0.8, 0.1]]))
    assert named == ["p", "q", "pq", "q"]
    figures = arm_figures(named, ["p", "p", "pq", "q"], ["del", "del", "inv", "t"],
                          [True, True, True, False], clear=[True, False, True, True])
    assert figures["n_flagged"] == 3 and figures["right_of_flagged"] == round(2 / 3, 4)
    assert figures["right_of_flagged_by_kind"] == {"del": 0.5, "inv": 1.0, "t": None}
    assert figures["flagged_named"] == round(2 / 3, 4) and figures["right_of_named"] == 1.0


def test_arm_targets_leave_normal_examples_out_of_the_loss():
    pytest.importorskip("torch")
    from vfinfer_export.structural_train import NO_ARM, arm_targets

    assert arm_targets(["", "q", "pq", "p"]).tolist() == [NO_ARM, 1, 2, 0]


@pytest.fixture(scope="module")
def arm_model(cells, tmp_path_factory):
    """A copy of the demo model with a tiny structural net with the arm head."""
    return _tiny_model(cells, tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("model"),
                       pool="rows", arm_head=True)


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_arm_output_exported_with_parity_and_matches_reference(arm_model, cells):
    from vfinfer_export.structural_train import load_structural

    folder, path = arm_model
    net, payload = load_structural(path)
    assert net.spec()["arm_head"] is True and "arm" in payload["validation"]
    assert "val_arm_right" in payload["training"]["history"][0]
    section = json.loads((folder / "manifest.json").read_text())["structural"]
    assert [o["name"] for o in section["outputs"]] == ["score", "arm"]
    assert section["arms"] == ["p", "q", "pq"]
    assert all(v["arm_agreement"] == 1.0 for v in section["parity"]["batches"].values())
    images, files = _cell_images(cells)
    with Pipeline(folder, backend="ort") as pipe:
        types = [type_index(r["type"]) for r in pipe.run_case(images, files=files)
                 ["chromosomes"]]
        scores, arms = pipe.structural.assess(images, types)
    x, cond = structural_inputs(images, types, 32, 16)
    ref_scores, ref_arms = _reference(net, x, cond, payload["threshold"])
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_allclose(arms, ref_arms, atol=1e-5)
    assert arms.shape == (len(images), 3) and np.allclose(arms.sum(1), 1, atol=1e-5)


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_flagged_chromosomes_name_their_arm(arm_model, cells, tmp_path):
    from vfinfer.io.results import result_csv
    from vfinfer.pipeline.result import arm_text

    images, files = _cell_images(cells)
    with Pipeline(_with_threshold(arm_model[0], tmp_path, 0.0), backend="ort") as pipe:
        result = pipe.run_case(images, files=files)
    rows, warnings = result["chromosomes"], result["warnings"]
    assert result["structural"]["arm_named"] is True
    for row in rows:
        where = arm_text(row["structural"]["arm"], row["structural"]["arm_prob"])
        assert (f"possible structural abnormality of chromosome {row['type']}, {where} "
                f"({row['file']}," in w for w in warnings) or pytest.fail(row["file"])
    table = list(csv.DictReader(result_csv(result).splitlines()))
    assert [r["structural_arm"] for r in table] == [r["structural"]["arm"] for r in rows]
    with Pipeline(_with_threshold(arm_model[0], tmp_path / "none", 1.01), backend="ort") as pipe:
        quiet = pipe.run_case(images, files=files)
    assert not any("arm" in row["structural"] for row in quiet["chromosomes"])
    assert not any("structural abnormality" in w for w in quiet["warnings"])


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_eval_structural_reports_the_named_arms(arm_model, cells, tmp_path):
    folder = _with_threshold(arm_model[0], tmp_path, 0.0)  # every aberrant one flagged
    out = tmp_path / "arm.json"
    done = CliRunner().invoke(main, ["eval-structural", str(cells), "--model", str(folder),
                                     "--copies", "1", "--per-cell", "2", "--json", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    arm = report["arm"]
    assert arm["n_flagged"] == report["chromosomes"]["n_aberrant"]
    assert 0.0 <= arm["right_of_flagged"] <= 1.0 and set(arm["right_of_flagged_by_kind"]) == \
        set(report["chromosomes"]["by_kind"])
    assert "arm named right on" in done.output


def test_denver_groups_cover_every_type_once():
    from vfinfer.model.classes import DENVER_GROUPS, N_TYPES, denver_group

    assert sum(len(m) for m in DENVER_GROUPS.values()) == N_TYPES
    assert [denver_group(i) for i in (0, 4, 22, 12, 17, 19, 20, 23)] == list("ABCDEFGG")


def test_bench_reports_the_structural_stage(arm_model):
    from vfinfer.tools.benchmarking.bench import format_report, run_bench

    report = run_bench(arm_model[0], backend="ort", n_cases=2, n_chromosomes=5, warmup_s=0)
    assert "structural" not in report["stages_ms_per_case"]
    assert report["structural_ms_per_case"]["n"] == 2
    assert 0.0 < report["structural_added_fraction"] < 1.0
    assert "structural score" in format_report(report)
    plain = run_bench(demo_model_dir(), backend="ort", n_cases=1, n_chromosomes=5, warmup_s=0)
    assert "structural_ms_per_case" not in plain


def test_cell_canvas_keeps_the_cells_scale_and_the_top_row():
    from vfinfer.pipeline.structural import CELL_MEDIAN_SHARE, canvas_of

    long = np.full((80, 20), 100, np.uint8)
    short = np.full((40, 20), 100, np.uint8)
    median = 60.0
    a, b = (canvas_of(c, 96, 32, "cell", median) for c in (long, short))
    scale = CELL_MEDIAN_SHARE * 96 / median
    heights = [int((c < 255).any(axis=1).sum()) for c in (a, b)]
    assert heights == [round(80 * scale), round(40 * scale)]  # one scale: 2:1 stays 2:1
    assert (a[0] < 255).any() and (b[0] < 255).any()  # both start at the top row
    huge = canvas_of(np.full((400, 20), 100, np.uint8), 96, 32, "cell", median)
    assert (huge < 255).any(axis=1).sum() == 96  # too long for the scale: fitted
    each = canvas_of(np.full((40, 10), 100, np.uint8), 96, 32, "each")  # fitted: 96 tall
    assert (each < 255).any(axis=1).sum() == 96 and not (each[:, 0] < 255).any()
    with pytest.raises(ValueError, match="fit must be one of"):
        canvas_of(short, 96, 32, "stretch")


def test_structural_inputs_with_cell_fit_use_the_cells_median():
    cells = [np.full((h, 12), 90, np.uint8) for h in (30, 60, 90)]
    framed = [np.pad(c, 4, constant_values=255) for c in cells]
    x, cond = structural_inputs(framed, [0, 1, 2], 96, 32, fit="cell")
    heights = [int((row > 0).any(axis=1).sum()) for row in x[:, 0]]
    assert heights == [round(h * 0.45 * 96 / 60) for h in (30, 60, 90)]
    np.testing.assert_allclose(cond[:, 24], np.log([0.5, 1.0, 1.5]), atol=1e-6)


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_cell_fit_model_runtime_matches_reference(cells, tmp_path):
    from vfinfer_export.structural_data import ExampleOptions
    from vfinfer_export.structural_model import StructuralNet
    from vfinfer_export.structural_train import load_structural, train_structural

    net = StructuralNet(widths=(4, 8), hidden=8, height=32, width=16, fit="cell")
    with pytest.raises(ValueError, match="canvas fit"):
        train_structural(cells, tmp_path / "bad", epochs=1, net=net, options=ExampleOptions(
            32, 16, normals_per_cell=4, aberrant_per_cell=1), log=lambda _: None)
    folder, path = _tiny_model(cells, tmp_path / "run", tmp_path, fit="cell")
    section = json.loads((folder / "manifest.json").read_text())["structural"]
    assert section["input"]["fit"] == "cell" and "cell's factor" in section["input"]["image"]
    images, files = _cell_images(cells)
    with Pipeline(folder, backend="ort") as pipe:
        rows = pipe.run_case(images, files=files)["chromosomes"]
    types = [type_index(row["type"]) for row in rows]
    x, cond = structural_inputs(images, types, 32, 16, fit="cell")
    loaded, payload = load_structural(path)
    assert loaded.spec()["fit"] == "cell"
    np.testing.assert_allclose([row["structural"]["score"] for row in rows],
                               _reference(loaded, x, cond, payload["threshold"])[0], atol=1e-5)


def test_chromosome_operating_point_compares_models_at_one_specificity():
    from vfinfer.tools.evaluation.structural_screen import chromosome_operating_point

    normal = {("c", f"{i}.png"): (i / 100, 0, 0) for i in range(100)}  # 0.00 .. 0.99
    aberrant = [{"score": 0.995, "size": "0.2"}, {"score": 0.975, "size": "0.3"},
                {"score": 0.999, "size": "0.07"}, {"score": 0.5, "size": "0.06"}]
    point = chromosome_operating_point(normal, aberrant, 0.99)
    assert 0.98 < point["threshold"] <= 0.99  # flags 1 of the 100 normals (0.99)
    assert point["sensitivity_there"] == 0.5 and point["sensitivity_ge_10pct_there"] == 0.5


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_unknown_canvas_fit_is_refused_with_the_manifest_named(model, tmp_path):
    folder = tmp_path / "future"
    shutil.copytree(model, folder)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["structural"]["input"]["fit"] = "stretch"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="manifest.json: structural input fit 'stretch'"):
        Pipeline(folder, backend="ort")


@pytest.mark.slow  # trains and exports a tiny network (a few seconds)
def test_position_head_trains_but_is_not_exported(cells, tmp_path):
    torch = pytest.importorskip("torch")
    from vfinfer_export.structural_model import StructuralExport
    from vfinfer_export.structural_train import load_structural

    folder, path = _tiny_model(cells, tmp_path / "run", tmp_path, pool="rows", arm_head=True,
                               position_head=True)
    net, _ = load_structural(path)
    assert net.spec()["position_head"] is True
    x, cond = torch.rand(3, 1, 32, 16), torch.zeros(3, 25)
    with torch.no_grad():
        logit, arm, segment = net.forward_all(x, cond)
    assert logit.shape == (3,) and arm.shape == (3, 3) and segment.shape == (3, 2)
    assert float(segment.min()) >= 0.0 and float(segment.max()) <= 1.0
    with torch.no_grad():
        assert len(StructuralExport(net)(x, cond)) == 2  # score and arm only
    section = json.loads((folder / "manifest.json").read_text())["structural"]
    assert [o["name"] for o in section["outputs"]] == ["score", "arm"]


# -- two views (the mirror) and resuming ---------------------------------------------------------
def test_tta_gate_lets_no_unscored_chromosome_reach_the_threshold():
    for threshold in (0.3, 0.6, 0.74, 0.75, 0.9, 0.999):
        gate = tta_gate(threshold)
        assert gate <= TTA_GATE
        below = np.linspace(0.0, gate, 50, endpoint=False) if gate > 0 else np.zeros(0)
        assert np.all((below + 1.0) / 2 < threshold)  # a perfect mirror score cannot flag it
    assert tta_gate(0.99) == TTA_GATE and tta_gate(0.6) == pytest.approx(0.2)
    assert tta_gate(0.3) < 0  # every score is at the gate: all scored twice


class _BrightnessRunner:
    """A stand-in structural graph: the score is the mean darkness of each canvas's left half
    (so a mirror image scores its right half); records the batches it ran."""

    def __init__(self):
        self.batches = []

    def infer(self, feeds):
        image = feeds["image"]
        self.batches.append(len(image))
        score = image[..., : image.shape[-1] // 2].mean(axis=(1, 2, 3))
        return {"score": score[:, None].astype(np.float32)}

    def close(self):
        pass


def _scorer(tta, threshold=0.6):
    runner = _BrightnessRunner()
    section = {"file": "structural.onnx", "threshold": threshold, "tta": tta,
               "input": {"height": 32, "width": 16}}
    return StructuralScorer(section, lambda _: runner), runner


def _two_tone(left, right):
    """A 40 x 12 chromosome on white, its left and right halves of the given grays."""
    image = np.full((48, 20), 255, np.uint8)
    image[4:44, 4:10], image[4:44, 10:16] = left, right
    return image


def test_mirror_view_scores_only_the_chromosomes_that_could_be_flagged():
    images = [_two_tone(0, 160), _two_tone(0, 0), _two_tone(200, 120)]
    one, runner_one = _scorer("none")
    first, arms = one.assess(images, [0, 1, 2])
    mirrored, _ = one.assess([_two_tone(160, 0)], [0])
    two, runner_two = _scorer("mirror")
    scores, _ = two.assess(images, [0, 1, 2])
    assert runner_one.batches == [3, 1] and arms is None
    gate = tta_gate(0.6)  # 0.2: a first view under it cannot reach 0.6 on average
    assert (first >= gate).tolist() == [True, True, False]
    assert runner_two.batches == [3, 2]  # the pale one is scored once
    assert scores[0] == pytest.approx((first[0] + mirrored[0]) / 2, abs=1e-6)
    assert scores[1] == pytest.approx(first[1]) and scores[2] == first[2]
    assert (first >= 0.6).tolist() == [True, True, False]
    assert (scores >= 0.6).tolist() == [False, True, False]  # dark on one side only


def test_unknown_tta_is_refused_with_the_manifest_named():
    with pytest.raises(ModelDirError, match="manifest.json: structural tta 'flip'"):
        _scorer("flip")


def _resume_run(cells, out, epochs, resume=False):
    import torch

    from vfinfer_export.structural_data import ExampleOptions
    from vfinfer_export.structural_model import StructuralNet
    from vfinfer_export.structural_train import train_structural

    torch.manual_seed(3)
    net = StructuralNet(widths=(4, 8), hidden=8, height=32, width=16)
    options = ExampleOptions(32, 16, normals_per_cell=6, aberrant_per_cell=2)
    return train_structural(cells, out, epochs=epochs, seed=3, threads=1, val_share=0.5,
                            options=options, net=net, log=lambda _: None, resume=resume)


@pytest.mark.slow  # trains a tiny network three times (a few seconds)
def test_resume_reaches_the_weights_of_an_uninterrupted_run(cells, tmp_path):
    pytest.importorskip("torch")
    from vfinfer_export.structural_train import load_structural

    straight = load_structural(_resume_run(cells, tmp_path / "straight", 2))
    _resume_run(cells, tmp_path / "parts", 1)
    resumed = load_structural(_resume_run(cells, tmp_path / "parts", 2, resume=True))
    for name, value in straight[0].state_dict().items():
        assert np.array_equal(value.numpy(), resumed[0].state_dict()[name].numpy()), name
    assert resumed[1]["threshold"] == straight[1]["threshold"]
    assert [h["epoch"] for h in resumed[1]["training"]["history"]] == [1, 2]
    assert straight[1]["tta"] == "mirror" and straight[1]["training"]["tta"] == "mirror"
    with pytest.raises(ValueError, match="nothing to resume"):
        _resume_run(cells, tmp_path / "empty", 2, resume=True)


@pytest.mark.slow  # trains a tiny network (a few seconds)
def test_resume_refuses_another_network(cells, tmp_path):
    pytest.importorskip("torch")
    _resume_run(cells, tmp_path / "run", 1)
    args = ["train-structural", str(cells), "--out", str(tmp_path / "run"), "--epochs", "2",
            "--canvas", "32x16", "--widths", "4,4", "--threads", "1", "--resume"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code != 0 and "trained with another network" in done.output
    assert "Traceback" not in done.output
