"""From a metaphase image to the result of a cell: segmentation -> cut-outs (rotate-and-crop) ->
the classifier's pipeline (Render-Attention, Fig. 1 and 4).

    with MetaphasePipeline(model_dir, seg_model="models/seg") as mp:
        result = mp.run_image(gray, name="cell_07")
        print(result["karyotype"], result["segmentation"]["found"])

The result is the classifier's result dict (README, "Outputs") with, per chromosome,
``segment`` (its box, polygon, area, score and the turn applied, in the metaphase image) and a
``segmentation`` section (the segmentation model, the background found, the instances found,
ms per stage). Thread-safe like ``Pipeline``: each call keeps its state local.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from vfinfer.pipeline.pipeline import Pipeline
from vfinfer.segment.cutouts import make_cutouts
from vfinfer.segment.overlay import overlay_png
from vfinfer.segment.review import merge_suspects
from vfinfer.segment.segmenter import Segmentation, Segmenter
from vfinfer.util.images import SEGMENTATION_DIR, to_gray8

# below this many chromosomes a metaphase is reported, but the count says the cell is partial
FEW_CHROMOSOMES = 30
REVIEW_NOTE = "segmentation to review: "


class NoChromosomesError(ValueError):
    """The segmentation found no chromosome in the image: nothing to classify."""


@dataclass
class SegmentedImage:
    """One metaphase after segmentation: the gray image, what was found, the cut-outs."""

    name: str
    gray: np.ndarray
    segmentation: Segmentation
    cutouts: list
    cutout_ms: float
    notes: list = field(default_factory=list)

    def section(self, segmenter):
        timing = dict(self.segmentation.timing_ms, cutouts=round(self.cutout_ms, 3))
        return {"model": segmenter.describe(), "background": self.segmentation.background,
                "image_size": list(self.gray.shape), "found": len(self.cutouts),
                "review": {flag: sum(flag in cut.review for cut in self.cutouts)
                           for flag in ("split", "join")},
                "timing_ms": {k: round(v, 3) for k, v in timing.items()}}


def segment_image(segmenter, image, name, rotate_crop, background="auto"):
    """Segment one metaphase and cut its chromosomes out (``SegmentedImage``)."""
    gray = to_gray8(np.asarray(image), name)
    found = segmenter.segment(gray, background, name)
    started = time.perf_counter()
    cutouts = make_cutouts(gray, found.instances, found.background, rotate_crop)
    segmented = SegmentedImage(name, gray, found, cutouts,
                               (time.perf_counter() - started) * 1000)
    if not cutouts:
        raise NoChromosomesError("the segmentation found no chromosome in this image "
                                 "(nothing to classify)")
    if len(cutouts) < FEW_CHROMOSOMES:
        segmented.notes.append(f"only {len(cutouts)} chromosomes segmented: a partial "
                               "metaphase or a segmentation that missed many")
    segmented.notes.extend(review_note(cutouts))
    return segmented


def review_note(cutouts):
    """The warning naming the objects flagged for a split or a join (none: no warning)."""
    named = {flag: [cut.name for cut in cutouts if flag in cut.review]
             for flag in ("split", "join")}
    parts = [f"{len(names)} may need a {flag} ({', '.join(names)})"
             for flag, names in named.items() if names]
    if not parts:
        return []
    return [f"{REVIEW_NOTE}{'; '.join(parts)}; see the overlay"]


def mark_segmented(prepared, case_dir=None):
    """Record in each image's facts that it was segmented from a metaphase (always without
    ``case_dir``; with it, when the directory holds ``vfinfer segment``'s folder): the
    verdict treats segmented cut-outs as a domain of their own (``vfinfer.calls.verdict``)."""
    if case_dir is None or (Path(case_dir) / SEGMENTATION_DIR).is_dir():
        for facts in prepared.facts:
            facts["segmented"] = True
    return prepared


def prepare_metaphase(pipeline, segmenter, image, name):
    """Segment one metaphase image and prepare its cut-outs for ``pipeline``, marked as
    segmented: (``SegmentedImage``, ``PreparedCase``). What ``vfinfer run IMAGE``, the server
    and ``MetaphasePipeline`` share."""
    segmented = segment_image(segmenter, image, name, pipeline.config.rotate_crop,
                              pipeline.background)
    prepared = pipeline.prepare(name, [cut.image for cut in segmented.cutouts],
                                [cut.name for cut in segmented.cutouts])
    return segmented, mark_segmented(prepared)


def flag_merge_suspects(result, segmented):
    """Add ``split`` to the cut-outs that ``merge_suspects`` finds by their calls in
    ``result`` and renew the segmentation's review warning."""
    probs = [row["type_prob"] for row in result["chromosomes"]]
    suspects = merge_suspects(segmented.cutouts, probs)
    for cut, suspect in zip(segmented.cutouts, suspects):
        if suspect and "split" not in cut.review:
            cut.review.append("split")
    segmented.notes = [note for note in segmented.notes
                       if not note.startswith(REVIEW_NOTE)] + review_note(segmented.cutouts)


