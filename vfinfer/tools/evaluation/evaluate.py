"""``vfinfer eval``: the metrics of the paper (Sec. III-C, Table IV) on a labelled data set.

The data set: ``DATA_DIR/labels.csv`` as ``vfinfer.io.labels`` reads it (the same rules as
``vfinfer train``).

    results = evaluate("data/pki3", "labels.csv", model_dir="engines/compact")
    print(format_report(results))            # vfinfer.tools.evaluation.report
    save_eval(results, "eval.json")          # vfinfer.tools.evaluation.records

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

import time
from pathlib import Path

import numpy as np

from vfinfer.calls.auto import choose_dispatch
from vfinfer.calls.dispatch import argmax_types, dispatch_counts
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.optimal_params import load_params
from vfinfer.calls.patient import group_cells
from vfinfer.calls.verdict import NO_DOMAIN, cell_figures, kinded_reasons, verdict_limits
from vfinfer.io.labels import by_cell, cell_slides, labels_path, read_labels
from vfinfer.io.patients import read_sample_sheet
from vfinfer.model.classes import N_TYPES, POLARITY_NAMES, TYPE_NAMES
from vfinfer.pipeline import Pipeline
from vfinfer.tools.evaluation.dispatch_figures import dispatch_comparison, simulated_figures
from vfinfer.tools.evaluation.inference import infer_rows, labelled_rows
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
from vfinfer.tools.evaluation.patients import patient_evaluation
from vfinfer.tools.evaluation.simulate import simulate_abnormal

# --------------------------------------------------------------------------- evaluation


def _labels(data_dir, labels_csv, given):
    """(the labels, where they came from): ``given`` ones, else the labels CSV's."""
    if given is not None:
        return given, "given labels"
    return read_labels(data_dir, labels_csv), str(labels_path(data_dir, labels_csv))


def evaluate(data_dir, labels_csv=None, model_dir=None, backend="auto", threads=0,
             batch_size=None, flip_half=False, seed=0, log=print, patient_from=None,
             sample_sheet=None, optimal_params=None, simulate=3, precision=None,
             dispatch_mode="auto", labels=None):
    """Run the model over every labelled image and compute the paper's metrics.

    One ``Pipeline`` (dispatch off) gives the type and polarity probabilities; dispatch
    (Algorithm 1, the model's threshold) is then run per cell. Returns a JSON-ready dict
    (fractions in 0..1; ``format_report`` prints them as percentages). ``log`` gets a few
    progress lines. ``patient_from`` (regex on the cell name) or ``sample_sheet`` (CSV
    cell,patient) group cells by patient; by default the labels' ``slide`` column does.
    ``optimal_params``: ``OptimalParams`` to use instead of the model's. ``simulate``:
    abnormal cells simulated per normal cell (``vfinfer.tools.evaluation.simulate``) for the
    separate ``results["optimal"]["simulated"]`` figures; 0 for none. ``precision``: the graphs to
    run (fp32, fp16, int8, bf16 as ``Pipeline``), so reduced precisions are measured too.
    ``dispatch_mode``: the dispatch whose verdict is counted (``auto``: the one ``vfinfer
    run`` would choose, ``vfinfer.calls.auto``); the metrics cover all three modes anyway.
    ``labels``: ``Label`` records to use instead of the labels CSV (reviewed cases,
    ``vfinfer.io.review.reviewed_labels``).
    """
    if patient_from is not None and sample_sheet is not None:
        raise ValueError("give either patient_from or sample_sheet, not both")
    started = time.perf_counter()
    labels, labels_source = _labels(data_dir, labels_csv, labels)
    cells = by_cell(labels)
    rows, case_ids, true_type, true_pol, flipped = labelled_rows(cells, flip_half, seed)
    n = len(rows)
    with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                  dispatch_mode="none", precision=precision) as pipe:
        model, engine = pipe.manifest.summary(), pipe.backend.describe()
        threshold = pipe.manifest.threshold
        optimal = _optimal_params(pipe.manifest, optimal_params)
        log(f"evaluating {n} images of {len(cells)} cells on {engine.get('name')}")
        type_probs, pol_probs, infer_s, facts = infer_rows(pipe, rows, flipped, log)
        judged = (getattr(pipe.manifest, "domain", None),
                  choose_dispatch(dispatch_mode, getattr(pipe.manifest, "data", {})))

    results = _metrics(cells, case_ids, true_type, true_pol, type_probs, pol_probs, threshold)
    results["verdict"] = _verdicts(results["cells"], case_ids, type_probs, facts, threshold,
                                   judged[0], judged[1].mode)
    results["dispatch"] = judged[1]._asdict()
    slides = cell_slides(labels)
    groups, how = _patient_groups(slides, list(cells), patient_from, sample_sheet)
    results["optimal"] = _optimal_metrics(results["cells"], case_ids, true_type, type_probs,
                                          threshold, optimal, groups, how, simulate, slides)
    results.update({
        "data_dir": str(data_dir), "labels": labels_source,
        "n_cells": len(cells), "n_images": n,
        "flip_half": bool(flip_half), "seed": int(seed) if flip_half else None,
        "n_flipped": int(flipped.sum()),
        "model": model, "backend": engine, "threshold": threshold,
        "errors": _errors(rows, flipped, true_type, true_pol, type_probs, pol_probs,
                          results.pop("_dispatched"), Path(data_dir)),
    })
    elapsed = time.perf_counter() - started
    results["seconds"] = round(elapsed, 3)
    results["inference_seconds"] = round(infer_s, 3)
    results["ms_per_image"] = round(infer_s * 1000 / n, 3)
    log(f"done: {n} images in {elapsed:.1f} s")
    return _key_order(results)


