"""Patient-level karyotype: the cells of one patient combined with the ISCN clone rules.

    groups, unmatched = group_cells(cells, pattern=r"^([^.]+)\\.")   # "97002023.12" -> "97002023"
    result = patient_karyotype({"97002023.12": "47,XY,+21", ...}, patient="97002023")
    print(result["karyotype"])                                      # 47,XY,+21[5]/46,XY[2]
    write_patient(out_dir, result)                                  # OUT/<patient>/patient.json

Cells are grouped by a sample sheet (CSV with the columns ``cell,patient``) or by a regular
expression on the cell name (its first group, else the whole match).

Rules (ISCN 2020, 10.2.1, for numerical changes):

- The *reference* is the patient's normal karyotype: the most common normal one (46,XX or
  46,XY) among the cells; with no normal cell, 46,XY when most cells hold a Y, else 46,XX.
- Each other karyotype is compared with the reference: its *changes* are gains (+21, +X) and
  losses (-7, -Y). Cells with the same karyotype form a *clone* when there are at least 2 of
  them and every change is a gain, or at least 3 of them when a change is a loss.
- Cells that form no clone are *non-clonal* findings: reported separately, never in the
  notation.
- Notation: the abnormal clones first (most cells first, ties by name), then the normal line,
  each with its cell count in brackets, joined by ``/``: ``47,XY,+21[5]/46,XY[2]``,
  ``46,XX[20]``, ``45,X[10]/46,XX[5]``. With neither a clone nor a normal cell there is no
  notation (None).

Simplifications: clones are groups of identical karyotypes (a sideline that shares the
stemline's change and adds one more, such as 48,XY,+8,+21 next to 47,XY,+21, is its own
group); structural changes and chimerism (``//``) are not described. Every abnormal clone
comes with a warning that it needs review by a cytogeneticist.
"""

import csv
import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vfinfer.calls.karyotype import REVIEW_NOTE, parse_karyotype
from vfinfer.model.classes import N_TYPES, TYPE_NAMES, Y_INDEX
from vfinfer.model.manifest import write_json_atomic

__all__ = [
    "MIN_CELLS_GAIN",
    "MIN_CELLS_LOSS",
    "PATIENT_FILE",
    "changes_from",
    "group_cells",
    "patient_evaluation",
    "patient_karyotype",
    "patient_of",
    "patients_from_results",
    "read_sample_sheet",
    "write_patient",
]

MIN_CELLS_GAIN = 2
MIN_CELLS_LOSS = 3
NORMAL = ("46,XX", "46,XY")
PATIENT_FILE = "patient.json"
RULES = (f"ISCN clone rules: the same gain in at least {MIN_CELLS_GAIN} cells, the same loss "
         f"in at least {MIN_CELLS_LOSS} cells; cells with identical karyotypes are grouped; "
         "abnormal clones first, normal line last")


# --------------------------------------------------------------------------- grouping


def patient_of(cell, pattern):
    """The patient of one cell name by a regex (compiled or text): the first group of the
    first match, else the whole match; None when it does not match (or matches empty)."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    match = regex.search(str(cell))
    if match is None:
        return None
    value = match.group(1) if regex.groups else match.group(0)
    return value or None


def read_sample_sheet(path):
    """``{cell: patient}`` from a CSV with a header holding ``cell`` and ``patient`` (other
    columns ignored). Raises ValueError naming the file and line of a bad row, or a cell
    listed for two patients."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: sample sheet not found")
    out, seen = {}, {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lower() for h in next(reader, [])]
            if "cell" not in header or "patient" not in header:
                raise ValueError(f"{path}: line 1: the header must hold the columns cell and "
                                 f"patient (found {','.join(header) or 'nothing'})")
            ci, pi = header.index("cell"), header.index("patient")
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                line = reader.line_num
                cell = row[ci].strip() if ci < len(row) else ""
                patient = row[pi].strip() if pi < len(row) else ""
                if not cell or not patient:
                    raise ValueError(f"{path}: line {line}: empty cell or patient")
                if cell in out and out[cell] != patient:
                    raise ValueError(f"{path}: line {line}: cell {cell} is listed for patient "
                                     f"{patient} and, on line {seen[cell]}, for {out[cell]}")
                out[cell], seen[cell] = patient, line
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: bad CSV ({exc})") from None
    if not out:
        raise ValueError(f"{path}: no rows (only a header)")
    return out


