"""Training data from metaphases: labelled polygons cut out as the pipeline cuts a segmented
chromosome, beside a collection's own cut-outs, in one labels CSV.

    python benchmarks/segmented_cutouts.py ../shared/data/bioimlab \
        --list SEGSPLIT/train.txt --polygon-labels WORK/polygon_labels.json \
        --cells-labels SPLIT/train.csv --out WORK/combined
    vfinfer train WORK/combined --labels WORK/combined/labels.csv --init MODEL.pt ...

    vfinfer synth-metaphase --out SYN --count 100 --seed 11
    python benchmarks/segmented_cutouts.py SYN --cells CELLS --cells-labels CELLS/labels.csv \
        --out WORK/combined

Without ``--polygon-labels`` the metaphases are DATA's labelme files whose polygons carry their
types as labels (``vfinfer synth-metaphase``), each metaphase its own slide, and ``--cells``
names the cut-outs to put beside them (BioImLab: DATA/cells).

Each polygon with a type (``benchmarks/polygon_labels.py``) becomes an instance and goes
through ``vfinfer.segment.cutouts.make_cutout`` (its mask one pixel wider on the image's
background, turned upright by its principal axis): the cut-outs the classifier sees in
``vfinfer run METAPHASE``, which differ from a lab's hand-made ones in their edges, turn and
scale (Render-Attention's "eliminating differences between training data and segmentation
output"). ``WORK/combined`` holds ``cells`` (a link to the collection's cut-outs),
``segmented/<image>/chr_NN.png`` and ``labels.csv``: the rows of ``--cells-labels`` and one row
per segmented cut-out, its cell the image (a cell of its own: its chromosomes are measured
together for size normalization), its slide the case, so a split by slide keeps a case's
cut-outs and metaphases together. Only images with at least ``--min-coverage`` of their polygons
labelled are cut: size normalization measures a cell by the median length of its labelled
chromosomes, which a few labelled ones would bias. Written outside the repository (research
data).
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from split_metaphases import case_of  # noqa: E402

from vfinfer.io.labelme import (  # noqa: E402
    list_labelme,
    polygon_masks,
    polygon_types,
    read_labelme,
    read_names,
)
from vfinfer.io.labels import NOT_LABELLED, read_labels  # noqa: E402
from vfinfer.model.classes import TYPE_NAMES  # noqa: E402
from vfinfer.segment.cutouts import make_cutout  # noqa: E402
from vfinfer.segment.instances import Instance  # noqa: E402
from vfinfer.util.geometry import detect_background  # noqa: E402

FIELDS = ["cell", "slide", "file", "type", "polarity"]


def cut_labelled(path, types, out_dir, slide):
    """Write the labelled polygons of one metaphase as cut-outs; their label rows. ``types``
    None: the polygons' own labels."""
    metaphase = read_labelme(path)
    types = polygon_types(metaphase) if types is None else types
    background = detect_background(metaphase.image)
    masks = polygon_masks(metaphase.polygons, metaphase.image.shape)
    rows = []
    for k, (mask, type_name) in enumerate(zip(masks, types)):
        if type_name is None or not mask.any():
            continue
        cut = make_cutout(metaphase.image, Instance.from_full_mask(mask, 1.0), background,
                          "principal-axis", k)
        relative = Path("segmented") / path.stem / cut.name
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out_dir / relative), cut.image)
        rows.append({"cell": path.stem, "slide": slide,
                     "file": relative.as_posix(), "type": type_name, "polarity": ""})
    return rows


def coverage(types):
    return sum(t is not None for t in types) / max(len(types), 1)


def cell_rows(cells_dir, labels_csv):
    """The rows of a cells labels CSV (``vfinfer.io.labels``), their files under ``cells/``."""
    return [{"cell": label.cell, "slide": label.slide, "type": TYPE_NAMES[label.type],
             "file": f"cells/{label.path.relative_to(cells_dir).as_posix()}",
             "polarity": "" if label.polarity == NOT_LABELLED else str(label.polarity)}
            for label in read_labels(cells_dir, labels_csv)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the bioimlab folder (cells/, metaphases/), "
                        "or a folder of labelme files with typed polygons")
    parser.add_argument("--list", type=Path, help="metaphase files to cut (default: all)")
    parser.add_argument("--polygon-labels", type=Path, help="BioImLab's polygon labels")
    parser.add_argument("--cells", type=Path, help="the cut-outs (default: DATA/cells)")
    parser.add_argument("--cells-labels", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-coverage", type=float, default=0.9)
    args = parser.parse_args()
    typed = args.polygon_labels is None
    labels = {} if typed else json.loads(args.polygon_labels.read_text())
    folder = args.data if typed else args.data / "metaphases"
    cells = (args.cells or args.data / "cells").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "cells").exists():
        os.symlink(cells, args.out / "cells")
    rows = cell_rows(cells, args.cells_labels)
    n_cells = len(rows)
    names = read_names(args.list) if args.list else [p.name for p in list_labelme(folder)]
    if not typed:
        names = [n for n in names if coverage(labels[n]["types"]) >= args.min_coverage]
    for name in names:
        slide = Path(name).stem if typed else f"bio{case_of(name):03d}"
        rows += cut_labelled(folder / name, None if typed else labels[name]["types"], args.out,
                             slide)
    with open(args.out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{n_cells} cut-outs from cells/, {len(rows) - n_cells} segmented from "
          f"{len(names)} metaphases -> {args.out / 'labels.csv'}")


if __name__ == "__main__":
    main()
