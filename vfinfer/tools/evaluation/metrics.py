"""Evaluation metrics of Varifocal-Net (Qin et al. 2019, Sec. III-C), in plain NumPy.

The paper reports four figures (Table IV), for type (T) and polarity (P):

- Acc.: the fraction of all test images classified correctly (``accuracy``);
- F1: eq. 12, the mean over the N_cls classes of the per-class F1-score, with
  N_cls = 24 for type and 2 for polarity (``macro_f1``);
- Acc. per Case: the fraction correct within each patient case (cell), averaged over the
  cases, with plain argmax types (``per_case_accuracy``);
- Acc. per Case-D: the same after the dispatch strategy of Algorithm 1 has been applied
  within each case (``per_case_accuracy_dispatch``, types only).

Labels are 0-based class indices everywhere (type 0-23 with X = 22 and Y = 23, see
``vfinfer.model.classes``; polarity 0 = q-arm up, 1 = q-arm down).

Definitions the paper leaves open, and how they are settled here:

- 0/0 is 0. A class that is never predicted has precision 0 (TP + FP = 0); a class that
  never occurs in the labels has recall 0 (TP + FN = 0); F1 with precision + recall = 0 is 0.
- A class absent from both the labels and the predictions (TP = FP = FN = 0) has no F1 at all
  (nothing to get right or wrong); it is left out of the macro mean, i.e. eq. 12 divides by
  the number of classes that occur in the labels or the predictions. That is N_cls = 24
  (or 2) whenever every class occurs, as in the paper's test folds; on a small set without
  any Y, say, the mean runs over the other 23 classes instead of counting Y as F1 = 0.
  A class that occurs only in the labels or only in the predictions counts, with F1 = 0.
- Per-case figures weigh every case equally, whatever its number of chromosomes.

The numerical-abnormality check (``abnormal_cells``, ``warning_stats``) is not one of the
paper's metrics: it asks how often the warnings of Algorithm 1 line 17 flag the cells whose
true chromosome counts are abnormal, and how often they flag normal cells.
"""

from collections.abc import Mapping

import numpy as np

from vfinfer.calls.dispatch import count_warnings, dispatch, dispatch_counts
from vfinfer.model.classes import N_TYPES

__all__ = [
    "abnormal_cells",
    "accuracy",
    "case_accuracies",
    "confusion_matrix",
    "dispatch_by_case",
    "macro_f1",
    "per_case_accuracy",
    "per_case_accuracy_dispatch",
    "per_class_prf",
    "warning_stats",
]


def _labels(true, pred, n=None):
    """``true`` and ``pred`` as equal-length 1-D int arrays (in 0..n-1 when ``n`` is given)."""
    t = np.asarray(true)
    p = np.asarray(pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shapes {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"true and predicted labels differ in length: {t.size} vs {p.size}")
    for name, arr in (("true", t), ("predicted", p)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} labels must be integer class indices, got {arr.dtype}")
        if n is not None and arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{name} labels must be in 0..{n - 1}, "
                             f"got {arr.min()}..{arr.max()}")
    return t.astype(np.int64), p.astype(np.int64)


