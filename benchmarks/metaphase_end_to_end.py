"""End to end on annotated metaphases: segmentation -> cut-outs -> classifier, per image.

    python benchmarks/polygon_labels.py ../shared/data/bioimlab --out WORK/polygon_labels.json
    python benchmarks/metaphase_end_to_end.py ../shared/data/bioimlab \
        --list SEGSPLIT/test.txt --model CLASSIFIER --seg-model SEGMODEL \
        --polygon-labels WORK/polygon_labels.json --threads 2 --json RESULT.json
    vfinfer synth-metaphase --out SYN --count 20 --seed 13
    python benchmarks/metaphase_end_to_end.py SYN --threads 2 --json RESULT.json

Without ``--polygon-labels``, DATA is a folder of labelme files whose polygons carry their
chromosome's type as the label (``vfinfer synth-metaphase`` writes them so): every polygon is
labelled, and the true karyotype is the one of its polygons. ``--model`` and ``--seg-model``
default to the bundled demo models.

``--seg-model annotated``: the annotated polygons stand in for the segmentation (each cut out
as the pipeline cuts an instance): the classifier alone, on segmented chromosomes.

Per image: chromosomes segmented, the karyotype (or the verdict that withholds it) against the
case's true karyotype (46,XX or 46,XY: a Y among its labelled cut-outs in ``cells/labels.csv``),
the share of the 24 classes whose count in the calls is the expected one (2 per autosome, X
and Y by the sex), and the time per stage. Per chromosome: the polygons with a type
(``benchmarks/polygon_labels.py``: the case's labelled cut-outs assigned one to one to the
polygons of the image they were cut from) are matched one to one to the segmented instances
(IoU >= 0.5, the largest total IoU); a labelled polygon counts right when its instance's call
is its type. FKA as Render-Attention counts it (chromosomes typed right / chromosomes of the
image) on the images labelled in full (coverage >= 95 %), and right / labelled over all
labelled polygons. Per image also the median upright length of the segmented cut-outs and of
the case's labelled ones (``length_segmented``, ``length_cells``).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from polygon_labels import FULL, case_labels, read_cutouts  # noqa: E402
from split_metaphases import case_of  # noqa: E402

from vfinfer.calls.karyotype import karyotype_summary, parse_karyotype  # noqa: E402
from vfinfer.io.labelme import (  # noqa: E402
    LabelmeError,
    list_labelme,
    polygon_masks,
    read_labelme,
    read_names,
)
from vfinfer.io.labelme import polygon_types as type_names_of  # noqa: E402
from vfinfer.model.classes import TYPE_NAMES  # noqa: E402
from vfinfer.pipeline import Pipeline  # noqa: E402
from vfinfer.pipeline.metaphase import (  # noqa: E402
    NoChromosomesError,
    attach_segmentation,
    prepare_metaphase,
)
from vfinfer.segment.instances import Instance  # noqa: E402
from vfinfer.segment.segmenter import Segmentation, Segmenter  # noqa: E402
from vfinfer.tools.evaluation.segmentation import IOU_MATCH, iou_matrix  # noqa: E402
from vfinfer.util.geometry import detect_background, normalize_cutout  # noqa: E402
from vfinfer.util.stats import percentiles  # noqa: E402

ANNOTATED = "annotated"


class AnnotatedSegmenter:
    """The annotated polygons of the current image as the segmentation (``masks``)."""

    masks = ()

    def describe(self):
        return {"kind": ANNOTATED}

    def segment(self, gray, background="auto", name="image"):
        found = detect_background(gray) if background == "auto" else background
        instances = [Instance.from_full_mask(m, 1.0) for m in self.masks if m.any()]
        return Segmentation(instances, found, gray.shape, {"segmentation": 0.0,
                                                           "instances": 0.0})

    def close(self):
        pass


def true_karyotype(types):
    return "46,XY" if "Y" in types else "46,XX"


def classes_as_expected(calls, truth):
    """The share of the 24 classes whose count among ``calls`` is the one of ``truth``."""
    expected = parse_karyotype(truth)
    counts = np.bincount([TYPE_NAMES.index(t) for t in calls], minlength=len(TYPE_NAMES))
    return float(np.mean(counts == expected))


def score_calls(result, cutouts, shape, masks, types):
    """(labelled, right): labelled polygons, and those whose instance (one of ``cutouts``, in
    the order of the result's chromosomes) got their type."""
    from scipy.optimize import linear_sum_assignment

    labelled = [j for j, t in enumerate(types) if t is not None]
    found = []
    for cut in cutouts:
        mask = np.zeros(shape, bool)
        x0, y0, x1, y1 = cut.box
        mask[y0:y1, x0:x1] = cut.mask
        found.append(mask)
    iou = iou_matrix([masks[j] for j in labelled], found)
    right = 0
    if iou.size:
        for a, b in zip(*linear_sum_assignment(-iou)):
            right += iou[a, b] >= IOU_MATCH and result["chromosomes"][b]["type"] == types[
                labelled[a]]
    return len(labelled), int(right)


def median_length(images, config):
    """Median long side (px) of cut-outs after the classifier's rotate-and-crop."""
    return float(np.median([max(normalize_cutout(img, config)[0].shape) for img in images]))


def classify(pipeline, segmenter, image, name):
    """(the result of the metaphase, its cut-outs)."""
    segmented, prepared = prepare_metaphase(pipeline, segmenter, image, name)
    result = attach_segmentation(pipeline.run_cases([prepared])[0], segmented, segmenter)
    return result, segmented.cutouts


def one_image(pipeline, segmenter, path, cases, polygon_types):
    """One metaphase's row; ``cases`` None: its polygons are labelled with their types."""
    metaphase = read_labelme(path)
    masks = polygon_masks(metaphase.polygons, metaphase.image.shape)
    if cases is None:
        try:
            cell_images, types = [], type_names_of(metaphase)
        except LabelmeError as exc:
            sys.exit(f"{exc}; give --polygon-labels")
        polygon_types = {path.name: types}
        truth = karyotype_summary([TYPE_NAMES.index(t) for t in types])[0]
    else:
        cell_images, types = read_cutouts(cases.get(case_of(path.name), []))
        truth = true_karyotype(types)
    if isinstance(segmenter, AnnotatedSegmenter):
        segmenter.masks = masks
    row = {"image": path.name, "annotated": len(masks), "truth": truth}
    started = time.perf_counter()
    try:
        result, cutouts = classify(pipeline, segmenter, metaphase.image, path.stem)
    except NoChromosomesError:
        return dict(row, found=0)
    wall = (time.perf_counter() - started) * 1000
    labelled, right = score_calls(result, cutouts, metaphase.image.shape, masks,
                                  polygon_types.get(path.name, [None] * len(masks)))
    timing = result["timing_ms"]
    seg_stages = sum(timing[k] for k in ("segmentation", "instances", "cutouts"))
    calls = [r["type"] for r in result["chromosomes"]]
    return dict(row, found=result["n_chromosomes"], karyotype=result["karyotype"],
                withheld=result["verdict"].get("withheld_karyotype"),
                verdict=result["verdict"]["text"], labelled=labelled, right=right,
                classes_as_expected=round(classes_as_expected(calls, truth), 4),
                length_segmented=float(np.median([max(r["size"])
                                                  for r in result["chromosomes"]])),
                length_cells=(median_length(cell_images, pipeline.config) if cell_images
                              else None),
                timing_ms={"segmentation": timing["segmentation"],
                           "instances": timing["instances"], "cutouts": timing["cutouts"],
                           "classification": timing["total"] - seg_stages, "wall": wall})


def call_figures(done):
    """Per chromosome (FKA) and per image (karyotype, classes) figures of ``done`` rows."""
    full = [r for r in done if r["labelled"] >= FULL * r["annotated"]]
    labelled = sum(r["labelled"] for r in done)
    called = [r["karyotype"] or r["withheld"] for r in done]
    return {
        "labelled": labelled, "right": sum(r["right"] for r in done),
        "type_accuracy_labelled": round(100 * sum(r["right"] for r in done)
                                        / max(labelled, 1), 2),
        "images_labelled_in_full": len(full),
        "fka_images_labelled_in_full": round(100 * sum(r["right"] for r in full)
                                             / max(sum(r["annotated"] for r in full), 1), 2),
        "karyotype_called_right": sum(c == r["truth"] for c, r in zip(called, done)),
        "classes_as_expected": round(100 * float(np.mean(
            [r["classes_as_expected"] for r in done])), 2) if done else 0.0,
    }


def summary(rows):
    done = [r for r in rows if r["found"]]
    stages = ("segmentation", "instances", "cutouts", "classification", "wall")
    return {
        "images": len(rows),
        "karyotyped": sum(r["karyotype"] is not None for r in done),
        "karyotype_right": sum(r["karyotype"] == r["truth"] for r in done),
        "withheld_would_be_right": sum(r["karyotype"] is None and r["withheld"] == r["truth"]
                                       for r in done),
        "found_median": float(np.median([r["found"] for r in done])) if done else 0,
        **call_figures(done),
        "timing_ms": {s: percentiles([r["timing_ms"][s] for r in done], digits=1)
                      for s in stages} if done else {},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the bioimlab folder (cells/, metaphases/), "
                        "or a folder of labelme files with typed polygons")
    parser.add_argument("--list", type=Path, help="names of the images (default: all)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seg-model", default=None,
                        help=f"a segmentation model directory, 'classical' or '{ANNOTATED}'")
    parser.add_argument("--polygon-labels", type=Path,
                        help="benchmarks/polygon_labels.py's --out (BioImLab)")
    parser.add_argument("--dispatch", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.polygon_labels:
        polygon_types = {name: found["types"] for name, found in
                         json.loads(args.polygon_labels.read_text()).items()}
        cases, folder = case_labels(args.data), args.data / "metaphases"
    else:
        polygon_types, cases, folder = {}, None, args.data
    names = (read_names(args.list) if args.list
             else [p.name for p in list_labelme(folder)])
    segmenter = (AnnotatedSegmenter() if args.seg_model == ANNOTATED
                 else Segmenter(args.seg_model, threads=args.threads))
    rows = []
    with Pipeline(args.model, dispatch_mode=args.dispatch, threads=args.threads,
                  backend="ort") as pipeline:
        for name in names:
            rows.append(one_image(pipeline, segmenter, folder / name, cases, polygon_types))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "timing_ms"}),
                  flush=True)
    segmenter.close()
    report = {"command": " ".join(sys.argv), "summary": summary(rows), "images": rows}
    print(json.dumps(report["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
