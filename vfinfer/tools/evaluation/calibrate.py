"""Calibrating optimal dispatch (``vfinfer.calls.optimal``) on labelled training cells.

    params, report = calibrate(probs_by_cell, true_types_by_cell)
    store_params("engines/compact", params, report)     # calibration_report: manifest.json
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

A cell is *abnormal* when its true counts are (``vfinfer.tools.evaluation.metrics.abnormal_cells``:
an autosome not twice, or X + Y != 2), *flagged* when optimal dispatch calls it abnormal. Real
abnormal cells are rare, so ``vfinfer calibrate`` adds abnormal cells simulated from the normal ones
(``vfinfer.tools.evaluation.simulate``); they take part in the fit, while the figures and warnings
of the report count the real cells apart (``simulated=``). Use training
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

import numpy as np

from vfinfer.calls.optimal import (
    ABNORMAL_INDEX,
    NORMAL_INDEX,
    OptimalParams,
    hypothesis_costs,
    log_priors,
    neg_log_probs,
)
from vfinfer.tools.evaluation.dispatch_figures import (
    dispatch_comparison,
    jsonable,
    labelled_cells,
    simulated_figures,
)
from vfinfer.tools.evaluation.metrics import abnormal_cells

__all__ = [
    "DEFAULT_GRID",
    "calibrate",
    "choose_threshold",
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
    ``info`` dict of ``vfinfer.tools.evaluation.simulate.simulate_abnormal`` when its cells are
    among the given ones: they take part in the fit, but the figures and warnings keep them apart.
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
    names, probs, true = labelled_cells(probs_by_cell, true_types_by_cell)
    abnormal = abnormal_cells(true)
    rows = _grid_rows(probs, true, abnormal, base, grid, min_sensitivity, threshold_position,
                      log or (lambda line: None))
    best_acc = max(r["acc_per_case"] for r in rows)
    chosen = min((r for r in rows if r["acc_per_case"] >= best_acc - acc_tolerance),
                 key=_rank)
    params = base.replace(**{k: chosen[k] for k in (*GRID_KEYS, "threshold")})
    figures, missed, sim_figures, n_sim = _fitted_figures(names, probs, true, simulated, params,
                                                          paper_threshold)
    n_abn = int(abnormal.sum())
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n_cells": len(names), "n_abnormal": n_abn, "n_abnormal_real": n_abn - n_sim,
        "n_simulated": n_sim, "n_normal": len(names) - n_abn,
        "n_images": int(sum(t.size for t in true)),
        "rules": {"min_sensitivity": float(min_sensitivity),
                  "acc_tolerance": float(acc_tolerance),
                  "threshold_position": float(threshold_position),
                  "grid": {k: list(v) for k, v in grid.items()},
                  "threshold": "smallest value with the fewest false alarms among those "
                               "catching min_sensitivity of the abnormal cells"},
        "chosen": params.to_dict(), "threshold_interval": chosen["interval"],
        "threshold_calibrated": bool(n_abn), "training": figures, "missed_cells": missed,
        "simulated": sim_figures,
        "grid_top": [{k: v for k, v in r.items() if not k.startswith("_")}
                     for r in sorted(rows, key=_rank)[:GRID_ROWS_KEPT]],
        "grid_size": len(rows),
        "warnings": _calibration_warnings(n_abn, n_sim, missed, base, min_sensitivity),
    }
    return params, jsonable(report)


def _fitted_figures(names, probs, true, simulated, params, paper_threshold):
    """The figures of the fitted ``params``: ``dispatch_comparison`` on the real cells, the
    real abnormal cells it misses, ``simulated_figures`` on the simulated ones (or None) and
    their count."""
    real = [k for k, name in enumerate(names) if name not in simulated]
    figures = dispatch_comparison({names[k]: probs[k] for k in real},
                                  {names[k]: true[k] for k in real}, params,
                                  paper_threshold=paper_threshold, cells=True)
    per_cell = figures.pop("cells")
    missed = [c["cell"] for c in per_cell if c["abnormal"] and not c["optimal_abnormal"]]
    sim = [k for k, name in enumerate(names) if name in simulated]
    sim_figures = (simulated_figures({names[k]: probs[k] for k in sim},
                                     {names[k]: true[k] for k in sim},
                                     simulated, params) if sim else None)
    return figures, missed, sim_figures, len(sim)


def _rank(row):
    """Grid rows best first: sensitivity, false alarms, accuracy, interval width, order."""
    sens = row["sensitivity"] if row["sensitivity"] is not None else 0.0
    return (-sens, row["false_alarm_rate"], -row["acc_per_case"], -row["_width"], row["_order"])


def _grid_rows(probs, true, abnormal, base, grid, min_sensitivity, threshold_position, log):
    """One row per grid point: its parameters, chosen threshold and training figures."""
    nlps = [neg_log_probs(p, base.prob_floor) for p in probs]
    priors = [(g, lo, s) for g in grid["prior_gain"] for lo in grid["prior_loss"]
              for s in grid["prior_sex"]]
    penalties = [(e, m) for e in grid["extra_penalty"] for m in grid["missing_penalty"]]
    log(f"calibrating on {len(probs)} cells ({int(abnormal.sum())} abnormal): "
        f"{len(penalties)} penalty settings x {len(priors)} prior settings")
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
            row = _score_grid_point(params, costs, correct, true, abnormal, base,
                                    min_sensitivity, threshold_position)
            rows.append({**row, "_order": len(rows)})
        if (step + 1) % 5 == 0 or step + 1 == len(penalties):
            log(f"  {step + 1}/{len(penalties)} penalty settings done")
    return rows


def _score_grid_point(params, costs, correct, true, abnormal, base, min_sensitivity,
                      threshold_position):
    """The threshold and training figures of one grid point (cells x hypotheses costs)."""
    scores = -costs + log_priors(params)[None, :]
    best_n = NORMAL_INDEX[np.argmax(scores[:, NORMAL_INDEX], axis=1)]
    best_a = ABNORMAL_INDEX[np.argmax(scores[:, ABNORMAL_INDEX], axis=1)]
    rows_i = np.arange(len(costs))
    margins = scores[rows_i, best_a] - scores[rows_i, best_n]
    if abnormal.any():
        choice = choose_threshold(margins, abnormal, min_sensitivity, threshold_position)
    else:
        choice = choose_threshold(margins, abnormal)
        choice["threshold"] = base.threshold
        flagged = _flag(margins, base.threshold)
        choice["false_alarms"] = int(flagged.sum())
        choice["false_alarm_rate"] = float(flagged.mean())
    called = np.where(_flag(margins, choice["threshold"]), best_a, best_n)
    n_per_cell = np.array([t.size for t in true])
    acc = float(np.mean(correct[rows_i, called] / np.maximum(n_per_cell, 1)))
    interval = choice["interval"]
    width = (interval[1] - interval[0]) if interval and interval[1] is not None else 0.0
    return {**params.replace(threshold=choice["threshold"]).to_dict(),
            "acc_per_case": acc, "sensitivity": choice["sensitivity"],
            "false_alarm_rate": choice["false_alarm_rate"], "interval": interval,
            "_width": width}


def _calibration_warnings(n_abn, n_sim, missed, base, min_sensitivity):
    n_real_abn = n_abn - n_sim
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
                        f"rests on {n_sim} simulated ones only")
    elif n_abn and n_real_abn < 10:
        warnings.append(f"only {n_real_abn} real abnormal cells in the calibration set"
                        + (f" (and {n_sim} simulated)" if n_sim else "")
                        + ": the figures on real abnormal cells rest on very few examples")
    return warnings


# --------------------------------------------------------------------------- manifest


# --------------------------------------------------------------------------- from labelled data


