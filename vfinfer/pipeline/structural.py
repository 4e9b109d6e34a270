"""The per-chromosome structural score (docs/structural.md, "The score").

A small network of its own (``structural.onnx``, recorded in the model manifest's
``structural`` section by ``vfinfer export-structural``) looks at each upright cut-out and the
type the classifier called for it, and gives the probability that the chromosome carries a
structural aberration (a deletion, duplication, inversion, translocation or isochromosome of a
visible size). A chromosome scoring at or above the manifest's threshold is flagged for review.

Its inputs, made here for training (``vfinfer_export.structural_train``) and inference alike:

- ``image`` (N, 1, H, W) float32: the light-background cut-out turned q-arm down (by the
  called polarity, when the model calls polarity), its pixels outside the chromosome's mask
  (``vfinfer.util.geometry.body_mask``) set to white, cropped to the mask, scaled to fit an
  H x W canvas keeping its aspect, centred on white (manifest ``input.fit`` "each"), or, with
  ``fit`` "cell", scaled by one factor for the whole cell (its median length to
  ``CELL_MEDIAN_SHARE`` of H), top row at the top, so that a shorter or longer chromosome
  looks shorter or longer and its bands keep their distance from the p-arm end; values are
  darkness, (255 - x) / 255;
- ``cond`` (N, 25) float32: the called type as a 24-way one-hot, then log(length / the
  cell's median length), the length being the mask's height (so the score sees whether a
  chromosome is longer or shorter than its type should be in this cell).

A score trained with the homologue (manifest ``input.homologue``, ``train-structural
--homologue``) also sees the chromosome's homologue, as a cytogeneticist compares the two
copies of a pair: ``image`` (N, 2, H, W) has the canvas of the other chromosome of the same
called type in channel 1 (of several, the one whose canvas differs least; white when the type
has no other copy), and ``cond`` (N, 27) two more values: 1 when there is a homologue, and
log(its length / the cell's median length).

A score trained with the arm head (manifest ``outputs`` holds ``arm``, ``train-structural
--arm``) has a second output, ``arm`` (N, 3): the probabilities of ``ARMS``, where the change
lies on the upright chromosome (p arm, q arm, or both arms: a pericentric inversion). It is
trained on the aberrant examples only, so on a normal chromosome it means nothing.

Two views (manifest ``tta`` "mirror", ``train-structural --tta mirror``, the default): a
chromosome's score (and arm probabilities) is the mean over its canvas and the canvas's
left-right mirror, which shows the same bands in the same order; the threshold was chosen on
validation scores taken the same way. Only the chromosomes whose first view scores at least
``tta_gate(threshold)`` are scored a second time: the mean of any other cannot reach the
threshold, so the flags are those of scoring every chromosome twice at a fraction of the cost,
and the scores of the others are their first view's.
"""

import math

import cv2
import numpy as np

from vfinfer.model.classes import N_TYPES
from vfinfer.model.manifest import ModelDirError
from vfinfer.util.geometry import body_mask

ARMS = ("p", "q", "pq")  # the arm output's classes: p arm, q arm, both (across the centromere)
COND_SIZE = N_TYPES + 1  # one-hot type, log relative length
FITS = ("each", "cell")  # each chromosome fitted to the canvas, or all at the cell's scale
CELL_MEDIAN_SHARE = 0.45  # fit "cell": the cell's median length, as a share of the height
HOMOLOGUE_COND = 2  # has a homologue, its log relative length
BACKGROUND = 255
TTA_MODES = ("none", "mirror")  # one view, or the mean with the left-right mirror
TTA_GATE = 0.5  # a first view scoring this much is scored on its mirror too


def tta_gate(threshold):
    """The first-view score from which a chromosome is scored on its mirror too (module doc,
    "Two views"): ``TTA_GATE``, lower for a threshold under (1 + TTA_GATE) / 2, since a
    first view under 2 x threshold - 1 cannot bring the mean of the two to the threshold."""
    return min(TTA_GATE, 2.0 * float(threshold) - 1.0)


def cond_size(homologue):
    """The width of ``cond``: 25, or 27 with the homologue."""
    return COND_SIZE + (HOMOLOGUE_COND if homologue else 0)


