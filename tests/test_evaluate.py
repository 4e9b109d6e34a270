"""``vfinfer eval``: hand-checkable metrics with a forced pipeline,
flip_half, files.

The forced pipeline recognises each image it is given (by its pixels, or the pixels of its
vertical flip) and answers with probabilities derived from the labels, with a few known,
deliberate mistakes, so every figure of the report can be worked out by hand.
"""

import csv
import hashlib
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vfinfer.model.classes import TYPE_NAMES
from vfinfer.tools.evaluation import evaluate as ev
from vfinfer.tools.evaluation.inference import flip_selection
from vfinfer.tools.evaluation.plots import confusion_png
from vfinfer.tools.evaluation.records import save_eval
from vfinfer.tools.evaluation.report import _describe_model, format_report
from vfinfer.tools.synthesis.cells import write_cases
from vfinfer.util.images import read_gray8

# Cell A: 46,XY (normal), cell B: 47,XX,+21, cell C: 46,XX,+21,-22 (both abnormal).
KARYOTYPES = [("46,XY", 1), ("47,XX,+21", 2), ("46,XX,+21,-22", 3)]
N_A, N_B, N_C = 46, 47, 46
N = N_A + N_B + N_C  # 139


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    names = [write_cases(k, root, seed=s)[0] for k, s in KARYOTYPES]
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return root, names, rows


def _key(image):
    return image.shape, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _first(rows, cell, type_label):
    return next(r["file"] for r in rows if r["cell"] == cell and r["type"] == str(type_label))


