"""Figures of the structural score: ROC AUC, the threshold for a specificity, sensitivity per
kind and size bin (numpy, SciPy's ranks): used by ``vfinfer train-structural`` and
``vfinfer eval-structural`` (``structural_screen``)."""

import numpy as np

from vfinfer.pipeline.structural import ARMS

SIZE_BINS = (("5-10%", 0.05, 0.10), (">=10%", 0.10, 1.01))


def roc_auc(scores, labels):
    """The area under the ROC curve (Mann-Whitney U on average ranks: ties count half); nan
    without both classes."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if not pos or not neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def threshold_for_specificity(normal_scores, specificity):
    """The lowest threshold at which at most ``1 - specificity`` of ``normal_scores`` score
    at or above it (a chromosome is flagged when its score >= the threshold)."""
    ordered = np.sort(np.asarray(normal_scores, np.float64))[::-1]
    if not len(ordered):
        raise ValueError("no normal chromosomes to choose a threshold on")
    allowed = int(np.floor((1.0 - specificity) * len(ordered) + 1e-9))
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))


def _rounded(value):
    """``value`` rounded to 4 places, None for nan (JSON has no nan)."""
    return None if value != value else round(float(value), 4)


def _rate(flags):
    return round(float(np.mean(flags)), 4) if len(flags) else None


def sensitivity_table(scores, kinds, sizes, threshold):
    """Sensitivity of aberrant chromosomes at ``threshold``: per kind, per size bin
    (``SIZE_BINS``; isochromosomes have an arm's size) and per kind and bin, with counts."""
    scores, sizes = np.asarray(scores), np.asarray(sizes)
    kinds = np.asarray(kinds)
    flagged = scores >= threshold
    table = {"by_kind": {}, "by_size": {}, "by_kind_and_size": {}}
    for kind in sorted(set(kinds.tolist())):
        at = kinds == kind
        table["by_kind"][kind] = {"n": int(at.sum()), "sensitivity": _rate(flagged[at])}
    for name, lo, hi in SIZE_BINS:
        at = (sizes >= lo) & (sizes < hi)
        table["by_size"][name] = {"n": int(at.sum()), "sensitivity": _rate(flagged[at]),
                                  "auc_vs_normals": None}
        for kind in sorted(set(kinds.tolist())):
            both = at & (kinds == kind)
            if both.any():
                table["by_kind_and_size"][f"{kind} {name}"] = {
                    "n": int(both.sum()), "sensitivity": _rate(flagged[both])}
    return table


def arm_figures(named, true_arms, kinds, flagged, clear=None):
    """How often the arm output names the changed arm (p, q or pq) of the flagged aberrant
    chromosomes, overall and per kind (``named``: the arm named per aberrant chromosome, read
    where ``flagged``); with ``clear`` (bool per chromosome: its warning names the arm), the
    share of flagged ones named and how often those are right."""
    flagged, kinds = np.asarray(flagged, bool), np.asarray(kinds, str)
    right = np.array([f and n == t for n, t, f in zip(named, true_arms, flagged)], bool)
    figures = {"n_flagged": int(flagged.sum()), "right_of_flagged": _rate(right[flagged]),
               "right_of_flagged_by_kind": {k: _rate(right[flagged & (kinds == k)])
                                            for k in sorted(set(kinds.tolist()))}}
    if clear is not None:
        clear = np.asarray(clear, bool) & flagged
        figures.update(flagged_named=_rate(clear[flagged]), right_of_named=_rate(right[clear]))
    return figures


def arm_names(arm_probs):
    """The arm (``ARMS``) each row of probabilities names."""
    return [ARMS[i] for i in np.argmax(arm_probs, axis=1)] if len(arm_probs) else []


def validation_figures(scores, examples, threshold, arm_probs=None):
    """AUC, specificity and sensitivity (overall, per kind, per size bin) of ``Examples``;
    with ``arm_probs`` (the arm head's), ``arm``: ``arm_figures`` of the aberrant ones."""
    labels = examples.label.astype(bool)
    normal, aberrant = scores[~labels], scores[labels]
    kinds = [k for k, lab in zip(examples.kind, labels) if lab]
    table = sensitivity_table(aberrant, kinds, examples.size[labels], threshold)
    for name, lo, hi in SIZE_BINS:
        at = (examples.size[labels] >= lo) & (examples.size[labels] < hi)
        table["by_size"][name]["auc_vs_normals"] = _rounded(roc_auc(
            np.r_[normal, aberrant[at]], np.r_[np.zeros(len(normal)), np.ones(at.sum())]))
    figures = {"threshold": threshold, "n_normal": int(len(normal)),
               "n_aberrant": int(len(aberrant)), "auc": _rounded(roc_auc(scores, labels)),
               "specificity": round(float(np.mean(normal < threshold)), 4),
               "sensitivity": round(float(np.mean(aberrant >= threshold)), 4), **table}
    if arm_probs is not None:
        figures["arm"] = arm_figures(arm_names(arm_probs[labels]),
                                     [a for a, lab in zip(examples.arm, labels) if lab], kinds,
                                     aberrant >= threshold)
    return figures
