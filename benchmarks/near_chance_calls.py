"""Per cell, the share of calls whose top type probability is below ``NEAR_CHANCE``: the
figure behind the verdict's floor for models without domain figures (``vfinfer.calls.verdict``).

Each ``--run MODEL_DIR DATA_DIR LABELS_CSV`` runs one model over labelled cells (dispatch off,
``vfinfer.tools.evaluation.inference.cell_probabilities``) and records, per cell, the share
below the floor, the median top probability and the type accuracy, and how many cells the
floor would refuse:

    python benchmarks/near_chance_calls.py \\
        --run /tmp/pki3/model ../shared/data/pki3 /tmp/pki3/split/test.csv \\
        --run UNTRAINED examples examples/labels.csv \\
        --json benchmarks/results/near_chance_calls.json
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from vfinfer.calls.verdict import (
    NEAR_CHANCE,
    NO_DOMAIN_NEAR_CHANCE_LIMIT,
    cell_figures,
    kinded_reasons,
)
from vfinfer.tools.evaluation.inference import cell_probabilities


def one_run(model_dir, data_dir, labels_csv, threads):
    found = cell_probabilities(data_dir, labels_csv, model_dir, threads=threads,
                               log=lambda *a: None)
    cells = []
    for cell, probs in found["probs"].items():  # the verdict's own figure and rule, no domain
        figures = cell_figures(probs, found["threshold"], [])
        cells.append({"cell": cell, "n": figures["n"],
                      "near_chance_fraction": figures["near_chance_fraction"],
                      "refused": bool(kinded_reasons(figures, None, found["threshold"])),
                      "median_top_probability": round(float(np.median(probs.max(axis=1))), 4),
                      "type_accuracy": round(float(np.mean(probs.argmax(1) == found["true"][cell])),
                                             4)})
    shares = np.array([c["near_chance_fraction"] for c in cells])
    return {"model": str(model_dir), "preset": found["model"].get("preset"),
            "data_dir": str(data_dir), "labels": str(labels_csv), "n_cells": len(cells),
            "type_accuracy": round(float(np.mean([c["type_accuracy"] for c in cells])), 4),
            "near_chance_fraction": {"min": float(shares.min()), "median": float(np.median(shares)),
                                     "max": float(shares.max())},
            "cells_refused_by_floor": sum(c["refused"] for c in cells),
            "cells": cells}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=3, action="append", required=True, type=Path,
                        metavar=("MODEL_DIR", "DATA_DIR", "LABELS_CSV"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = []
    for model_dir, data_dir, labels in args.run:
        runs.append(one_run(model_dir, data_dir, labels, args.threads))
        r = runs[-1]
        print(f"{r['model']} on {r['data_dir']}: {r['n_cells']} cells, type accuracy "
              f"{r['type_accuracy']:.2%}, share below {NEAR_CHANCE:g} min / median / max "
              f"{r['near_chance_fraction']['min']:.2f} / {r['near_chance_fraction']['median']:.2f}"
              f" / {r['near_chance_fraction']['max']:.2f}; refused by the floor "
              f"{r['cells_refused_by_floor']} of {r['n_cells']}")
        args.json.write_text(json.dumps({"command": shlex.join(["python", *sys.argv]),
                                         "near_chance": NEAR_CHANCE,
                                         "limit": NO_DOMAIN_NEAR_CHANCE_LIMIT, "runs": runs},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
