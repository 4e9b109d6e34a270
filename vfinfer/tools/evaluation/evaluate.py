"""``vfinfer eval``: the metrics of the paper (Sec. III-C, Table IV) on a labelled data set.

The data set is laid out like ``shared/data/pki3``: ``DATA_DIR/labels.csv`` with the columns
``cell,file,type,polarity`` (more columns, such as ``slide``, are ignored), ``type`` 1-24
(23 = X, 24 = Y; ``X`` and ``Y`` are accepted too), ``polarity`` 1 = q-arm down and 0 = q-arm
up, ``file`` relative to DATA_DIR.

    results = evaluate("data/pki3", "labels.csv", model_dir="engines/compact")
    print(format_report(results))
    save_eval(results, "eval.json")          # eval.json + eval_confusion.png

One pass of the networks gives both the figures without dispatch (argmax) and with the
dispatch strategy of Algorithm 1, which is applied here per cell on the type probabilities;
optimal dispatch (``vfinfer.calls.optimal``, the model's calibrated parameters or the defaults) is
compared with both under ``results["optimal"]``: accuracy per case, abnormal cells flagged,
normal cells falsely flagged, the ROC of its margin, and the same per patient (cells grouped
by the labels' ``slide`` column, a sample sheet or a ``patient_from`` regex) with the ISCN
clone rules of ``vfinfer.calls.patient``.

``flip_half``: Pki-3 style data holds only q-arm-down images (polarity 1), so polarity
accuracy on it says nothing. With ``flip_half`` a seeded half of the images (exactly
n // 2 of them, chosen by ``flip_selection(n, seed)`` over the images in CSV order) is
flipped vertically and its polarity label inverted, as the paper makes polarity examples.
"""

import csv
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vfinfer.calls.dispatch import argmax_types, dispatch_counts
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.optimal_params import load_params
from vfinfer.calls.patient import group_cells, patient_evaluation
from vfinfer.calls.verdict import NO_DOMAIN, cell_figures, kinded_reasons, verdict_limits
from vfinfer.model.classes import N_TYPES, POLARITY_NAMES, TYPE_NAMES, type_index
from vfinfer.pipeline import Pipeline
from vfinfer.tools.evaluation.dispatch_figures import (
    dispatch_comparison,
    simulated_figures,
    simulated_line,
)
from vfinfer.tools.evaluation.metrics import (
    abnormal_cells,
    accuracy,
    case_accuracies,
    confusion_matrix,
    dispatch_by_case,
    macro_f1,
    per_case_accuracy,
    per_class_prf,
    warning_stats,
)
from vfinfer.tools.evaluation.plots import confusion_png, roc_png
from vfinfer.tools.evaluation.simulate import simulate_abnormal
from vfinfer.util.atomic import write_atomic
from vfinfer.util.images import read_gray8

REQUIRED_COLUMNS = ("cell", "file", "type", "polarity")
NOT_LABELLED = -1  # an empty polarity column: the polarity figures leave the image out
MAX_GROUP = 1024  # images read and sent to the pipeline at a time
PROGRESS_EVERY_S = 5.0

__all__ = [
    "LabelRow",
    "cell_probabilities",
    "confusion_png",
    "evaluate",
    "flip_selection",
    "format_report",
    "load_cell_slides",
    "load_labels",
    "roc_paths",
    "roc_png",
    "save_eval",
]


class LabelRow(NamedTuple):
    """One labelled chromosome image: its path, 0-based type and polarity (1 = q-arm down)."""

    path: Path
    type: int
    polarity: int


# --------------------------------------------------------------------------- labels


def _labels_path(data_dir, labels_csv):
    """The labels file: a relative path is looked up in DATA_DIR first, then as given (from
    the current directory); None means DATA_DIR/labels.csv."""
    given = Path("labels.csv" if labels_csv is None else labels_csv)
    inside = Path(data_dir) / given
    if not given.is_absolute() and inside.is_file():
        return inside
    if given.is_file():
        return given
    where = str(given) if given.is_absolute() else f"{given} (not in {data_dir} nor here)"
    raise ValueError(f"labels file not found: {where}")