def group_cells(cells, sample_sheet=None, pattern=None):
    """Group cell names by patient: ``(groups, unmatched)``.

    ``sample_sheet``: a ``{cell: patient}`` mapping or a CSV path (``read_sample_sheet``);
    ``pattern``: a regex for ``patient_of``. Give exactly one. ``groups`` maps each patient
    to its cells (both in first-seen order); ``unmatched`` lists the cells without a patient.
    """
    if (sample_sheet is None) == (pattern is None):
        raise ValueError("give either a sample sheet or a --patient-from pattern, not both "
                         "or neither")
    if pattern is not None:
        try:
            regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise ValueError(f"bad --patient-from pattern {pattern!r}: {exc}") from None

        def find(cell):
            return patient_of(cell, regex)
    else:
        sheet = (sample_sheet if isinstance(sample_sheet, Mapping)
                 else read_sample_sheet(sample_sheet))

        def find(cell):
            return sheet.get(str(cell))
    groups, unmatched = {}, []
    for cell in cells:
        patient = find(cell)
        if patient is None:
            unmatched.append(cell)
        else:
            groups.setdefault(str(patient), []).append(cell)
    return groups, unmatched


# --------------------------------------------------------------------------- clones


def _has_y(counts):
    return counts[Y_INDEX] > 0


def changes_from(karyotype, reference):
    """Gains and losses of ``karyotype`` against ``reference`` (both ISCN text or counts):
    ``(gains, losses)``, lists like ``["+21"]`` and ``["-7", "-Y"]`` in type order."""
    a = parse_karyotype(karyotype) if isinstance(karyotype, str) else np.asarray(karyotype)
    b = parse_karyotype(reference) if isinstance(reference, str) else np.asarray(reference)
    diff = a - b
    gains, losses = [], []
    for k in range(N_TYPES):
        if diff[k] > 0:
            gains += [f"+{TYPE_NAMES[k]}"] * int(diff[k])
        elif diff[k] < 0:
            losses += [f"-{TYPE_NAMES[k]}"] * int(-diff[k])
    return gains, losses


def _reference(karyotypes):
    normal = Counter(k for k in karyotypes if k in NORMAL)
    if normal:
        ranked = sorted(normal.items(), key=lambda kv: (-kv[1], NORMAL.index(kv[0])))
        return ranked[0][0], len(normal) > 1
    with_y = sum(_has_y(parse_karyotype(k)) for k in karyotypes)
    return ("46,XY" if karyotypes and with_y * 2 > len(karyotypes) else "46,XX"), False


def _cell_call(value):
    """(karyotype, margin or None) from a karyotype string or a per-cell result dict."""
    if isinstance(value, Mapping):
        if "abnormality" in value and isinstance(value["abnormality"], Mapping):
            margin = value["abnormality"].get("margin")
        else:
            margin = value.get("margin")
        return value.get("karyotype"), margin
    return value, None


