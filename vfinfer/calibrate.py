"""Calibrating optimal dispatch (``vfinfer.optimal``) on labelled training cells.

    params, report = calibrate(probs_by_cell, true_types_by_cell)
    store_params("engines/compact", params, report)     # manifest.json "dispatch"
    params, calibrated, note = load_params(manifest)     # defaults when absent

``calibrate`` fits the class priors and the extra / missing penalties by a small grid search
and then picks the margin threshold:

1. For each grid point (``DEFAULT_GRID``: 5 x 5 penalties, 3 x 3 x 3 abnormal prior masses,
   ``prior_normal`` fixed) every cell's best normal and best abnormal hypothesis and their
   margin are computed (the assignments depend only on the penalties, so each cell is solved
   25 times, not 675).
2. Threshold for that grid point (``choose_threshold``): catch at least ``min_sensitivity``
   (default: all) of the abnormal cells, if possible; among the thresholds that do, the
   false alarms on normal cells are fewest at the k-th largest abnormal margin, and the
   threshold is the smallest value with that same number of false alarms (just above the
   highest normal margin below it, on a 0.01 grid), leaving as much room as possible for
   abnormal cells the training set did not show. Never below 0 (the abnormal hypothesis must
   win).
3. Choice: the grid points whose mean per-case accuracy is within ``acc_tolerance`` of the
   best; among them the highest sensitivity, then the fewest false alarms, then the highest
   accuracy, then the widest threshold interval (the most robust separation).

A cell is *abnormal* when its true counts are (``vfinfer.metrics.abnormal_cells``: an autosome
not twice, or X + Y != 2), *flagged* when optimal dispatch calls it abnormal. Real abnormal
cells are rare, so ``vfinfer calibrate`` adds abnormal cells simulated from the normal ones
(``vfinfer.simulate``); they take part in the fit, while the figures and warnings of the
report count the real cells apart (``simulated=``). Use training
slides only: the figures on the cells the threshold was chosen on are optimistic, and the
model is over-confident on the very images it was trained on, so a validation split that
the network did not train on is better still. Without abnormal cells the threshold cannot be
calibrated: the default is kept and the report says so loudly.

``dispatch_comparison`` (used by ``calibrate`` for its figures and by ``vfinfer eval``) puts
plain argmax, Algorithm 1 and optimal dispatch side by side; ``roc_curve`` gives the ROC of
the margin.
"""

import datetime
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from vfinfer.dispatch import _check_probs, dispatch
from vfinfer.karyotype import karyotype_summary
from vfinfer.manifest import MANIFEST_NAME, Manifest, load_manifest, write_json_atomic
from vfinfer.metrics import abnormal_cells, warning_stats
from vfinfer.optimal import (
    ABNORMAL_INDEX,
    NORMAL_INDEX,
    OptimalParams,
    decide,
    hypothesis_costs,
    log_priors,
    neg_log_probs,
)

__all__ = [
    "DEFAULT_GRID",
    "LoadedParams",
    "calibrate",
    "choose_threshold",
    "dispatch_comparison",
    "format_calibration",
    "load_params",
    "roc_curve",
    "simulated_figures",
    "store_params",
]

DEFAULT_GRID = {
    "extra_penalty": (6.0, 8.0, 10.0, 12.0, 14.0),
    "missing_penalty": (6.0, 8.0, 10.0, 12.0, 14.0),
    "prior_gain": (0.01, 0.03, 0.1),
    "prior_loss": (0.01, 0.05, 0.15),
    "prior_sex": (0.005, 0.02, 0.05),
}
GRID_KEYS = tuple(DEFAULT_GRID)
THRESHOLD_STEP = 0.01
GRID_ROWS_KEPT = 10  # grid rows kept in the report (best first)
NO_ABNORMAL_WARNING = (
    "WARNING: the calibration set has NO abnormal cells, so the margin threshold was NOT "
    "calibrated (kept at {threshold:g}) and the sensitivity of optimal dispatch is unknown. "
    "Calibrate on slides that include abnormal cells (trisomies, losses, sex-chromosome "
    "variants) before trusting its warnings."
)