def load_labels(data_dir, labels_csv=None):
    """Read and check a labels CSV: ``{cell: [LabelRow(path, type, polarity), ...]}``.

    ``labels_csv``: relative to ``data_dir`` (default ``labels.csv``), or else to the
    current directory, or absolute.
    Cells and their images keep the CSV's order. Raises ValueError naming the CSV (and the
    line) for a missing column, a row with an empty or bad field, a file listed twice, no
    rows at all, or image files that do not exist (all missing ones are counted, the first
    few named).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: data directory not found")
    csv_path = _labels_path(data_dir, labels_csv)
    cells, seen, missing = {}, {}, []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{csv_path}: empty file (expected a header "
                                 f"{','.join(REQUIRED_COLUMNS)})")
            header = [h.strip().lower() for h in header]
            absent = [c for c in REQUIRED_COLUMNS if c not in header]
            if absent:
                raise ValueError(f"{csv_path}: line 1: missing column(s) {', '.join(absent)} "
                                 f"(header is {','.join(header)}; need "
                                 f"{','.join(REQUIRED_COLUMNS)})")
            col = {c: header.index(c) for c in REQUIRED_COLUMNS}
            for row in reader:
                line = reader.line_num
                if not any(field.strip() for field in row):
                    continue  # blank line
                cell, file, type_text, pol_text = _fields(row, col, csv_path, line)
                try:
                    type_ = type_index(type_text)
                except ValueError:
                    raise ValueError(f"{csv_path}: line {line}: type {type_text!r} is not "
                                     "1-24 (23 = X, 24 = Y), X or Y") from None
                if pol_text not in ("0", "1", ""):
                    raise ValueError(f"{csv_path}: line {line}: polarity {pol_text!r} is not "
                                     "0 (q-arm up), 1 (q-arm down) or empty (not labelled)")
                if file in seen:
                    raise ValueError(f"{csv_path}: line {line}: file {file} is listed again "
                                     f"(first on line {seen[file]})")
                seen[file] = line
                path = data_dir / file
                if not path.is_file():
                    missing.append(f"line {line}: {path}")
                polarity = int(pol_text) if pol_text else NOT_LABELLED
                cells.setdefault(cell, []).append(LabelRow(path, type_, polarity))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise ValueError(f"{csv_path}: line {reader.line_num}: bad CSV ({exc})") from None
    if missing:
        shown = "; ".join(missing[:3]) + ("; ..." if len(missing) > 3 else "")
        raise ValueError(f"{csv_path}: {len(missing)} of {len(seen)} listed image files are "
                         f"missing: {shown}")
    if not cells:
        raise ValueError(f"{csv_path}: no labelled images (only a header)")
    return cells


def _fields(row, col, csv_path, line):
    values = {}
    for name, k in col.items():
        value = row[k].strip() if k < len(row) else ""
        if not value and not (name == "polarity" and k < len(row)):  # empty: not labelled
            raise ValueError(f"{csv_path}: line {line}: empty or missing {name!r} "
                             f"(row has {len(row)} fields: {','.join(row)})")
        values[name] = value
    return values["cell"], values["file"], values["type"], values["polarity"]


def load_cell_slides(data_dir, labels_csv=None):
    """``{cell: slide}`` from the labels' optional ``slide`` column ({} without it; a cell
    with an empty slide is left out)."""
    csv_path = _labels_path(data_dir, labels_csv)
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if "slide" not in header or "cell" not in header:
            return {}
        ci, si = header.index("cell"), header.index("slide")
        out = {}
        for row in reader:
            if len(row) > max(ci, si) and row[ci].strip() and row[si].strip():
                out.setdefault(row[ci].strip(), row[si].strip())
    return out


def flip_selection(n_images, seed):
    """The images that ``flip_half`` flips: ``n_images // 2`` sorted indices, seeded."""
    rng = np.random.default_rng([int(seed), 0xF11B])
    return np.sort(rng.permutation(int(n_images))[: int(n_images) // 2])


# --------------------------------------------------------------------------- evaluation


def evaluate(data_dir, labels_csv=None, model_dir=None, backend="auto", threads=0,
             batch_size=None, flip_half=False, seed=0, log=print, patient_from=None,
             sample_sheet=None, optimal_params=None, simulate=3, precision=None):
    """Run the model over every labelled image and compute the paper's metrics.

    One ``Pipeline`` (dispatch off) gives the type and polarity probabilities; dispatch
    (Algorithm 1, the model's threshold) is then run per cell. Returns a JSON-ready dict
    (fractions in 0..1; ``format_report`` prints them as percentages). ``log`` gets a few
    progress lines. ``patient_from`` (regex on the cell name) or ``sample_sheet`` (CSV
    cell,patient) group cells by patient; by default the labels' ``slide`` column does.
    ``optimal_params``: ``OptimalParams`` to use instead of the model's. ``simulate``:
    abnormal cells simulated per normal cell (``vfinfer.tools.evaluation.simulate``) for the separate
    ``results["optimal"]["simulated"]`` figures; 0 for none. ``precision``: the graphs to
    run (fp32, fp16, int8, bf16 as ``Pipeline``), so reduced precisions are measured too.
    """
    if patient_from is not None and sample_sheet is not None:
        raise ValueError("give either patient_from or sample_sheet, not both")
    started = time.perf_counter()
    cells = load_labels(data_dir, labels_csv)
    rows, case_ids, true_type, true_pol, flipped = _labelled_rows(cells, flip_half, seed)
    n = len(rows)
    with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                  dispatch_mode="none", precision=precision) as pipe:
        model, engine = pipe.manifest.summary(), pipe.backend.describe()
        threshold = pipe.manifest.threshold
        if optimal_params is None:
            optimal = load_params(getattr(pipe.manifest, "data", {}))
        else:
            optimal = (optimal_params, True, "optimal-dispatch parameters given by the caller")
        log(f"evaluating {n} images of {len(cells)} cells on {engine.get('name')}")
        type_probs, pol_probs, infer_s, facts = _infer_rows(pipe, rows, flipped, log)
        domain = getattr(pipe.manifest, "domain", None)

    results = _metrics(cells, case_ids, true_type, true_pol, type_probs, pol_probs, threshold)
    results["verdict"] = _verdicts(results["cells"], case_ids, type_probs, facts, threshold,
                                   domain)
    groups, how = _patient_groups(data_dir, labels_csv, list(cells), patient_from,
                                  sample_sheet)
    results["optimal"] = _optimal_metrics(results["cells"], case_ids, true_type, type_probs,
                                          threshold, optimal, groups, how, simulate,
                                          load_cell_slides(data_dir, labels_csv))
    results.update({
        "data_dir": str(data_dir),
        "labels": str(_labels_path(data_dir, labels_csv)),
        "n_cells": len(cells),
        "n_images": n,
        "flip_half": bool(flip_half),
        "seed": int(seed) if flip_half else None,
        "n_flipped": int(flipped.sum()),
        "model": model,
        "backend": engine,
        "threshold": threshold,
        "errors": _errors(rows, flipped, true_type, true_pol, type_probs, pol_probs,
                          results.pop("_dispatched"), Path(data_dir)),
    })
    elapsed = time.perf_counter() - started
    results["seconds"] = round(elapsed, 3)
    results["inference_seconds"] = round(infer_s, 3)
    results["ms_per_image"] = round(infer_s * 1000 / n, 3)
    log(f"done: {n} images in {elapsed:.1f} s")
    return _key_order(results)


def _labelled_rows(cells, flip_half, seed):
    """(rows, cell of each row, true types, true polarities, flipped mask) of all cells;
    with ``flip_half`` a seeded half is flipped and its polarity labels with it."""
    rows = [(cell, row) for cell, cell_rows in cells.items() for row in cell_rows]
    case_ids = [cell for cell, _ in rows]
    true_type = np.array([row.type for _, row in rows], dtype=np.int64)
    true_pol = np.array([row.polarity for _, row in rows], dtype=np.int64)
    flipped = np.zeros(len(rows), dtype=bool)
    if flip_half:
        flipped[flip_selection(len(rows), seed)] = True
        true_pol = np.where(flipped & (true_pol >= 0), 1 - true_pol, true_pol)
    return rows, case_ids, true_type, true_pol, flipped


def _infer_rows(pipe, rows, flipped, log):
    """Type and polarity probabilities of every labelled row, in groups; also the seconds
    spent in the networks."""
    n = len(rows)
    type_probs = np.empty((n, N_TYPES), dtype=np.float64)
    pol_probs = np.empty((n, 2), dtype=np.float64)
    group = max(1, min(pipe.batch_size, MAX_GROUP))
    infer_s, last_log, facts = 0.0, time.perf_counter(), []
    for start in range(0, n, group):
        stop = min(start + group, n)
        images = [_read(rows[i][1].path, flipped[i]) for i in range(start, stop)]
        t0 = time.perf_counter()
        out = pipe.infer(images)
        infer_s += time.perf_counter() - t0
        type_probs[start:stop] = out["type_probs"]
        pol_probs[start:stop] = out["polarity_probs"]
        facts += out.get("facts") or [{}] * (stop - start)
        if time.perf_counter() - last_log >= PROGRESS_EVERY_S and stop < n:
            log(f"  {stop}/{n} images")
            last_log = time.perf_counter()
    return type_probs, pol_probs, infer_s, facts


def cell_probabilities(data_dir, labels_csv=None, model_dir=None, backend="auto", threads=0,
                       batch_size=None, keep=None, log=print, precision=None):
    """Type probabilities of labelled cells from one dispatch-off pass, as in ``evaluate``
    (no flipping); used by ``vfinfer calibrate``.

    ``keep``: a predicate on the cell name (None keeps every cell); only kept cells are run.
    Returns a dict: ``probs`` ({cell: N x 24 array}), ``true`` ({cell: N 0-based types}),
    ``labels`` (the CSV used), ``model``, ``backend`` and ``threshold`` (Algorithm 1's).
    """
    cells = load_labels(data_dir, labels_csv)
    if keep is not None:
        cells = {cell: rows for cell, rows in cells.items() if keep(cell)}
    if not cells:
        raise ValueError("no labelled cell is left after the selection")
    rows = [(cell, row) for cell, cell_rows in cells.items() for row in cell_rows]
    ids = np.array([cell for cell, _ in rows])
    true_type = np.array([row.type for _, row in rows], dtype=np.int64)
    with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                  dispatch_mode="none", precision=precision) as pipe:
        model, engine = pipe.manifest.summary(), pipe.backend.describe()
        threshold = pipe.manifest.threshold
        log(f"running {len(rows)} images of {len(cells)} cells on {engine.get('name')}")
        type_probs, _, _, _ = _infer_rows(pipe, rows, np.zeros(len(rows), dtype=bool), log)
    return {"probs": {c: type_probs[ids == c] for c in cells},
            "true": {c: true_type[ids == c] for c in cells},
            "labels": str(_labels_path(data_dir, labels_csv)),
            "model": model, "backend": engine, "threshold": threshold}


