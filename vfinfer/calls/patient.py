"""Patient-level karyotype: the cells of one patient combined with the ISCN clone rules.

    groups, unmatched = group_cells(cells, pattern=r"^([^.]+)\\.")   # "97002023.12" -> "97002023"
    result = patient_karyotype({"97002023.12": "47,XY,+21", ...}, patient="97002023")
    print(result["karyotype"])                                      # 47,XY,+21[5]/46,XY[2]

(``vfinfer.io.patients`` reads sample sheets and writes OUT/<patient>/patient.json.)

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

Structural flags (per-cell result dicts of a model with the structural score,
docs/structural.md): a chromosome type flagged in at least ``MIN_CELLS_STRUCTURAL`` cells is a
*possible structural clone* (ISCN: the same structural change in two cells), reported in the
``structural`` section with a warning, never in the notation: a flag names no change, so two
flags of one type are not known to be the same change.
"""

import re
from collections import Counter
from collections.abc import Mapping

import numpy as np

from vfinfer.calls.karyotype import REVIEW_NOTE, parse_karyotype
from vfinfer.model.classes import N_TYPES, TYPE_NAMES, Y_INDEX

__all__ = [
    "MIN_CELLS_GAIN",
    "MIN_CELLS_LOSS",
    "changes_from",
    "group_cells",
    "patient_karyotype",
    "patient_of",
]

MIN_CELLS_GAIN = 2
MIN_CELLS_STRUCTURAL = 2
MIN_CELLS_LOSS = 3
NORMAL = ("46,XX", "46,XY")
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


def group_cells(cells, sample_sheet=None, pattern=None):
    """Group cell names by patient: ``(groups, unmatched)``.

    ``sample_sheet``: a ``{cell: patient}`` mapping (``vfinfer.io.patients.read_sample_sheet``
    reads one from a CSV);
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
        if not isinstance(sample_sheet, Mapping):
            raise TypeError("sample_sheet must be a {cell: patient} mapping")
        sheet = sample_sheet

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
    structural = structural_clones(calls)
    warnings += [f"possible structural clone: chromosome {e['chromosome']} flagged in "
                 f"{e['n_cells']} of {structural['n_screened']} screened cells: review"
                 for e in structural["clones"]]
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
        "warnings": warnings, "notes": notes, "rules": RULES, "structural": structural,
    }


def structural_clones(calls):
    """The ``structural`` section: the cells screened (results with a screened structural
    score), per chromosome type the cells in which one of its copies was flagged, and the
    types flagged in at least ``MIN_CELLS_STRUCTURAL`` cells (module doc)."""
    screened, flagged = [], {}
    for cell, value in calls.items():
        section = value.get("structural") if isinstance(value, Mapping) else None
        if not (isinstance(section, Mapping) and section.get("screened")):
            continue
        screened.append(str(cell))
        types = {row.get("type") for row in value.get("chromosomes") or []
                 if isinstance(row, Mapping) and (row.get("structural") or {}).get("flagged")}
        for name in sorted(t for t in types if t is not None):
            flagged.setdefault(str(name), []).append(str(cell))
    order = {name: i for i, name in enumerate(TYPE_NAMES)}
    by_type = dict(sorted(flagged.items(), key=lambda kv: order.get(kv[0], len(order))))
    clones = [{"chromosome": name, "n_cells": len(cells), "cells": cells}
              for name, cells in by_type.items() if len(cells) >= MIN_CELLS_STRUCTURAL]
    return {"screened": bool(screened), "n_screened": len(screened), "flagged": by_type,
            "clones": clones,
            "rule": f"a chromosome type flagged in at least {MIN_CELLS_STRUCTURAL} cells: a "
                    "possible structural clone, for review (not in the karyotype)"}


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
