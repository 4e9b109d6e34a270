"""The structural score of a model directory on held-out labelled normal cells
(``vfinfer eval-structural``): normal chromosomes against synthetic aberrations of the same
cells, each scored by the full pipeline (``vfinfer run``'s), so conditioned on the called type.

1. Every cell of the labels as it is (normal): the score of each chromosome, the specificity
   at the manifest's threshold, and the share of cells with any chromosome flagged.
2. ``copies`` copies of each cell with ``per_cell`` aberrations each
   (``vfinfer.tools.synthesis.structural_cases``, a fixed seed, all kinds, segment sizes
   ``size_min..size_max`` of the length), written to a temporary folder: the score of each
   aberrant chromosome. The unchanged chromosomes of the copies are not among the normals of
   step 1; their flags are reported apart (all of them, and the *partners*: those of the type
   of an aberrant chromosome of their copy, which a score that compares homologues sees
   beside an aberrant copy), with the copies in which only aberrant chromosomes are flagged.
3. ROC AUC (aberrant vs normal chromosomes; overall, per size bin, per kind, and for the
   aberrant chromosomes the classifier called as their own type or as another: the score is
   conditioned on the called type), sensitivity at the manifest's threshold per kind, per size
   bin (5-10 %, >= 10 %) and both; per Denver group (A-G) of the labelled type, both figures
   against that group's normal chromosomes, and its specificity. The threshold is the
   manifest's: nothing is tuned on these cells. Beside it, what a cell-level operating point
   would give: the threshold at which 1 in 20 of these normal cells has a flag, and the
   sensitivity at it (read off the test cells themselves, so a figure of what is possible,
   not a threshold to ship); and likewise the sensitivity at the threshold that gives 99 %
   specificity on these normal chromosomes, to compare models at one specificity.
4. With the arm output: how often the arm it names on a flagged aberrant chromosome is the
   changed one (p, q, or both for a pericentric inversion), overall and per kind, and the
   share of flagged ones whose warning names an arm (probability >= ``ARM_CLEAR``).
"""

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfinfer.io.labels import by_cell, read_labels
from vfinfer.model.classes import DENVER_GROUPS, denver_group, type_index
from vfinfer.pipeline.result import ARM_CLEAR
from vfinfer.tools.evaluation.dispatch_figures import roc_curve
from vfinfer.tools.evaluation.plots import pr_png, roc_png
from vfinfer.tools.evaluation.structural import (
    SIZE_BINS,
    arm_figures,
    roc_auc,
    sensitivity_table,
    threshold_for_specificity,
)
from vfinfer.tools.synthesis.structural import KINDS
from vfinfer.tools.synthesis.structural_cases import write_structural_cases
from vfinfer.util.images import read_gray8

CELL_SPECIFICITY = 0.95  # 1 in 20 normal cells with a flag
CHROMOSOME_SPECIFICITY = 0.99  # the target's specificity, read off the test normals


@dataclass
class ScreenOptions:
    """How the aberrant copies of step 2 are made."""

    copies: int = 3
    per_cell: int = 3
    size_min: float = 0.05
    size_max: float = 0.4
    seed: int = 2024


def score_cells(pipe, data_dir, labels_csv):
    """{(cell, file): (score, called type, labelled type)}, {cell: any flagged} and
    {(cell, file): (the arm named, its probability)} (None, None where no arm is named)."""
    scores, any_flagged, arms = {}, {}, {}
    for cell, items in by_cell(read_labels(data_dir, labels_csv)).items():
        files = [str(item.path.relative_to(Path(data_dir))) for item in items]
        result = pipe.run_case([read_gray8(item.path) for item in items], name=cell,
                               files=files)
        for item, row in zip(items, result["chromosomes"]):
            scores[(cell, row["file"])] = (row["structural"]["score"],
                                           type_index(row["type"]), item.type)
            arms[(cell, row["file"])] = (row["structural"].get("arm"),
                                         row["structural"].get("arm_prob"))
        any_flagged[cell] = any(r["structural"]["flagged"] for r in result["chromosomes"])
    return scores, any_flagged, arms