def _read(path, flip):
    image = read_gray8(path)
    return np.ascontiguousarray(np.flipud(image)) if flip else image


def _class_table(true, pred, names):
    prf = per_class_prf(true, pred, len(names))
    return [{"class": name, "precision": float(prf["precision"][k]),
             "recall": float(prf["recall"][k]), "f1": float(prf["f1"][k]),
             "support": int(prf["support"][k]), "predicted": int(prf["predicted"][k]),
             "present": bool(prf["present"][k])} for k, name in enumerate(names)]


def _metrics(cells, case_ids, true_type, true_pol, type_probs, pol_probs, threshold):
    pred_type = argmax_types(type_probs)
    pred_pol = pol_probs.argmax(axis=1).astype(np.int64)
    dispatched, warnings = dispatch_by_case(type_probs, case_ids, threshold)

    names, acc_t = case_accuracies(true_type, pred_type, case_ids)
    _, acc_td = case_accuracies(true_type, dispatched, case_ids)
    pol_by_cell = _polarity_by_cell(true_pol, pred_pol, case_ids)
    position = {cell: k for k, cell in enumerate(names)}
    ids = np.array([position[c] for c in case_ids])
    true_by_cell = [true_type[ids == k] for k in range(len(names))]
    pred_by_cell = [dispatched[ids == k] for k in range(len(names))]
    abnormal = abnormal_cells(true_by_cell)
    warned = np.array([bool(warnings[c]) for c in names], dtype=bool)
    exact = np.array([np.array_equal(dispatch_counts(t), dispatch_counts(p))
                      for t, p in zip(true_by_cell, pred_by_cell)], dtype=bool)
    abnormality = warning_stats(abnormal, warned)
    abnormality.update({
        "counts_exact": int(exact.sum()),
        "counts_exact_abnormal": int((exact & abnormal).sum()),
    })
    per_cell = [{
        "cell": cell,
        "n_images": int(t.size),
        "type_accuracy": float(acc_t[k]),
        "type_accuracy_dispatch": float(acc_td[k]),
        "polarity_accuracy": pol_by_cell.get(cell),
        "true_karyotype": karyotype_summary(t)[0],
        "predicted_karyotype": karyotype_summary(p)[0],
        "abnormal": bool(abnormal[k]),
        "warnings": warnings[cell],
    } for k, (cell, t, p) in enumerate(zip(names, true_by_cell, pred_by_cell))]
    return {
        "type": {
            "accuracy": accuracy(true_type, pred_type),
            "macro_f1": macro_f1(true_type, pred_type, N_TYPES),
            "acc_per_case": float(np.mean(acc_t)),
            "acc_per_case_dispatch": float(np.mean(acc_td)),
            "accuracy_dispatch": accuracy(true_type, dispatched),
            "macro_f1_dispatch": macro_f1(true_type, dispatched, N_TYPES),
            "per_class": _class_table(true_type, pred_type, TYPE_NAMES),
            "confusion": confusion_matrix(true_type, pred_type, N_TYPES).tolist(),
            "confusion_dispatch": confusion_matrix(true_type, dispatched, N_TYPES).tolist(),
        },
        "polarity": _polarity_metrics(true_pol, pred_pol, case_ids),
        "abnormality": abnormality,
        "cells": per_cell,
        "_dispatched": dispatched,
    }


