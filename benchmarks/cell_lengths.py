"""Chromosome lengths per cell of a labelled data set: the figures that choose the reference
length of size normalization (``vfinfer train --size-norm REF_LENGTH``).

    python benchmarks/cell_lengths.py ../shared/data/pki3 --json OUT.json
    python benchmarks/cell_lengths.py ../shared/data/bioimlab/cells --rotate-crop principal-axis

A chromosome's length is ``vfinfer.util.geometry.axis_length`` (its mask's extent along the
principal axis, pixels), as the trainer and the runtime measure it. Printed: the median of
the cells' median lengths (a REF_LENGTH that leaves a typical cell at its own scale), its
10th and 90th percentiles (how much size normalization rescales), and the largest ratio of
a cut-out's longer side to its cell's median after normalization (times REF_LENGTH it must
stay within the preset's canvas, or the longest chromosomes are shrunk to fit).
"""

import argparse
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from vfinfer.io.labels import read_labels
from vfinfer.model.config import preset
from vfinfer.util.geometry import normalize_cutout
from vfinfer.util.images import read_gray8


def cell_lengths(data_dir, labels=None, rotate_crop="none"):
    """{cell: [(length, longer side of the normalized cut-out), ...]}."""
    config = replace(preset("compact"), rotate_crop=rotate_crop, size_norm=1.0)
    cells = defaultdict(list)
    for record in read_labels(data_dir, labels):
        image, facts = normalize_cutout(read_gray8(record.path), config)
        if facts["length"]:
            cells[record.cell].append((facts["length"], max(image.shape)))
    return cells


def summary(cells):
    medians = {cell: float(np.median([length for length, _ in rows]))
               for cell, rows in cells.items()}
    longest = max(side / medians[cell] for cell, rows in cells.items() for _, side in rows)
    values = np.array(list(medians.values()))
    return {"cells": len(values), "images": sum(len(rows) for rows in cells.values()),
            "median_of_cell_medians": round(float(np.median(values)), 1),
            "p10": round(float(np.percentile(values, 10)), 1),
            "p90": round(float(np.percentile(values, 90)), 1),
            "longest_side_over_cell_median": round(float(longest), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--labels", type=Path, default=None)
    parser.add_argument("--rotate-crop", default="none",
                        choices=["none", "principal-axis", "hough"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {"data_dir": str(args.data_dir), "rotate_crop": args.rotate_crop,
              **summary(cell_lengths(args.data_dir, args.labels, args.rotate_crop))}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
