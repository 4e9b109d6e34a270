"""Type labels for a metaphase's annotated polygons, from the case's labelled cut-outs.

A collection may label its chromosomes as cut-outs (one image per chromosome, its type in
``labels.csv``) and annotate its metaphases as polygons without types (BioImLab). Where the
cut-outs were cut from that very image, each one lies somewhere in it, possibly turned by a
quarter turn or mirrored. Each cut-out is looked for in the image by normalised cross-
correlation restricted to its own chromosome pixels (``cv2.matchTemplate`` with a mask, so a
neighbour inside its box does not count), in its 8 orientations, in a window around each
polygon it could fit by size; every local peak of at least ``min_score`` whose gray values also
agree (mean absolute difference at most ``MAX_DIFFERENCE``: correlation alone lets a small
smooth blob match another one) is a candidate placement. A placement fits a polygon when the
polygon holds the chromosome's core (its pixels above Otsu's threshold) and the cut-out's
chromosome pixels hold the polygon, each to at least ``MIN_INSIDE``: a cut-out's mask is wider
than an annotator's tight polygon, and its core narrower (IoU with either misses small
chromosomes, as measured on BioImLab). Cut-outs and polygons are then paired one to one with
the largest total score (``scipy.optimize.linear_sum_assignment``), not each cut-out by its own
best match: two similar small chromosomes cannot both claim one polygon, and a small bright
blob that matches many places gets the one left for it. Whether the cut-outs were cut from an
image is a fact about the image: where fewer than ``MIN_PAIRED`` pairs are found, they are
taken for chance matches of small chromosomes and none is kept (BioImLab: 3 small ones on
another metaphase of a case whose cut-outs come from another image). Polygons left unpaired
stay unlabelled (``None``); ``coverage`` says how many were labelled.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from vfinfer.segment.instances import Instance

MIN_SCORE = 0.98  # masked NCC; BioImLab: the same pixels 0.997-0.999 (JPEG)
MIN_PAIRED = 10  # fewer pairs in an image: chance matches of small chromosomes, none kept
MAX_DIFFERENCE = 3.0  # mean |gray difference| on the chromosome; BioImLab: the same pixels 1-2.5
MIN_INSIDE = 0.8  # the share of the core inside the polygon, and of the polygon in the pixels
PEAKS = 6  # candidate placements kept per orientation
PEAK_WINDOW = 5  # pixels: a peak is the largest score within this window
SLACK = 6  # pixels a polygon may reach beyond the placed cut-out's box


@dataclass
class Placement:
    """A cut-out placed in the image: its top-left corner and its chromosome pixels."""

    score: float
    x: int
    y: int
    pixels: np.ndarray  # bool, the oriented cut-out's chromosome pixels
    core: np.ndarray  # bool, its pixels above Otsu's threshold


@dataclass
class PolygonLabels:
    """Per polygon: its type (None: not labelled), the cut-out index and the score."""

    types: list
    cutouts: list
    scores: list

    @property
    def labelled(self):
        return sum(t is not None for t in self.types)

    @property
    def coverage(self):
        return self.labelled / max(len(self.types), 1)

    def to_dict(self):
        return {"types": self.types, "cutouts": self.cutouts,
                "scores": [None if s is None else round(s, 4) for s in self.scores]}


def orientations(cutout):
    """The 8 orientations of ``cutout``: 4 quarter turns, each as it is and mirrored."""
    for k in range(4):
        turned = np.ascontiguousarray(np.rot90(cutout, k))
        yield turned
        yield np.ascontiguousarray(turned[:, ::-1])


def chromosome_pixels(cutout):
    """The cut-out's chromosome: pixels off its background level (the commonest border
    value: a cut-out is masked to 0 or 255 outside its chromosome)."""
    border = np.concatenate([cutout[0], cutout[-1], cutout[:, 0], cutout[:, -1]])
    background = np.bincount(border, minlength=256).argmax()
    return cutout != background


def chromosome_core(oriented, pixels):
    """The chromosome pixels above Otsu's threshold of them (its bright or dark core)."""
    values = oriented[pixels].reshape(-1, 1)
    threshold, _ = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    background = oriented[~pixels].mean() if (~pixels).any() else 0
    core = oriented > threshold if background < threshold else oriented <= threshold
    return pixels & core


@dataclass
class Oriented:
    """One orientation of a cut-out with its chromosome pixels and core."""

    image: np.ndarray
    pixels: np.ndarray
    core: np.ndarray


def oriented_views(cutout):
    """The usable ``Oriented`` views of a cut-out (none for a blank or flat one)."""
    views = []
    for image in orientations(cutout):
        pixels = chromosome_pixels(image)
        if pixels.sum() >= 8 and image[pixels].std() > 0:
            views.append(Oriented(image, pixels, chromosome_core(image, pixels)))
    return views