def attach_segmentation(result, segmented, segmenter):
    """Add each chromosome's ``segment`` and the ``segmentation`` section to ``result``,
    after ``flag_merge_suspects``."""
    flag_merge_suspects(result, segmented)
    for row, cut in zip(result["chromosomes"], segmented.cutouts):
        row["segment"] = {k: v for k, v in cut.record().items() if k != "file"}
    result["segmentation"] = segmented.section(segmenter)
    result["warnings"].extend(segmented.notes)
    stages = result["segmentation"]["timing_ms"]
    result["timing_ms"].update(stages)
    result["timing_ms"]["total"] = round(result["timing_ms"]["total"] + sum(stages.values()), 3)
    return result


def result_overlay(result, segmented):
    """The overlay PNG with each instance labelled by its call (``?`` when low confidence)."""
    labels = [row["type"] + ("?" if row["low_confidence"] else "")
              for row in result["chromosomes"]]
    return overlay_png(segmented.gray, segmented.cutouts, labels)


class MetaphasePipeline:
    """A ``Pipeline`` (classifier) behind a ``Segmenter``; see the module doc.

    Parameters
    ----------
    model_dir : str or os.PathLike, optional
        The classifier's model directory; None: the bundled demo model.
    seg_model : str or os.PathLike, optional
        A segmentation model directory, ``"classical"`` (threshold and watershed, no
        network) or None: the bundled demo segmentation model.
    seg_backend : str
        The segmentation network's backend (``vfinfer.segment.segmenter.SEG_BACKENDS``).
    seg_precision : str
        The segmentation graph to run: ``"fp32"``, ``"fp16"`` (ONNX Runtime) or ``"bf16"``
        (OpenVINO).
    **pipeline_options
        Passed to ``Pipeline`` (``backend``, ``threads``, ``dispatch_mode``, ...);
        ``threads`` is used by the segmenter too.

    Attributes
    ----------
    pipeline : Pipeline
        The classifier.
    segmenter : vfinfer.segment.segmenter.Segmenter
        The segmentation step.
    """

    def __init__(self, model_dir: Union[str, os.PathLike, None] = None,
                 seg_model: Union[str, os.PathLike, None] = None, seg_backend: str = "ort",
                 seg_precision: str = "fp32", **pipeline_options: Any) -> None:
        self.pipeline = Pipeline(model_dir, **pipeline_options)
        try:
            self.segmenter = Segmenter(seg_model, backend=seg_backend,
                                       threads=pipeline_options.get("threads", 0),
                                       precision=seg_precision)
        except Exception:
            self.pipeline.close()
            raise

    def segment(self, image: np.ndarray, name: str = "metaphase") -> SegmentedImage:
        """Segment one metaphase image and cut its chromosomes out, without classifying
        them (``image`` as in ``run_image``)."""
        return segment_image(self.segmenter, image, name, self.pipeline.config.rotate_crop,
                             self.pipeline.background)

    def run_image(self, image: np.ndarray, name: str = "metaphase") -> dict[str, Any]:
        """Segment one metaphase image, cut its chromosomes out and classify them.

        Parameters
        ----------
        image : np.ndarray
            The metaphase image: (H, W) gray uint8 (16-bit, float, (H, W, 3) colour and
            (H, W, 4) alpha images are converted).
        name : str
            The case name reported as ``case``.

        Returns
        -------
        dict
            The result of ``Pipeline.run_case`` for the cut-outs, with each chromosome's
            ``segment`` (box, polygon, area, score and angle, in the metaphase image)
            and a ``segmentation`` section (the model, the background found, ``found``, ms
            per stage); the segmentation's stages are added to ``timing_ms``.

        Raises
        ------
        NoChromosomesError
            The segmentation found no chromosome (a ValueError).
        vfinfer.segment.model.ImageTooLargeError
            The image is larger than the segmentation model's ``max_side``.
        """
        segmented, prepared = prepare_metaphase(self.pipeline, self.segmenter, image, name)
        result = self.pipeline.run_cases([prepared])[0]
        return attach_segmentation(result, segmented, self.segmenter)

    def close(self) -> None:
        """Close the classifier and the segmenter."""
        self.pipeline.close()
        self.segmenter.close()

    def __enter__(self) -> MetaphasePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