# --------------------------------------------------------------------------- inputs


def _cells(probs_by_cell, true_types_by_cell=None):
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
    probs = [_check_probs(p) for p in probs]
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


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


# --------------------------------------------------------------------------- ROC


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


# --------------------------------------------------------------------------- thresholds


def _flag(margins, threshold):
    m = np.asarray(margins, dtype=np.float64)
    return (m > 0) & (m >= threshold)


def choose_threshold(margins, abnormal, min_sensitivity=1.0, position=0.0):
    """The margin threshold for one set of margins (see the module docstring, step 2).

    Returns a dict: ``threshold`` (None when there are no abnormal cells), ``interval``
    [low, high] (every threshold in (low, high] gives the same training figures),
    ``sensitivity``, ``false_alarm_rate``, ``caught``, ``false_alarms``, ``target_met`` and
    ``missed`` (indices of abnormal cells not flagged). ``position`` places the threshold in
    that interval: 0 (default) the smallest value (just above ``low``), 0.5 the middle, 1 the
    top (``high``).
    """
    m = np.asarray(margins, dtype=np.float64)
    ab = np.asarray(abnormal, dtype=bool)
    if not 0 < float(min_sensitivity) <= 1:
        raise ValueError(f"min_sensitivity must be in (0, 1], got {min_sensitivity}")
    if not 0 <= float(position) <= 1:
        raise ValueError(f"threshold position must be in [0, 1], got {position}")
    pos, neg = m[ab], m[~ab]
    out = {"threshold": None, "interval": None, "target_met": None}
    if pos.size:
        need = max(1, math.ceil(float(min_sensitivity) * pos.size - 1e-9))
        catchable = np.sort(pos[pos > 0])[::-1]
        out["target_met"] = bool(catchable.size >= need)
        if catchable.size == 0:
            high = float("inf")  # nothing can be caught: flag as little as possible
            below = neg[neg > 0]
            low = float(below.max()) if below.size else 0.0
            threshold = low + THRESHOLD_STEP
        else:
            high = float(catchable[min(need, catchable.size) - 1])
            below = neg[(neg < high) & (neg > 0)]
            low = float(below.max()) if below.size else 0.0
            target = low + float(position) * (high - low)
            threshold = math.floor(target / THRESHOLD_STEP) * THRESHOLD_STEP + THRESHOLD_STEP
            threshold = min(round(threshold, 6), high)
        out["threshold"] = float(threshold)
        out["interval"] = [low, high if math.isfinite(high) else None]
    t = out["threshold"] if out["threshold"] is not None else math.inf
    flagged = _flag(m, t)
    caught, false = int((flagged & ab).sum()), int((flagged & ~ab).sum())
    out.update({
        "caught": caught,
        "false_alarms": false,
        "sensitivity": caught / pos.size if pos.size else None,
        "false_alarm_rate": false / neg.size if neg.size else None,
        "missed": np.flatnonzero(ab & ~flagged).tolist(),
    })
    return out


# --------------------------------------------------------------------------- comparison


