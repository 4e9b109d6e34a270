"""The chromosome mask (``vfinfer.util.geometry.body_mask``: the largest component's outer
outline drawn filled) against the flood-fill it replaced, image by image.

    python benchmarks/body_mask_check.py --labels ../shared/data/pki3 WORK/pki3-split/test.csv \
        --folder ../shared/data/bioimlab/cells --random 3000 \
        --json benchmarks/results/body_mask_check.json

``--labels DATA CSV``: the light-background cut-outs of a labels CSV; ``--folder``: every PNG
under it, as it is and inverted (fluorescence cut-outs are dark-background); ``--random N``:
N random shapes of 1-5 rectangles, some hollow, some with scattered dark pixels (seed 0).
"""

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np

from vfinfer.util.geometry import MIN_WHITE, WHITE_LEVEL, body_mask, chromosome_mask
from vfinfer.util.images import read_gray8


def flood_fill_mask(image):
    """The mask as it was made before: largest component of the closed dark pixels, the
    background flood-filled from a corner to find its holes."""
    if np.mean(image >= WHITE_LEVEL) < MIN_WHITE:
        return chromosome_mask(image)
    dark = np.pad((image < WHITE_LEVEL).astype(np.uint8), 1)
    dark = cv2.morphologyEx(dark, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))[1:-1, 1:-1]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    if count <= 1:
        return np.zeros(image.shape, dtype=bool)
    mask = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2)
    return outside[1:-1, 1:-1] != 2


def random_shapes(n, seed=0):
    """``n`` 40 x 30 images of 1-5 dark rectangles (some hollow), some with dark specks."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        image = np.full((40, 30), 255, np.uint8)
        for _ in range(rng.integers(1, 6)):
            r, c = rng.integers(0, 40), rng.integers(0, 30)
            h, w = rng.integers(1, 20), rng.integers(1, 12)
            image[r:r + h, c:c + w] = rng.integers(0, 250)
            if rng.random() < 0.3:
                image[r + 1:r + h - 1, c + 1:c + w - 1] = 255
        if rng.random() < 0.3:
            image[rng.integers(0, 40, 30), rng.integers(0, 30, 30)] = 0
        yield image


def compare(images):
    """{"images": n, "differing": k, "differing_pixels": p}."""
    n = differing = pixels = 0
    for image in images:
        new, old = body_mask(image), flood_fill_mask(image)
        n += 1
        if not np.array_equal(new, old):
            differing += 1
            pixels += int((new != old).sum())
    return {"images": n, "differing": differing, "differing_pixels": pixels}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", nargs=2, metavar=("DATA", "CSV"))
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--random", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    report = {"command": "python benchmarks/body_mask_check.py " + " ".join(argv or [])}
    if args.labels:
        with open(args.labels[1], newline="") as handle:
            files = [Path(args.labels[0]) / row["file"] for row in csv.DictReader(handle)]
        report["labelled_cut_outs"] = compare(read_gray8(f) for f in files)
    if args.folder:
        files = sorted(args.folder.rglob("*.png"))
        report["folder_cut_outs_both_polarities"] = compare(
            image for f in files for image in (read_gray8(f), 255 - read_gray8(f)))
    if args.random:
        report["random_shapes"] = compare(random_shapes(args.random))
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