def _polarity_by_cell(true_pol, pred_pol, case_ids):
    """{cell: polarity accuracy over its labelled images}; cells without labels are absent."""
    ids = np.array(case_ids)
    out = {}
    for cell in dict.fromkeys(case_ids):
        rows = (ids == cell) & (true_pol >= 0)
        if rows.any():
            out[cell] = float(np.mean(pred_pol[rows] == true_pol[rows]))
    return out


def _polarity_metrics(true_pol, pred_pol, case_ids):
    """The polarity figures over the images with a polarity label; "not labelled" when no
    image has one (the figures are then None)."""
    labelled = true_pol >= 0
    if not labelled.any():
        return {"labelled_images": 0, "note": "not labelled", "accuracy": None,
                "macro_f1": None, "acc_per_case": None,
                "per_class": _class_table(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                          POLARITY_NAMES),
                "confusion": None}
    t, p = true_pol[labelled], pred_pol[labelled]
    ids = [c for c, lab in zip(case_ids, labelled) if lab]
    return {"labelled_images": int(labelled.sum()), "accuracy": accuracy(t, p),
            "macro_f1": macro_f1(t, p, 2), "acc_per_case": per_case_accuracy(t, p, ids),
            "per_class": _class_table(t, p, POLARITY_NAMES),
            "confusion": confusion_matrix(t, p, 2).tolist()}