def aberrant_scores(pipe, data_dir, labels_csv, n_cells, options, tmp):
    """(the scores of the aberrant chromosomes of the copies of the ``n_cells`` labelled
    cells with their truth rows, the figures of their unchanged chromosomes:
    ``copy_figures``)."""
    out = Path(tmp) / "structural"
    write_structural_cases(data_dir, out, seed=options.seed, labels_csv=labels_csv,
                           kinds=KINDS, size_min=options.size_min, size_max=options.size_max,
                           cells=options.copies * n_cells, per_cell=options.per_cell)
    scores, _, arms = score_cells(pipe, out, "labels.csv")
    with open(out / "structural.csv", newline="") as handle:
        truth = list(csv.DictReader(handle))
    rows = []
    for row in truth:
        score, called, labelled = scores[(row["cell"], row["file"])]
        named, named_prob = arms[(row["cell"], row["file"])]
        rows.append({**row, "score": score, "called_type": called, "labelled_type": labelled,
                     "named_arm": named, "named_arm_prob": named_prob})
    return rows, copy_figures(scores, rows, pipe.structural.threshold)


def copy_figures(scores, aberrant, threshold):
    """Flags among the unchanged chromosomes of the copies: all, the partners (module doc),
    and the share of copies where every flag is on an aberrant chromosome."""
    changed = {(r["cell"], r["file"]) for r in aberrant}
    changed_types = {(r["cell"], r["labelled_type"]) for r in aberrant}
    unchanged = {k: v for k, v in scores.items() if k not in changed}
    partner = [k for k, (_, _, labelled) in unchanged.items() if (k[0], labelled)
               in changed_types]
    others_flagged = {cell for (cell, _), (s, _, _) in unchanged.items() if s >= threshold}
    copies = {cell for cell, _ in scores}

    def rate(keys):
        return round(float(np.mean([unchanged[k][0] >= threshold for k in keys])), 4) \
            if keys else None

    return {"unchanged": len(unchanged), "unchanged_flagged": rate(list(unchanged)),
            "partners": len(partner), "partners_flagged": rate(partner),
            "copies": len(copies), "copies_only_aberrant_flagged": round(
                1 - len(others_flagged) / max(len(copies), 1), 4)}


def _auc_against(normal_scores, aberrant_scores, subset):
    return round(roc_auc(np.r_[normal_scores, aberrant_scores[subset]],
                         np.r_[np.zeros(len(normal_scores)), np.ones(subset.sum())]), 4)


def chromosome_figures(normal, aberrant, threshold):
    """AUC, specificity, sensitivity, and both per kind, size bin and group (module doc, step
    3)."""
    normal_scores = np.array([s for s, _, _ in normal.values()])
    ab_scores = np.array([r["score"] for r in aberrant])
    sizes = np.array([float(r["size"]) for r in aberrant])
    kinds = np.array([r["kind"] for r in aberrant])
    table = sensitivity_table(ab_scores, kinds.tolist(), sizes, threshold)
    for name, lo, hi in SIZE_BINS:
        table["by_size"][name]["auc_vs_normals"] = _auc_against(
            normal_scores, ab_scores, (sizes >= lo) & (sizes < hi))
    for kind in sorted(set(kinds.tolist())):
        table["by_kind"][kind]["auc_vs_normals"] = _auc_against(normal_scores, ab_scores,
                                                                kinds == kind)
    own = np.array([r["called_type"] == int(r["type"]) - 1 for r in aberrant], bool)
    table["by_call"] = {
        name: {"n": int(subset.sum()), "sensitivity": round(float(np.mean(
            ab_scores[subset] >= threshold)), 4) if subset.any() else None,
               "auc_vs_normals": _auc_against(normal_scores, ab_scores, subset)
               if subset.any() else None}
        for name, subset in (("called_as_their_type", own), ("called_otherwise", ~own))}
    table["by_group"] = group_figures(normal, aberrant, threshold)
    both = np.r_[normal_scores, ab_scores]
    truth = np.r_[np.zeros(len(normal_scores)), np.ones(len(ab_scores))]
    return {"threshold": threshold, "n_normal": len(normal_scores), "n_aberrant": len(ab_scores),
            "auc": round(roc_auc(both, truth), 4),
            "specificity": round(float(np.mean(normal_scores < threshold)), 4),
            "sensitivity": round(float(np.mean(ab_scores >= threshold)), 4),
            "aberrant_called_as_their_type": round(float(np.mean(own)), 4), **table}


def group_figures(normal, aberrant, threshold):
    """Per Denver group (A-G) of the labelled type: sensitivity at ``threshold`` and AUC of its
    aberrant chromosomes against the normal chromosomes of the same group, and the group's
    specificity."""
    normal_groups = np.array([denver_group(labelled) for _, _, labelled in normal.values()])
    normal_scores = np.array([s for s, _, _ in normal.values()])
    ab_groups = np.array([denver_group(int(r["type"]) - 1) for r in aberrant])
    ab_scores = np.array([r["score"] for r in aberrant])
    figures = {}
    for group in DENVER_GROUPS:
        own, mine = normal_scores[normal_groups == group], ab_scores[ab_groups == group]
        figures[group] = {
            "n_normal": len(own), "n_aberrant": len(mine),
            "specificity": round(float(np.mean(own < threshold)), 4) if len(own) else None,
            "sensitivity": round(float(np.mean(mine >= threshold)), 4) if len(mine) else None,
            "auc_vs_normals": round(roc_auc(np.r_[own, mine], np.r_[np.zeros(len(own)),
                                                                   np.ones(len(mine))]), 4)
            if len(own) and len(mine) else None}
    return figures


