"""A trained model complete at export: its in-domain figures and its optimal-dispatch
calibration fitted on the validation slides its trainer held out.

``vfinfer train`` splits the labelled data by slide and records the validation slides by name
(``OUT/split.json`` and the checkpoint's training record, which ``vfinfer export`` copies into
the manifest's ``training`` section). The network never fitted those cells, so they are what
``vfinfer domain --labels`` and ``vfinfer calibrate`` want. ``complete_model`` runs both on
them while ``vfinfer export`` builds the model directory, from one pass of the networks:

1. the optimal-dispatch parameters are calibrated on the validation cells plus the abnormal
   cells simulated from their normal ones (``calibration_data.fit_calibration``) and stored
   (``dispatch.optimal``, ``dispatch.calibration``) when at least ``MIN_ABNORMAL_CELLS``
   abnormal cells back them, as ``vfinfer calibrate`` does;
2. the domain section (``domain.domain_section``): the verdict's limits and, per dispatch
   mode (argmax, Algorithm 1, optimal with the parameters just stored), the share of the
   validation cells whose karyotype is exactly right, from which ``--dispatch auto`` chooses
   (``vfinfer.calls.auto``).

What was done, or why not, goes into ``training.validation_fit`` of the manifest and into the
export's output. When the data directory is not reachable (another machine, moved, labels
changed) the model is exported without both, and the output says how to fit them later.
"""

import datetime
from pathlib import Path

import numpy as np

from vfinfer.calls.auto import resolve_dispatch
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.optimal import OptimalDispatch
from vfinfer.calls.optimal_params import load_params
from vfinfer.io.labels import by_cell, labels_path, read_labels
from vfinfer.model.manifest import load_manifest, write_json_atomic
from vfinfer.pipeline import Pipeline
from vfinfer.tools.evaluation import MIN_ABNORMAL_CELLS
from vfinfer.tools.evaluation.calibration_data import fit_calibration
from vfinfer.tools.evaluation.calibration_report import format_calibration, store_params
from vfinfer.tools.evaluation.domain import (
    cell_pass,
    domain_lines,
    domain_section,
    mode_karyotypes,
)
from vfinfer.util.images import read_gray8

SIMULATE_PER_CELL = 3  # as vfinfer calibrate's default


class DataNotReachable(ValueError):
    """The trainer's validation cells cannot be read here; the message says why."""


def validation_cells(record, data_dir=None):
    """``(data_dir, labels CSV, {cell: [Label]})`` of the validation slides named in a
    checkpoint's training ``record``; ``data_dir`` replaces the recorded data directory (a
    labels file inside the old one moves with it). Raises ``DataNotReachable``."""
    slides = set(record.get("validation_slides") or ())
    if not slides:
        raise DataNotReachable("the checkpoint names no validation slides (trained with "
                               "--val-fraction 0, or by another trainer)")
    recorded = record.get("data_dir")
    if data_dir is None and not recorded:
        raise DataNotReachable("the checkpoint records no training data directory")
    labels = record.get("labels")
    if data_dir is not None and recorded and labels:
        try:
            labels = str(Path(data_dir) / Path(labels).relative_to(recorded))
        except ValueError:
            pass  # a labels file outside the data directory stays where it was
    data_dir = Path(data_dir or recorded)
    if not data_dir.is_dir():
        raise DataNotReachable(f"{data_dir}: the training data directory is not here")
    try:
        cells = by_cell(read_labels(data_dir, labels))
    except ValueError as exc:
        raise DataNotReachable(str(exc)) from None
    cells = {cell: rows for cell, rows in cells.items() if rows[0].unit in slides}
    if not cells:
        raise DataNotReachable(f"{labels or data_dir / 'labels.csv'}: labels none of the "
                               f"{len(slides)} validation slides")
    return data_dir, labels_path(data_dir, labels), cells


def _run_cells(model_dir, cells, backend, threads, log):
    """One dispatch-off pass over the cells: ({cell: probabilities}, {cell: true types},
    {cell: ``cell_figures``}, Algorithm 1's threshold)."""
    probs, true, figures = {}, {}, {}
    with Pipeline(model_dir, backend=backend, threads=threads, dispatch_mode="none") as pipe:
        for i, (cell, rows) in enumerate(cells.items()):
            images = [read_gray8(row.path) for row in rows]
            probs[cell], figures[cell] = cell_pass(pipe, cell, images,
                                                   [row.path.name for row in rows],
                                                   rows[0].path.parent)
            true[cell] = np.array([row.type for row in rows], dtype=np.int64)
            if (i + 1) % 20 == 0:
                log(f"  {i + 1}/{len(cells)} validation cells")
        threshold = pipe.manifest.threshold
    return probs, true, figures, threshold