def patient_karyotype(calls, patient=None):
    """Combine the per-cell karyotype calls of one patient (see the module docstring).

    ``calls``: mapping cell -> called karyotype (text such as ``"47,XY,+21"``, or a per-cell
    result dict with ``"karyotype"``, e.g. from ``optimal_dispatch`` or a result.json).
    Returns a JSON-ready dict: ``patient``, ``n_cells``, ``karyotype`` (the notation, or
    None), ``abnormal`` (an abnormal clone was found), ``reference``, ``lines`` (clones and
    the normal line, in notation order), ``non_clonal``, ``unusable`` (calls that are not a
    karyotype), ``cells``, ``warnings``, ``notes`` and ``rules``.
    """
    if not isinstance(calls, Mapping):
        raise TypeError("calls must be a mapping cell -> karyotype")
    cells, unusable = _usable_cells(calls)
    reference, both_sexes = _reference([c["karyotype"] for c in cells])
    clones, non_clonal, normal_line = _clone_lines(cells, reference)
    lines = clones + ([normal_line] if normal_line else [])
    notation = "/".join(f"{e['karyotype']}[{e['n_cells']}]" for e in lines) or None
    total = len(cells)
    warnings = [f"abnormal clone {e['karyotype']} ({', '.join(e['changes'])}) in "
                f"{e['n_cells']} of {total} cells: {REVIEW_NOTE}" for e in clones]
    notes = []
    if non_clonal:
        shown = "; ".join(f"{e['karyotype']} in {e['n_cells']} cell(s)" for e in non_clonal)
        notes.append(f"non-clonal single-cell findings (not in the karyotype): {shown}")
    if both_sexes:
        notes.append("both 46,XX and 46,XY cells were called: the less common one is treated "
                     "as a change of the sex chromosomes (misclassified X/Y, or chimerism)")
    if notation is None and total:
        notes.append("no clone and no normal cell: no karyotype can be written")
    if unusable:
        notes.append(f"{len(unusable)} cell(s) without a usable karyotype left out")
    if total == 0:
        notes.append("no cells")
    return {
        "patient": None if patient is None else str(patient), "n_cells": total,
        "karyotype": notation, "abnormal": bool(clones), "reference": reference,
        "lines": lines, "non_clonal": non_clonal, "unusable": unusable, "cells": cells,
        "warnings": warnings, "notes": notes, "rules": RULES,
    }


def _usable_cells(calls):
    """([{"cell", "karyotype", "margin"?}], [unusable calls with the reason])."""
    cells, unusable = [], []
    for cell, value in calls.items():
        karyotype, margin = _cell_call(value)
        verdict = value.get("verdict") if isinstance(value, Mapping) else None
        if karyotype is None and isinstance(verdict, Mapping) and verdict.get("text"):
            unusable.append({"cell": str(cell), "karyotype": None, "reason": verdict["text"]})
            continue
        try:
            parse_karyotype(karyotype)
        except (TypeError, ValueError) as exc:
            unusable.append({"cell": str(cell), "karyotype": karyotype, "reason": str(exc)})
            continue
        entry = {"cell": str(cell), "karyotype": karyotype}
        if margin is not None:
            entry["margin"] = round(float(margin), 4)
        cells.append(entry)
    return cells, unusable


def _clone_lines(cells, reference):
    """(abnormal clones, non-clonal findings, the normal line or None) by ISCN's clone rules:
    a gain in at least MIN_CELLS_GAIN cells, a loss in at least MIN_CELLS_LOSS."""
    groups = {}
    for c in cells:
        groups.setdefault(c["karyotype"], []).append(c["cell"])
    clones, non_clonal, normal_line = [], [], None
    for karyotype, members in groups.items():
        if karyotype == reference:
            normal_line = {"karyotype": karyotype, "n_cells": len(members), "cells": members,
                           "kind": "normal line", "changes": []}
            continue
        gains, losses = changes_from(karyotype, reference)
        need = MIN_CELLS_LOSS if losses else MIN_CELLS_GAIN
        entry = {"karyotype": karyotype, "n_cells": len(members), "cells": members,
                 "changes": gains + losses}
        if len(members) >= need:
            clones.append({**entry, "kind": "abnormal clone"})
        else:
            what = "a loss" if losses else "a gain"
            entry["reason"] = (f"{what} needs at least {need} cells for a clone; "
                               f"found in {len(members)}")
            non_clonal.append(entry)
    clones.sort(key=lambda e: (-e["n_cells"], e["karyotype"]))
    non_clonal.sort(key=lambda e: (-e["n_cells"], e["karyotype"]))
    return clones, non_clonal, normal_line