def structural_crop(light_image):
    """The chromosome of a light-background uint8 cut-out: white outside its mask, cropped
    to the mask's bounding box (the image as given when no mask is found)."""
    mask = body_mask(light_image)
    if not mask.any():
        return np.ascontiguousarray(light_image)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    clean = np.where(mask, light_image, BACKGROUND).astype(np.uint8)
    return np.ascontiguousarray(clean[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def _placed(crop, height, width, scale, centre_rows):
    """``crop`` scaled by ``scale`` (at most to fit) on a white ``height`` x ``width`` canvas,
    centred across, and down too with ``centre_rows`` (else at the top)."""
    h, w = crop.shape
    scale = min(scale, height / h, width / w)
    size = (max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = np.full((height, width), BACKGROUND, dtype=np.uint8)
    top = (height - size[1]) // 2 if centre_rows else 0
    left = (width - size[0]) // 2
    out[top:top + size[1], left:left + size[0]] = cv2.resize(crop, size,
                                                             interpolation=interpolation)
    return out


def fit_canvas(crop, height, width):
    """``crop`` scaled to fit ``height`` x ``width`` keeping its aspect, centred on white."""
    return _placed(crop, height, width, float("inf"), centre_rows=True)


def cell_canvas(crop, height, width, median):
    """``crop`` scaled by the cell's factor (its median length ``median`` becomes
    ``CELL_MEDIAN_SHARE`` of ``height``; a chromosome that would not fit is scaled down to
    fit), its top row at the canvas's top, centred across, on white."""
    scale = CELL_MEDIAN_SHARE * height / max(float(median), 1.0)
    return _placed(crop, height, width, scale, centre_rows=False)


def canvas_of(crop, height, width, fit="each", median=None):
    """The canvas of one crop: ``fit_canvas`` (``fit`` "each") or ``cell_canvas`` ("cell",
    with the cell's median length)."""
    if fit == "each":
        return fit_canvas(crop, height, width)
    if fit == "cell":
        return cell_canvas(crop, height, width, median)
    raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")


def structural_inputs(images, types, height, width, flip=None, homologue=False, fit="each"):
    """The ``image`` and ``cond`` inputs (module doc) of one cell's cut-outs.

    ``images``: light-background uint8 cut-outs, upright; ``types``: 0-based types (called,
    or labelled in training); ``flip``: per image, True to turn it upside down first (called
    q-arm up); ``homologue``: add each chromosome's homologue (module doc); ``fit``: how each
    is scaled onto the canvas (``canvas_of``). The median length is taken over these images:
    pass one cell at a time.
    """
    if len(images) != len(types):
        raise ValueError(f"{len(images)} images but {len(types)} types")
    flip = [False] * len(images) if flip is None else list(flip)
    crops = [structural_crop(img[::-1] if f else img) for img, f in zip(images, flip)]
    lengths = [c.shape[0] for c in crops]
    median = float(np.median(lengths)) if lengths else 1.0
    canvases = np.stack([canvas_of(c, height, width, fit, median) for c in crops]) if crops \
        else np.zeros((0, height, width), np.uint8)
    cond = conditions(types, lengths, median)
    if not homologue:
        return darkness(canvases), cond
    paired, extra = with_homologues(canvases, types, lengths, median)
    return darkness(paired), np.concatenate([cond, extra], axis=1)


def homologues(canvases, types):
    """For each chromosome, the index of its homologue: of the others of the same type, the
    one whose canvas differs least (mean absolute difference); -1 when there is none."""
    types = np.asarray(types)
    flat = canvases.reshape(len(canvases), int(np.prod(canvases.shape[1:]))).astype(np.int16)
    partner = np.full(len(types), -1, dtype=np.int64)
    for i in range(len(types)):
        others = np.flatnonzero(types == types[i])
        others = others[others != i]
        if len(others):
            distance = np.abs(flat[others] - flat[i]).mean(axis=1)
            partner[i] = others[int(np.argmin(distance))]
    return partner


def with_homologues(canvases, types, lengths, median=None):
    """(uint8 canvases (N, 2, H, W): each chromosome and its homologue, white when it has
    none; the two extra ``cond`` columns (N, 2)) of one cell (module doc). ``median``: the
    cell's median length (that of ``lengths`` when None)."""
    partner = homologues(canvases, types)
    has = partner >= 0
    second = np.full_like(canvases, BACKGROUND)
    second[has] = canvases[partner[has]]
    median = float(np.median(lengths)) if median is None and len(lengths) else median
    extra = np.zeros((len(types), HOMOLOGUE_COND), dtype=np.float32)
    extra[has, 0] = 1.0
    extra[has, 1] = [math.log(max(lengths[p], 1) / max(float(median), 1.0))
                     for p in partner[has]]
    return np.stack([canvases, second], axis=1), extra


def darkness(canvases):
    """uint8 canvases (N, H, W) or (N, C, H, W) -> the ``image`` input (N, C, H, W) float32
    (C = 1 for the former)."""
    x = (BACKGROUND - canvases.astype(np.float32)) / BACKGROUND
    return x[:, None] if x.ndim == 3 else x


def conditions(types, lengths, median=None):
    """The ``cond`` input: one-hot ``types`` and log(length / ``median``) (the lengths'
    median when None)."""
    cond = np.zeros((len(types), COND_SIZE), dtype=np.float32)
    if not len(types):
        return cond
    cond[np.arange(len(types)), np.asarray(types, dtype=np.int64)] = 1.0
    median = float(np.median(lengths)) if median is None else float(median)
    cond[:, N_TYPES] = [math.log(max(n, 1) / max(median, 1.0)) for n in lengths]
    return cond


def _known(value, allowed, what, where):
    """``value`` when it is one of ``allowed``, else the ``ModelDirError`` naming the
    manifest ``where`` and the structural section's ``what``."""
    if value not in allowed:
        raise ModelDirError(f"{where}: structural {what} {value!r} is not one of "
                            f"{', '.join(allowed)} (a newer vfinfer's model?)")
    return value


class StructuralScorer:
    """The structural graph of a model directory.

    ``section``: the manifest's ``structural`` record (``file``, ``input``, ``threshold``);
    ``runner_factory(file)``: a ``GraphRunner`` (``vfinfer.backends.ort.OrtRunner``) for the
    section's graph file; ``where``: the manifest, named in errors.
    """

    def __init__(self, section, runner_factory, where="manifest.json"):
        self.section = section
        self.threshold = float(section["threshold"])
        self.height = int(section["input"]["height"])
        self.width = int(section["input"]["width"])
        self.homologue = bool(section["input"].get("homologue", False))
        self.fit = _known(section["input"].get("fit", "each"), FITS, "input fit", where)
        self.arms = tuple(section.get("arms") or ())  # empty: no arm output
        self.tta = _known(section.get("tta", "none"), TTA_MODES, "tta", where)
        self.runner = runner_factory(section["file"])

    def assess(self, images, types, flip=None):
        """(the score of each cut-out of one cell (N,), the arm probabilities (N, 3) in
        ``self.arms`` order, or None when the graph has no arm output)."""
        image, cond = structural_inputs(images, types, self.height, self.width, flip,
                                        self.homologue, self.fit)
        if not len(image):
            return np.zeros(0, np.float32), (np.zeros((0, len(self.arms)), np.float32)
                                             if self.arms else None)
        out = self.runner.infer({"image": image, "cond": cond})
        score, arm = out["score"].reshape(-1), out["arm"] if self.arms else None
        if self.tta == "mirror":
            return self._with_mirror(image, cond, score, arm)
        return score, arm

    def _with_mirror(self, image, cond, score, arm):
        """``score`` and ``arm`` of the first view, averaged with the mirror's where the first
        view scores at least ``tta_gate`` (module doc, "Two views")."""
        again = np.flatnonzero(score >= tta_gate(self.threshold))
        if not len(again):
            return score, arm
        out = self.runner.infer({"image": np.ascontiguousarray(image[again][..., ::-1]),
                                 "cond": cond[again]})
        score = score.copy()
        score[again] = (score[again] + out["score"].reshape(-1)) / 2
        if arm is not None:
            arm = arm.copy()
            arm[again] = (arm[again] + out["arm"]) / 2
        return score, arm

    def close(self):
        """Release the session."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()
