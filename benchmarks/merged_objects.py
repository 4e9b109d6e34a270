"""What the segmentation's objects are, measured against annotated polygons: per object how
many annotated chromosomes it holds (more than half of each one's area inside it: 0 a piece or
debris, 1 a chromosome, 2 or more a merge), its area relative to the metaphase's median
object, its solidity (``vfinfer.segment.review.solidity``) and, given ``vfinfer run``'s
results of the same folders, the called type's probability; and how well simple rules on those
figures pick out the merges, the runtime's (``merge_suspects``) among them.

    vfinfer segment SYN/*.png --out SEG
    vfinfer run SEG/*/ --out RUN --no-report
    python benchmarks/merged_objects.py SEG SYN --results RUN --json benchmarks/results/NAME.json
"""

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from vfinfer.io.labelme import polygon_masks, read_labelme
from vfinfer.segment.review import MERGE_AREA, MERGE_PROB, MERGE_SOLIDITY, merge_suspects, solidity

RULE_AREAS = (1.2, 1.4, 1.6)
RULE_SOLIDITIES = (0.75, 0.8, 0.85)
RULE_PROBS = (0.9, 0.99)


def _object_mask(cell, cutout, shape):
    mask = cv2.imread(str(cell / "segmentation" / "masks" / cutout["file"]), cv2.IMREAD_GRAYSCALE)
    full = np.zeros(shape, bool)
    x0, y0 = cutout["box"][:2]
    h, w = min(mask.shape[0], shape[0] - y0), min(mask.shape[1], shape[1] - x0)
    full[y0:y0 + h, x0:x0 + w] = mask[:h, :w] > 0
    return full


def cell_objects(cell, source, results=None):
    """One row per object of one ``vfinfer segment`` folder."""
    metaphase = read_labelme(source / f"{cell.name}.json")
    truth = polygon_masks(metaphase.polygons, metaphase.image.shape)
    segments = json.loads((cell / "segmentation" / "segments.json").read_text())
    median = float(np.median([c["area"] for c in segments["cutouts"]]))
    probs = {}
    if results is not None:
        calls = json.loads((results / cell.name / "result.json").read_text())["chromosomes"]
        probs = {c["file"]: c["type_prob"] for c in calls}
    masks = [_object_mask(cell, c, metaphase.image.shape[:2]) for c in segments["cutouts"]]
    suspects = ([False] * len(masks) if results is None else merge_suspects(
        [SimpleNamespace(mask=m) for m in masks], [probs[c["file"]] for c in segments["cutouts"]]))
    return [{"image": cell.name, "file": cutout["file"],
             "holds": int(sum((full & t).sum() > 0.5 * t.sum() for t in truth)),
             "relative_area": round(float(full.sum() / median), 3),
             "solidity": round(solidity(full), 3), "type_prob": probs.get(cutout["file"]),
             "review": cutout["review"], "merge_suspect": suspect}
            for cutout, full, suspect in zip(segments["cutouts"], masks, suspects)]


def _quantiles(values):
    return [round(float(v), 3) for v in np.percentile(values, [10, 50, 90])] if values else None


def _hits(rows, area, solidity, prob):
    """How many ``rows`` the rule (relative area >= ``area``, solidity <= ``solidity``, top
    probability < ``prob`` unless None) picks out."""
    return sum(r["relative_area"] >= area and r["solidity"] <= solidity
               and (prob is None or (r["type_prob"] is not None and r["type_prob"] < prob))
               for r in rows)


def summary(rows):
    """Per kind (piece, chromosome, merge): count, p10/p50/p90 of each figure, flags; the
    grid's rules' merges caught against chromosomes caught; and the same for the runtime's
    rule (``merge_suspects`` itself, with its thresholds)."""
    kinds = {"piece or debris": [r for r in rows if r["holds"] == 0],
             "chromosome": [r for r in rows if r["holds"] == 1],
             "merge": [r for r in rows if r["holds"] >= 2]}
    out = {kind: {"objects": len(group),
                  **{key: _quantiles([r[key] for r in group if r[key] is not None])
                     for key in ("relative_area", "solidity", "type_prob")},
                  "flagged_split": sum("split" in r["review"] for r in group)}
           for kind, group in kinds.items()}
    rules = [{"relative_area_min": area, "solidity_max": solidity, "type_prob_below": prob,
              "merges": _hits(kinds["merge"], area, solidity, prob),
              "chromosomes": _hits(kinds["chromosome"], area, solidity, prob)}
             for area in RULE_AREAS for solidity in RULE_SOLIDITIES
             for prob in (None, *RULE_PROBS)]
    built = {"relative_area_min": MERGE_AREA, "solidity_max": MERGE_SOLIDITY,
             "type_prob_below": MERGE_PROB}
    built |= {kind: sum(r["merge_suspect"] for r in kinds[key])
             for kind, key in (("merges", "merge"), ("chromosomes", "chromosome"))}
    return {"kinds": out, "rules": rules, "built_rule": built}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("segmented", type=Path, help="vfinfer segment's --out")
    parser.add_argument("source", type=Path, help="the labelme files of those images")
    parser.add_argument("--results", type=Path, help="vfinfer run's --out on the folders")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cells = sorted(p for p in args.segmented.iterdir() if (p / "segmentation").is_dir())
    rows = [row for cell in cells for row in cell_objects(cell, args.source, args.results)]
    report = {"images": len(cells), **summary(rows)}
    print(json.dumps(report["kinds"], indent=1))
    if args.json:
        args.json.write_text(json.dumps({"command": f"python benchmarks/merged_objects.py "
                                         f"{args.segmented} {args.source} --results "
                                         f"{args.results} --json {args.json}", **report,
                                         "objects": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
