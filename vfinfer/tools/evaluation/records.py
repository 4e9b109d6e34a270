"""What vfinfer eval --json writes: the results JSON, the confusion heat map and the ROC of
optimal dispatch, each atomically."""

import json
from pathlib import Path

from vfinfer.model.classes import TYPE_NAMES
from vfinfer.tools.evaluation.plots import confusion_png, roc_png
from vfinfer.util.atomic import write_atomic


def roc_paths(json_path):
    """Where ``save_eval`` writes the ROC of optimal dispatch: ``(<stem>_roc.json,
    <stem>_roc.png)`` next to ``json_path``."""
    json_path = Path(json_path)
    return (json_path.with_name(f"{json_path.stem}_roc.json"),
            json_path.with_name(f"{json_path.stem}_roc.png"))


def save_eval(results, json_path):
    """Write ``results`` as JSON and the type confusion heat map as ``<stem>_confusion.png``
    next to it, each atomically; with optimal-dispatch figures also the ROC of its margin as
    ``<stem>_roc.json`` and ``<stem>_roc.png`` (``roc_paths``). Returns
    ``(json_path, png_path)``."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png_path = json_path.with_name(f"{json_path.stem}_confusion.png")
    title = (f"type confusion, no dispatch: {results['n_images']} images, "
             f"{results['n_cells']} cells")
    write_atomic(png_path, confusion_png(results["type"]["confusion"], TYPE_NAMES, title))
    opt = results.get("optimal")
    if opt:
        curves = {"cells": opt["optimal"]["roc"]}
        if opt.get("patients"):
            curves["patients"] = opt["patients"]["roc"]
        roc_json, roc_picture = roc_paths(json_path)
        roc = {"operating_threshold": opt["operating_threshold"], "params_note":
               opt["params_note"], "curves": curves}
        write_atomic(roc_json, (json.dumps(roc, indent=2) + "\n").encode("utf-8"))
        write_atomic(roc_picture, roc_png(curves, opt["operating_threshold"],
                                          "optimal dispatch: ROC over the margin threshold"))
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    write_atomic(json_path, text.encode("utf-8"))
    return json_path, png_path