def _verdicts(per_cell, case_ids, type_probs, facts, threshold, domain):
    """How often the verdict withholds the karyotype (``vfinfer.calls.verdict``), overall and
    on the cells whose true counts are abnormal (it must never hide those). Without domain
    figures only the near-chance floor applies (``note`` says so)."""
    ids = np.array(case_ids)
    refused, reasons = [], {}
    for cell in per_cell:
        rows = np.flatnonzero(ids == cell["cell"])
        found = kinded_reasons(cell_figures(type_probs[rows], threshold,
                                            [facts[i] for i in rows]), domain, threshold)
        cell["not_karyotyped"] = bool(found)
        if found:
            refused.append(cell["cell"])
            for kind, _ in found:
                reasons[kind] = reasons.get(kind, 0) + 1
    abnormal = [c["cell"] for c in per_cell if c["abnormal"]]
    summary = {"domain": bool(domain), "n_cells": len(per_cell), "not_karyotyped": len(refused),
               "rate": len(refused) / max(len(per_cell), 1), "reasons": reasons,
               "abnormal_cells": len(abnormal),
               "abnormal_not_karyotyped": sorted(set(abnormal) & set(refused)),
               "cells_not_karyotyped": refused, "limits": verdict_limits(domain)}
    if not domain:
        summary["note"] = NO_DOMAIN
    return summary


def _patient_groups(data_dir, labels_csv, cells, patient_from, sample_sheet):
    """(patient -> cells, how they were grouped) or (None, reason) for the patient level."""
    if patient_from is not None or sample_sheet is not None:
        groups, unmatched = group_cells(cells, sample_sheet=sample_sheet, pattern=patient_from)
        how = (f"--patient-from {patient_from}" if patient_from is not None
               else f"sample sheet {sample_sheet}")
        if unmatched:
            how += f" ({len(unmatched)} cells without a patient left out)"
        return groups, how
    slides = load_cell_slides(data_dir, labels_csv)
    if not slides:
        return None, "no slide column, --patient-from or --sample-sheet"
    groups = {}
    for cell in cells:
        groups.setdefault(slides.get(cell, cell), []).append(cell)
    return groups, "the labels' slide column"