def _peaks(scores, min_score, count):
    """(x, y, score) of the ``count`` highest local maxima of at least ``min_score``."""
    local = cv2.dilate(scores, np.ones((PEAK_WINDOW, PEAK_WINDOW), np.uint8))
    ys, xs = np.nonzero((scores >= local) & (scores >= min_score))
    order = np.argsort(-scores[ys, xs])[:count]
    return [(int(xs[k]), int(ys[k]), float(scores[ys[k], xs[k]])) for k in order]


def placements_near(image, view, box, min_score=MIN_SCORE, peaks=PEAKS):
    """Candidate ``Placement``s of ``view`` where the polygon of ``box`` (x0, y0, x1, y1)
    could lie inside it (within ``SLACK`` pixels): a window of ``image`` around the box."""
    h, w = view.image.shape
    x0, y0, x1, y1 = box
    X0, Y0 = max(x1 - w - SLACK, 0), max(y1 - h - SLACK, 0)
    X1, Y1 = min(x0 + SLACK + w, image.shape[1]), min(y0 + SLACK + h, image.shape[0])
    if X1 - X0 < w or Y1 - Y0 < h:
        return []
    scores = cv2.matchTemplate(image[Y0:Y1, X0:X1], view.image, cv2.TM_CCOEFF_NORMED,
                               mask=view.pixels.astype(np.uint8))
    scores = np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0)
    found = []
    for x, y, score in _peaks(scores, min_score, peaks):
        under = image[Y0 + y:Y0 + y + h, X0 + x:X0 + x + w][view.pixels].astype(np.float32)
        if np.abs(under - view.image[view.pixels]).mean() <= MAX_DIFFERENCE:
            found.append(Placement(score, x + X0, y + Y0, view.pixels, view.core))
    return found


def fits(place, mask, box, min_inside=MIN_INSIDE):
    """Whether a placement fits a polygon (full-image ``mask``, its ``box``): module doc."""
    h, w = place.pixels.shape
    x0, y0, x1, y1 = box
    if place.x >= x1 or place.y >= y1 or place.x + w <= x0 or place.y + h <= y0:
        return False
    window = mask[place.y:place.y + h, place.x:place.x + w]
    core_inside = (window & place.core).sum() / max(place.core.sum(), 1)
    polygon_inside = (window & place.pixels).sum() / max(mask.sum(), 1)
    return min(core_inside, polygon_inside) >= min_inside


def could_fit(view, area, box, min_inside=MIN_INSIDE):
    """Sizes only: whether ``view`` can fit a polygon of ``area`` pixels in ``box``."""
    h, w = view.image.shape
    if box[2] - box[0] > w + SLACK or box[3] - box[1] > h + SLACK:
        return False
    return view.core.sum() * min_inside <= area <= view.pixels.sum() / min_inside


def score_matrix(image, cutouts, masks, min_score=MIN_SCORE, min_inside=MIN_INSIDE):
    """(n_cutouts, n_polygons): the best placement score of each cut-out on each polygon
    (0 where no placement fits it)."""
    boxes = [Instance.from_full_mask(m, 0.0).box if m.any() else None for m in masks]
    areas = [int(m.sum()) for m in masks]
    scores = np.zeros((len(cutouts), len(masks)))
    for i, cutout in enumerate(cutouts):
        for view in oriented_views(cutout):
            for j, (mask, box) in enumerate(zip(masks, boxes)):
                if box is None or not could_fit(view, areas[j], box, min_inside):
                    continue
                for place in placements_near(image, view, box, min_score):
                    if place.score > scores[i, j] and fits(place, mask, box, min_inside):
                        scores[i, j] = place.score
    return scores


def label_polygons(image, cutouts, types, masks, min_score=MIN_SCORE, min_inside=MIN_INSIDE,
                   min_paired=MIN_PAIRED):
    """``PolygonLabels`` for the polygons ``masks`` (bool, image-sized) of ``image`` from
    ``cutouts`` (uint8 arrays) of types ``types``: the one-to-one assignment of the module
    doc."""
    from scipy.optimize import linear_sum_assignment

    scores = score_matrix(image, cutouts, masks, min_score, min_inside)
    labels = PolygonLabels([None] * len(masks), [None] * len(masks), [None] * len(masks))
    if not scores.size:
        return labels
    pairs = [(i, j) for i, j in zip(*linear_sum_assignment(-scores)) if scores[i, j] > 0]
    if len(pairs) < min_paired:
        return labels
    for i, j in pairs:
        labels.types[j], labels.cutouts[j] = types[i], int(i)
        labels.scores[j] = float(scores[i, j])
    return labels
