"""The structural score under other views and other type conditions, on held-out normal cells
and synthetic aberrations of them (the cells and copies of ``vfinfer eval-structural``):
which second view helps, and whether scoring an uncertain call against its second type too
would remove false flags.

    python benchmarks/structural_views.py ../shared/data/pki3 --labels WORK/pki3-split/test.csv \
        --model MODEL --threads 2 --json benchmarks/results/structural_views_ROW.json

Every chromosome goes through the pipeline (called type, called polarity); its structural
input (``structural_inputs``) is then scored by the model's graph as it is (``id``), mirrored
left-right, with its darkness x 0.9 and x 1.1, shifted one row up and down, and (one view)
conditioned on the classifier's second most probable type. Figures per rule, aberrations of
>= 10 % of the length against the normal chromosomes: ROC AUC and the sensitivity at 99 %
specificity on these normals; of the normal chromosomes flagged at the manifest's threshold
(one view), how many the classifier typed right; and the normal cells flagged at that
threshold when the lower of the called and the second type's score is used.
"""

import argparse
import csv
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from vfinfer.io.labels import by_cell, read_labels
from vfinfer.model.classes import Q_ARM_DOWN, type_index
from vfinfer.pipeline import Pipeline
from vfinfer.pipeline.structural import structural_inputs
from vfinfer.tools.evaluation.structural import roc_auc
from vfinfer.tools.synthesis.structural import KINDS
from vfinfer.tools.synthesis.structural_cases import write_structural_cases
from vfinfer.util.images import read_gray8

VIEWS = {"id": lambda x: x, "mirror": lambda x: x[..., ::-1],
         "darker_x1.1": lambda x: np.clip(x * 1.1, 0, 1), "lighter_x0.9": lambda x: x * 0.9,
         "row_up": lambda x: np.roll(x, -1, axis=2), "row_down": lambda x: np.roll(x, 1, axis=2)}
RULES = {"one view": ("id",), "mirror": ("id", "mirror"),
         "darkness": ("id", "darker_x1.1", "lighter_x0.9"), "shifts": ("id", "row_up", "row_down"),
         "all six": tuple(VIEWS)}


def cell_scores(pipe, images):
    """Per chromosome of one cell: {view: score}, ``second`` (one view, conditioned on the
    second most probable type) and ``called`` (the type after dispatch)."""
    case = pipe.prepare("cell", images, None)
    case.with_probabilities = True
    result = pipe.run_cases([case])[0]
    probs = np.asarray(result["type_probabilities"])
    called = np.array([type_index(r["type"]) for r in result["chromosomes"]])
    names = pipe.manifest.polarity_names
    flip = ([names.index(r["polarity"]) != Q_ARM_DOWN for r in result["chromosomes"]]
            if pipe.manifest.polarity_trained else None)
    upright = case.upright or case.display
    sc = pipe.structural

    def score(x, cond):
        return sc.runner.infer({"image": np.ascontiguousarray(x).astype(np.float32),
                                "cond": cond})["score"].reshape(-1)

    x, cond = structural_inputs(upright, called, sc.height, sc.width, flip, sc.homologue, sc.fit)
    out = {k: score(f(x), cond) for k, f in VIEWS.items()}
    second = np.argsort(-probs, axis=1)[:, 1]
    out["second"] = score(x, structural_inputs(upright, second, sc.height, sc.width, flip,
                                               sc.homologue, sc.fit)[1])
    return [{**{k: float(v[i]) for k, v in out.items()}, "called": int(called[i])}
            for i in range(len(called))]


def scored(pipe, data_dir, labels_csv):
    """Rows of ``cell_scores`` with ``cell``, ``file`` and the labelled ``type``."""
    rows = []
    for cell, items in by_cell(read_labels(data_dir, labels_csv)).items():
        for item, row in zip(items, cell_scores(pipe, [read_gray8(i.path) for i in items])):
            rows.append({**row, "cell": cell, "type": item.type,
                         "file": str(item.path.relative_to(Path(data_dir)))})
    return rows


def rule_figures(normal, aberrant, views):
    """AUC and sensitivity at 99 % specificity (on these normals) of the mean over ``views``,
    aberrations of >= 10 %."""
    n = np.array([np.mean([r[v] for v in views]) for r in normal])
    a = np.array([np.mean([r[v] for v in views]) for r in aberrant])
    threshold = float(np.quantile(n, 0.99))
    return {"auc": round(roc_auc(np.r_[n, a], np.r_[np.zeros(len(n)), np.ones(len(a))]), 4),
            "sensitivity_at_99pct_specificity": round(float(np.mean(a > threshold)), 4)}


def type_figures(normal, threshold):
    """False flags (one view) typed right, and normal cells flagged with the lower of the
    called and the second type's score."""
    flagged = [r for r in normal if r["id"] >= threshold]
    cells, cells_min = defaultdict(bool), defaultdict(bool)
    for r in normal:
        cells[r["cell"]] |= r["id"] >= threshold
        cells_min[r["cell"]] |= min(r["id"], r["second"]) >= threshold
    return {"threshold": threshold, "normal_flagged": len(flagged),
            "normal_flagged_typed_right": sum(r["called"] == r["type"] for r in flagged),
            "normal_cells_flagged": round(float(np.mean(list(cells.values()))), 4),
            "normal_cells_flagged_min_of_two_types": round(float(np.mean(
                list(cells_min.values()))), 4)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    with Pipeline(args.model, backend="ort", threads=args.threads) as pipe:
        threshold = pipe.structural.threshold
        normal = scored(pipe, args.data_dir, args.labels)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "copies"  # eval-structural's copies: 3 per cell, 3 aberrations
            write_structural_cases(args.data_dir, out, seed=2024, labels_csv=args.labels,
                                   kinds=KINDS, size_min=0.05, size_max=0.4,
                                   cells=3 * len({r["cell"] for r in normal}), per_cell=3)
            copies = scored(pipe, out, "labels.csv")
            with open(out / "structural.csv", newline="") as handle:
                truth = {(r["cell"], r["file"]): r for r in csv.DictReader(handle)}
    aberrant = [r for r in copies if float(truth.get((r["cell"], r["file"]), {})
                                           .get("size", 0)) >= 0.10]
    report = {"command": "python benchmarks/structural_views.py " + " ".join(argv or []),
              "n_normal": len(normal), "n_aberrant_ge_10pct": len(aberrant),
              "rules": {name: rule_figures(normal, aberrant, views)
                        for name, views in RULES.items()},
              "second_type": type_figures(normal, threshold)}
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