def _optimal_metrics(cell_rows, case_ids, true_type, type_probs, threshold, optimal, groups,
                     how, simulate=0, slides=None):
    """``results["optimal"]``: argmax / Algorithm 1 / optimal dispatch compared per cell and
    per patient; also adds the optimal call to each entry of ``cell_rows``."""
    params, calibrated, note = optimal
    ids = np.asarray(case_ids)
    names = [row["cell"] for row in cell_rows]
    probs = {c: type_probs[ids == c] for c in names}
    true = {c: true_type[ids == c] for c in names}
    out = dispatch_comparison(probs, true, params, paper_threshold=threshold)
    per_cell = out.pop("cells")
    for row, found in zip(cell_rows, per_cell):
        row.update({"optimal_karyotype": found["optimal_karyotype"],
                    "optimal_abnormal": found["optimal_abnormal"],
                    "margin": found["margin"],
                    "type_accuracy_optimal": found["type_accuracy_optimal"]})
    out["params_note"] = note
    out["calibrated"] = bool(calibrated)
    out["operating_threshold"] = params.threshold
    out["patients"] = None
    out["patient_grouping"] = how
    if groups:
        info = [{"cell": f["cell"], "true_karyotype": f["true_karyotype"],
                 "best_normal": f["best_normal"], "best_abnormal": f["best_abnormal"],
                 "margin": f["margin"], "called": f["optimal_karyotype"]} for f in per_cell]
        out["patients"] = patient_evaluation(info, groups, params.threshold)
    out["simulated"] = None
    if simulate:  # donors from the same slide (the labels' slide column), if it has one
        sim_probs, sim_true, sim_info = simulate_abnormal(probs, true, slides,
                                                          per_cell=simulate)
        out["simulated"] = {"per_normal_cell": int(simulate),
                            **simulated_figures(sim_probs, sim_true, sim_info, params)}
    return out


def _errors(rows, flipped, true_type, true_pol, type_probs, pol_probs, dispatched, data_dir):
    """Images wrong in type (with or without dispatch) or polarity."""
    pred_type = type_probs.argmax(axis=1)
    pred_pol = pol_probs.argmax(axis=1)
    wrong = ((pred_type != true_type) | (dispatched != true_type)
             | ((true_pol >= 0) & (pred_pol != true_pol)))
    out = []
    for i in np.flatnonzero(wrong):
        cell, row = rows[i]
        try:
            file = row.path.relative_to(data_dir).as_posix()
        except ValueError:
            file = str(row.path)
        out.append({
            "cell": cell, "file": file, "flipped": bool(flipped[i]),
            "true_type": TYPE_NAMES[true_type[i]], "type": TYPE_NAMES[pred_type[i]],
            "type_prob": round(float(type_probs[i, pred_type[i]]), 6),
            "type_dispatch": TYPE_NAMES[dispatched[i]],
            "true_polarity": POLARITY_NAMES[true_pol[i]] if true_pol[i] >= 0 else None,
            "polarity": POLARITY_NAMES[pred_pol[i]],
        })
    return out


_ORDER = ("data_dir", "labels", "n_cells", "n_images", "flip_half", "seed", "n_flipped",
          "model", "backend", "threshold", "seconds", "inference_seconds", "ms_per_image",
          "type", "polarity", "abnormality", "verdict", "optimal", "cells", "errors")


def _key_order(results):
    return {key: results[key] for key in _ORDER if key in results}


# --------------------------------------------------------------------------- text report


def _verdict_line(verdict):
    if "n_cells" not in verdict:  # no verdict section
        return "verdict   not measured"
    abnormal = verdict["abnormal_not_karyotyped"]
    return (f"verdict   not karyotyped: {verdict['not_karyotyped']} of {verdict['n_cells']} "
            f"cells ({100 * verdict['rate']:.1f} %; "
            + (", ".join(f"{k}: {v}" for k, v in verdict["reasons"].items()) or "none")
            + f"); abnormal cells withheld: {len(abnormal)} of {verdict['abnormal_cells']}"
            + ("" if verdict["domain"] else "; " + verdict["note"]))


def _pct(value):
    return "   -  " if value is None else f"{100 * value:6.2f}"


def _describe_model(model):
    source = model.get("source") or {}
    kind = source.get("kind", "unknown source")
    if kind == "random-init":
        origin = f"random-init, seed {source.get('seed')} (untrained)"
    elif kind == "checkpoint":
        origin = f"checkpoint {source.get('path')}"
    else:
        origin = str(kind)
    return f"{model.get('preset')} preset, {origin} ({model.get('dir')})"


def _describe_backend(backend):
    details = ", ".join(f"{k} {v}" for k, v in backend.items() if k != "name")
    return f"{backend.get('name')} ({details})" if details else str(backend.get("name"))


