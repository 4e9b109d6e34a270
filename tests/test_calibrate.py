"""Tests for vfinfer.tools.evaluation.calibrate: threshold choice, ROC, grid calibration on
synthetic score matrices, and the parameters' round trip through manifest.json."""

import json

import numpy as np
import pytest

from vfinfer.calls.karyotype import parse_karyotype
from vfinfer.calls.optimal import OptimalParams
from vfinfer.calls.optimal_params import load_params
from vfinfer.model.config import preset
from vfinfer.model.manifest import MANIFEST_NAME, build_manifest, load_manifest, write_json_atomic
from vfinfer.tools.evaluation.calibrate import (
    NO_ABNORMAL_WARNING,
    calibrate,
    choose_threshold,
    format_calibration,
    store_params,
)
from vfinfer.tools.evaluation.dispatch_figures import dispatch_comparison, roc_curve

SMALL_GRID = {"extra_penalty": (8.0, 12.0), "missing_penalty": (8.0, 12.0),
              "prior_gain": (0.03,), "prior_loss": (0.05,), "prior_sex": (0.02,)}


def synthetic_cell(karyotype, rng, strength=(4.0, 10.0), confusions=0):
    """Scores of a cell with the given true karyotype: noisy logits, the true type raised by
    a random amount; ``confusions`` autosome rows look more like an X than their own type
    (P(X) > P(true): in a male cell X is not over-full, so Algorithm 1 keeps the error)."""
    true = np.repeat(np.arange(24), parse_karyotype(karyotype))
    rng.shuffle(true)
    n = true.size
    logits = rng.normal(0.0, 1.0, size=(n, 24))
    logits[np.arange(n), true] += rng.uniform(*strength, size=n)
    autosomes = np.flatnonzero(true < 22)
    for i in rng.choice(autosomes, size=confusions, replace=False):
        logits[i, 22] = logits[i, true[i]] + 0.5
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), true


def synthetic_set(karyotypes, seed=0, confusions=1):
    rng = np.random.default_rng(seed)
    probs, true = {}, {}
    for k, name in enumerate(karyotypes):
        probs[f"cell{k:02d}"], true[f"cell{k:02d}"] = synthetic_cell(name, rng,
                                                                     confusions=confusions)
    return probs, true


TRAINING = (["46,XY"] * 10 + ["46,XX"] * 10
            + ["47,XY,+21", "47,XX,+18", "45,XY,-7", "45,X", "47,XXY", "47,XX,+13"])


# --------------------------------------------------------------------------- thresholds


def test_threshold_is_smallest_value_with_fewest_false_alarms():
    margins = np.array([5.0, 3.0, 7.0, -4.0, 1.2, 2.5, 6.0])
    abnormal = np.array([True, True, True, False, False, False, False])
    choice = choose_threshold(margins, abnormal)
    # every abnormal cell needs t <= 3.0; the normal margins below 3.0 are 1.2 and 2.5, so
    # any t in (2.5, 3.0] gives 1 false alarm (the 6.0); the smallest on the 0.01 grid: 2.51
    assert choice["threshold"] == pytest.approx(2.51)
    assert choice["interval"] == [2.5, 3.0]
    assert choice["sensitivity"] == 1.0 and choice["caught"] == 3
    assert choice["false_alarms"] == 1 and choice["false_alarm_rate"] == 0.25
    assert choice["target_met"] is True and choice["missed"] == []


def test_threshold_position_moves_within_the_interval():
    margins = np.array([5.0, 3.0, -4.0, 1.0])
    abnormal = np.array([True, True, False, False])
    assert choose_threshold(margins, abnormal, position=0.5)["threshold"] == pytest.approx(2.01)
    assert choose_threshold(margins, abnormal, position=1.0)["threshold"] == pytest.approx(3.0)