def _class_table(true, pred, names):
    prf = per_class_prf(true, pred, len(names))
    return [{"class": name, "precision": float(prf["precision"][k]),
             "recall": float(prf["recall"][k]), "f1": float(prf["f1"][k]),
             "support": int(prf["support"][k]), "predicted": int(prf["predicted"][k]),
             "present": bool(prf["present"][k])} for k, name in enumerate(names)]


def _optimal_params(manifest, given):
    """``(params, calibrated, note)``: the caller's parameters, else the model's own."""
    if given is None:
        return load_params(getattr(manifest, "data", {}))
    return given, True, "optimal-dispatch parameters given by the caller"


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


def _verdicts(per_cell, case_ids, type_probs, facts, threshold, domain, dispatch_mode=None):
    """How often the verdict withholds the karyotype (``vfinfer.calls.verdict``) under
    ``dispatch_mode``, overall and on the cells whose true counts are abnormal (it must never
    hide those). Without domain figures only the near-chance floor applies (``note`` says so)."""
    ids = np.array(case_ids)
    refused, reasons = [], {}
    for cell in per_cell:
        rows = np.flatnonzero(ids == cell["cell"])
        found = kinded_reasons(cell_figures(type_probs[rows], threshold,
                                            [facts[i] for i in rows]), domain, threshold,
                                 dispatch_mode)
        cell["not_karyotyped"] = bool(found)
        if found:
            refused.append(cell["cell"])
            for kind, _ in found:
                reasons[kind] = reasons.get(kind, 0) + 1
    abnormal = [c["cell"] for c in per_cell if c["abnormal"]]
    summary = {"domain": bool(domain), "dispatch": dispatch_mode, "n_cells": len(per_cell),
               "not_karyotyped": len(refused),
               "rate": len(refused) / max(len(per_cell), 1), "reasons": reasons,
               "abnormal_cells": len(abnormal),
               "abnormal_not_karyotyped": sorted(set(abnormal) & set(refused)),
               "cells_not_karyotyped": refused, "limits": verdict_limits(domain)}
    if not domain:
        summary["note"] = NO_DOMAIN
    return summary


def _patient_groups(slides, cells, patient_from, sample_sheet):
    """(patient -> cells, how they were grouped) or (None, reason) for the patient level."""
    if patient_from is not None or sample_sheet is not None:
        sheet = None if sample_sheet is None else read_sample_sheet(sample_sheet)
        groups, unmatched = group_cells(cells, sample_sheet=sheet, pattern=patient_from)
        how = (f"--patient-from {patient_from}" if patient_from is not None
               else f"sample sheet {sample_sheet}")
        if unmatched:
            how += f" ({len(unmatched)} cells without a patient left out)"
        return groups, how
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
          "model", "backend", "threshold", "dispatch", "seconds", "inference_seconds",
          "ms_per_image", "type", "polarity", "abnormality", "verdict", "optimal", "cells",
          "errors")


def _key_order(results):
    return {key: results[key] for key in _ORDER if key in results}


# --------------------------------------------------------------------------- text report


# --------------------------------------------------------------------------- saving


