"""Patients: grouping cells (``vfinfer.calls.patient``), ISCN clone rules and mosaic notation,
the sample sheet and patient.json (``vfinfer.io.patients``), the patient figures of eval."""

import json

import numpy as np
import pytest

from vfinfer.calls.optimal import optimal_dispatch
from vfinfer.calls.patient import changes_from, group_cells, patient_karyotype, patient_of
from vfinfer.io.patients import (
    PATIENT_FILE,
    patients_from_results,
    read_sample_sheet,
    write_patient,
)
from vfinfer.tools.evaluation.patients import patient_evaluation

from helpers import MALE, cell, row


def calls(*groups):
    """{cell: karyotype} from (karyotype, n) pairs, cells named c00, c01, ..."""
    out = {}
    for karyotype, n in groups:
        for _ in range(n):
            out[f"c{len(out):02d}"] = karyotype
    return out


# --------------------------------------------------------------------------- notation


@pytest.mark.parametrize("groups, notation", [
    ((("47,XY,+21", 5), ("46,XY", 2)), "47,XY,+21[5]/46,XY[2]"),
    ((("46,XY", 2), ("47,XY,+21", 5)), "47,XY,+21[5]/46,XY[2]"),  # abnormal clone first
    ((("46,XX", 20),), "46,XX[20]"),
    ((("45,X", 10), ("46,XX", 5)), "45,X[10]/46,XX[5]"),
    ((("47,XXY", 4),), "47,XXY[4]"),
    ((("47,XY,+21", 2), ("46,XY", 18)), "47,XY,+21[2]/46,XY[18]"),  # a gain: 2 cells suffice
    ((("45,XX,-7", 3), ("46,XX", 17)), "45,XX,-7[3]/46,XX[17]"),  # a loss: 3 cells
    ((("47,XX,+8", 2), ("47,XX,+21", 6), ("46,XX", 4)), "47,XX,+21[6]/47,XX,+8[2]/46,XX[4]"),
])
def test_mosaic_notation(groups, notation):
    result = patient_karyotype(calls(*groups), patient="p1")
    assert result["karyotype"] == notation
    assert result["abnormal"] is (len(notation.split("/")) > 1 or not notation.startswith("46"))
    assert result["non_clonal"] == []
    json.dumps(result)


def test_single_cell_gain_is_non_clonal():
    result = patient_karyotype(calls(("46,XY", 19), ("47,XY,+21", 1)))
    assert result["karyotype"] == "46,XY[19]"
    assert result["abnormal"] is False and result["warnings"] == []
    (finding,) = result["non_clonal"]
    assert finding["karyotype"] == "47,XY,+21" and finding["n_cells"] == 1
    assert finding["changes"] == ["+21"]
    assert "gain needs at least 2 cells" in finding["reason"]
    assert any("non-clonal" in n for n in result["notes"])


def test_loss_in_two_cells_is_not_a_clone():
    result = patient_karyotype(calls(("46,XX", 18), ("45,XX,-7", 2)))
    assert result["karyotype"] == "46,XX[18]" and not result["abnormal"]
    (finding,) = result["non_clonal"]
    assert finding["karyotype"] == "45,XX,-7" and finding["n_cells"] == 2
    assert "loss needs at least 3 cells" in finding["reason"]


def test_clone_comes_with_a_review_warning():
    result = patient_karyotype(calls(("47,XY,+21", 5), ("46,XY", 2)), patient="97002023")
    assert result["patient"] == "97002023"
    (warning,) = result["warnings"]
    assert warning.startswith("abnormal clone 47,XY,+21 (+21) in 5 of 7 cells")
    assert "cytogeneticist" in warning
    clone, normal = result["lines"]
    assert clone["kind"] == "abnormal clone" and clone["cells"] == [f"c{i:02d}" for i in range(5)]
    assert normal["kind"] == "normal line" and normal["n_cells"] == 2


def test_sex_chromosome_changes_against_the_reference():
    assert changes_from("45,X", "46,XX") == ([], ["-X"])
    assert changes_from("45,X", "46,XY") == ([], ["-Y"])
    assert changes_from("47,XXY", "46,XY") == (["+X"], [])
    assert changes_from("46,XX", "46,XY") == (["+X"], ["-Y"])
    # 45,X in a female: a loss, so 2 cells are not a clone
    result = patient_karyotype(calls(("46,XX", 10), ("45,X", 2)))
    assert result["karyotype"] == "46,XX[10]" and not result["abnormal"]


def test_no_normal_cell_reference_from_y_majority():
    result = patient_karyotype(calls(("45,X", 3)))
    assert result["reference"] == "46,XX" and result["karyotype"] == "45,X[3]"
    result = patient_karyotype(calls(("47,XY,+21", 1), ("45,XY,-7", 1)))
    assert result["reference"] == "46,XY"
    assert result["karyotype"] is None
    assert any("no karyotype can be written" in n for n in result["notes"])