def _class_lines(table, title):
    lines = [f"{title:<12s}{'F1 (%)':>8s}{'Precision (%)':>15s}{'Recall (%)':>12s}"
             f"{'true':>7s}{'predicted':>11s}"]
    for row in table:
        if row["present"]:
            figures = (f"{_pct(row['f1']):>8s}{_pct(row['precision']):>15s}"
                       f"{_pct(row['recall']):>12s}")
        else:
            figures = f"{'-':>8s}{'-':>15s}{'-':>12s}"
        lines.append(f"{row['class']:<12s}{figures}{row['support']:>7d}{row['predicted']:>11d}")
    absent = [row["class"] for row in table if not row["present"]]
    if absent:
        lines.append(f"  not in labels or predictions, left out of the mean F1: "
                     f"{', '.join(absent)}")
    return lines


def _top_confusions(matrix, names, k=10):
    m = np.array(matrix)
    np.fill_diagonal(m, 0)
    order = np.argsort(-m, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, m.shape) for i in order]
    return [f"{names[t]} -> {names[p]}: {m[t, p]}" for t, p in pairs if m[t, p] > 0]


def format_report(results):
    """The evaluation as text: Table IV's four metrics (T and P), then per class, then cells."""
    t, p, ab = results["type"], results["polarity"], results["abnormality"]
    label = str(results["model"].get("preset") or "model")
    lines = [
        f"Varifocal-Net evaluation: {results['n_cells']} cells, {results['n_images']} images "
        f"({results['labels']})",
        f"model     {_describe_model(results['model'])}",
        f"backend   {_describe_backend(results['backend'])}",
        f"time      {results['seconds']:.1f} s in all, {results['ms_per_image']:.2f} ms per "
        f"image in the networks; dispatch threshold {results['threshold']:g}",
    ]
    if results["flip_half"]:
        lines.append(f"polarity  {results['n_flipped']} of {results['n_images']} images "
                     f"flipped vertically and labelled q-arm up (--flip-half, seed "
                     f"{results['seed']})")
    width = max(len(label), 13)
    lines += [
        "",
        f"{'':<{width}s}  {'F1 (%)':<16s}{'Acc. (%)':<16s}{'Acc. per Case (%)':<20s}"
        "Acc. per Case-D (%)",
        f"{'':<{width}s}  {'T':>6s}  {'P':>6s}  {'T':>6s}  {'P':>6s}  {'T':>6s}  {'P':>6s}"
        f"      {'T':>6s}",
        f"{label:<{width}s}  {_pct(t['macro_f1'])}  {_pct(p['macro_f1'])}  "
        f"{_pct(t['accuracy'])}  {_pct(p['accuracy'])}  {_pct(t['acc_per_case'])}  "
        f"{_pct(p['acc_per_case'])}      {_pct(t['acc_per_case_dispatch'])}",
        "",
        f"type with dispatch over all images: Acc. {_pct(t['accuracy_dispatch']).strip()} %, "
        f"F1 {_pct(t['macro_f1_dispatch']).strip()} %",
        "",
    ]
    lines += _class_lines(t["per_class"], "Type")
    lines.append("")
    if p.get("note") == "not labelled":
        lines.append("Polarity: not labelled (the labels' polarity column is empty)")
    else:
        lines += _class_lines(p["per_class"], "Polarity")
    lines += ["", _verdict_line(results.get("verdict") or {})]
    confusions = _top_confusions(t["confusion"], TYPE_NAMES)
    lines += ["", "most frequent type confusions (true -> predicted, no dispatch):"
              + ("" if confusions else " none")]
    lines += ["  " + "; ".join(confusions[k:k + 5]) for k in range(0, len(confusions), 5)]

    def rate(value):
        return "" if value is None else f" ({100 * value:.1f} %)"

    lines += [
        "",
        "numerical abnormality warnings (Algorithm 1 line 17, after dispatch):",
        f"  abnormal cells (true counts: an autosome != 2 or X+Y != 2): {ab['n_abnormal']}; "
        f"warned (caught): {ab['caught']}{rate(ab['caught_rate'])}; missed: {ab['missed']}",
        f"  normal cells: {ab['n_normal']}; warned (false warnings): "
        f"{ab['false_warnings']}{rate(ab['false_warning_rate'])}",
        f"  cells whose dispatched counts equal the true counts: {ab['counts_exact']} of "
        f"{results['n_cells']} (abnormal: {ab['counts_exact_abnormal']} of "
        f"{ab['n_abnormal']})",
    ]
    if results.get("optimal"):
        lines += [""] + _optimal_lines(results["optimal"], results["n_cells"])
    return "\n".join(lines)