def dispatch_comparison(probs_by_cell, true_types_by_cell, params=None, paper_threshold=0.9,
                        cells=True):
    """Plain argmax, Algorithm 1 and optimal dispatch side by side on labelled cells.

    ``probs_by_cell`` / ``true_types_by_cell``: mappings cell -> (N x 24 probabilities,
    N 0-based true types), or equal-length sequences. Returns a JSON-ready dict:

    - ``acc_per_case`` and ``accuracy`` (over all images): ``{"none", "paper", "optimal"}``;
    - ``flags``: for ``"paper"`` (any count warning of Algorithm 1 line 17) and ``"optimal"``
      (called abnormal), ``vfinfer.metrics.warning_stats`` (caught / false warnings ...);
    - ``optimal``: ``exact_calls`` (called karyotype == true karyotype) overall and on
      abnormal cells, the ``roc`` of the margin, ``params``;
    - ``cells`` (unless ``cells=False``): per cell its true karyotype, abnormal, paper
      warned, and the optimal call, margin, best normal and best abnormal karyotype.
    """
    params = OptimalParams() if params is None else params
    names, probs, true = _cells(probs_by_cell, true_types_by_cell)
    abnormal = abnormal_cells(true)
    acc = {"none": [], "paper": [], "optimal": []}
    right = {"none": 0, "paper": 0, "optimal": 0}
    paper_warned, flagged, margins, per_cell, exact = [], [], [], [], []
    for k, (name, p, t) in enumerate(zip(names, probs, true)):
        n = t.size
        preds = {"none": np.argmax(p, axis=1) if n else np.empty(0, dtype=np.int64)}
        preds["paper"], warnings = dispatch(p, paper_threshold)
        costs, types = hypothesis_costs(p, params.extra_penalty, params.missing_penalty,
                                        params.prob_floor, params.extra_slots)
        result = decide(costs, types, params, top=0, probs=p)
        preds["optimal"] = np.asarray(result["types"], dtype=np.int64)
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
            per_cell.append({
                "cell": name, "n_images": n, "true_karyotype": true_kt,
                "abnormal": bool(abnormal[k]), "paper_warned": bool(warnings),
                "optimal_karyotype": result["karyotype"], "optimal_abnormal": result["abnormal"],
                "margin": round(result["margin"], 4), "best_normal": result["best_normal"],
                "best_abnormal": result["best_abnormal"],
                "type_accuracy_optimal": acc["optimal"][-1],
            })
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
    return _jsonable(out)