def forced_pipeline(root, rows, type_rows=None, wrong_polarity=()):
    """A Pipeline stand-in: right answers (one-hot) except for the given files.

    ``type_rows``: file -> 24 type probabilities to answer instead; ``wrong_polarity``: files
    whose polarity is answered wrongly. Flipped images are recognised and answered q-arm up.
    """
    table = {}
    for r in rows:
        image = read_gray8(root / r["file"])
        table[_key(image)] = (r["file"], int(r["type"]) - 1, False)
        table[_key(np.flipud(image))] = (r["file"], int(r["type"]) - 1, True)
    type_rows = type_rows or {}

    class Forced:
        seen = []  # (file, flipped) in the order the images were given

        def __init__(self, model_dir=None, backend="auto", threads=0, batch_size=None,
                     dispatch_mode="paper", precision=None):
            assert dispatch_mode == "none"  # evaluate dispatches itself
            self.batch_size = batch_size or 10
            self.manifest = SimpleNamespace(
                threshold=0.9,
                summary=lambda: {"dir": "forced", "preset": "forced",
                                 "source": {"kind": "test"}})
            self.backend = SimpleNamespace(describe=lambda: {"name": "forced"})
            self.config = SimpleNamespace(size_norm=0.0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def infer(self, images, cells=None):
            assert len(images) <= self.batch_size
            type_probs = np.zeros((len(images), 24))
            pol_probs = np.zeros((len(images), 2))
            for i, image in enumerate(images):
                file, true_type, flipped = table[_key(image)]
                Forced.seen.append((file, flipped))
                type_probs[i] = type_rows.get(file, np.eye(24)[true_type])
                polarity = 0 if flipped else 1
                if file in wrong_polarity:
                    polarity = 1 - polarity
                pol_probs[i, polarity] = 1.0
            return {"type_probs": type_probs, "polarity_probs": pol_probs}

    return Forced


@pytest.fixture()
def mistakes(labelled):
    """The deliberate mistakes, worked through dispatch (threshold 0.9) by hand:

    A1: a 21 of cell A answered 22 with P 0.6 (0.4 on 21). T_22 of A then holds 3, not all
        > 0.9: the two true 22s (P 1) stay and this one goes to its second choice, 21: fixed.
    A2: a 5 of cell A answered 2 (one-hot). T_2 holds 3, all P 1 > 0.9: all kept, still
        wrong; A gets warnings for 2 and 5 though it is normal (a false warning).
    C1: a 21 of cell C (which has three 21s and one 22) answered 22 (one-hot). T_22 holds 2:
        kept, still wrong, and now C's counts look normal: its abnormality is missed.
    B1: one image of cell B gets the wrong polarity.
    Cell B's types are all right; its three 21s (P 1) are kept: warned, caught.
    """
    root, (a, b, c), rows = labelled
    a1, a2, c1 = _first(rows, a, 21), _first(rows, a, 5), _first(rows, c, 21)
    b1 = next(r["file"] for r in rows if r["cell"] == b)
    p_a1 = np.zeros(24)
    p_a1[[21, 20]] = [0.6, 0.4]  # 0-based: 22 -> 21, 21 -> 20
    return {"type_rows": {a1: p_a1, a2: np.eye(24)[1], c1: np.eye(24)[21]},
            "wrong_polarity": {b1}, "files": (a1, a2, c1, b1)}


def test_hand_checkable_metrics(labelled, mistakes, monkeypatch):
    root, (a, b, c), rows = labelled
    forced = forced_pipeline(root, rows, mistakes["type_rows"], mistakes["wrong_polarity"])
    monkeypatch.setattr(ev, "Pipeline", forced)
    logged = []
    res = ev.evaluate(root, "labels.csv", batch_size=10, log=logged.append)

    assert (res["n_cells"], res["n_images"], res["n_flipped"]) == (3, N, 0)
    assert len(forced.seen) == N and not any(f for _, f in forced.seen)
    t, p = res["type"], res["polarity"]
    # no dispatch: A1, A2, C1 wrong -> 136/139; with dispatch A1 is fixed -> 137/139
    assert t["accuracy"] == pytest.approx(136 / 139)
    assert t["accuracy_dispatch"] == pytest.approx(137 / 139)
    # per case: A 44/46, B 47/47, C 45/46; with dispatch A 45/46
    assert t["acc_per_case"] == pytest.approx((44 / 46 + 1 + 45 / 46) / 3)
    assert t["acc_per_case_dispatch"] == pytest.approx((45 / 46 + 1 + 45 / 46) / 3)
    # true counts over the three cells: 6 of each autosome but 21 (2+3+3 = 8) and
    # 22 (2+2+1 = 5); X 1+2+2 = 5, Y 1. F1_j = 2TP / (2TP + FP + FN):
    #   type 2:  TP 6, FP 1 (A2)       -> 12/13
    #   type 5:  TP 5, FN 1 (A2)       -> 10/11
    #   type 21: TP 6, FN 2 (A1, C1)   -> 12/14
    #   type 22: TP 5, FP 2 (A1, C1)   -> 10/12
    #   the other 20 types: 1
    assert t["macro_f1"] == pytest.approx((20 + 12 / 13 + 10 / 11 + 12 / 14 + 10 / 12) / 24)
    # with dispatch: type 21 TP 7, FN 1 -> 14/15; type 22 TP 5, FP 1 -> 10/11
    assert t["macro_f1_dispatch"] == pytest.approx(
        (20 + 12 / 13 + 10 / 11 + 14 / 15 + 10 / 11) / 24)
    per_class = {row["class"]: row for row in t["per_class"]}
    assert per_class["2"]["precision"] == pytest.approx(6 / 7)
    assert per_class["21"]["recall"] == pytest.approx(6 / 8)
    assert (per_class["X"]["support"], per_class["Y"]["support"]) == (5, 1)
    cm = np.array(t["confusion"])
    assert cm.sum() == N and np.trace(cm) == 136
    assert cm[20, 21] == 2 and cm[4, 1] == 1  # 21 -> 22 twice, 5 -> 2 once
    assert np.trace(np.array(t["confusion_dispatch"])) == 137

    # polarity: every label 1, B1 answered 0 -> 138/139; class 1: TP 138, FN 1 -> F1
    # 276/277; class 0: TP 0, FP 1 -> F1 0, present (predicted once) -> mean of the two
    assert p["accuracy"] == pytest.approx(138 / 139)
    assert p["macro_f1"] == pytest.approx((276 / 277 + 0) / 2)
    assert p["acc_per_case"] == pytest.approx((1 + 46 / 47 + 1) / 3)
    assert [row["support"] for row in p["per_class"]] == [0, N]

    # abnormality: B and C abnormal, B caught, C missed; A normal but warned
    assert res["abnormality"] == {
        "n_abnormal": 2, "caught": 1, "missed": 1, "n_normal": 1, "false_warnings": 1,
        "caught_rate": 0.5, "false_warning_rate": 1.0,
        "counts_exact": 1, "counts_exact_abnormal": 1,  # only B's counts come out right
    }
    cells = {cell["cell"]: cell for cell in res["cells"]}
    assert [cell["cell"] for cell in res["cells"]] == [a, b, c]
    assert cells[a]["true_karyotype"] == "46,XY"
    assert cells[a]["predicted_karyotype"] == "46,XY,+2,-5"
    assert cells[b]["predicted_karyotype"] == "47,XX,+21" and cells[b]["warnings"]
    assert cells[c]["true_karyotype"] == "46,XX,+21,-22"
    assert cells[c]["predicted_karyotype"] == "46,XX" and cells[c]["warnings"] == []
    assert cells[a]["type_accuracy"] == pytest.approx(44 / 46)
    assert cells[a]["type_accuracy_dispatch"] == pytest.approx(45 / 46)

    a1, a2, c1, b1 = mistakes["files"]
    errors = {e["file"]: e for e in res["errors"]}
    assert set(errors) == {a1, a2, c1, b1}
    assert (errors[a1]["type"], errors[a1]["type_dispatch"]) == ("22", "21")
    assert (errors[a2]["type"], errors[a2]["type_dispatch"]) == ("2", "2")
    assert errors[b1]["polarity"] == "q-arm up"
    assert res["model"]["preset"] == "forced" and res["backend"] == {"name": "forced"}
    assert res["threshold"] == 0.9
    assert res["seconds"] >= res["inference_seconds"] > 0  # the whole run includes inference
    assert res["ms_per_image"] * N / 1000 == pytest.approx(res["inference_seconds"], abs=2e-3)
    assert logged[0].startswith(f"evaluating {N} images of 3 cells")

    report = format_report(res)
    # the Table IV row: F1 T/P, Acc. T/P, Acc. per Case T/P, Acc. per Case-D T
    figures = [100 * (20 + 12 / 13 + 10 / 11 + 12 / 14 + 10 / 12) / 24,
               100 * (276 / 277) / 2, 100 * 136 / 139, 100 * 138 / 139,
               100 * (44 / 46 + 1 + 45 / 46) / 3, 100 * (1 + 46 / 47 + 1) / 3,
               100 * (45 / 46 + 1 + 45 / 46) / 3]
    table_row = next(line for line in report.splitlines() if line.startswith("forced "))
    assert table_row.split()[1:] == [f"{v:.2f}" for v in figures]
    assert "Acc. per Case-D (%)" in report
    assert "21 -> 22: 2" in report and "5 -> 2: 1" in report
    assert "warned (caught): 1 (50.0 %); missed: 1" in report
    assert "warned (false warnings): 1 (100.0 %)" in report


def test_flip_half_flips_exactly_the_seeded_half(labelled, monkeypatch):
    root, _, rows = labelled
    forced = forced_pipeline(root, rows)
    monkeypatch.setattr(ev, "Pipeline", forced)
    res = ev.evaluate(root, "labels.csv", flip_half=True, seed=5, log=lambda *a: None)

    chosen = flip_selection(N, 5)
    assert len(chosen) == N // 2 == 69 and len(set(chosen.tolist())) == 69
    seen_flipped = [i for i, (_, flipped) in enumerate(forced.seen) if flipped]
    assert seen_flipped == chosen.tolist()  # images in CSV order; exactly those flipped
    assert [f for f, _ in forced.seen] == [r["file"] for r in rows]
    # labels flipped with them: the forced answers (0 for flipped) are all right
    assert res["n_flipped"] == 69 and res["flip_half"] and res["seed"] == 5
    assert res["polarity"]["accuracy"] == 1.0 and res["polarity"]["macro_f1"] == 1.0
    assert [row["support"] for row in res["polarity"]["per_class"]] == [69, 70]
    assert res["type"]["accuracy"] == 1.0 and res["errors"] == []
    assert "69 of 139 images flipped" in format_report(res)
    # seeded: same seed same half, another seed another half
    assert flip_selection(N, 5).tolist() == chosen.tolist()
    assert flip_selection(N, 6).tolist() != chosen.tolist()


# -- labels -------------------------------------------------------------------------------


# -- heat map and files ---------------------------------------------------------------------


def test_confusion_png_is_a_readable_picture():
    matrix = np.diag(np.arange(24) + 5)
    matrix[20, 21] = 3
    picture = cv2.imdecode(np.frombuffer(confusion_png(matrix, TYPE_NAMES),
                                         np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[0] > 24 * 30 and picture.shape[1] > 24 * 30
    assert picture.min() < 100  # dark diagonal cells and text
    with pytest.raises(ValueError, match="24 x 24"):
        confusion_png(np.zeros((2, 2)), TYPE_NAMES)


@pytest.mark.slow
def test_end_to_end_with_the_runtime(model_dir, synth_root, tmp_path):
    """The real runtime (random weights): every figure is reported, JSON and PNG written."""
    res = ev.evaluate(synth_root, "labels.csv", model_dir=model_dir, backend="ort",
                      flip_half=True, seed=0, log=lambda *a: None)
    assert (res["n_cells"], res["n_images"], res["n_flipped"]) == (2, 93, 46)
    report = format_report(res)
    for heading in ("F1 (%)", "Acc. (%)", "Acc. per Case (%)", "Acc. per Case-D (%)",
                    "Precision (%)", "Recall (%)", "abnormal cells", "false warnings",
                    _describe_model(res["model"]), "onnxruntime"):
        assert heading in report
    table_row = next(line for line in report.splitlines() if line.startswith("compact "))
    values = [float(v) for v in table_row.split()[1:]]
    assert len(values) == 7 and all(0 <= v <= 100 for v in values)
    assert res["abnormality"]["n_abnormal"] == 1 and res["abnormality"]["n_normal"] == 1
    verdict = res["verdict"]  # no domain figures: only the near-chance floor judges
    if not verdict["domain"]:  # the random-init export (the demo model has a domain)
        assert verdict["limits"] == {"near_chance_fraction": 0.5}
        assert verdict["not_karyotyped"] == 2 and verdict["reasons"] == {"near chance": 2}
        assert "no domain figures" in report

    json_path, png_path = save_eval(res, tmp_path / "out" / "eval.json")
    assert png_path == tmp_path / "out" / "eval_confusion.png"
    saved = json.loads(json_path.read_text())
    assert saved["type"]["accuracy"] == res["type"]["accuracy"]
    assert len(saved["type"]["confusion"]) == 24
    picture = cv2.imread(str(png_path))
    assert picture is not None and picture.shape[0] > 700
