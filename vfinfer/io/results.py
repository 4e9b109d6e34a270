"""Writing one case's results: result.json, result.csv, karyogram.png and report.html in
OUT/<case>/.

Every file is written under a temporary name in the same directory and renamed into place,
so a crash never leaves half a file; an existing result is kept unless overwrite is asked.
"""

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from vfinfer.io.karyogram import karyogram_layers
from vfinfer.io.report import REPORT_NAME, report_html
from vfinfer.model.classes import type_index
from vfinfer.util.images import encode_gray_png

REVIEW_DIR = "review"  # a person's review of the result (vfinfer.io.review)
IMAGES_DIR = "images"  # the images as classified (vfinfer run --keep-images)
RESULT_FILES = ("result.json", "result.csv", "karyogram.png", "overlay.png", REPORT_NAME)
CSV_COLUMNS = ("file", "type", "type_prob", "type_before_dispatch", "low_confidence",
               "polarity", "polarity_prob", "top2", "top2_prob", "box_x0", "box_y0",
               "box_x1", "box_y1", "structural_score", "structural_flagged", "structural_arm")


class ResultExistsError(FileExistsError):
    """OUT/<case>/ already holds a result and overwrite was not asked for."""


def result_csv(result):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in result["chromosomes"]:
        second = c["top3"][1] if len(c["top3"]) > 1 else ["", ""]
        structural = c.get("structural")  # empty columns: not screened
        writer.writerow([c["file"], c["type"], c["type_prob"], c["type_before_dispatch"],
                         int(c["low_confidence"]), c["polarity"], c["polarity_prob"],
                         second[0], second[1], *c["box"],
                         structural["score"] if structural else "",
                         int(structural["flagged"]) if structural else "",
                         (structural or {}).get("arm", "")])
    return buffer.getvalue()


def summary_of(result):
    """The karyotype, or "not karyotyped" when the verdict withholds it."""
    return result["karyotype"] if result["karyotype"] is not None else "not karyotyped"


def karyogram_png(result, images):
    chromosomes = result["chromosomes"]
    gray, red = karyogram_layers(
        images,
        [type_index(c["type"]) for c in chromosomes],
        [0 if c["polarity"] == "q-arm up" else 1 for c in chromosomes],
        [c["low_confidence"] for c in chromosomes],
        title=f"{result['case']}   {summary_of(result)}",
        notes=result["warnings"],
        structural=[c.get("structural", {}).get("flagged", False) for c in chromosomes],
    )
    return encode_gray_png(gray, red, what="the karyogram")  # one channel, or a palette


def existing_result(case_dir):
    return [name for name in RESULT_FILES if (Path(case_dir) / name).exists()]


def check_target(case_dir, overwrite):
    """ResultExistsError when ``case_dir`` holds a result and ``overwrite`` is not asked, or
    a person's review of it (``review/``, never replaced: it describes that result)."""
    if (Path(case_dir) / REVIEW_DIR).exists():
        raise ResultExistsError(f"{case_dir}: holds a review of its result ({REVIEW_DIR}/); "
                                "left untouched (move the case away to run it again)")
    found = existing_result(case_dir)
    if found and not overwrite:
        raise ResultExistsError(f"{case_dir}: already holds {', '.join(found)}; "
                                "left untouched (pass --overwrite to replace)")


def remove_stale(case_dir, files):
    """Remove the outputs of an earlier result that ``files`` (the new set) does not
    replace: they would contradict it."""
    for stale in ("karyogram.png", REPORT_NAME):
        if stale not in files and (case_dir / stale).exists():
            (case_dir / stale).unlink()
    images = case_dir / IMAGES_DIR
    if images.is_dir() and not any(name.startswith(f"{IMAGES_DIR}/") for name in files):
        shutil.rmtree(images)


def write_case(out_root, result, images=None, overwrite=False, extra_files=None,
               report=False):
    """Write the files of one case; returns the case's output directory. ``extra_files``:
    {name: bytes} written with them (a metaphase's ``overlay.png``); ``report``: also the
    case report, report.html (``vfinfer.io.report``), with the karyogram and overlay inline.

    Everything is encoded first and written under temporary names, then renamed into place
    with result.json last, so a failure leaves either the old set or the new one, never a
    file of each that the JSON does not describe.
    """
    case_dir = Path(out_root) / result["case"]
    check_target(case_dir, overwrite)
    files = {}
    if images is not None:
        files["karyogram.png"] = karyogram_png(result, images)
    files.update(extra_files or {})
    files["result.csv"] = result_csv(result).encode("utf-8")
    if report:
        files[REPORT_NAME] = report_html(result, files.get("karyogram.png"),
                                         files.get("overlay.png")).encode("utf-8")
    files["result.json"] = (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode()
    case_dir.mkdir(parents=True, exist_ok=True)
    temps = {}
    try:
        for name, data in files.items():
            target = case_dir / name  # a name may sit in a sub-folder (images/...)
            target.parent.mkdir(exist_ok=True)
            fd, temps[name] = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                               suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temps[name], 0o644)
        remove_stale(case_dir, files)
        for name in files:  # result.json last
            os.replace(temps.pop(name), case_dir / name)
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
    return case_dir
