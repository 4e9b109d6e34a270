"""Type labels for BioImLab's annotated metaphase polygons, from the case's labelled cut-outs.

    python benchmarks/polygon_labels.py ../shared/data/bioimlab --out WORK/polygon_labels.json \
        --check WORK/polygon_check --json benchmarks/results/bioimlab_polygon_labels.json

Each metaphase's polygons get the types of ``cells/<case>/``'s cut-outs by the one-to-one
assignment of ``vfinfer.tools.evaluation.polygon_labels`` (masked NCC in 8 orientations, the
placement fitting the polygon, Hungarian pairing). ``--out``: per image the type of each polygon
(None: not labelled), kept outside the repository (derived from research data); the JSON of
``--json`` holds only the counts (coverage per image and overall). ``--check``: per image a PNG
of the metaphase with each polygon and its assigned type (``?``: unlabelled) to check by eye.
Where a case has several metaphases, its cut-outs were cut from one of them (or from none of
these): the others come out unlabelled, which the coverage shows.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from split_metaphases import case_of  # noqa: E402

from vfinfer.io.labelme import polygon_masks, read_labelme  # noqa: E402
from vfinfer.io.labels import by_cell, read_labels  # noqa: E402
from vfinfer.model.classes import TYPE_NAMES  # noqa: E402
from vfinfer.segment.instances import Instance  # noqa: E402
from vfinfer.segment.overlay import draw_overlay  # noqa: E402
from vfinfer.tools.evaluation.polygon_labels import label_polygons  # noqa: E402
from vfinfer.util.atomic import write_atomic  # noqa: E402

FULL = 0.95  # coverage from which an image counts as labelled in full


def case_labels(data):
    """{case number: its labelled cut-outs (``vfinfer.io.labels.Label``)} from cells/labels.csv."""
    return {case_of(cell): labels for cell, labels in by_cell(read_labels(data / "cells")).items()}


def read_cutouts(labels):
    """(cut-out images, type names) of ``labels``, read when a metaphase of the case needs them."""
    images = [cv2.imread(str(label.path), cv2.IMREAD_GRAYSCALE) for label in labels]
    return images, [TYPE_NAMES[label.type] for label in labels]


def check_picture(image, polygons, masks, types):
    """BGR overlay: each polygon outlined and filled, its type beside it (``?``: none)."""
    shapes = []
    for points, mask in zip(polygons, masks):
        found = Instance.from_full_mask(mask, 1.0)
        shapes.append(SimpleNamespace(box=found.box, mask=found.mask,
                                      polygon=np.round(points).astype(int).tolist()))
    stretched = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)
    return draw_overlay(stretched, shapes, [t or "?" for t in types])


def one_image(path, cases, check_dir):
    metaphase = read_labelme(path)
    masks = polygon_masks(metaphase.polygons, metaphase.image.shape)
    images, types = read_cutouts(cases.get(case_of(path.name), []))
    labels = label_polygons(metaphase.image, images, types, masks)
    if check_dir is not None:
        picture = check_picture(metaphase.image, metaphase.polygons, masks, labels.types)
        cv2.imwrite(str(check_dir / f"{path.stem}.png"), picture)
    return labels, {"image": path.name, "polygons": len(masks), "cutouts": len(images),
                    "labelled": labels.labelled, "coverage": round(labels.coverage, 4)}


def summary(rows):
    polygons = sum(r["polygons"] for r in rows)
    labelled = sum(r["labelled"] for r in rows)
    return {"images": len(rows), "polygons": polygons, "labelled": labelled,
            "coverage": round(labelled / max(polygons, 1), 4),
            "images_full": sum(r["coverage"] >= FULL for r in rows),
            "images_none": sum(r["labelled"] == 0 for r in rows),
            "full_means_coverage_at_least": FULL}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the bioimlab folder (cells/, metaphases/)")
    parser.add_argument("--out", type=Path, required=True, help="labels per polygon (JSON)")
    parser.add_argument("--check", type=Path, help="folder for the check pictures")
    parser.add_argument("--json", type=Path, help="the counts (JSON)")
    args = parser.parse_args()
    if args.check:
        args.check.mkdir(parents=True, exist_ok=True)
    cases = case_labels(args.data)
    labels, rows, started = {}, [], time.time()
    for path in sorted((args.data / "metaphases").glob("*.json")):
        found, row = one_image(path, cases, args.check)
        labels[path.name] = found.to_dict()
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"command": " ".join(sys.argv), "summary": summary(rows),
              "seconds": round(time.time() - started, 1), "images": rows}
    print(json.dumps(report["summary"], indent=1))
    write_atomic(args.out, (json.dumps(labels) + "\n").encode())
    if args.json:
        write_atomic(args.json, (json.dumps(report, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