def _optimal_lines(opt, n_cells):
    """The dispatch comparison of ``results["optimal"]`` as text."""
    acc, fl = opt["acc_per_case"], opt["flags"]

    def share(stats, key, total):
        count = stats[key]
        return f"{count} of {total}" + ("" if not total else f" ({100 * count / total:.1f} %)")

    auc = opt["optimal"]["roc"]["auc"]
    lines = [
        f"optimal dispatch (margin threshold {opt['operating_threshold']:g}; "
        f"{'calibrated' if opt['calibrated'] else 'UNCALIBRATED defaults'}):",
        f"  Acc. per Case T (%): argmax {_pct(acc['none']).strip()}, Algorithm 1 "
        f"{_pct(acc['paper']).strip()}, optimal {_pct(acc['optimal']).strip()}",
        f"  abnormal cells flagged: Algorithm 1 "
        f"{share(fl['paper'], 'caught', fl['paper']['n_abnormal'])}, optimal "
        f"{share(fl['optimal'], 'caught', fl['optimal']['n_abnormal'])}",
        f"  normal cells falsely flagged: Algorithm 1 "
        f"{share(fl['paper'], 'false_warnings', fl['paper']['n_normal'])}, optimal "
        f"{share(fl['optimal'], 'false_warnings', fl['optimal']['n_normal'])}",
        f"  called karyotype = true karyotype: {opt['optimal']['exact_calls']} of {n_cells} "
        f"cells; ROC AUC of the margin: {'-' if auc is None else f'{auc:.3f}'}",
    ]
    pt = opt.get("patients")
    if pt is None:
        lines.append(f"  patients: not grouped ({opt['patient_grouping']})")
    else:
        lines += [
            f"  patients ({pt['n_patients']}, grouped by {opt['patient_grouping']}; ISCN "
            f"clones: a gain in >= 2 cells, a loss in >= 3):",
            f"    with a true abnormal clone: {pt['n_abnormal']}; found: {pt['caught']}, "
            f"missed: {pt['missed']}; normal patients with a false clone: "
            f"{pt['false_alarms']} of {pt['n_normal']}; notation exact: {pt['exact']} of "
            f"{pt['n_patients']}",
        ]
    if opt.get("simulated"):
        lines.append(f"  {simulated_line(opt['simulated'])} (vfinfer.tools.evaluation.simulate: a real "
                     "chromosome's output added to or removed from a normal cell)")
    lines.append(f"  parameters: {opt['params_note']}")
    return lines


# --------------------------------------------------------------------------- saving


def roc_paths(json_path):
    """Where ``save_eval`` writes the ROC of optimal dispatch: ``(<stem>_roc.json,
    <stem>_roc.png)`` next to ``json_path``."""
    json_path = Path(json_path)
    return (json_path.with_name(f"{json_path.stem}_roc.json"),
            json_path.with_name(f"{json_path.stem}_roc.png"))


def save_eval(results, json_path):
    """Write ``results`` as JSON and the type confusion heat map as ``<stem>_confusion.png``
    next to it, each atomically; with optimal-dispatch figures also the ROC of its margin as
    ``<stem>_roc.json`` and ``<stem>_roc.png`` (``roc_paths``). Returns
    ``(json_path, png_path)``."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png_path = json_path.with_name(f"{json_path.stem}_confusion.png")
    title = (f"type confusion, no dispatch: {results['n_images']} images, "
             f"{results['n_cells']} cells")
    write_atomic(png_path, confusion_png(results["type"]["confusion"], TYPE_NAMES, title))
    opt = results.get("optimal")
    if opt:
        curves = {"cells": opt["optimal"]["roc"]}
        if opt.get("patients"):
            curves["patients"] = opt["patients"]["roc"]
        roc_json, roc_picture = roc_paths(json_path)
        roc = {"operating_threshold": opt["operating_threshold"], "params_note":
               opt["params_note"], "curves": curves}
        write_atomic(roc_json, (json.dumps(roc, indent=2) + "\n").encode("utf-8"))
        write_atomic(roc_picture, roc_png(curves, opt["operating_threshold"],
                                          "optimal dispatch: ROC over the margin threshold"))
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    write_atomic(json_path, text.encode("utf-8"))
    return json_path, png_path