def simulated_figures(probs_by_cell, true_by_cell, info, params):
    """Optimal dispatch on simulated abnormal cells (``vfinfer.simulate``), per kind.

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
    return _jsonable({**total, "by_kind": by_kind, "missed": missed})


# --------------------------------------------------------------------------- calibration


def _grid(grid):
    grid = dict(DEFAULT_GRID if grid is None else grid)
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"unknown grid key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(GRID_KEYS)}")
    for key in GRID_KEYS:
        values = grid.get(key)
        grid[key] = tuple(float(v) for v in (values if values is not None else
                                              (getattr(OptimalParams(), key),)))
        if not grid[key]:
            raise ValueError(f"grid {key!r} has no values")
    return grid


def calibrate(probs_by_cell, true_types_by_cell, base=None, grid=None, min_sensitivity=1.0,
              acc_tolerance=0.001, paper_threshold=0.9, threshold_position=0.0, log=None,
              simulated=None):
    """Fit optimal-dispatch parameters on labelled TRAINING cells.

    ``probs_by_cell`` / ``true_types_by_cell``: mappings cell -> N x 24 probabilities and
    N true 0-based types (or equal-length sequences). ``base``: the ``OptimalParams`` whose
    other fields (prior_normal, prob_floor, extra_slots, and the threshold when there is no
    abnormal cell) are kept; ``grid``: dict of value lists per key of ``DEFAULT_GRID`` (a key
    left out keeps ``base``'s value); ``threshold_position``: see ``choose_threshold`` (0:
    the smallest threshold, 0.5: the middle of the interval). ``simulated``: the
    ``info`` dict of ``vfinfer.simulate.simulate_abnormal`` when its cells are among the
    given ones: they take part in the fit, but the figures and warnings keep them apart.
    See the module docstring.

    Returns ``(params, report)``; ``report`` is JSON-ready: cell counts (``n_abnormal``
    counts simulated cells too, ``n_abnormal_real`` does not), the chosen values and threshold
    interval, the training figures of ``dispatch_comparison`` on the real cells (no per-cell
    list; ``missed_cells`` names the real abnormal cells not caught), ``simulated``
    (``simulated_figures`` on the simulated cells, or None), the best grid rows and
    ``warnings`` (a loud one when there is no abnormal cell; ``format_calibration`` prints
    them).
    """
    simulated = simulated or {}
    base = OptimalParams() if base is None else base
    grid = _grid(grid)
    log = log or (lambda line: None)
    names, probs, true = _cells(probs_by_cell, true_types_by_cell)
    abnormal = abnormal_cells(true)
    n_abn = int(abnormal.sum())
    nlps = [neg_log_probs(p, base.prob_floor) for p in probs]
    n_per_cell = np.array([t.size for t in true])
    priors = [(g, lo, s) for g in grid["prior_gain"] for lo in grid["prior_loss"]
              for s in grid["prior_sex"]]
    penalties = [(e, m) for e in grid["extra_penalty"] for m in grid["missing_penalty"]]
    log(f"calibrating on {len(names)} cells ({n_abn} abnormal): {len(penalties)} penalty "
        f"settings x {len(priors)} prior settings")
    rows = []
    for step, (extra, missing) in enumerate(penalties):
        costs, correct = [], []
        for nlp, t in zip(nlps, true):
            c, types = hypothesis_costs(None, extra, missing, base.prob_floor, base.extra_slots,
                                        nlp=nlp)
            costs.append(c)
            correct.append((types == t[None, :]).sum(axis=1))
        costs, correct = np.array(costs), np.array(correct)  # cells x hypotheses
        for gain, loss, sex in priors:
            params = base.replace(extra_penalty=extra, missing_penalty=missing,
                                  prior_gain=gain, prior_loss=loss, prior_sex=sex)
            scores = -costs + log_priors(params)[None, :]
            best_n = NORMAL_INDEX[np.argmax(scores[:, NORMAL_INDEX], axis=1)]
            best_a = ABNORMAL_INDEX[np.argmax(scores[:, ABNORMAL_INDEX], axis=1)]
            rows_i = np.arange(len(names))
            margins = scores[rows_i, best_a] - scores[rows_i, best_n]
            if n_abn:
                choice = choose_threshold(margins, abnormal, min_sensitivity,
                                          threshold_position)
            else:
                choice = choose_threshold(margins, abnormal)
                choice["threshold"] = base.threshold
                flagged = _flag(margins, base.threshold)
                choice["false_alarms"] = int(flagged.sum())
                choice["false_alarm_rate"] = float(flagged.mean())
            called = np.where(_flag(margins, choice["threshold"]), best_a, best_n)
            acc = float(np.mean(correct[rows_i, called] / np.maximum(n_per_cell, 1)))
            interval = choice["interval"]
            width = (interval[1] - interval[0]) if interval and interval[1] is not None else 0.0
            rows.append({**params.replace(threshold=choice["threshold"]).to_dict(),
                         "acc_per_case": acc, "sensitivity": choice["sensitivity"],
                         "false_alarm_rate": choice["false_alarm_rate"],
                         "interval": interval, "_width": width, "_order": len(rows)})
        if (step + 1) % 5 == 0 or step + 1 == len(penalties):
            log(f"  {step + 1}/{len(penalties)} penalty settings done")

    best_acc = max(r["acc_per_case"] for r in rows)
    candidates = [r for r in rows if r["acc_per_case"] >= best_acc - acc_tolerance]

    def rank(r):
        sens = r["sensitivity"] if r["sensitivity"] is not None else 0.0
        return (-sens, r["false_alarm_rate"], -r["acc_per_case"], -r["_width"], r["_order"])

    candidates.sort(key=rank)
    chosen = candidates[0]
    params = base.replace(**{k: chosen[k] for k in (*GRID_KEYS, "threshold")})
    real = [k for k, name in enumerate(names) if name not in simulated]
    figures = dispatch_comparison({names[k]: probs[k] for k in real},
                                  {names[k]: true[k] for k in real}, params,
                                  paper_threshold=paper_threshold, cells=True)
    per_cell = figures.pop("cells")
    missed = [c["cell"] for c in per_cell if c["abnormal"] and not c["optimal_abnormal"]]
    sim = [k for k, name in enumerate(names) if name in simulated]
    sim_names = [names[k] for k in sim]
    sim_figures = (simulated_figures({names[k]: probs[k] for k in sim},
                                     {names[k]: true[k] for k in sim},
                                     simulated, params) if sim else None)
    n_real_abn = n_abn - len(sim_names)
    warnings = []
    if not n_abn:
        warnings.append(NO_ABNORMAL_WARNING.format(threshold=base.threshold))
    elif missed:
        warnings.append(f"the sensitivity target {min_sensitivity:g} could not be met with "
                        f"an abnormal call: {len(missed)} of {n_real_abn} real abnormal "
                        f"training cells are not flagged ({', '.join(map(str, missed[:10]))}"
                        f"{' ...' if len(missed) > 10 else ''}); their best abnormal "
                        "karyotype does not beat the best normal one")
    if n_abn and not n_real_abn:
        warnings.append(f"no real abnormal cell among the calibration cells: the threshold "
                        f"rests on {len(sim_names)} simulated ones only")
    elif n_abn and n_real_abn < 10:
        warnings.append(f"only {n_real_abn} real abnormal cells in the calibration set"
                        + (f" (and {len(sim_names)} simulated)" if sim_names else "")
                        + ": the figures on real abnormal cells rest on very few examples")
    ranked = sorted(rows, key=rank)
    top_rows = [{k: v for k, v in r.items() if not k.startswith("_")}
                for r in ranked[:GRID_ROWS_KEPT]]
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n_cells": len(names),
        "n_abnormal": n_abn,
        "n_abnormal_real": n_real_abn,
        "n_simulated": len(sim_names),
        "n_normal": len(names) - n_abn,
        "n_images": int(n_per_cell.sum()),
        "rules": {"min_sensitivity": float(min_sensitivity),
                  "acc_tolerance": float(acc_tolerance),
                  "threshold_position": float(threshold_position),
                  "grid": {k: list(v) for k, v in grid.items()},
                  "threshold": "smallest value with the fewest false alarms among those "
                               "catching min_sensitivity of the abnormal cells"},
        "chosen": params.to_dict(),
        "threshold_interval": chosen["interval"],
        "threshold_calibrated": bool(n_abn),
        "training": figures,
        "missed_cells": missed,
        "simulated": sim_figures,
        "grid_top": top_rows,
        "grid_size": len(rows),
        "warnings": warnings,
    }
    return params, _jsonable(report)


def format_calibration(report):
    """A few lines of text for the command line."""
    tr, chosen = report["training"], report["chosen"]
    fl = tr["flags"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    simulated = report.get("n_simulated")
    lines = [
        f"calibrated on {report['n_cells']} cells ({report['n_abnormal']} abnormal"
        + (f", {simulated} of them simulated" if simulated else "")
        + f", {report['n_normal']} normal, {report['n_images']} images)",
        f"chosen: priors gain {chosen['prior_gain']:g} loss {chosen['prior_loss']:g} sex "
        f"{chosen['prior_sex']:g} (normal {chosen['prior_normal']:g}), extra penalty "
        f"{chosen['extra_penalty']:g}, missing penalty {chosen['missing_penalty']:g}, "
        f"threshold {chosen['threshold']:g}",
        f"on the real calibration cells: acc. per case argmax "
        f"{pct(tr['acc_per_case']['none'])}, "
        f"Algorithm 1 {pct(tr['acc_per_case']['paper'])}, optimal "
        f"{pct(tr['acc_per_case']['optimal'])}",
        f"abnormal cells flagged: Algorithm 1 {pct(fl['paper']['caught_rate'])}, optimal "
        f"{pct(fl['optimal']['caught_rate'])}; normal cells falsely flagged: Algorithm 1 "
        f"{pct(fl['paper']['false_warning_rate'])}, optimal "
        f"{pct(fl['optimal']['false_warning_rate'])}",
    ]
    if report.get("simulated"):
        lines.append(simulated_line(report["simulated"]) + " (cells the fit used)")
    return "\n".join(lines + report["warnings"])


def simulated_line(figures):
    """One line on ``simulated_figures``: flagged and exactly called, per kind."""
    kinds = ", ".join(f"{kind} {r['flagged']}/{r['n']} flagged, {r['exact']} exact"
                      for kind, r in figures["by_kind"].items())
    return (f"simulated abnormal cells: {figures['flagged']} of {figures['n']} flagged, "
            f"{figures['exact']} called exactly ({kinds})")


# --------------------------------------------------------------------------- manifest


class LoadedParams(NamedTuple):
    """What ``load_params`` returns: the parameters, whether they come from a calibration
    that set the threshold, and one line saying where they come from."""

    params: OptimalParams
    calibrated: bool
    note: str


def store_params(model_dir, params, report=None):
    """Write ``params`` (and the calibration ``report``) into MODEL_DIR/manifest.json under
    ``"dispatch": {"optimal": {...}, "calibration": {...}}``, atomically: the manifest is
    re-read just before, only these two keys change, and it is replaced in one rename.
    Returns the manifest path."""
    if not isinstance(params, OptimalParams):
        raise TypeError(f"params must be OptimalParams, got {type(params).__name__}")
    manifest = load_manifest(model_dir)
    data = manifest.data
    section = data.setdefault("dispatch", {})
    if not isinstance(section, dict):
        raise ValueError(f"{manifest.path}: 'dispatch' is not a JSON object")
    section["optimal"] = params.to_dict()
    if report is not None:
        section["calibration"] = _jsonable(report)
    else:
        section.pop("calibration", None)
    write_json_atomic(manifest.path, data)
    return manifest.path


def load_params(manifest):
    """Optimal-dispatch parameters of a model: ``LoadedParams(params, calibrated, note)``.

    ``manifest``: a ``vfinfer.manifest.Manifest``, its ``data`` dict, or a model directory.
    Without ``dispatch.optimal`` in the manifest the defaults are returned with
    ``calibrated=False`` and a note saying so; bad stored values raise ValueError.
    """
    if isinstance(manifest, Manifest):
        data, where = manifest.data, str(manifest.path)
    elif isinstance(manifest, Mapping):
        data, where = manifest, MANIFEST_NAME
    else:
        loaded = load_manifest(manifest)
        data, where = loaded.data, str(loaded.path)
    section = data.get("dispatch") or {}
    stored = section.get("optimal") if isinstance(section, Mapping) else None
    if stored is None:
        return LoadedParams(OptimalParams(), False,
                            f"{where} holds no calibrated optimal-dispatch parameters: using "
                            "the uncalibrated defaults (run 'vfinfer calibrate' on training "
                            "slides)")
    try:
        params = OptimalParams.from_dict(dict(stored))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad dispatch.optimal: {exc}") from None
    calibration = section.get("calibration") or {}
    if calibration:
        simulated = calibration.get("n_simulated")
        note = (f"optimal-dispatch parameters calibrated on {calibration.get('n_cells')} "
                f"cells ({calibration.get('n_abnormal')} abnormal"
                + (f", {simulated} of them simulated" if simulated else "")
                + f") on {calibration.get('created', 'an unknown date')}")
        if not calibration.get("threshold_calibrated", True):
            note += "; the threshold was NOT calibrated (no abnormal cells)"
    else:
        note = f"optimal-dispatch parameters from {where} (no calibration report)"
    return LoadedParams(params, bool(calibration.get("threshold_calibrated", False)), note)

