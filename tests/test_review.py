"""A person's review of a case (vfinfer.io.review): corrections applied and saved beside the
original, the audit trail, one winner among concurrent saves, and the reviewed cases as
labelled data for ``vfinfer eval --reviewed`` and ``vfinfer train --add-corrections``."""

import csv
import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.io.review import (
    Correction,
    ReviewConflict,
    ReviewedCase,
    ReviewError,
    ReviewStore,
    UnknownCase,
    reviewed_labels,
)
from vfinfer.segment.cutouts import joined_cutout
from vfinfer.serve.server import read_token

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRISOMY = "syn9002-47XY+21-0"


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """The trisomy 21 example cell run with --keep-images by the demo model (kept pristine:
    tests copy it)."""
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(main, ["run", str(EXAMPLES / TRISOMY), "--out", str(out),
                                       "--keep-images", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def store(classified, tmp_path):
    shutil.copytree(classified, tmp_path / "cases")
    return ReviewStore(tmp_path / "cases")


def truth():
    """{file: (type, polarity name)} of the trisomy cell, from examples/labels.csv."""
    with open(EXAMPLES / "labels.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["cell"] == TRISOMY]
    names = {"23": "X", "24": "Y"}
    return {Path(row["file"]).name: (names.get(row["type"], row["type"]),
                                     "q-arm down" if row["polarity"] == "1" else "q-arm up")
            for row in rows}


def test_run_keeps_the_images_a_review_needs(classified):
    case = ReviewedCase(classified / TRISOMY)
    images = case.images()
    assert len(images) == len(case.original["chromosomes"]) == 47
    assert all(image.dtype == np.uint8 and image.ndim == 2 for image in images)


def test_a_save_recomputes_the_karyotype_and_keeps_the_original(store):
    case_dir = store.root / TRISOMY
    before = {name: (case_dir / name).read_bytes()
              for name in ("result.json", "karyogram.png", "result.csv")}
    result = json.loads(before["result.json"])
    assert result["karyotype"] == "47,XY,+21"
    extra = [i for i, c in enumerate(result["chromosomes"]) if c["type"] == "21"][0]
    reviewed, line = store.save(TRISOMY, [Correction(extra, deleted=True),
                                          Correction(0, structural="del(5)(q31)")],
                                "A. Reviewer", token="lab", base_revision=0)
    assert reviewed["karyotype"] == "46,XY,del(5)(q31)"
    assert reviewed["n_chromosomes"] == 46
    assert reviewed["review"]["automatic_karyotype"] == "47,XY,+21"
    assert any("del(5)(q31)" in w for w in reviewed["warnings"])
    assert {name: (case_dir / name).read_bytes() for name in before} == before
    saved = json.loads((case_dir / "review" / "result.json").read_text())
    assert saved == reviewed and saved["review"]["revision"] == 1
    audit = [json.loads(x) for x in (case_dir / "review" / "audit.jsonl").read_text().split("\n")
             if x]
    assert audit == [line]
    assert line["reviewer"] == "A. Reviewer" and line["token"] == "lab"
    assert {(c["index"], c["field"], c["from"], c["to"]) for c in line["changes"]} == {
        (extra, "deleted", False, True), (0, "structural", None, "del(5)(q31)")}
    report = (case_dir / "review" / "report.html").read_text()
    assert "46,XY,del(5)(q31)" in report and "A. Reviewer" in report
    rows = list(csv.DictReader(open(case_dir / "review" / "result.csv")))
    assert len(rows) == 46
    picture = cv2.imread(str(case_dir / "review" / "karyogram.png"))
    assert picture is not None and picture.shape[1] > 500


def test_the_audit_says_what_changed_since_the_last_save(store):
    store.save(TRISOMY, [Correction(1, type="X")], "first", base_revision=0)
    _, line = store.save(TRISOMY, [Correction(1, type="Y"), Correction(2, polarity="q-arm up")],
                         "second", base_revision=1)
    original = store.open(TRISOMY).original["chromosomes"]
    assert {(c["index"], c["field"], c["from"], c["to"]) for c in line["changes"]} == {
        (1, "type", "X", "Y"), (2, "polarity", original[2]["polarity"], "q-arm up")}
    assert [entry["reviewer"] for entry in store.open(TRISOMY).audit()] == ["first", "second"]


def test_of_two_saves_on_one_revision_one_wins(store):
    outcomes, start = [], threading.Barrier(2)

    def save(who, kind):
        start.wait()
        try:
            store.save(TRISOMY, [Correction(0, type=kind)], who, base_revision=0)
            outcomes.append(("saved", who))
        except ReviewConflict:
            outcomes.append(("conflict", who))

    threads = [threading.Thread(target=save, args=args) for args in (("a", "5"), ("b", "6"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(status for status, _ in outcomes) == ["conflict", "saved"]
    winner = [who for status, who in outcomes if status == "saved"][0]
    case = store.open(TRISOMY)
    assert case.revision() == 1 and [e["reviewer"] for e in case.audit()] == [winner]
    assert case.reviewed()["chromosomes"][0]["type"] == {"a": "5", "b": "6"}[winner]
    assert not list((store.root / TRISOMY / "review").glob(".*.tmp"))


@pytest.mark.parametrize("fix, message", [
    (Correction(99, type="1"), "chromosomes 0-46"),
    (Correction(0, type="23"), "not one of 1-22, X, Y"),
    (Correction(0, polarity="up"), "polarity 'up'"),
    (Correction(0, joined_into=0), "cannot join it"),
    (Correction(0, structural="x" * 61), "over 60 characters"),
])
def test_a_correction_that_cannot_apply_is_refused(store, fix, message):
    with pytest.raises(ReviewError, match=message):
        store.save(TRISOMY, [fix], "r")
    assert store.open(TRISOMY).reviewed() is None


def test_a_chromosome_joined_into_cannot_be_removed(store):
    with pytest.raises(ReviewError, match="joined into"):
        store.save(TRISOMY, [Correction(1, joined_into=2), Correction(2, deleted=True)], "r")


def test_unknown_and_unsafe_case_names(store):
    for name in ("nope", "../cases", ".hidden", ""):
        with pytest.raises(UnknownCase):
            store.open(name)


def test_joined_pieces_are_cut_again_as_one(tmp_path):
    gray = np.full((80, 80), 255, np.uint8)
    gray[10:40, 30:38] = 60
    gray[40:70, 30:38] = 90  # the same chromosome, found as two pieces
    top = [[30, 10], [37, 10], [37, 39], [30, 39]]
    bottom = [[30, 40], [37, 40], [37, 69], [30, 69]]
    image = joined_cutout(gray, [top, bottom], "light")
    dark = image < 200
    assert dark.sum() >= 0.9 * 60 * 8
    assert np.ptp(np.nonzero(dark)[0]) >= 55  # the whole length, upright


def test_reviewed_cases_are_labelled_data(store, tmp_path):
    labels = truth()
    rows = store.open(TRISOMY).original["chromosomes"]
    fixes = []
    for i, row in enumerate(rows):
        want_type, want_polarity = labels[row["file"]]
        if (row["type"], row["polarity"]) != (want_type, want_polarity):
            fixes.append(Correction(i, type=want_type, polarity=want_polarity))
    store.save(TRISOMY, fixes + [Correction(46, deleted=True)], "r")
    found = reviewed_labels(store.root)
    assert len(found) == 46
    types = {label.path.name: label for label in found}
    for row in rows[:46]:
        want_type, want_polarity = labels[row["file"]]
        label = types[f"{row['file']}"]
        assert (label.type, label.polarity) == (
            (int(want_type) - 1) if want_type.isdigit() else {"X": 22, "Y": 23}[want_type],
            1 if want_polarity == "q-arm down" else 0)
    with pytest.raises(ReviewError, match="no reviewed case"):
        reviewed_labels(tmp_path)


def test_eval_reviewed_scores_against_the_corrections(store):
    """A reviewer who gives one chromosome the model types right (argmax) another type than
    the labels do: the reviewed score is the labelled one less that chromosome."""
    labels = truth()
    rows = store.open(TRISOMY).original["chromosomes"]
    fixes = [Correction(i, type=labels[row["file"]][0]) for i, row in enumerate(rows)
             if row["type"] != labels[row["file"]][0]]
    k = next(i for i, row in enumerate(rows)
             if row["type_before_dispatch"] == labels[row["file"]][0])
    other = "1" if labels[rows[k]["file"]][0] != "1" else "2"
    fixes = [fix for fix in fixes if fix.index != k] + [Correction(k, type=other)]
    store.save(TRISOMY, fixes, "r")
    scores = {}
    for name, args in (("reviewed", [str(store.root), "--reviewed"]),
                       ("labelled", [str(EXAMPLES)])):
        run = CliRunner().invoke(main, ["eval", *args, "--simulate", "0", "--threads", "1",
                                        "--json", str(store.root / f"{name}.json")])
        assert run.exit_code == 0, run.output
        scores[name] = json.loads((store.root / f"{name}.json").read_text())
    got = scores["reviewed"]
    want = [c for c in scores["labelled"]["cells"] if c["cell"] == TRISOMY][0]
    assert got["n_images"] == 47 and got["labels"] == "given labels"
    assert got["cells"][0]["type_accuracy"] == pytest.approx(
        want["type_accuracy"] - 1 / 47, abs=1e-3)


def test_eval_reviewed_and_labels_are_exclusive(tmp_path):
    result = CliRunner().invoke(main, ["eval", str(tmp_path), "--reviewed", "--labels", "x.csv"])
    assert result.exit_code == 2 and "either --reviewed or --labels" in result.output


def test_token_files_name_their_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("0123456789abcdefXYZ\n")
    assert read_token(path) == {"token": "0123456789abcdefXYZ"}
    path.write_text("# lab tokens\nalice  aaaaaaaaaaaaaaaa1\nvendor bbbbbbbbbbbbbbbb2\n")
    assert read_token(path) == {"alice": "aaaaaaaaaaaaaaaa1", "vendor": "bbbbbbbbbbbbbbbb2"}
    for text, message in (("alice short\n", "at least 16"), ("a b c\n", "NAME TOKEN"),
                          ("a aaaaaaaaaaaaaaaa1\na bbbbbbbbbbbbbbbb2\n", "given twice"),
                          ("\n", "no token")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_token(path)


@pytest.mark.slow
def test_train_adds_the_reviewed_cases(store, tmp_path):
    pytest.importorskip("torch", reason="the export extra (torch) is not installed")
    from tiny import TINY

    from vfinfer_export.train import SPLIT_FILE, train

    store.save(TRISOMY, [Correction(46, deleted=True)], "r")
    lines = []
    train(EXAMPLES, None, tmp_path / "run", preset=TINY,
          epochs={"gnet": 1, "loc": 1, "local": 1, "heads": 1}, batch_size=32,
          val_fraction=0.3, seed=0, threads=1, log=lines.append, corrections=[store.root])
    assert any(f"46 reviewed chromosome images from {store.root}" in line for line in lines)
    split = json.loads((tmp_path / "run" / SPLIT_FILE).read_text())
    assert f"{store.root.name}/{TRISOMY}" in split["train"] + split["validation"]


def test_a_reviewed_case_is_never_run_over(store):
    store.save(TRISOMY, [Correction(0, type="1")], "r")
    again = CliRunner().invoke(main, ["run", str(EXAMPLES / TRISOMY), "--out", str(store.root),
                                      "--overwrite", "--threads", "1"])
    assert again.exit_code == 0 and "holds a review of its result" in again.output
    assert store.open(TRISOMY).reviewed()["chromosomes"][0]["type"] == "1"


def test_an_overwrite_without_images_removes_the_old_ones(classified, tmp_path):
    shutil.copytree(classified, tmp_path / "out")
    again = CliRunner().invoke(main, ["run", str(EXAMPLES / TRISOMY), "--out",
                                      str(tmp_path / "out"), "--overwrite", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "out" / TRISOMY / "images").exists()


def test_a_withheld_karyotype_given_by_the_reviewer_is_reported(tmp_path):
    """The demo metaphase's karyotype is withheld by the verdict; the reviewer's is shown."""
    out = tmp_path / "out"
    ran = CliRunner().invoke(main, ["run", str(EXAMPLES / "metaphase-46XY.png"), "--out",
                                    str(out), "--keep-images", "--threads", "1"])
    assert ran.exit_code == 0, ran.output
    store = ReviewStore(out)
    assert store.open("metaphase-46XY").original["karyotype"] is None
    reviewed, _ = store.save("metaphase-46XY", [Correction(0, deleted=True)], "r")
    assert reviewed["karyotype"] and reviewed["n_chromosomes"] == 45  # 46 found, one removed
    report = (out / "metaphase-46XY" / "review" / "report.html").read_text()
    assert f'<div class="karyotype">{reviewed["karyotype"]}</div>' in report
    assert (out / "metaphase-46XY" / "review" / "karyogram.png").is_file()


def test_the_reviewed_report_shows_what_changed(store):
    reviewed, _ = store.save(TRISOMY, [Correction(1, joined_into=2),
                                       Correction(5, type="X", polarity="q-arm up")], "r")
    assert reviewed["chromosomes"][5]["reviewed"]["type"]["to"] == "X"
    assert reviewed["n_chromosomes"] == 46
    report = (store.root / TRISOMY / "review" / "report.html").read_text()
    assert "part of #" in report and "46 (1 removed by the reviewer" in report
    assert "type " + reviewed["chromosomes"][5]["reviewed"]["type"]["from"] + "\u2192X" in report
