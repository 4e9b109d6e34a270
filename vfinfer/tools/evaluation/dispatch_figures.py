"""Dispatch figures on labelled cells: plain argmax, Algorithm 1 and optimal dispatch side by
side, their ROC, and optimal dispatch on simulated abnormal cells. Shared by
``vfinfer calibrate`` and ``vfinfer eval``."""

import math
from collections.abc import Mapping

import numpy as np

from vfinfer.calls.dispatch import check_probs, dispatch
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.optimal import OptimalParams, decide, hypothesis_costs
from vfinfer.tools.evaluation.metrics import abnormal_cells, warning_stats


def labelled_cells(probs_by_cell, true_types_by_cell=None):
    """(names, probs list, true list or None) from mappings or equal-length sequences."""
    if isinstance(probs_by_cell, Mapping):
        names = list(probs_by_cell)
        probs = [probs_by_cell[c] for c in names]
        if true_types_by_cell is not None:
            if not isinstance(true_types_by_cell, Mapping):
                raise ValueError("give both probabilities and true types as mappings cell -> "
                                 "array, or both as sequences")
            absent = [c for c in names if c not in true_types_by_cell]
            if absent:
                raise ValueError(f"no true types for {len(absent)} cell(s): "
                                 f"{', '.join(map(str, absent[:5]))}")
            true = [true_types_by_cell[c] for c in names]
    else:
        probs = list(probs_by_cell)
        names = list(range(len(probs)))
        if true_types_by_cell is not None:
            true = list(true_types_by_cell)
    probs = [check_probs(p) for p in probs]
    if true_types_by_cell is None:
        return names, probs, None
    if len(true) != len(probs):
        raise ValueError(f"{len(probs)} cells of probabilities but {len(true)} of true types")
    true = [np.asarray(t, dtype=np.int64).reshape(-1) for t in true]
    for name, p, t in zip(names, probs, true):
        if p.shape[0] != t.size:
            raise ValueError(f"cell {name}: {p.shape[0]} probability rows but {t.size} true "
                             "types")
        if t.size and (t.min() < 0 or t.max() > 23):
            raise ValueError(f"cell {name}: true types must be 0-based indices 0..23")
    if not probs:
        raise ValueError("no cells to calibrate or evaluate on")
    return names, probs, true


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def roc_curve(scores, positive):
    """ROC of flagging ``score >= t`` over every threshold t.

    Returns ``{"points": [...], "auc", "n_positive", "n_negative"}``; points run from the
    highest threshold (nothing flagged; threshold None stands for +inf) down to the lowest
    score (everything flagged), each ``{"threshold", "tpr", "fpr", "tp", "fp"}``. ``auc`` is
    the trapezoid area (ties count half), None without positives or negatives.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    if s.shape != pos.shape:
        raise ValueError(f"{s.size} scores but {pos.size} labels")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    points = [{"threshold": None, "tpr": 0.0, "fpr": 0.0, "tp": 0, "fp": 0}]
    for t in np.unique(s)[::-1]:
        flagged = s >= t
        tp, fp = int((flagged & pos).sum()), int((flagged & ~pos).sum())
        points.append({"threshold": float(t), "tpr": tp / n_pos if n_pos else None,
                       "fpr": fp / n_neg if n_neg else None, "tp": tp, "fp": fp})
    auc = None
    if n_pos and n_neg:
        x = np.array([p["fpr"] for p in points])
        y = np.array([p["tpr"] for p in points])
        auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return {"points": points, "auc": auc, "n_positive": n_pos, "n_negative": n_neg}


def _optimal_entry(result):
    """What a cell's entry says of its optimal-dispatch decision."""
    return {"optimal_karyotype": result["karyotype"], "optimal_abnormal": result["abnormal"],
            "margin": round(result["margin"], 4), "best_normal": result["best_normal"],
            "best_abnormal": result["best_abnormal"]}


def _three_calls(probs, params, paper_threshold):
    """One cell's types by plain argmax, Algorithm 1 and optimal dispatch: ``(types by mode,
    Algorithm 1's warnings, optimal dispatch's decision)``."""
    preds = {"none": np.argmax(probs, axis=1) if len(probs) else np.empty(0, dtype=np.int64)}
    preds["paper"], warnings = dispatch(probs, paper_threshold)
    costs, types = hypothesis_costs(probs, params.extra_penalty, params.missing_penalty,
                                    params.prob_floor, params.extra_slots)
    result = decide(costs, types, params, top=0, probs=probs)
    preds["optimal"] = np.asarray(result["types"], dtype=np.int64)
    return preds, warnings, result