def test_threshold_with_lower_sensitivity_target():
    margins = np.array([5.0, 0.5, -4.0, 1.0])
    abnormal = np.array([True, True, False, False])
    choice = choose_threshold(margins, abnormal, min_sensitivity=0.5)
    assert choice["threshold"] == pytest.approx(1.01)
    assert choice["sensitivity"] == 0.5 and choice["false_alarms"] == 0
    assert choice["missed"] == [1]


def test_threshold_never_below_zero_and_reports_unreachable_target():
    margins = np.array([3.0, -1.0, -5.0])
    abnormal = np.array([True, True, False])
    choice = choose_threshold(margins, abnormal)
    assert choice["target_met"] is False
    # catching both abnormal cells needs a threshold of -1, below zero: it is raised to the
    # first step above 0 (the abnormal hypothesis must win), and the normal cell stays unflagged
    assert choice["threshold"] == pytest.approx(0.01) and choice["interval"] == [0.0, 3.0]
    assert choice["false_alarms"] == 0 and choice["caught"] == 1
    assert choice["sensitivity"] == 0.5 and choice["missed"] == [1]


def test_threshold_without_abnormal_cells_is_none():
    choice = choose_threshold(np.array([-3.0, -2.0]), np.array([False, False]))
    assert choice["threshold"] is None and choice["sensitivity"] is None
    assert choice["false_alarms"] == 0


# --------------------------------------------------------------------------- ROC


def test_roc_perfect_reversed_and_tied():
    labels = [True, True, False, False]
    assert roc_curve([3.0, 2.0, 1.0, 0.0], labels)["auc"] == pytest.approx(1.0)
    assert roc_curve([0.0, 1.0, 2.0, 3.0], labels)["auc"] == pytest.approx(0.0)
    assert roc_curve([1.0, 1.0, 1.0, 1.0], labels)["auc"] == pytest.approx(0.5)
    curve = roc_curve([3.0, 2.0, 1.0, 0.0], labels)
    assert curve["points"][0] == {"threshold": None, "tpr": 0.0, "fpr": 0.0, "tp": 0, "fp": 0}
    assert curve["points"][-1]["tpr"] == 1.0 and curve["points"][-1]["fpr"] == 1.0
    assert roc_curve([1.0, 2.0], [False, False])["auc"] is None
    json.dumps(curve)


# --------------------------------------------------------------------------- comparison


def test_comparison_on_confused_normal_cells():
    probs, true = synthetic_set(["46,XY"] * 6 + ["47,XY,+21"], seed=1, confusions=1)
    out = dispatch_comparison(probs, true, OptimalParams())
    assert out["n_cells"] == 7
    assert out["acc_per_case"]["optimal"] > out["acc_per_case"]["none"]
    assert out["acc_per_case"]["optimal"] >= out["acc_per_case"]["paper"]
    assert out["flags"]["optimal"]["false_warnings"] == 0
    assert out["flags"]["optimal"]["caught"] == 1
    assert out["flags"]["paper"]["false_warnings"] > 0
    assert [c["cell"] for c in out["cells"]] == list(probs)
    json.dumps(out)


# --------------------------------------------------------------------------- calibration


def test_calibration_catches_every_abnormal_training_cell():
    probs, true = synthetic_set(TRAINING, seed=2, confusions=1)
    params, report = calibrate(probs, true, grid=SMALL_GRID)
    assert isinstance(params, OptimalParams)
    assert report["n_cells"] == len(TRAINING) and report["n_abnormal"] == 6
    assert report["threshold_calibrated"] is True
    flags = report["training"]["flags"]["optimal"]
    assert flags["caught"] == 6 and flags["missed"] == 0
    assert flags["false_warnings"] == 0
    assert report["training"]["flags"]["paper"]["false_warnings"] > 0
    assert report["missed_cells"] == []
    assert params.threshold >= 0
    low, high = report["threshold_interval"]
    assert low < params.threshold <= high
    acc = report["training"]["acc_per_case"]
    assert acc["optimal"] >= acc["paper"] and acc["optimal"] > acc["none"]
    assert params.extra_penalty in (8.0, 12.0) and params.missing_penalty in (8.0, 12.0)
    assert report["chosen"] == params.to_dict()
    assert len(report["grid_top"]) == report["grid_size"] == 4
    json.dumps(report)
    text = format_calibration(report)
    assert "optimal" in text and "Algorithm 1" in text