def fit_on_validation(model_dir, record, data_dir=None, backend="auto", threads=0, log=print,
                      echo=print, model_name=None):
    """Calibrate optimal dispatch on the trainer's validation cells and store it in
    MODEL_DIR's manifest when enough abnormal cells back it; fit the domain section on the
    same cells. Returns ``(the training.validation_fit record, the domain section)``, the
    latter for the caller to store. Raises ``DataNotReachable``."""
    data_dir, labels, cells = validation_cells(record, data_dir)
    slide_of = {cell: rows[0].unit for cell, rows in cells.items()}
    where = (f"the trainer's {len(set(slide_of.values()))} validation slides ({len(cells)} "
             f"cells) of {data_dir}")
    echo(f"fitting the domain figures and the optimal-dispatch calibration on {where}")
    probs, true, figures, threshold = _run_cells(model_dir, cells, backend, threads, log)
    params, report = fit_calibration(probs, true, slide_of.get, threshold, log, echo,
                                     SIMULATE_PER_CELL)
    report["data"] = {"data_dir": str(data_dir), "labels": str(labels),
                      "n_slides": len(set(slide_of.values())),
                      "slides": sorted(set(slide_of.values())), "excluded": [],
                      "slides_from": "the trainer's validation slides",
                      "model": str(model_name or model_dir)}
    echo(format_calibration(report))
    stored = report["n_abnormal"] >= MIN_ABNORMAL_CELLS
    if stored:
        store_params(model_dir, params, report)
    manifest = load_manifest(model_dir)
    optimal = OptimalDispatch(load_params(manifest).params)
    named = [(cell, figures[cell], mode_karyotypes(probs[cell], threshold, optimal))
             for cell in cells]
    truth = {cell: karyotype_summary(true[cell])[0] for cell in cells}
    domain = domain_section(named, manifest, f"{where} (labels {labels})", truth)
    for line in domain_lines(domain):
        echo(line)
    return _fit_record(where, labels, report, stored), domain


def _fit_record(where, labels, report, stored):
    calibration = ("stored in dispatch.optimal" if stored else
                   f"not stored: only {report['n_abnormal']} abnormal cells, real and "
                   f"simulated (at least {MIN_ABNORMAL_CELLS} wanted); the uncalibrated "
                   "defaults stay")
    return {"fitted": True, "on": where, "labels": str(labels),
            "created": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"),
            "domain": "stored in domain (with karyotype_exact per dispatch mode)",
            "calibration": calibration}


def by_hand(out_dir, checkpoint=None):
    """How to fit both later, where the training data is."""
    again = (f"'vfinfer export {checkpoint} --out {out_dir} --overwrite --data-dir DATA_DIR'"
             if checkpoint else "'vfinfer export CHECKPOINT --data-dir DATA_DIR'")
    return (f"where the data is, run {again}, or fit them by hand: 'vfinfer calibrate "
            f"DATA_DIR --labels LABELS --model {out_dir} --slides-from {out_dir}/manifest.json' "
            f"(the trainer's validation slides), then 'vfinfer domain CELL_DIR... --model "
            f"{out_dir} --labels LABELS' on the cells of those slides")


def complete_model(model_dir, record, data_dir=None, threads=0, log=print, out_dir=None,
                   checkpoint=None):
    """``fit_on_validation`` for ``vfinfer export``, or, when the training data cannot be
    read, one plain statement of what the model lacks and how to fit it later; either way
    recorded in the manifest's ``training.validation_fit``. Returns that record."""
    out_dir = out_dir or model_dir
    try:
        fit, domain = fit_on_validation(model_dir, record or {}, data_dir, threads=threads,
                                        log=log, echo=log, model_name=out_dir)
    except DataNotReachable as exc:
        fit = {"fitted": False, "reason": str(exc), "by_hand": by_hand(out_dir, checkpoint)}
        domain = None
        log(f"no domain figures and no dispatch calibration fitted: the training data is not "
            f"reachable ({exc}); without them the verdict cannot tell cells unlike the "
            "training data, withholds segmented cells, and optimal dispatch uses its "
            f"uncalibrated defaults; {fit['by_hand']}")
    manifest = load_manifest(model_dir)
    data = manifest.data
    if domain is not None:
        data["domain"] = domain
    data.setdefault("training", {})["validation_fit"] = fit
    write_json_atomic(manifest.path, data)
    if domain is not None:
        log("--dispatch auto will use {} ({})".format(*resolve_dispatch(data)))
    return fit