def test_both_sexes_and_unusable_calls():
    c = calls(("46,XY", 5), ("46,XX", 1))
    c["bad"] = "not a karyotype"
    c["empty"] = None
    result = patient_karyotype(c)
    assert result["karyotype"] == "46,XY[5]"
    assert result["non_clonal"][0]["karyotype"] == "46,XX"
    assert [u["cell"] for u in result["unusable"]] == ["bad", "empty"]
    assert any("both 46,XX and 46,XY" in n for n in result["notes"])
    assert result["n_cells"] == 6


def test_calls_from_optimal_dispatch_results():
    normal = cell(MALE, 0.98)
    trisomy = np.vstack([normal, row(20, 0.98)])
    results = {f"s1.{k}": optimal_dispatch(trisomy) for k in range(3)}
    results.update({f"s1.{k}": optimal_dispatch(normal) for k in range(3, 5)})
    patient = patient_karyotype(results, patient="s1")
    assert patient["karyotype"] == "47,XY,+21[3]/46,XY[2]"
    assert all("margin" in c for c in patient["cells"])


def _screened(flagged_types, karyotype="46,XY"):
    """A per-cell result dict of a model with the structural score, the given types flagged."""
    rows = [{"type": str(t), "structural": {"score": 0.1, "flagged": False}}
            for t in range(1, 23)]
    rows += [{"type": t, "structural": {"score": 0.9, "flagged": True}} for t in flagged_types]
    return {"karyotype": karyotype, "structural": {"screened": True},
            "chromosomes": rows}


def test_structural_flags_of_one_type_in_two_cells_are_a_possible_clone():
    results = {"a": _screened(["5"]), "b": _screened(["5", "9"]), "c": _screened([]),
               "d": {"karyotype": "46,XY", "structural": {"screened": False}}}
    found = patient_karyotype(results)
    section = found["structural"]
    assert section["screened"] and section["n_screened"] == 3
    assert section["flagged"] == {"5": ["a", "b"], "9": ["b"]}
    assert [c["chromosome"] for c in section["clones"]] == ["5"]
    assert found["karyotype"] == "46,XY[4]"  # never in the notation
    assert any("possible structural clone: chromosome 5 flagged in 2 of 3 screened cells"
               in w for w in found["warnings"])
    alone = patient_karyotype({"a": _screened(["9"]), "b": _screened([])})
    assert alone["structural"]["clones"] == [] and alone["warnings"] == []
    plain = patient_karyotype({"a": "46,XY"})["structural"]
    assert not plain["screened"] and plain["clones"] == []


# --------------------------------------------------------------------------- grouping


def test_patient_from_regex():
    assert patient_of("97002023.12", r"^([^.]+)\.") == "97002023"
    assert patient_of("97002023", r"^([^.]+)\.") is None
    assert patient_of("slideA_cell3", r"^[^_]+") == "slideA"
    groups, unmatched = group_cells(["97002023.12", "97002023.3", "97002024.1", "odd"],
                                    pattern=r"^([^.]+)\.")
    assert groups == {"97002023": ["97002023.12", "97002023.3"], "97002024": ["97002024.1"]}
    assert unmatched == ["odd"]


