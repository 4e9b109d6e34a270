"""Patient-level figures of optimal dispatch against the truth: the ISCN clone rules of
vfinfer.calls.patient applied to true and called karyotypes, and the ROC of the margin
threshold per patient."""

import numpy as np

from vfinfer.calls.patient import RULES, patient_karyotype


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
    margins = {float(c["margin"]) for c in cells if c["cell"] in by_name}
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
        "roc": _patient_roc(margins, steps, truth),
        "patients": patients,
        "rules": RULES,
    }


def _patient_roc(margins, steps, truth):
    """The ROC of the margin threshold per patient: at each threshold t among the cells'
    margins, cells with margin >= t take their best abnormal call (``_flag_steps``); ``auc``
    only when the curve reaches (1, 1)."""
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    points = [{"threshold": None, "tpr": 0.0 if n_pos else None, "fpr": 0.0 if n_neg else None,
               "tp": 0, "fp": 0}]
    for t in sorted(margins, reverse=True):
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
    return {"points": points, "auc": auc, "n_positive": n_pos, "n_negative": n_neg}