def test_calibration_without_abnormal_cells_warns_loudly():
    probs, true = synthetic_set(["46,XY"] * 4 + ["46,XX"] * 4, seed=3)
    params, report = calibrate(probs, true, grid=SMALL_GRID)
    assert report["n_abnormal"] == 0
    assert report["threshold_calibrated"] is False
    assert params.threshold == OptimalParams().threshold
    expected = NO_ABNORMAL_WARNING.format(threshold=OptimalParams().threshold)
    assert report["warnings"][0] == expected
    assert "NO abnormal cells" in expected
    assert expected in format_calibration(report).splitlines()


def test_calibration_checks_its_inputs():
    probs, true = synthetic_set(["46,XY"], seed=4)
    with pytest.raises(ValueError, match="probability rows"):
        calibrate(probs, {"cell00": true["cell00"][:-1]}, grid=SMALL_GRID)
    with pytest.raises(ValueError, match="no true types"):
        calibrate(probs, {}, grid=SMALL_GRID)
    with pytest.raises(ValueError, match="unknown grid key"):
        calibrate(probs, true, grid={"penalty": (1.0,)})


# --------------------------------------------------------------------------- manifest


@pytest.fixture()
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    data = build_manifest(preset("compact"), graphs={"gnet": {"file": "gnet.onnx"}},
                          producer={"vfinfer": "test"}, source={"kind": "test"})
    write_json_atomic(folder / MANIFEST_NAME, data)
    return folder


def test_store_and_load_params(model_dir):
    before = json.loads((model_dir / MANIFEST_NAME).read_text())
    params = OptimalParams(prior_gain=0.1, extra_penalty=12.0, threshold=1.75)
    report = {"n_cells": 30, "n_abnormal": 6, "created": "2026-01-01T00:00:00+00:00",
              "threshold_calibrated": True, "figure": np.float64(0.5)}
    path = store_params(model_dir, params, report)
    after = json.loads(path.read_text())
    assert after["dispatch"]["optimal"] == params.to_dict()
    assert after["dispatch"]["calibration"]["figure"] == 0.5
    # everything else is untouched, including the paper's dispatch settings
    assert after["dispatch"]["threshold"] == before["dispatch"]["threshold"]
    assert after["dispatch"]["algorithm"] == "paper"
    assert {k: v for k, v in after.items() if k != "dispatch"} == \
        {k: v for k, v in before.items() if k != "dispatch"}
    assert not list(model_dir.glob(".*.tmp"))  # no temporary file left behind

    for source in (model_dir, load_manifest(model_dir), after):
        loaded = load_params(source)
        assert loaded.params == params and loaded.calibrated is True
        assert "calibrated on 30 cells (6 abnormal)" in loaded.note


def test_load_params_defaults_when_absent(model_dir):
    params, calibrated, note = load_params(model_dir)
    assert params == OptimalParams() and calibrated is False
    assert "uncalibrated defaults" in note


def test_load_params_rejects_bad_values(model_dir):
    data = json.loads((model_dir / MANIFEST_NAME).read_text())
    data["dispatch"]["optimal"] = {"threshold": -1.0}
    write_json_atomic(model_dir / MANIFEST_NAME, data)
    with pytest.raises(ValueError, match="bad dispatch.optimal"):
        load_params(model_dir)


def test_stored_calibration_without_abnormal_cells_is_not_calibrated(model_dir):
    probs, true = synthetic_set(["46,XY"] * 2, seed=5)
    params, report = calibrate(probs, true, grid=SMALL_GRID)
    store_params(model_dir, params, report)
    loaded = load_params(model_dir)
    assert loaded.calibrated is False
    assert "NOT calibrated" in loaded.note

