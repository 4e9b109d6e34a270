"""The cells ``vfinfer calibrate`` fits on: slides and exclusions chosen from the labels, the
model run over them (dispatch off), and simulated abnormal cells added."""

import json
from pathlib import Path
from typing import NamedTuple

from vfinfer.tools.evaluation.calibrate import calibrate


class CellSelection(NamedTuple):
    """Which labelled cells a calibration uses: ``keep(cell)``, ``slide_of(cell)`` and the
    sources of the choice for the report."""

    keep: object
    slide_of: object
    allowed: object  # set of slide ids, or None for all
    excluded: set
    slides_from: object


def read_ids(path):
    """Slide or cell ids from a text file (one per line, # comments) or a JSON list, or a
    JSON object with a "train" list (also under "split"); the validation slides a trainer
    held out from the trainer's ``split.json`` (its "validation" list) or from the manifest.json
    of a model exported from its checkpoint (``training.validation_slides``)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith(("[", "{")):
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("training"), dict):
            data = data["training"].get("validation_slides")
        elif isinstance(data, dict) and "validation" in data:
            data = data["validation"]
        elif isinstance(data, dict):
            data = (data.get("split") or data).get("train")
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of ids, {{\"train\": [...]}} or a "
                             "model manifest naming its validation slides")
        return {str(v) for v in data}
    return {line.split("#")[0].strip() for line in text.splitlines()} - {""}


def select_cells(data_dir, labels_csv, slides_from=None, exclude=(), patient_from=None):
    """The cells to calibrate on: those of ``slides_from`` (all when None) less ``exclude``
    (ids, or ``@FILE``); a cell's slide from the labels' slide column, else ``patient_from``."""
    from vfinfer.calls.patient import patient_of
    from vfinfer.io.labels import cell_slides, read_labels

    slides = cell_slides(read_labels(data_dir, labels_csv))

    def slide_of(cell):
        if cell in slides:
            return slides[cell]
        found = patient_of(cell, patient_from) if patient_from else None
        return found or cell

    allowed = read_ids(slides_from) if slides_from is not None else None
    excluded = set()
    for item in exclude:
        excluded |= read_ids(item[1:]) if item.startswith("@") else {item}

    def keep(cell):
        slide = slide_of(cell)
        if cell in excluded or slide in excluded:
            return False
        return allowed is None or slide in allowed

    return CellSelection(keep, slide_of, allowed, excluded, slides_from)


def calibrate_on_data(data_dir, labels_csv, selection, pipeline_options, log=print, echo=print,
                      simulate_per_cell=3, min_sensitivity=1.0, threshold_position=0.0):
    """Run the model on the selected labelled cells, add simulated abnormal cells
    (``vfinfer.tools.evaluation.simulate``) and ``calibrate``; returns ``(params, report)``."""
    from vfinfer.tools.evaluation.inference import cell_probabilities

    data = cell_probabilities(data_dir, labels_csv, keep=selection.keep, log=log,
                              **pipeline_options)
    slide_of = selection.slide_of
    used = sorted({slide_of(c) for c in data["probs"]})
    if selection.allowed is not None and not selection.allowed & set(used):
        raise ValueError(f"{selection.slides_from}: none of its slide ids matches a labelled "
                         "cell")
    echo(f"calibrating on {len(data['probs'])} cells of {len(used)} slides from "
         f"{data['labels']}: these must be training slides, not the ones you report results on")
    params, report = fit_calibration(data["probs"], data["true"], slide_of, data["threshold"],
                                     log, echo, simulate_per_cell, min_sensitivity,
                                     threshold_position)
    report["data"] = {"data_dir": str(data_dir), "labels": data["labels"],
                      "n_slides": len(used), "slides": used,
                      "excluded": sorted(selection.excluded),
                      "slides_from": None if selection.slides_from is None
                      else str(selection.slides_from),
                      "model": data["model"], "backend": data["backend"]}
    return params, report


def fit_calibration(probs, true, slide_of, paper_threshold, log=print, echo=print,
                    simulate_per_cell=3, min_sensitivity=1.0, threshold_position=0.0):
    """``calibrate`` on labelled cells ({cell: N x 24}, {cell: N types}) plus the abnormal
    cells simulated from their normal ones (donors from the same slide, ``slide_of(cell)``);
    returns ``(params, report)``."""
    from vfinfer.tools.evaluation.simulate import simulate_abnormal

    sim_probs, sim_true, sim_info = simulate_abnormal(
        probs, true, {c: slide_of(c) for c in probs}, per_cell=simulate_per_cell)
    if sim_probs:
        echo(f"with {len(sim_probs)} abnormal cells simulated from the normal ones "
             f"(--simulate {simulate_per_cell})")
    return calibrate({**probs, **sim_probs}, {**true, **sim_true},
                     min_sensitivity=min_sensitivity, threshold_position=threshold_position,
                     paper_threshold=paper_threshold, log=log, simulated=sim_info)