def dispatch_comparison(probs_by_cell, true_types_by_cell, params=None, paper_threshold=0.9,
                        cells=True):
    """Plain argmax, Algorithm 1 and optimal dispatch side by side on labelled cells.

    ``probs_by_cell`` / ``true_types_by_cell``: mappings cell -> (N x 24 probabilities,
    N 0-based true types), or equal-length sequences. Returns a JSON-ready dict:

    - ``acc_per_case`` and ``accuracy`` (over all images): ``{"none", "paper", "optimal"}``;
    - ``flags``: for ``"paper"`` (any count warning of Algorithm 1 line 17) and ``"optimal"``
      (called abnormal), ``vfinfer.tools.evaluation.metrics.warning_stats`` (caught / false
      warnings ...);
    - ``optimal``: ``exact_calls`` (called karyotype == true karyotype) overall and on
      abnormal cells, the ``roc`` of the margin, ``params``;
    - ``cells`` (unless ``cells=False``): per cell its true karyotype, abnormal, paper
      warned, and the optimal call, margin, best normal and best abnormal karyotype.
    """
    params = OptimalParams() if params is None else params
    names, probs, true = labelled_cells(probs_by_cell, true_types_by_cell)
    abnormal = abnormal_cells(true)
    acc = {"none": [], "paper": [], "optimal": []}
    right = {"none": 0, "paper": 0, "optimal": 0}
    paper_warned, flagged, margins, per_cell, exact = [], [], [], [], []
    for k, (name, p, t) in enumerate(zip(names, probs, true)):
        n = t.size
        preds, warnings, result = _three_calls(p, params, paper_threshold)
        for mode, pred in preds.items():
            correct = int((pred == t).sum())
            right[mode] += correct
            acc[mode].append(correct / n if n else 0.0)
        true_kt = karyotype_summary(t)[0] if n else "0,?"
        paper_warned.append(bool(warnings))
        flagged.append(result["abnormal"])
        margins.append(result["margin"])
        exact.append(result["karyotype"] == true_kt)
        if cells:
            per_cell.append({"cell": name, "n_images": n, "true_karyotype": true_kt,
                             "abnormal": bool(abnormal[k]), "paper_warned": bool(warnings),
                             **_optimal_entry(result), "type_accuracy_optimal": acc["optimal"][-1]})
    n_images = sum(t.size for t in true)
    exact = np.array(exact, dtype=bool)
    out = {
        "n_cells": len(names),
        "n_images": int(n_images),
        "acc_per_case": {k: float(np.mean(v)) for k, v in acc.items()},
        "accuracy": {k: v / n_images if n_images else None for k, v in right.items()},
        "flags": {"paper": warning_stats(abnormal, np.array(paper_warned, dtype=bool)),
                  "optimal": warning_stats(abnormal, np.array(flagged, dtype=bool))},
        "optimal": {
            "params": params.to_dict(),
            "exact_calls": int(exact.sum()),
            "exact_calls_abnormal": int((exact & abnormal).sum()),
            "roc": roc_curve(margins, abnormal),
        },
        "paper_threshold": float(paper_threshold),
    }
    if cells:
        out["cells"] = per_cell
    return jsonable(out)


def simulated_figures(probs_by_cell, true_by_cell, info, params):
    """Optimal dispatch on simulated abnormal cells (``vfinfer.tools.evaluation.simulate``),
    per kind.

    Returns ``{"n", "flagged", "exact", "by_kind": {kind: {...}}, "missed": [...]}``:
    ``flagged`` cells called abnormal, ``exact`` cells whose called karyotype is the simulated
    one (the right chromosome gained or lost), ``missed`` up to 20 cells not flagged.
    """
    by_kind, missed = {}, []
    for name, p in probs_by_cell.items():
        costs, types = hypothesis_costs(p, params.extra_penalty, params.missing_penalty,
                                        params.prob_floor, params.extra_slots)
        found = decide(costs, types, params, top=0, probs=p)
        kind = info[name]["kind"]
        row = by_kind.setdefault(kind, {"n": 0, "flagged": 0, "exact": 0})
        row["n"] += 1
        row["flagged"] += bool(found["abnormal"])
        row["exact"] += found["karyotype"] == info[name]["karyotype"]
        if not found["abnormal"] and len(missed) < 20:
            missed.append({"cell": name, "margin": round(found["margin"], 4),
                           "best_abnormal": found["best_abnormal"]})
    total = {k: sum(r[k] for r in by_kind.values()) for k in ("n", "flagged", "exact")}
    return jsonable({**total, "by_kind": by_kind, "missed": missed})


def simulated_line(figures):
    """One line on ``simulated_figures``: flagged and exactly called, per kind."""
    kinds = ", ".join(f"{kind} {r['flagged']}/{r['n']} flagged, {r['exact']} exact"
                      for kind, r in figures["by_kind"].items())
    return (f"simulated abnormal cells: {figures['flagged']} of {figures['n']} flagged, "
            f"{figures['exact']} called exactly ({kinds})")
