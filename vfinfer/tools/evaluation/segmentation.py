"""``vfinfer eval-seg``: a segmentation model (or the classical baseline) on annotated
metaphases (labelme JSON).

Figures, over all images:
* COCO mask AP50, AP75 and mAP (AP averaged over IoU 0.50:0.95), by pycocotools' ``COCOeval``
  (``iouType="segm"``), the metric of Render-Attention's Table I;
* instance precision and recall at IoU 0.5: a one-to-one matching of predicted and annotated
  chromosomes maximising the summed IoU (``scipy.optimize.linear_sum_assignment``), pairs
  under IoU 0.5 not counted;
* per image: chromosomes annotated, found, matched; ms for the network and the instance step
  (median and p90 over the images).
"""

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np

from vfinfer.io.labelme import list_labelme, polygon_masks, read_labelme
from vfinfer.util.stats import percentiles

IOU_MATCH = 0.5


def _rle(mask):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_ap(images):
    """{"mAP", "AP50", "AP75"} (percent) from ``images``: [(gt masks, [(mask, score)])]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "chromosome"}]}
    results = []
    for image_id, (truth, found) in enumerate(images, start=1):
        height, width = truth[0].shape if truth else found[0][0].shape
        gt["images"].append({"id": image_id, "height": int(height), "width": int(width)})
        for mask in truth:
            ys, xs = np.nonzero(mask)
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "segmentation": _rle(mask), "area": float(mask.sum()), "iscrowd": 0,
                "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                         float(np.ptp(ys) + 1)]})
        results += [{"image_id": image_id, "category_id": 1, "segmentation": _rle(mask),
                     "score": float(score)} for mask, score in found]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if not results:
            return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
        evaluation = COCOeval(coco, coco.loadRes(results), iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"mAP": round(100 * float(stats[0]), 2), "AP50": round(100 * float(stats[1]), 2),
            "AP75": round(100 * float(stats[2]), 2)}


def iou_matrix(truth, found):
    """(n_truth, n_found) IoU of boolean masks."""
    if not truth or not found:
        return np.zeros((len(truth), len(found)))
    t = np.stack(truth).reshape(len(truth), -1).astype(np.float32)
    f = np.stack(found).reshape(len(found), -1).astype(np.float32)
    inter = t @ f.T
    union = t.sum(1)[:, None] + f.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1.0)


def matched(truth, found):
    """Pairs (one to one, summed IoU maximal) with IoU >= ``IOU_MATCH``."""
    from scipy.optimize import linear_sum_assignment

    iou = iou_matrix(truth, found)
    if not iou.size:
        return 0
    rows, cols = linear_sum_assignment(-iou)
    return int(np.sum(iou[rows, cols] >= IOU_MATCH))


def evaluate_segmentation(data_dir, segmenter, files=None, log=print):
    """The figures of the module doc for ``segmenter`` on the labelme files of ``data_dir``
    (all, or the names in ``files``)."""
    paths = list_labelme(data_dir) if files is None else [Path(data_dir) / f for f in files]
    per_image, coco_input, timings = [], [], {"segmentation": [], "instances": [], "total": []}
    for path in paths:
        metaphase = read_labelme(path)
        truth = polygon_masks(metaphase.polygons, metaphase.image.shape)
        started = time.perf_counter()
        found = segmenter.segment(metaphase.image, name=str(path))
        total = (time.perf_counter() - started) * 1000
        masks = [inst.full_mask(metaphase.image.shape) for inst in found.instances]
        n_matched = matched(truth, masks)
        per_image.append({"image": path.name, "annotated": len(truth), "found": len(masks),
                          "matched": n_matched})
        coco_input.append((truth, [(m, inst.score) for m, inst in zip(masks, found.instances)]))
        for stage in ("segmentation", "instances"):
            timings[stage].append(found.timing_ms[stage])
        timings["total"].append(total)
        log(f"{path.name}: {len(truth)} annotated, {len(masks)} found, {n_matched} matched "
            f"(IoU >= {IOU_MATCH}), {total:.0f} ms")
    n_truth = sum(p["annotated"] for p in per_image)
    n_found = sum(p["found"] for p in per_image)
    n_matched = sum(p["matched"] for p in per_image)
    return {
        "data": str(data_dir), "images": len(paths), "segmenter": segmenter.describe(),
        **coco_ap(coco_input),
        "precision50": round(100 * n_matched / max(n_found, 1), 2),
        "recall50": round(100 * n_matched / max(n_truth, 1), 2),
        "annotated": n_truth, "found": n_found, "matched": n_matched,
        "all_found_images": sum(p["matched"] == p["annotated"] for p in per_image),
        "count_within_1_images": sum(abs(p["found"] - p["annotated"]) <= 1 for p in per_image),
        "timing_ms": {stage: percentiles(v, digits=2) for stage, v in timings.items()},
        "per_image": per_image,
    }


def format_seg_report(report):
    t = report["timing_ms"]["total"]
    return (f"{report['images']} images, {report['annotated']} chromosomes annotated, "
            f"{report['found']} found, {report['matched']} matched at IoU 0.5\n"
            f"AP50 {report['AP50']:.2f}  AP75 {report['AP75']:.2f}  mAP {report['mAP']:.2f}  "
            f"precision@0.5 {report['precision50']:.2f} %  recall@0.5 {report['recall50']:.2f} %"
            f"\nimages with every chromosome found: {report['all_found_images']}/"
            f"{report['images']}; objects found within +-1 of the annotation: "
            f"{report['count_within_1_images']}/{report['images']}; time per image median "
            f"{t['median']:.0f} ms, p90 "
            f"{t['p90']:.0f} ms")


def save_seg_report(report, path):
    from vfinfer.util.atomic import write_atomic

    write_atomic(path, (json.dumps(report, indent=1) + "\n").encode())
    return path