# --------------------------------------------------------------------------- writing


def _safe_component(name):
    text = str(name)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or text != text.strip()):
        raise ValueError(f"patient id {name!r} cannot be used as a directory name")
    return text


def write_patient(out_dir, result, overwrite=False):
    """Write ``result`` (from ``patient_karyotype``, with a patient id) atomically to
    OUT/<patient>/patient.json; returns the path. An existing file is kept (FileExistsError)
    unless ``overwrite``."""
    patient = result.get("patient")
    if patient is None:
        raise ValueError("the patient result has no patient id")
    folder = Path(out_dir) / _safe_component(patient)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PATIENT_FILE
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; left untouched (pass --overwrite)")
    write_json_atomic(path, result)
    return path


# --------------------------------------------------------------------------- evaluation


def _flag_steps(members):
    """For one patient's cells: its distinct margins (descending) and whether it is flagged
    when the cells with margin >= each of them take their best abnormal call; the last
    entry of ``flags`` is for a threshold above every margin (no cell abnormal)."""
    own = sorted({float(c["margin"]) for c in members}, reverse=True)
    flags = []
    for t in own + [np.inf]:
        calls = {c["cell"]: (c["best_abnormal"] if c["margin"] >= t else c["best_normal"])
                 for c in members}
        flags.append(patient_karyotype(calls)["abnormal"])
    return np.array(own), np.array(flags, dtype=bool)


def patient_evaluation(cells, groups, operating_threshold):
    """Patient-level figures of optimal dispatch against the truth.

    ``cells``: list of dicts with ``cell``, ``true_karyotype``, ``best_normal``,
    ``best_abnormal``, ``margin`` and ``called`` (the karyotype called at the operating
    threshold); ``groups``: patient -> cell names (``group_cells``). A patient is *abnormal*
    when its true karyotypes hold an abnormal clone (``patient_karyotype``), *flagged* when
    the called ones do. Returns a JSON-ready dict: counts, ``sensitivity``,
    ``false_alarm_rate``, ``exact`` (same notation), ``roc`` (cells take their best abnormal
    call when their margin >= t, for every t among the margins; ``auc`` only when the curve
    reaches (1, 1), which clone rules often forbid: a patient with one cell is never
    flagged), and ``patients`` (per patient: true and called notation, flagged).
    """
    by_name = {c["cell"]: c for c in cells}
    patients, truth, flagged, exact, steps = [], [], [], [], []
    for patient, names in groups.items():
        members = [by_name[m] for m in names if m in by_name]
        if not members:
            continue
        true = patient_karyotype({c["cell"]: c["true_karyotype"] for c in members}, patient)
        called = patient_karyotype({c["cell"]: c["called"] for c in members}, patient)
        truth.append(true["abnormal"])
        flagged.append(called["abnormal"])
        exact.append(true["karyotype"] == called["karyotype"])
        steps.append(_flag_steps(members))
        patients.append({"patient": patient, "n_cells": len(members),
                         "true_karyotype": true["karyotype"], "karyotype": called["karyotype"],
                         "true_abnormal": true["abnormal"], "flagged": called["abnormal"],
                         "non_clonal": [e["karyotype"] for e in called["non_clonal"]]})
    truth, flagged = np.array(truth, dtype=bool), np.array(flagged, dtype=bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())

    points = [{"threshold": None, "tpr": 0.0 if n_pos else None, "fpr": 0.0 if n_neg else None,
               "tp": 0, "fp": 0}]
    for t in sorted({float(c["margin"]) for c in cells if c["cell"] in by_name}, reverse=True):
        hit = np.empty(len(steps), dtype=bool)
        for k, (own, flags) in enumerate(steps):
            n_at_or_above = int(np.sum(own >= t))
            hit[k] = flags[n_at_or_above - 1] if n_at_or_above else flags[-1]
        tp, fp = int((hit & truth).sum()), int((hit & ~truth).sum())
        points.append({"threshold": t, "tpr": tp / n_pos if n_pos else None,
                       "fpr": fp / n_neg if n_neg else None, "tp": tp, "fp": fp})
    auc = None
    last = points[-1]
    if n_pos and n_neg and last["tpr"] == 1.0 and last["fpr"] == 1.0:
        x = np.array([p["fpr"] for p in points])
        y = np.array([p["tpr"] for p in points])
        auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    tp, fp = int((flagged & truth).sum()), int((flagged & ~truth).sum())
    return {
        "n_patients": len(patients),
        "n_abnormal": n_pos,
        "n_normal": n_neg,
        "caught": tp,
        "missed": n_pos - tp,
        "false_alarms": fp,
        "sensitivity": tp / n_pos if n_pos else None,
        "false_alarm_rate": fp / n_neg if n_neg else None,
        "exact": int(np.sum(exact)),
        "operating_threshold": float(operating_threshold),
        "roc": {"points": points, "auc": auc, "n_positive": n_pos, "n_negative": n_neg},
        "patients": patients,
        "rules": RULES,
    }