def _ratio(num, den):
    """Elementwise num / den with 0/0 (any x/0) defined as 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def accuracy(true, pred):
    """Acc. of Sec. III-C: the fraction of samples whose predicted class is the true one.

    ``true``, ``pred``: 1-D integer class indices of equal length (at least one sample).
    """
    t, p = _labels(true, pred)
    if t.size == 0:
        raise ValueError("accuracy of an empty set is undefined: no samples")
    return float(np.mean(t == p))


def confusion_matrix(true, pred, n=N_TYPES):
    """n x n counts: row = true class, column = predicted class (Sec. III-C's TP/FP/FN).

    TP_j is the diagonal entry j, FN_j the rest of row j, FP_j the rest of column j.
    """
    t, p = _labels(true, pred, n)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n).astype(np.int64)


def per_class_prf(true, pred, n):
    """Per-class precision, recall and F1 of Sec. III-C (the terms of eq. 12).

    Precision_j = TP_j / (TP_j + FP_j), Recall_j = TP_j / (TP_j + FN_j),
    F1_j = 2 Precision_j Recall_j / (Precision_j + Recall_j), each with 0/0 = 0 (see the
    module docstring). Returns a dict of length-n arrays: ``precision``, ``recall``, ``f1``,
    ``support`` (true count, TP + FN), ``predicted`` (TP + FP) and ``present`` (True where
    the class occurs in the labels or the predictions, i.e. where it enters ``macro_f1``).
    """
    cm = confusion_matrix(true, pred, n)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "predicted": predicted, "present": (support + predicted) > 0}


def macro_f1(true, pred, n):
    """F1 of eq. 12 (Sec. III-C): the mean of the per-class F1 over N_cls = ``n`` classes.

    Use n = 24 for type and n = 2 for polarity. Classes absent from both ``true`` and
    ``pred`` are left out of the mean (see the module docstring); with every class present
    this is exactly eq. 12. Raises ValueError when there are no samples.
    """
    prf = per_class_prf(true, pred, n)
    if not prf["present"].any():
        raise ValueError("macro F1 of an empty set is undefined: no samples")
    return float(prf["f1"][prf["present"]].mean())


def case_accuracies(true, pred, case_ids):
    """Fraction correct within each case: ``(cases, accuracies)``, cases in first-seen order.

    ``case_ids``: one case (cell) id per sample, any hashable values.
    """
    t, p = _labels(true, pred)
    ids = list(case_ids)
    if len(ids) != t.size:
        raise ValueError(f"{len(ids)} case ids for {t.size} samples")
    if t.size == 0:
        raise ValueError("per-case accuracy of an empty set is undefined: no samples")
    cases = list(dict.fromkeys(ids))
    index = {case: k for k, case in enumerate(cases)}
    which = np.array([index[c] for c in ids])
    n_case = np.bincount(which, minlength=len(cases))
    n_right = np.bincount(which, weights=(t == p), minlength=len(cases))
    return cases, n_right / n_case


def per_case_accuracy(true, pred, case_ids):
    """Acc. per Case of Sec. III-C: the fraction correct in each case, averaged over cases.

    No dispatch: ``pred`` is the plain argmax prediction. Every case weighs the same.
    """
    return float(np.mean(case_accuracies(true, pred, case_ids)[1]))


def dispatch_by_case(probs, case_ids, threshold=0.9):
    """Algorithm 1 run separately on the chromosomes of each case.

    ``probs``: N x 24 type probabilities; ``case_ids``: one case id per row. Returns
    ``(types, warnings)``: a length-N array of dispatched 0-based types (rows in the input
    order) and a dict case -> list of warnings (line 17), cases in first-seen order.
    """
    p = np.asarray(probs, dtype=np.float64)
    ids = list(case_ids)
    if p.ndim != 2 or len(ids) != p.shape[0]:
        raise ValueError(f"{len(ids)} case ids for probabilities of shape {p.shape}")
    types = np.empty(len(ids), dtype=np.int64)
    warnings = {}
    rows = {}
    for i, case in enumerate(ids):
        rows.setdefault(case, []).append(i)
    for case, members in rows.items():
        members = np.asarray(members)
        types[members], warnings[case] = dispatch(p[members], threshold)
    return types, warnings


def per_case_accuracy_dispatch(true, probs, case_ids, threshold=0.9):
    """Acc. per Case-D of Sec. III-C: per-case accuracy after the dispatch of Algorithm 1.

    ``probs``: N x 24 type probabilities; dispatch runs within each case (threshold ``th``,
    0.9 in the paper), then the fraction correct is averaged over cases as in
    ``per_case_accuracy``.
    """
    types, _ = dispatch_by_case(probs, case_ids, threshold)
    return per_case_accuracy(true, types, case_ids)


def abnormal_cells(true_types_per_case):
    """Which cells have an abnormal true chromosome count.

    ``true_types_per_case``: a sequence (or a mapping case -> types) of 1-D arrays of
    0-based true types, one per cell. A cell is abnormal when some autosome does not occur
    exactly twice or X + Y != 2: the same rule as the warnings of Algorithm 1 line 17, applied
    to the true labels. Returns a bool array, one entry per cell in the given order.
    """
    cells = (true_types_per_case.values() if isinstance(true_types_per_case, Mapping)
             else true_types_per_case)
    return np.array([bool(count_warnings(dispatch_counts(np.asarray(t, dtype=np.int64))))
                     for t in cells], dtype=bool)


def warning_stats(abnormal, warned):
    """How well the count warnings (Algorithm 1 line 17) flag abnormal cells.

    ``abnormal``: per cell, True when its true counts are abnormal (``abnormal_cells``).
    ``warned``: per cell, True when dispatch gave it at least one count warning.
    Returns a dict: ``n_abnormal``, ``caught`` (abnormal cells warned), ``missed``,
    ``n_normal``, ``false_warnings`` (normal cells warned), and ``caught_rate`` /
    ``false_warning_rate`` (None when there are no abnormal / normal cells).
    """
    a = np.asarray(abnormal, dtype=bool)
    w = np.asarray(warned, dtype=bool)
    if a.shape != w.shape or a.ndim != 1:
        raise ValueError(f"abnormal and warned must be 1-D of equal length, got shapes "
                         f"{a.shape} and {w.shape}")
    n_abnormal, n_normal = int(a.sum()), int((~a).sum())
    caught, false = int((a & w).sum()), int((~a & w).sum())
    return {
        "n_abnormal": n_abnormal,
        "caught": caught,
        "missed": n_abnormal - caught,
        "n_normal": n_normal,
        "false_warnings": false,
        "caught_rate": caught / n_abnormal if n_abnormal else None,
        "false_warning_rate": false / n_normal if n_normal else None,
    }
