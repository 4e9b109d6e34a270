"""The review flags (``vfinfer.segment.review``) on annotated metaphases: how often a single
chromosome is flagged, and how often a merged pair or a broken chromosome is.

    python benchmarks/review_flags.py ../shared/data/bioimlab/metaphases \
        --json benchmarks/results/review_flags_bioimlab.json

Per labelme file with at least ``--min-polygons`` polygons, the polygons are the objects (each
a single chromosome): flags on them are false. Then, one at a time, each pair of polygons that
touch or overlap (within 2 pixels) is merged into one object (a ``split`` flag is right), and
each chromosome is broken across its long axis into an end piece of 15 % of its pixels and the
rest (a ``join`` flag on the piece is right); the other objects stay as annotated. Also
reported for the singles, the measurements behind the thresholds: the largest area over its
metaphase's 90th-percentile area, the share below ``MIN_SOLIDITY`` and the share below
``JOIN_AREA`` times the median area.
"""

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from vfinfer.io.labelme import list_labelme, polygon_masks, read_labelme
from vfinfer.segment.instances import Instance
from vfinfer.segment.review import JOIN_AREA, MIN_SOLIDITY, review_flags, solidity
from vfinfer.tools.synthesis.metaphases import broken_chromosome
from vfinfer.util.atomic import write_atomic

END_PIECE = 0.15


def touching_pairs(masks):
    grown = [cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
             for m in masks]
    return [(i, j) for i in range(len(masks)) for j in range(i + 1, len(masks))
            if (grown[i] & masks[j]).any()]


def one_image(masks, shape):
    objects = [Instance.from_full_mask(m, 1.0) for m in masks]
    singles = review_flags(objects, shape)
    areas = np.array([m.sum() for m in masks], float)
    counts = {"singles": len(masks), "singles_split": sum("split" in f for f in singles),
              "singles_join": sum("join" in f for f in singles),
              "singles_solidity_below": sum(solidity(o.mask) < MIN_SOLIDITY for o in objects),
              "singles_area_below_join": int(np.sum(areas < JOIN_AREA * np.median(areas))),
              "merges": 0, "merges_flagged": 0, "breaks": len(masks), "breaks_flagged": 0}
    largest = float(areas.max() / np.percentile(areas, 90))
    for i, j in touching_pairs(masks):
        rest = [o for k, o in enumerate(objects) if k not in (i, j)]
        flags = review_flags([Instance.from_full_mask(masks[i] | masks[j], 1.0)] + rest, shape)
        counts["merges"] += 1
        counts["merges_flagged"] += "split" in flags[0]
    for k, mask in enumerate(masks):
        piece, remainder = broken_chromosome(mask, END_PIECE)
        rest = [o for j, o in enumerate(objects) if j != k]
        flags = review_flags([Instance.from_full_mask(piece, 1.0),
                              Instance.from_full_mask(remainder, 1.0)] + rest, shape)
        counts["breaks_flagged"] += "join" in flags[0]
    return counts, largest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a folder of labelme files")
    parser.add_argument("--min-polygons", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    totals, images, largest = {}, 0, 0.0
    for path in list_labelme(args.data):
        metaphase = read_labelme(path)
        if len(metaphase.polygons) < args.min_polygons:
            continue
        masks = [m for m in polygon_masks(metaphase.polygons, metaphase.image.shape) if m.any()]
        counts, image_largest = one_image(masks, metaphase.image.shape)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        largest = max(largest, image_largest)
        images += 1
    rates = {"singles_split_rate": totals["singles_split"] / totals["singles"],
             "singles_join_rate": totals["singles_join"] / totals["singles"],
             "merges_flagged_rate": totals["merges_flagged"] / max(totals["merges"], 1),
             "breaks_flagged_rate": totals["breaks_flagged"] / totals["breaks"],
             "singles_solidity_below_rate": totals["singles_solidity_below"] / totals["singles"],
             "singles_area_below_join_rate": totals["singles_area_below_join"]
             / totals["singles"],
             "singles_largest_area_over_p90": largest}
    report = {"command": " ".join(sys.argv), "images": images, **totals,
              **{k: round(v, 4) for k, v in rates.items()}}
    print(json.dumps(report, indent=1))
    if args.json:
        write_atomic(args.json, (json.dumps(report, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
