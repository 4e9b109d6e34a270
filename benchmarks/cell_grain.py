"""The grain of each cell's chromosomes in labelled data sets: the figure behind the verdict's
grain limit (``vfinfer.calls.verdict``, ``median_grain``).

    python benchmarks/cell_grain.py /tmp/demo-domain ../shared/data/pki3 \
        ../shared/data/bioimlab/cells --json benchmarks/results/cell_grain.json

A chromosome's grain is the ``grain`` fact of ``vfinfer.util.geometry.normalize_cutout`` (the
mean difference between neighbouring pixels inside its mask, gray levels), as the runtime
measures it; a cell's figure is the median over its chromosomes, as the verdict takes it.
Printed per data set: the cells' minimum, 10th, 50th and 90th percentile and maximum.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from vfinfer.io.labels import read_labels
from vfinfer.model.config import preset
from vfinfer.util.geometry import normalize_cutout
from vfinfer.util.images import read_gray8


def cell_grains(data_dir):
    """{cell: median grain of its chromosomes} of a labelled data set."""
    config = preset("compact")
    cells = defaultdict(list)
    for record in read_labels(data_dir):
        grain = normalize_cutout(read_gray8(record.path), config)[1]["grain"]
        if grain is not None:
            cells[record.cell].append(grain)
    return {cell: float(np.median(values)) for cell, values in cells.items()}


def summary(grains):
    values = np.array(list(grains.values()))
    quantiles = np.percentile(values, [0, 10, 50, 90, 100])
    return {"cells": len(values),
            **{k: round(float(v), 2) for k, v in zip(("min", "p10", "p50", "p90", "max"),
                                                     quantiles)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"command": "python benchmarks/cell_grain.py " + " ".join(map(str, args.data_dirs)),
              "data_sets": {}}
    for data_dir in args.data_dirs:
        report["data_sets"][str(data_dir)] = summary(cell_grains(data_dir))
        print(data_dir, json.dumps(report["data_sets"][str(data_dir)]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