def sensitivity_at(aberrant, threshold):
    """The sensitivity at ``threshold``: all aberrant chromosomes and those of >= 10 % of the
    length."""
    scores = np.array([r["score"] for r in aberrant])
    large = np.array([float(r["size"]) >= 0.10 for r in aberrant], bool)
    return {"sensitivity_there": round(float(np.mean(scores >= threshold)), 4),
            "sensitivity_ge_10pct_there": round(float(np.mean(scores[large] >= threshold)), 4)
            if large.any() else None}


def cell_operating_point(normal, aberrant, specificity):
    """The threshold at which at most ``1 - specificity`` of the normal cells have a flag
    (each cell judged by its highest score), and ``sensitivity_at`` it."""
    highest = {}
    for (cell, _), (score, _, _) in normal.items():
        highest[cell] = max(score, highest.get(cell, 0.0))
    threshold = threshold_for_specificity(list(highest.values()), specificity)
    return {"cell_specificity": specificity, "threshold_for_cell_specificity": threshold,
            **sensitivity_at(aberrant, threshold)}


def chromosome_operating_point(normal, aberrant, specificity):
    """The threshold at which ``specificity`` of these normal chromosomes score below it, and
    ``sensitivity_at`` it: models compared at one specificity, whatever their thresholds."""
    threshold = threshold_for_specificity([s for s, _, _ in normal.values()], specificity)
    return {"specificity": specificity, "threshold": threshold,
            **sensitivity_at(aberrant, threshold)}


def evaluate_structural(pipe, data_dir, labels_csv, options=None):
    """The report (module doc) of an open ``Pipeline`` with a structural score, and the
    plots' PNG bytes ``{"roc": ..., "pr": ...}``."""
    options = options or ScreenOptions()
    if pipe.structural is None:
        raise ValueError("the model has no structural score (vfinfer export-structural)")
    threshold = pipe.structural.threshold
    normal, any_flagged, _ = score_cells(pipe, data_dir, labels_csv)
    with tempfile.TemporaryDirectory() as tmp:
        aberrant, copies = aberrant_scores(pipe, data_dir, labels_csv, len(any_flagged),
                                           options, tmp)
    report = {
        "data": {"data_dir": str(data_dir), "labels": str(labels_csv), "cells": len(any_flagged),
                 "copies_per_cell": options.copies, "aberrations_per_copy": options.per_cell,
                 "seed": options.seed, "sizes": [options.size_min, options.size_max],
                 "kinds": list(KINDS)},
        "chromosomes": chromosome_figures(normal, aberrant, threshold),
        "at_test_specificity": chromosome_operating_point(normal, aberrant,
                                                          CHROMOSOME_SPECIFICITY),
        "normal_cells": {"n": len(any_flagged), "share_any_flagged": round(
            float(np.mean(list(any_flagged.values()))), 4),
            **cell_operating_point(normal, aberrant, CELL_SPECIFICITY)},
        "aberrant_copies": copies}
    if pipe.structural.arms:
        report["arm"] = aberrant_arm_figures(aberrant, threshold)
    return report, _plots(normal, aberrant, threshold)


def aberrant_arm_figures(aberrant, threshold):
    """``arm_figures`` of the aberrant chromosomes' named arms (step 4 of the module doc)."""
    return arm_figures([r["named_arm"] for r in aberrant], [r["arm"] for r in aberrant],
                       [r["kind"] for r in aberrant], [r["score"] >= threshold for r in aberrant],
                       [(r["named_arm_prob"] or 0.0) >= ARM_CLEAR for r in aberrant])


def _plots(normal, aberrant, threshold):
    scores = np.r_[[s for s, _, _ in normal.values()], [r["score"] for r in aberrant]]
    positive = np.r_[np.zeros(len(normal)), np.ones(len(aberrant))].astype(bool)
    return {"roc": roc_png({"chromosomes": roc_curve(scores, positive)}, threshold,
                           "structural score: aberrant vs normal chromosomes"),
            "pr": pr_png(scores, positive, threshold, "structural score: precision / recall")}