# --------------------------------------------------------------------------- after vfinfer run


def patients_from_results(out_dir, cases, sample_sheet=None, pattern=None, echo=print,
                          failed=(), overwrite=False):
    """Write OUT/<patient>/patient.json for the cases of ``vfinfer run``.

    ``cases``: case names (their results are read back from OUT/<case>/result.json, so cases
    skipped because they already had results count too); ``sample_sheet`` / ``pattern``: see
    ``group_cells``. ``failed``: cases that failed in this run; an older result.json of
    theirs is not used. Echoes one line per patient and returns the patient results.
    """
    failed = {str(case) for case in failed}
    groups, unmatched = group_cells(cases, sample_sheet, pattern)
    if unmatched:
        shown = ", ".join(map(str, unmatched[:5])) + (" ..." if len(unmatched) > 5 else "")
        echo(f"no patient for {len(unmatched)} case(s), left out of patient.json: {shown}")
    out = []
    for patient, members in groups.items():
        calls, missing, modes = {}, [], set()
        for case in members:
            path = Path(out_dir) / str(case) / "result.json"
            if str(case) in failed:
                missing.append(str(case))
                continue
            try:
                result = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                missing.append(str(case))
                continue
            calls[str(case)] = result
            modes.add(result.get("dispatch"))
        found = patient_karyotype(calls, patient)
        found["dispatch"] = sorted(str(m) for m in modes)
        found["missing_cells"] = missing
        if missing:
            found["notes"].append(f"{len(missing)} cell(s) without a result.json (failed): "
                                  f"{', '.join(missing)}")
        if modes - {"optimal"}:
            found["notes"].append("some cells were not run with --dispatch optimal: their "
                                  "karyotype is the count of their dispatched types, so every "
                                  "misclassification looks like a gain or a loss")
        try:
            target = write_patient(out_dir, found, overwrite)
        except FileExistsError as exc:
            echo(f"patient {patient}: skipped, {exc}")
            continue
        except (OSError, ValueError) as exc:
            echo(f"patient {patient}: failed: cannot write patient.json ({exc})")
            continue
        n, n_nc = found["n_cells"], len(found["non_clonal"])
        extra = f"; {n_nc} non-clonal finding{'s' if n_nc != 1 else ''}" if n_nc else ""
        echo(f"patient {patient}: {found['karyotype'] or 'no karyotype'} "
             f"({n} cell{'s' if n != 1 else ''}{extra}) -> {target}")
        out.append(found)
    return out
