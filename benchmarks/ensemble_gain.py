"""What averaging the type probabilities of several exported models would gain, measured
before building it into the runtime: type accuracy without dispatch (per chromosome, the
argmax of the 24 probabilities) of each model and of their mean, on the same held-out cells.
No time is taken here: the ensemble would run every model on every chromosome, so its network
time is the sum of the models' (``vfinfer bench`` measures one).

    python benchmarks/ensemble_gain.py ../shared/data/pki3 --labels /path/to/test.csv \\
        --model MODEL_A --model MODEL_B --json benchmarks/results/pki3_ensemble_gain.json

Every image is given upright as stored (no ``--flip-half``), so the figures are comparable
with each other, not with ``vfinfer eval --flip-half``'s.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from vfinfer.io.labels import by_cell, read_labels
from vfinfer.pipeline import Pipeline
from vfinfer.util.images import read_gray8

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command, machine, save  # noqa: E402


def model_probabilities(model, cells, threads):
    """Type probabilities (N, 24) of every chromosome of ``cells``, in order."""
    probs = []
    with Pipeline(model, backend="ort", threads=threads) as pipe:
        for name, items in cells:
            case = pipe.prepare(name, [read_gray8(item.path) for item in items])
            case.with_probabilities = True
            result = pipe.run_cases([case])[0]
            probs.append(np.asarray(result["type_probabilities"], np.float64))
    return np.concatenate(probs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--labels", required=True, help="labels CSV of the held-out cells")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="an exported model directory (give two or more)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if len(args.model) < 2:
        sys.exit("error: give at least two --model directories")
    cells = sorted(by_cell(read_labels(args.data_dir, args.labels)).items())
    truth = np.array([item.type for _, items in cells for item in items])
    report = {"command": command(), "machine": machine(), "n_cells": len(cells),
              "n_images": int(len(truth)), "models": []}
    total = 0.0
    for model in args.model:
        probs = model_probabilities(model, cells, args.threads)
        total = total + probs
        report["models"].append({"model": str(model), "accuracy": round(float(np.mean(
            probs.argmax(1) == truth)), 5)})
    mean = total / len(args.model)
    report["ensemble"] = {"accuracy": round(float(np.mean(mean.argmax(1) == truth)), 5),
                          "rule": "mean of the models' type probabilities, then the argmax"}
    save(report, args.json)
    for entry in report["models"]:
        print(f"{entry['model']}: {100 * entry['accuracy']:.2f} %")
    print(f"mean of {len(args.model)}: {100 * report['ensemble']['accuracy']:.2f} %")


if __name__ == "__main__":
    main()
