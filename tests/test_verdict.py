"""The per-cell verdict (vfinfer.calls.verdict) and its domain figures (vfinfer domain): a
karyotype for cells like the model's own, "not karyotyped" with the reason otherwise."""

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vfinfer.calls.verdict import judge
from vfinfer.cli import main
from vfinfer.model.config import preset
from vfinfer.model.manifest import demo_model_dir, load_manifest
from vfinfer.pipeline import Pipeline
from vfinfer.tools.evaluation.domain import fit_domain, store_domain
from vfinfer.tools.synthesis.cells import write_cases
from vfinfer.util.images import read_case


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A copy of the demo model (trained on synthetic cells) with its domain fitted on six
    synthetic cells it was not trained on; and three more cells to test with."""
    root = tmp_path_factory.mktemp("verdict")
    model = root / "model"
    shutil.copytree(demo_model_dir(), model)
    data = root / "cells"
    for seed, karyotype in ((301, "46,XY"), (302, "46,XX"), (303, "46,XY")):
        write_cases(karyotype, data, seed=seed, cases=2)
    fit_dirs = sorted(p for p in data.iterdir() if p.is_dir())
    domain = store_domain(model, fit_dirs, log=lambda *a: None)
    tests = root / "tests"
    write_cases("46,XX", tests, seed=404)
    write_cases("47,XY,+21", tests, seed=9002)
    return model, domain, sorted(p for p in tests.iterdir() if p.is_dir())


def changed(case_dir, out_dir, change):
    out_dir.mkdir(parents=True)
    for path in sorted(case_dir.glob("*.png")):
        cv2.imwrite(str(out_dir / path.name), change(cv2.imread(str(path), 0)))
    return out_dir


def test_domain_is_stored_with_its_limits(fitted):
    model, domain, _ = fitted
    stored = json.loads((model / "manifest.json").read_text())["domain"]
    assert stored["fitted_on"]["cells"] == 6 and stored["limits"]["background"] == "light"
    assert stored["limits"]["low_confidence_fraction"] == pytest.approx(
        min(1.0, stored["seen"]["low_confidence_max"] + 0.15))
    assert stored["limits"]["median_abs_tilt"] is not None  # no rotate-and-crop in this model
    assert domain["refused_fit_cells"] == {}


def test_in_domain_cells_are_karyotyped_and_a_trisomy_is_kept(fitted):
    model, _, (normal, trisomy) = fitted
    with Pipeline(model, dispatch_mode="optimal") as pipe:
        results = [pipe.run_case(read_case(d)[0], name=d.name) for d in (normal, trisomy)]
    assert [r["verdict"]["karyotyped"] for r in results] == [True, True]
    assert results[0]["karyotype"] == "46,XX" and results[1]["karyotype"] == "47,XY,+21"


@pytest.mark.parametrize("change, reason", [
    (lambda img: 255 - img, "dark background"),
    (lambda img: np.rot90(img).copy(), "degrees from vertical"),
])
def test_out_of_domain_cells_are_not_karyotyped(fitted, tmp_path, change, reason):
    model, _, (normal, _) = fitted
    odd = changed(normal, tmp_path / "odd", change)
    with Pipeline(model) as pipe, Pipeline(model, force_karyotype=True) as forcing:
        result = pipe.run_case(read_case(odd)[0], name="odd")
        forced = forcing.run_case(read_case(odd)[0], name="odd")
    assert result["karyotype"] is None and not result["verdict"]["karyotyped"]
    assert result["verdict"]["text"].startswith("not karyotyped: ")
    text = result["verdict"]["text"]
    assert reason in text and result["warnings"][0] == text
    assert "withheld_karyotype" in result["verdict"] and "abnormality" not in result
    assert forced["karyotype"] is not None and forced["verdict"]["forced"]


def test_noise_is_refused_for_its_grain(fitted):
    """Noise that the network still calls with confidence is refused by its grain."""
    model, _, _ = fitted
    rng = np.random.default_rng(0)
    images = []
    for _ in range(46):  # dark blobs of texture on white: no chromosome the model knows
        image = np.full((90, 40), 255, np.uint8)
        image[10:80, 8:32] = rng.integers(0, 200, (70, 24))
        images.append(image)
    with Pipeline(model) as pipe:
        result = pipe.run_case(images)
    assert result["karyotype"] is None and "grainier than any banded" in result["verdict"]["text"]


def test_run_prints_the_verdict_and_exits_0(fitted, tmp_path):
    model, _, (normal, _) = fitted
    odd = changed(normal, tmp_path / "odd_cell", lambda img: 255 - img)
    out = tmp_path / "out"
    done = CliRunner().invoke(main, ["run", str(odd), "--model", str(model), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "odd_cell: 46 chromosomes, not karyotyped: images unlike" in done.output
    result = json.loads((out / "odd_cell" / "result.json").read_text())
    assert result["karyotype"] is None and (out / "odd_cell" / "karyogram.png").is_file()


def test_judge_without_domain_says_it_cannot_tell():
    probs = np.zeros((4, 24))
    probs[:, 0], probs[:, 1] = 0.6, 0.4  # every call unsure (below 0.9) but not near chance
    facts = [{"background": "light", "tilt": 0.0}] * 4
    verdict = judge(probs, 0.9, facts, None)
    assert verdict["karyotyped"] and "no domain figures" in verdict["text"]
    assert verdict["reasons"] == [] and verdict["figures"]["near_chance_fraction"] == 0.0


def test_judge_without_domain_refuses_near_chance_calls():
    """An untrained model's probabilities sit near 1/24: no karyotype from those, even
    without domain figures; exactly half the calls near chance is still karyotyped."""
    facts = [{"background": "light", "tilt": 0.0}] * 4
    verdict = judge(np.full((4, 24), 1 / 24), 0.9, facts, None)
    assert not verdict["karyotyped"] and verdict["text"].startswith("not karyotyped: 4 of 4 "
                                                                     "calls below probability 0.5")
    assert verdict["limits"] == {"near_chance_fraction": 0.5}
    half = np.zeros((4, 24))
    half[:2, 3] = 1.0
    half[2:] = 1 / 24
    assert judge(half, 0.9, facts, None)["karyotyped"]
    forced = judge(np.full((4, 24), 1 / 24), 0.9, facts, None, force=True)
    assert forced["karyotyped"] and forced["forced"] and "near chance" not in forced["text"]
    assert "cannot tell these chromosomes apart" in forced["text"]


def test_fit_domain_rules():
    figures = [{"n": 46, "low_confidence_fraction": 0.1, "dark_background_fraction": 1.0,
                "median_abs_tilt": 40.0, "median_grain": 10.0},
               {"n": 46, "low_confidence_fraction": 0.2, "dark_background_fraction": 1.0,
                "median_abs_tilt": 50.0, "median_grain": 12.0}]
    from dataclasses import replace
    rotating = replace(preset("compact"), rotate_crop="principal-axis")
    domain = fit_domain(figures, rotating, "test")
    assert domain["limits"] == {"low_confidence_fraction": pytest.approx(0.35),
                                "background": "dark", "median_abs_tilt": None,
                                "median_grain": pytest.approx(18.0)}
    probs = np.zeros((4, 24))
    probs[:, 0] = 1.0
    light = [{"background": "light", "tilt": 80.0}] * 4
    assert "light background" in judge(probs, 0.9, light, domain)["text"]
    dark = [{"background": "dark", "tilt": 80.0, "grain": 17.9}] * 4  # tilt: rotate-and-crop
    assert judge(probs, 0.9, dark, domain)["karyotyped"]
    grainy = [{"background": "dark", "tilt": 0.0, "grain": 18.1}] * 4
    assert judge(probs, 0.9, grainy, domain)["reasons"] == [
        "images unlike the model's training data (chromosomes grainier than any banded one it "
        "knows: 18 gray levels between neighbouring pixels, median; in-domain cells at most "
        "12, limit 18)"]
    old = {k: v for k, v in domain["limits"].items() if k != "median_grain"}
    assert judge(probs, 0.9, grainy, domain | {"limits": old})["karyotyped"]  # fitted before


def test_eval_counts_the_verdicts(fitted, tmp_path):
    from vfinfer.tools.evaluation.evaluate import evaluate
    from vfinfer.tools.evaluation.report import format_report

    model, _, (normal, trisomy) = fitted
    data = normal.parent
    res = evaluate(data, model_dir=model, log=lambda *a: None, simulate=0)
    verdict = res["verdict"]
    assert verdict["domain"] and verdict["n_cells"] == 2 and verdict["not_karyotyped"] == 0
    assert verdict["abnormal_cells"] == 1 and verdict["abnormal_not_karyotyped"] == []
    assert "verdict   not karyotyped: 0 of 2 cells" in format_report(res)
    inverted = tmp_path / "inverted"
    changed(normal, inverted / normal.name, lambda img: 255 - img)
    (inverted / "labels.csv").write_text(
        "".join(line for line in (data / "labels.csv").read_text().splitlines(True)
                if line.startswith("cell,") or line.startswith(normal.name + ",")))
    refused = evaluate(inverted, model_dir=model, log=lambda *a: None, simulate=0)["verdict"]
    assert refused["not_karyotyped"] == 1 and refused["rate"] == 1.0
    assert refused["cells_not_karyotyped"] == [normal.name]


def test_a_model_that_gets_its_own_cells_wrong_withholds_that_dispatch(fitted, tmp_path):
    model, _, (normal, _) = fitted
    weak = tmp_path / "weak"
    shutil.copytree(model, weak)
    data = json.loads((weak / "manifest.json").read_text())
    data["domain"]["karyotype_exact"] = {"none": 0.1, "paper": 0.2, "optimal": 0.8, "cells": 10}
    (weak / "manifest.json").write_text(json.dumps(data))
    images = read_case(normal)[0]
    with Pipeline(weak, dispatch_mode="paper") as paper, \
            Pipeline(weak, dispatch_mode="optimal") as optimal, Pipeline(weak) as auto:
        refused, kept = paper.run_case(images), optimal.run_case(images)
        chosen = auto.run_case(images)
    assert refused["karyotype"] is None
    text = refused["verdict"]["text"]
    assert "with --dispatch paper are not reliable: only 20% of its 10" in text
    assert "--dispatch optimal got 80% right" in text
    assert kept["karyotype"] is not None and kept["verdict"]["karyotyped"]
    assert chosen["dispatch"] == "optimal" and chosen["karyotype"] == kept["karyotype"]
    assert "optimal 0.80 on its 10 validation cells" in chosen["dispatch_auto_reason"]


def test_domain_with_labels_records_exact_karyotypes(fitted, tmp_path):
    model, _, (normal, trisomy) = fitted
    copy = tmp_path / "m"
    shutil.copytree(model, copy)
    domain = store_domain(copy, [normal, trisomy], log=lambda *a: None,
                          labels_csv=normal.parent / "labels.csv")
    exact = domain["karyotype_exact"]
    assert exact["cells"] == 2 and set(exact) == {"none", "paper", "optimal", "cells"}
    assert exact["optimal"] == 1.0  # the demo model calls 46,XX and 47,XY,+21 right


def test_segmented_cells_need_a_domain_fitted_on_segmented_cells(fitted, tmp_path):
    """Cut-outs from a metaphase are refused by a model validated on ready-made cut-outs
    only; once 'vfinfer domain' ran on segmented cells (a 'vfinfer segment' directory), the
    same cut-outs are judged by the figures alone."""
    model, domain, (normal, _) = fitted
    assert domain["fitted_on"]["segmented"] is False
    probs = np.full((46, 24), 0.001)
    probs[:, 0] = 0.977
    facts = [{"background": "light", "tilt": 0.0, "segmented": True}] * 46
    verdict = judge(probs, 0.9, facts, domain)
    assert not verdict["karyotyped"] and "not validated" in verdict["text"]
    as_cut_outs = judge(probs, 0.9, [dict(f, segmented=False) for f in facts], domain)
    assert "not validated" not in as_cut_outs["text"]
    segmented = tmp_path / "segmented"
    shutil.copytree(normal, segmented)
    (segmented / "segmentation").mkdir()  # what 'vfinfer segment' leaves beside its cut-outs
    refit = store_domain(model, [segmented], log=lambda *a: None, dry_run=True)
    assert refit["fitted_on"]["segmented"] is True
    assert "not validated" not in judge(probs, 0.9, facts, refit)["text"]


def test_segmented_and_cut_out_cells_are_judged_by_their_own_figures(fitted, tmp_path):
    """'vfinfer domain' on segmented cells fills domain_segmented and leaves the cut-outs'
    domain as it was; each kind of cell is then judged by its own section, both ways."""
    model, domain, (normal, _) = fitted
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    segmented = tmp_path / "segmented"
    shutil.copytree(normal, segmented)
    (segmented / "segmentation").mkdir()
    section = store_domain(copy, [segmented], log=lambda *a: None)
    manifest = load_manifest(copy)
    assert manifest.domain == json.loads((model / "manifest.json").read_text())["domain"]
    assert manifest.segmented_domain == section and section["fitted_on"]["segmented"]
    out = tmp_path / "out"
    done = CliRunner().invoke(main, ["run", str(segmented), str(normal), "--model", str(copy),
                                     "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "like the model's in-domain segmented cells" in json.loads(
        (out / "segmented" / "result.json").read_text())["verdict"]["text"]
    assert json.loads((out / normal.name / "result.json").read_text())["verdict"]["text"] == \
        "karyotyped: the cell is like the model's in-domain cells"

    probs = np.full((46, 24), 0.001)
    probs[:, 0] = 0.977
    probs[:20, 0] = 0.6  # 43 % of the calls below 0.9: between the two limits below
    strict = dict(domain, limits=dict(domain["limits"], low_confidence_fraction=0.2))
    loose = dict(section, limits=dict(section["limits"], low_confidence_fraction=0.6))
    facts = [{"background": "light", "tilt": 0.0, "segmented": True}] * 46
    on_segmented = judge(probs, 0.9, facts, strict, segmented_domain=loose)
    assert on_segmented["karyotyped"] and on_segmented["limits"] == loose["limits"]
    cut_outs = [dict(f, segmented=False) for f in facts]
    on_cut_outs = judge(probs, 0.9, cut_outs, strict, segmented_domain=loose)
    assert not on_cut_outs["karyotyped"] and "20 of 46 calls below" in on_cut_outs["text"]
    tight = dict(loose, limits=dict(loose["limits"], low_confidence_fraction=0.2))
    assert not judge(probs, 0.9, facts, None, segmented_domain=tight)["karyotyped"]


def test_segmented_cells_are_withheld_without_domain_figures():
    """A model without domain figures (a plain export) was never checked on chromosomes cut
    out of a metaphase: such a cell gets no karyotype, however confident the calls; the same
    calls on ready-made cut-outs keep the no-domain behaviour (karyotyped with a note)."""
    probs = np.full((46, 24), 0.001)
    probs[:, 0] = 0.977
    facts = [{"background": "light", "tilt": 0.0, "segmented": True}] * 46
    verdict = judge(probs, 0.9, facts, None)
    assert not verdict["karyotyped"]
    assert verdict["text"].startswith("not karyotyped: chromosomes segmented from a metaphase, "
                                      "but this model has no domain figures")
    assert "'vfinfer domain' on segmented cells of your lab validates them" in verdict["text"]
    assert judge(probs, 0.9, facts, None, force=True)["forced"]
    cut_outs = judge(probs, 0.9, [dict(f, segmented=False) for f in facts], None)
    assert cut_outs["karyotyped"] and "no domain figures" in cut_outs["text"]


def test_metaphase_run_without_domain_figures_is_not_karyotyped(tmp_path):
    """``vfinfer run IMAGE`` with a model whose manifest has no domain section: the cell is
    refused for its segmentation, with the reason on its line and in result.json."""
    model = tmp_path / "plain"
    shutil.copytree(demo_model_dir(), model)
    data = json.loads((model / "manifest.json").read_text())
    del data["domain"], data["domain_segmented"]
    (model / "manifest.json").write_text(json.dumps(data))
    image = demo_model_dir().parents[1] / "examples" / "metaphase-46XY.png"
    out = tmp_path / "out"
    done = CliRunner().invoke(main, ["run", str(image), "--model", str(model), "--out",
                                     str(out)])
    assert done.exit_code == 0, done.output
    assert "chromosomes, not karyotyped: chromosomes segmented from a " \
           "metaphase, but this model has no domain figures" in done.output
    result = json.loads((out / "metaphase-46XY" / "result.json").read_text())
    assert result["karyotype"] is None and result["verdict"]["withheld_karyotype"]


def test_quick_start_metaphase_gives_46_objects_and_is_46xy_when_forced(tmp_path):
    """The README's quick-start metaphase: the demo segmentation finds its 46 chromosomes;
    the verdict withholds the karyotype (the demo's segmented figures), and with
    ``--force-karyotype`` the call is 46,XY."""
    image = demo_model_dir().parents[1] / "examples" / "metaphase-46XY.png"
    held = CliRunner().invoke(main, ["run", str(image), "--out", str(tmp_path / "held")])
    assert held.exit_code == 0, held.output
    assert "metaphase-46XY: 46 chromosomes, not karyotyped" in held.output
    forced = CliRunner().invoke(main, ["run", str(image), "--out", str(tmp_path / "forced"),
                                       "--force-karyotype"])
    assert forced.exit_code == 0, forced.output
    result = json.loads((tmp_path / "forced" / "metaphase-46XY" / "result.json").read_text())
    assert result["n_chromosomes"] == 46 and result["karyotype"] == "46,XY"