def test_sample_sheet(tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("Cell,Patient,note\na.1,P1,x\na.2,P1,\nb.1,P2,y\n\n", encoding="utf-8")
    assert read_sample_sheet(sheet) == {"a.1": "P1", "a.2": "P1", "b.1": "P2"}
    groups, unmatched = group_cells(["a.1", "b.1", "a.2", "c.1"],
                                    sample_sheet=read_sample_sheet(sheet))
    assert groups == {"P1": ["a.1", "a.2"], "P2": ["b.1"]} and unmatched == ["c.1"]
    bad = tmp_path / "bad.csv"
    bad.write_text("cell,patient\na.1,P1\na.1,P2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: cell a.1 is listed for patient P2"):
        read_sample_sheet(bad)
    bad.write_text("cell,slide\na.1,P1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="cell and patient"):
        read_sample_sheet(bad)
    with pytest.raises(ValueError, match="not both"):
        group_cells(["a"], sample_sheet={"a": "P1"}, pattern="a")
    with pytest.raises(TypeError, match="mapping"):
        group_cells(["a"], sample_sheet=sheet)
    with pytest.raises(ValueError, match="bad --patient-from"):
        group_cells(["a"], pattern="(")


# --------------------------------------------------------------------------- writing


def test_write_patient(tmp_path):
    result = patient_karyotype(calls(("47,XY,+21", 5), ("46,XY", 2)), patient="97002023")
    path = write_patient(tmp_path, result)
    assert path == tmp_path / "97002023" / PATIENT_FILE
    assert json.loads(path.read_text()) == result
    assert not list(path.parent.glob(".*.tmp"))
    for bad in ("../x", "..", "a/b", ""):
        with pytest.raises(ValueError, match="directory name"):
            write_patient(tmp_path, {**result, "patient": bad})


# --------------------------------------------------------------------------- evaluation


def test_patient_evaluation():
    cells = []
    # patient A: true trisomy 21 in 3 cells, all called at the operating threshold
    for k, margin in enumerate((5.0, 4.0, 3.0)):
        cells.append({"cell": f"A.{k}", "true_karyotype": "47,XY,+21", "best_normal": "46,XY",
                      "best_abnormal": "47,XY,+21", "margin": margin,
                      "called": "47,XY,+21"})
    # patient B: normal, one cell with a sub-threshold margin
    for k, margin in enumerate((1.0, -8.0, -9.0)):
        cells.append({"cell": f"B.{k}", "true_karyotype": "46,XX", "best_normal": "46,XX",
                      "best_abnormal": "47,XX,+8", "margin": margin, "called": "46,XX"})
    groups = {"A": ["A.0", "A.1", "A.2"], "B": ["B.0", "B.1", "B.2"]}
    out = patient_evaluation(cells, groups, operating_threshold=2.0)
    assert out["n_patients"] == 2 and out["n_abnormal"] == 1 and out["n_normal"] == 1
    assert out["sensitivity"] == 1.0 and out["false_alarm_rate"] == 0.0
    assert out["exact"] == 2
    a, b = out["patients"]
    assert a["karyotype"] == "47,XY,+21[3]" and a["flagged"]
    assert b["karyotype"] == "46,XX[3]" and not b["flagged"]
    points = out["roc"]["points"]
    # A is flagged once 2 of its cells are called (t <= 4.0); B once 2 of its cells are
    # (t <= -8.0)
    by_t = {p["threshold"]: (p["tp"], p["fp"]) for p in points}
    assert by_t[5.0] == (0, 0) and by_t[4.0] == (1, 0) and by_t[1.0] == (1, 0)
    assert by_t[-8.0] == (1, 1)
    assert out["roc"]["auc"] == pytest.approx(1.0)
    json.dumps(out)


def test_patients_from_results(tmp_path):
    def result(case, karyotype, dispatch="optimal", margin=5.0):
        folder = tmp_path / case
        folder.mkdir()
        data = {"case": case, "dispatch": dispatch, "karyotype": karyotype,
                "abnormality": {"margin": margin}}
        (folder / "result.json").write_text(json.dumps(data), encoding="utf-8")

    for k in range(3):
        result(f"97002023.{k}", "47,XY,+21")
    result("97002023.3", "46,XY", margin=-9.0)
    result("97002024.1", "46,XX", dispatch="paper")
    lines = []
    cases = ["97002023.0", "97002023.1", "97002023.2", "97002023.3", "97002023.9",
             "97002024.1", "loose"]
    found = patients_from_results(tmp_path, cases, pattern=r"^([^.]+)\.", echo=lines.append)
    assert [p["patient"] for p in found] == ["97002023", "97002024"]
    first = json.loads((tmp_path / "97002023" / PATIENT_FILE).read_text())
    assert first["karyotype"] == "47,XY,+21[3]/46,XY[1]"
    assert first["missing_cells"] == ["97002023.9"]
    assert [c["margin"] for c in first["cells"]] == [5.0, 5.0, 5.0, -9.0]
    second = json.loads((tmp_path / "97002024" / PATIENT_FILE).read_text())
    assert second["karyotype"] == "46,XX[1]" and second["dispatch"] == ["paper"]
    assert any("--dispatch optimal" in n for n in second["notes"])
    assert lines[0].startswith("no patient for 1 case(s)")
    assert lines[1] == (f"patient 97002023: 47,XY,+21[3]/46,XY[1] (4 cells) -> "
                        f"{tmp_path / '97002023' / PATIENT_FILE}")


def test_a_cell_the_verdict_refused_is_left_out_with_its_reason():
    from vfinfer.calls.patient import patient_karyotype

    refused = {"karyotype": None,
               "verdict": {"karyotyped": False, "text": "not karyotyped: dark background"}}
    found = patient_karyotype({"c1": "46,XY", "c2": "46,XY", "c3": refused}, "p")
    assert found["karyotype"] == "46,XY[2]" and found["n_cells"] == 2
    assert found["unusable"] == [{"cell": "c3", "karyotype": None,
                                  "reason": "not karyotyped: dark background"}]
