"""Optimal dispatch: the most likely numerical karyotype of one cell, by global assignment.

Algorithm 1 of the paper (``vfinfer.calls.dispatch``) fixes over-full types one at a time and then
warns about every count that is not 2. One confident misclassification (a 4 that looks like
a 5) therefore becomes a count warning in many normal cells. Optimal dispatch instead asks,
for each candidate karyotype H, how well the whole cell can be explained by it, and compares
the best abnormal explanation with the best normal one.

Hypotheses (94, see ``HYPOTHESES``): 46,XX and 46,XY; every single autosomal gain (+k) and
loss (-k), k = 1..22, for both sexes; the sex-chromosome variants 45,X, 47,XXX, 47,XXY and
47,XYY. Each is a vector of 24 expected counts (``parse_karyotype``).

Cost of H for a cell with probabilities P (N x 24), solved exactly with
``scipy.optimize.linear_sum_assignment`` on an N x M matrix whose columns are slots:

- one *expected* slot per chromosome H holds (M_exp = sum of H's counts); chromosome i in an
  expected slot of type t costs -log P[i, t];
- ``extra_slots`` *extra* slots per type (default 1) for objects H does not explain (debris,
  an overlap cut in two, or a real gain H lacks); they cost -log P[i, t] + ``extra_penalty``;
- an expected slot left empty (a chromosome lost in preparation or hidden by an overlap, or a
  real loss H lacks) costs ``missing_penalty``. This is kept exact inside the rectangular
  assignment by giving expected-slot columns a bonus of -missing_penalty and adding
  missing_penalty * M_exp as a constant: sum(assigned) + missing_penalty * (unfilled slots).

When a cell has more objects than 45 + 24 * extra_slots (the smallest hypothesis plus its
extra slots: 69 by default), more extra slots per type are added so that the assignment
always exists.
Probabilities are clipped at ``prob_floor`` (1e-12) before the log; rows are not required to
sum to 1.

Log-likelihood: LL(H) = -cost(H) + log prior(H). A class's prior mass (``prior_normal``,
``prior_gain``, ``prior_loss``, ``prior_sex``) is split evenly over its hypotheses (2, 44,
44 and 4 of them). The *margin* is LL(best abnormal) - LL(best normal), a log-likelihood
ratio (negative when a normal karyotype is the most likely). A cell is called abnormal when
the margin is positive and at least ``threshold``; the call is then the best abnormal
karyotype, otherwise the best normal one. ``types`` are the chromosomes' types (0-based) in
the assignment of the called karyotype, extra objects included (they keep their slot's type).

Speed: all 94 hypotheses are solved exactly, no pruning (see ``benchmark``): about 5 ms per
46-chromosome cell on one CPU core (5-10 ms for 45-48 chromosomes on a busy 2-core machine,
about 45 ms for a 92-object cell). Algorithm 1 takes about 0.2 ms.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from vfinfer.calls.dispatch import check_probs, dispatch_counts
from vfinfer.calls.karyotype import REVIEW_NOTE, karyotype_summary, parse_karyotype
from vfinfer.model.classes import N_TYPES, TYPE_NAMES

__all__ = [
    "HYPOTHESES",
    "Hypothesis",
    "OptimalDispatch",
    "OptimalParams",
    "benchmark",
    "decide",
    "hypothesis_costs",
    "optimal_dispatch",
]

NORMAL_KARYOTYPES = ("46,XX", "46,XY")
SEX_VARIANTS = ("45,X", "47,XXX", "47,XXY", "47,XYY")
KINDS = ("normal", "gain", "loss", "sex")
STRONG_MARGIN = 6.0  # nats beyond the threshold (odds e^6, about 400:1) for "strong"


@dataclass(frozen=True)
class OptimalParams:
    """Parameters of optimal dispatch (JSON-ready through ``to_dict`` / ``from_dict``).

    Defaults (uncalibrated; ``vfinfer.tools.evaluation.calibrate`` fits them on training slides):

    - ``prior_normal`` 0.90, ``prior_gain`` 0.03, ``prior_loss`` 0.05, ``prior_sex`` 0.02:
      prior mass of each class, split evenly over its hypotheses (46,XX and 46,XY 0.45 each;
      each +k 0.03 / 44; each -k 0.05 / 44; each sex variant 0.005), about the share of such
      cells in the Pki-3 labels. Only ratios matter; the masses need not sum to 1.
    - ``extra_penalty`` 10 and ``missing_penalty`` 10 (nats): what an unexplained extra object
      or an empty expected slot costs. With these priors a clean trisomy scores a margin of
      about 3.5, a clean autosomal loss 4.0, 45,X or 47,XXY 5.5, while a normal 46-chromosome
      cell needs a chromosome with P(true type) below about 1e-7 to reach 0.
    - ``threshold`` 2.0: the margin needed to call a cell abnormal (must be >= 0).
    - ``prob_floor`` 1e-12: probabilities are clipped here before the log.
    - ``extra_slots`` 1: extra slots per type.
    """

    prior_normal: float = 0.90
    prior_gain: float = 0.03
    prior_loss: float = 0.05
    prior_sex: float = 0.02
    extra_penalty: float = 10.0
    missing_penalty: float = 10.0
    threshold: float = 2.0
    prob_floor: float = 1e-12
    extra_slots: int = 1

    def __post_init__(self):
        for name in ("prior_normal", "prior_gain", "prior_loss", "prior_sex"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("extra_penalty", "missing_penalty", "threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not _is_number(self.prob_floor) or not 0 < self.prob_floor < 1:
            raise ValueError(f"prob_floor must be in (0, 1), got {self.prob_floor!r}")
        if (isinstance(self.extra_slots, bool) or not isinstance(self.extra_slots, int)
                or self.extra_slots < 1):
            raise ValueError(f"extra_slots must be an integer >= 1, got {self.extra_slots!r}")

    def to_dict(self):
        return {k: (int(v) if k == "extra_slots" else float(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data):
        """Parameters from a dict such as ``to_dict`` writes; missing keys keep their default,
        unknown keys raise ValueError (a typo would otherwise be silently ignored)."""
        if not isinstance(data, dict):
            raise ValueError(f"optimal dispatch parameters must be a JSON object, got "
                             f"{type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown optimal dispatch parameter(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**data)

    def replace(self, **changes):
        return type(self)(**{**asdict(self), **changes})


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool) and not math.isnan(value)


class Hypothesis(NamedTuple):
    """One candidate karyotype: ISCN name, 24 expected counts, kind and plain-English call."""

    name: str
    counts: np.ndarray
    kind: str  # normal, gain, loss or sex
    call: str


def _sex_call(name):
    return {"45,X": "monosomy X", "47,XXX": "trisomy X (XXX)", "47,XXY": "gain of X (XXY)",
            "47,XYY": "gain of Y (XYY)"}[name]


def _build_hypotheses():
    items = [(name, "normal", "normal") for name in NORMAL_KARYOTYPES]
    for sex in ("XX", "XY"):
        items += [(f"47,{sex},+{k}", "gain", f"trisomy {k}") for k in range(1, 23)]
        items += [(f"45,{sex},-{k}", "loss", f"loss of {k}") for k in range(1, 23)]
    items += [(name, "sex", _sex_call(name)) for name in SEX_VARIANTS]
    out = []
    for name, kind, call in items:
        counts = parse_karyotype(name)
        counts.setflags(write=False)
        # the names are exactly what karyotype_summary writes for these counts
        assert karyotype_summary(np.repeat(np.arange(N_TYPES), counts))[0] == name
        out.append(Hypothesis(name, counts, kind, call))
    return tuple(out)


HYPOTHESES = _build_hypotheses()
_KIND = np.array([h.kind for h in HYPOTHESES])
NORMAL_INDEX = np.flatnonzero(_KIND == "normal")
ABNORMAL_INDEX = np.flatnonzero(_KIND != "normal")
_FEWEST_SLOTS = min(int(h.counts.sum()) for h in HYPOTHESES)  # 45


def log_priors(params):
    """log prior of each hypothesis (array in ``HYPOTHESES`` order)."""
    mass = {"normal": params.prior_normal, "gain": params.prior_gain,
            "loss": params.prior_loss, "sex": params.prior_sex}
    size = {kind: int((_KIND == kind).sum()) for kind in KINDS}
    return np.array([math.log(mass[k] / size[k]) for k in _KIND])


def neg_log_probs(probs, floor=1e-12):
    """-log P clipped at ``floor``, as an N x 24 float array (checks the input)."""
    p = check_probs(probs)
    return -np.log(np.clip(p, floor, None))


@functools.lru_cache(maxsize=16)
def _slot_columns(per_type):
    """Slot types of each hypothesis: its expected slots, then ``per_type`` extra per type."""
    all_types = np.arange(N_TYPES)
    extra = np.repeat(all_types, per_type)
    out = []
    for hyp in HYPOTHESES:
        columns = np.concatenate([np.repeat(all_types, hyp.counts), extra])
        columns.setflags(write=False)
        out.append((columns, int(hyp.counts.sum())))
    return tuple(out)


def hypothesis_costs(probs, extra_penalty=10.0, missing_penalty=10.0, prob_floor=1e-12,
                     extra_slots=1, nlp=None):
    """Exact assignment cost of every hypothesis for one cell.

    Returns ``(costs, types)``: ``costs`` a float array (one per hypothesis in ``HYPOTHESES``
    order), ``types`` an int array (n_hypotheses x N) with each chromosome's slot type under
    that hypothesis. ``nlp`` (N x 24 -log P, see ``neg_log_probs``) skips the log when given.
    """
    if nlp is None:
        nlp = neg_log_probs(probs, prob_floor)
    n = nlp.shape[0]
    costs = np.empty(len(HYPOTHESES))
    types = np.empty((len(HYPOTHESES), n), dtype=np.int64)
    if n == 0:
        costs[:] = [missing_penalty * int(h.counts.sum()) for h in HYPOTHESES]
        return costs, types
    # enough extra slots that every chromosome has one (only matters beyond ~70 objects)
    per_type = max(int(extra_slots), -(-(n - _FEWEST_SLOTS) // N_TYPES))
    for h, (columns, n_exp) in enumerate(_slot_columns(per_type)):
        matrix = nlp[:, columns]
        matrix[:, :n_exp] -= missing_penalty
        matrix[:, n_exp:] += extra_penalty
        rows, cols = linear_sum_assignment(matrix)
        costs[h] = matrix[rows, cols].sum() + missing_penalty * n_exp
        types[h, rows] = columns[cols]
    return costs, types


def _margin_text(value):
    return f"{value:.1f}"


def _threshold_text(value):
    """2.0, 3.5, 0.25: one decimal unless that would hide a finer calibrated value."""
    return f"{value:.1f}" if abs(value * 10 - round(value * 10)) < 1e-9 else f"{value:.2f}"


def decide(costs, types, params, top=3, probs=None):
    """The call for one cell from ``hypothesis_costs``' output (see ``optimal_dispatch``).

    ``probs`` (optional) only picks which chromosomes of an over-full type are named as the
    extra objects: the least probable ones (else the last ones)."""
    n = types.shape[1]
    if n == 0:
        return _empty_result(params)
    scores = -np.asarray(costs, dtype=np.float64) + log_priors(params)
    best_normal = int(NORMAL_INDEX[np.argmax(scores[NORMAL_INDEX])])
    best_abnormal = int(ABNORMAL_INDEX[np.argmax(scores[ABNORMAL_INDEX])])
    margin = float(scores[best_abnormal] - scores[best_normal])
    threshold = float(params.threshold)
    abnormal = bool(margin > 0 and margin >= threshold)
    called = best_abnormal if abnormal else best_normal
    most_likely = best_abnormal if margin > 0 else best_normal
    hyp, normal_name = HYPOTHESES[called], HYPOTHESES[best_normal].name
    abn = HYPOTHESES[best_abnormal]
    cell_types = types[called]
    missing, extra = _unexplained(hyp, cell_types, probs)
    notes = _slot_notes(n, hyp, missing, extra, cell_types)
    confidence, explanation, warnings = _verdict(abnormal, margin, threshold, abn, normal_name)
    if confidence == "borderline":
        notes.append(explanation)
    order = np.argsort(-scores, kind="stable")[:max(int(top), 0)]
    hypotheses = [{
        "karyotype": HYPOTHESES[h].name,
        "call": HYPOTHESES[h].call,
        "log_likelihood": round(float(scores[h]), 4),
        "llr_vs_normal": round(float(scores[h] - scores[best_normal]), 4),
        "cost": round(float(costs[h]), 4),
    } for h in order]
    return {
        "karyotype": hyp.name, "abnormal": abnormal, "call": hyp.call, "margin": margin,
        "threshold": threshold, "best_normal": normal_name, "best_abnormal": abn.name,
        "most_likely": HYPOTHESES[most_likely].name, "confidence": confidence,
        "explanation": explanation, "warnings": warnings, "notes": notes,
        "types": [int(t) for t in cell_types],
        "counts_karyotype": karyotype_summary(cell_types)[0],
        "missing": missing, "extra": extra, "hypotheses": hypotheses,
    }


def _unexplained(hyp, cell_types, probs):
    """What the called karyotype leaves unexplained: the type names of its empty expected
    slots, and the indices of the extra objects (the least probable of an over-full type)."""
    missing, extra = [], []
    left = hyp.counts.astype(np.int64) - dispatch_counts(cell_types)
    for k in range(N_TYPES):
        if left[k] > 0:
            missing += [TYPE_NAMES[k]] * int(left[k])
    for k in range(N_TYPES):
        if left[k] < 0:
            members = np.flatnonzero(cell_types == k)
            if probs is not None:
                members = members[np.argsort(-np.asarray(probs)[members, k], kind="stable")]
            extra += [int(i) for i in members[-int(-left[k]):]]
    return missing, sorted(extra)


def _slot_notes(n, hyp, missing, extra, cell_types):
    notes = []
    if missing:
        notes.append(f"{n} chromosomes for {hyp.name}: no chromosome found for "
                     f"{len(missing)} expected slot(s) of type {', '.join(missing)} "
                     "(lost in preparation, hidden by an overlap, or a real loss below the "
                     "threshold)")
    if extra:
        names = ", ".join(TYPE_NAMES[cell_types[i]] for i in extra)
        notes.append(f"{n} chromosomes for {hyp.name}: {len(extra)} object(s) counted as "
                     f"extra (types {names}; debris, an overlap cut in two, or a real gain "
                     "below the threshold)")
    return notes


def _verdict(abnormal, margin, threshold, abn, normal_name):
    """(confidence, explanation, warnings) of a call from its log-likelihood margin."""
    if abnormal:
        confidence = "strong" if margin >= threshold + STRONG_MARGIN else "moderate"
        explanation = (f"{abn.name} ({abn.call}) is more likely than {normal_name} by a "
                       f"log-likelihood ratio of {_margin_text(margin)} (threshold "
                       f"{_threshold_text(threshold)}); {confidence} evidence")
        return confidence, explanation, [
            f"possible {abn.call}, {abn.name} (log-likelihood ratio {_margin_text(margin)} "
            f"over {normal_name}, threshold {_threshold_text(threshold)}): {REVIEW_NOTE}"]
    if margin > 0:
        return "borderline", (
            f"{abn.name} ({abn.call}) is more likely than {normal_name} (log-likelihood "
            f"ratio {_margin_text(margin)}) but below the threshold "
            f"{_threshold_text(threshold)}: called {normal_name}"), []
    if margin > -STRONG_MARGIN:
        return "likely normal", (
            f"{normal_name} is the most likely karyotype; the closest abnormal one, "
            f"{abn.name}, is behind by {_margin_text(-margin)}"), []
    return "clearly normal", (
        f"{normal_name} is the most likely karyotype; no abnormal one comes close (closest: "
        f"{abn.name}, behind by {_margin_text(-margin)})"), []


def _empty_result(params):
    """The result for a cell without chromosomes: nothing to call."""
    return {"karyotype": None, "abnormal": False, "call": "no chromosomes", "margin": None,
            "threshold": float(params.threshold), "best_normal": None, "best_abnormal": None,
            "most_likely": None, "confidence": "none", "explanation": "no chromosomes",
            "warnings": ["no chromosomes"], "notes": [], "types": [], "counts_karyotype": None,
            "missing": [], "extra": [], "hypotheses": []}


class OptimalDispatch:
    """Optimal dispatch with fixed parameters; call it on one cell's (N, 24) probabilities.

    Stateless once built, so one instance may serve several threads (``Pipeline`` keeps one).

    Parameters
    ----------
    params : OptimalParams, optional
        Priors, penalties and threshold; None: the defaults (``OptimalParams()``).

    Raises
    ------
    TypeError
        ``params`` is not an ``OptimalParams``.
    """

    def __init__(self, params: Optional[OptimalParams] = None) -> None:
        self.params = OptimalParams() if params is None else params
        if not isinstance(self.params, OptimalParams):
            raise TypeError(f"params must be OptimalParams, got {type(self.params).__name__}")

    def costs(self, probs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """The exact assignment cost of every hypothesis (``hypothesis_costs``).

        Parameters
        ----------
        probs : array_like
            (N, 24) type probabilities of one cell.

        Returns
        -------
        costs : np.ndarray
            (H,) float64, one per hypothesis in ``HYPOTHESES`` order (H = 94).
        types : np.ndarray
            (H, N) int64: each chromosome's slot type under each hypothesis.
        """
        p = self.params
        return hypothesis_costs(probs, p.extra_penalty, p.missing_penalty, p.prob_floor,
                                p.extra_slots)

    def __call__(self, probs: ArrayLike, top: int = 3) -> dict[str, Any]:
        """The call for one cell.

        Parameters
        ----------
        probs : array_like
            (N, 24) type probabilities of one cell, one row per chromosome; N may be 0.
        top : int
            How many hypotheses to list under ``hypotheses``.

        Returns
        -------
        dict
            JSON-ready: ``karyotype``, ``abnormal``, ``call``, ``margin``, ``confidence``,
            ``warnings``, ``types`` (N 0-based types under the called karyotype) ...; every
            key is described in ``optimal_dispatch``.

        Raises
        ------
        ValueError
            ``probs`` is not a finite (N, 24) array.
        """
        costs, types = self.costs(probs)
        return decide(costs, types, self.params, top=top, probs=probs)


def optimal_dispatch(probs: ArrayLike, params: Optional[OptimalParams] = None,
                     top: int = 3) -> dict[str, Any]:
    """The most likely karyotype of one cell and its chromosomes' types.

    Parameters
    ----------
    probs : array_like
        (N, 24) type probabilities of one cell.
    params : OptimalParams, optional
        None: the defaults.
    top : int
        How many hypotheses to list.

    Returns
    -------
    dict
        JSON-ready:

        - ``karyotype``: the called karyotype (best abnormal if ``abnormal``, else best normal);
          ``most_likely``: the top hypothesis, even below the threshold;
        - ``abnormal``: the best abnormal hypothesis wins and ``margin >= threshold``;
        - ``margin``: LL(best abnormal) - LL(best normal), ``best_normal``, ``best_abnormal``,
          ``threshold``;
        - ``call``: "normal", "trisomy 21", "loss of 7", "monosomy X", ...;
        - ``confidence``: strong / moderate (abnormal), borderline / likely normal / clearly
          normal; ``explanation``: one sentence;
        - ``warnings``: one plain-English warning for an abnormal call, none for a normal one;
          ``notes``: empty slots, extra objects, a sub-threshold abnormal hypothesis;
        - ``types``: 0-based type of each chromosome under the called karyotype;
          ``counts_karyotype``: the karyotype its type counts spell (``karyotype_summary``);
        - ``missing`` (type names of empty slots), ``extra`` (rows counted as extra objects);
        - ``hypotheses``: the ``top`` best, with log-likelihood, llr_vs_normal and cost.

        A cell without chromosomes gets ``karyotype`` and ``margin`` None and the warning
        ``"no chromosomes"``.
    """
    return OptimalDispatch(params)(probs, top=top)


def benchmark(n_cells=50, n_chromosomes=46, seed=0, params=None):
    """Milliseconds per cell of ``optimal_dispatch`` on random near-normal cells:
    ``{"mean_ms", "median_ms", "max_ms", "n_cells", "n_chromosomes"}``."""
    rng = np.random.default_rng(seed)
    base = np.repeat(np.arange(N_TYPES), parse_karyotype("46,XY"))
    engine = OptimalDispatch(params)
    times = []
    for _ in range(int(n_cells)):
        true = rng.choice(base, size=n_chromosomes, replace=n_chromosomes > base.size)
        logits = rng.normal(0, 1.5, size=(n_chromosomes, N_TYPES))
        logits[np.arange(n_chromosomes), true] += rng.uniform(2, 9, size=n_chromosomes)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        t0 = time.perf_counter()
        engine(probs)
        times.append((time.perf_counter() - t0) * 1000)
    return {"mean_ms": float(np.mean(times)), "median_ms": float(np.median(times)),
            "max_ms": float(np.max(times)), "n_cells": int(n_cells),
            "n_chromosomes": int(n_chromosomes)}

