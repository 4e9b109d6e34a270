"""The instance step: the network's three maps (``channels``) -> one mask per chromosome.

1. Threshold the maps. *Pieces* are the connected chromosome pixels that are neither touch
   nor overlap: cutting along the touch band separates touching chromosomes, and removing
   the overlap splits a crossing into its arms. Pieces under ``min_piece_area`` pixels
   (slivers between a touch band and an overlap) are no pieces of their own.
2. Each piece grows back over the touch band it was cut from (at most ``grow`` pixels, never
   into an overlap or the background), so the masks keep their full width.
3. Each overlap region joins the pieces that meet it in pairs: two arms that leave it on
   opposite sides (their directions from its centre at least ``PAIR_COS`` apart) and lie
   along one line (each arm's long axis pointing at the overlap and the two axes parallel,
   cosines >= ``PAIR_COS``) are one chromosome crossing the other. A short arm (its long
   axis under ``SHORT_ARM`` times its width: the end of a chromosome just past a crossing)
   has no direction of its own: only its side of the overlap and the other arm's axis count.
   Pairs are taken best first (the mean of the cosines that count). Every piece that meets the
   overlap (paired or not: a chromosome ending on another) gets its pixels, so an overlap
   pixel belongs to two instances. An overlap region that meets no piece is an instance.
4. Instances smaller than ``min_area`` pixels are debris and dropped; each instance's score
   is its mean chromosome probability (the confidence the AP metric ranks by).

The pairing rule is this project's choice: the paper's ChrRender (a Mask R-CNN with point
rendering) predicts a mask per box and needs no such step.
"""

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

PAIR_COS = 0.8
SHORT_ARM = 2.0  # length / width (the square root of the moments' eigenvalue ratio)

SQUARE = np.ones((3, 3), np.uint8)  # the 8-neighbourhood of one growth step


@dataclass
class InstanceParams:
    """Thresholds of the instance step (kept in the segmentation model's manifest)."""

    chromosome: float = 0.5
    overlap: float = 0.5
    touch: float = 0.5
    min_area: int = 30
    min_overlap_area: int = 6
    min_piece_area: int = 12
    grow: int = 3

    @classmethod
    def from_dict(cls, values):
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)

    def to_dict(self):
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Instance:
    """One chromosome found in a metaphase: ``mask`` (bool) covers ``box`` = (x0, y0, x1, y1),
    end-exclusive pixel coordinates in the metaphase image; ``score`` in [0, 1]."""

    box: tuple
    mask: np.ndarray
    score: float

    @property
    def area(self):
        return int(self.mask.sum())

    @classmethod
    def from_full_mask(cls, mask, score, offset=(0, 0)):
        """From a mask of the image (or of a window of it starting at ``offset`` (x, y))."""
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        dx, dy = offset
        return cls((x0 + dx, y0 + dy, x1 + dx, y1 + dy),
                   np.ascontiguousarray(mask[y0:y1, x0:x1]), float(score))

    def full_mask(self, shape):
        out = np.zeros(shape, dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.mask
        return out

    def polygon(self):
        """The outline of the mask's largest part, (N, 2) int (x, y) in the metaphase image."""
        contours, _ = cv2.findContours(self.mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        largest = max(contours, key=cv2.contourArea).reshape(-1, 2)
        return largest + np.array(self.box[:2])


def _grow(labels, allowed, steps):
    """Grow labelled pieces into unlabelled ``allowed`` pixels, one pixel per step (each step
    a 3 x 3 maximum, ``ndimage.grey_dilation``'s, by OpenCV: labels are exact in float32)."""
    for _ in range(steps):
        free = allowed & (labels == 0)
        if not free.any():
            break
        grown = cv2.dilate(labels.astype(np.float32), SQUARE).astype(labels.dtype)
        labels = np.where(free & (grown > 0), grown, labels)
    return labels


def _moments(labels):
    """Per label: centroid (x, y), unit long axis (x, y) and elongation (length / width,
    the square root of the eigenvalue ratio), from the second moments."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    where = np.flatnonzero(flat)  # the labelled pixels only: each label's sums are the same
    ys, xs = np.divmod(where, labels.shape[1])
    flat = flat[where]

    def total(weights=None):
        return np.bincount(flat, weights=weights, minlength=n)

    count = np.maximum(total(), 1)
    mx, my = total(xs) / count, total(ys) / count
    cxx = total(xs * xs) / count - mx * mx
    cyy = total(ys * ys) / count - my * my
    cxy = total(xs * ys) / count - mx * my
    angle = 0.5 * np.arctan2(2 * cxy, cxx - cyy)  # the long axis of the covariance ellipse
    spread = np.sqrt(((cxx - cyy) / 2) ** 2 + cxy ** 2)
    big, small = (cxx + cyy) / 2 + spread, np.maximum((cxx + cyy) / 2 - spread, 1e-6)
    elongation = np.sqrt(np.maximum(big, 0) / small)
    return np.stack([mx, my], 1), np.stack([np.cos(angle), np.sin(angle)], 1), elongation


def _pairs(pieces, centre, moments):
    """Pairs of piece labels that continue each other through an overlap at ``centre``."""
    centres, axes, elongation = moments
    arms = {}
    for label in pieces:
        away = centres[label] - centre
        norm = np.linalg.norm(away)
        if norm > 0:
            arms[label] = (axes[label], away / norm, elongation[label] >= SHORT_ARM)
    candidates = []
    labels_list = sorted(arms)
    for i, p in enumerate(labels_list):
        for q in labels_list[i + 1:]:
            cosines = _arm_cosines(arms[p], arms[q])
            if min(cosines) >= PAIR_COS:
                candidates.append((-float(np.mean(cosines)), p, q))
    paired, pairs = set(), []
    for _, p, q in sorted(candidates):
        if p not in paired and q not in paired:
            paired.update((p, q))
            pairs.append((p, q))
    return pairs


def _arm_cosines(arm_p, arm_q):
    """The cosines that decide whether two arms (axis, unit direction from the overlap,
    elongated) continue each other: opposite sides, each elongated arm's axis pointing at
    the overlap, and both axes parallel when both are elongated (module doc, step 3)."""
    (ap, up, long_p), (aq, uq, long_q) = arm_p, arm_q
    cosines = [-float(up @ uq)]
    cosines += [abs(float(ap @ up))] if long_p else []
    cosines += [abs(float(aq @ uq))] if long_q else []
    cosines += [abs(float(ap @ aq))] if long_p and long_q else []
    return cosines


def _grown(box, shape, by):
    ys, xs = box
    return (slice(max(ys.start - by, 0), min(ys.stop + by, shape[0])),
            slice(max(xs.start - by, 0), min(xs.stop + by, shape[1])))


def _overlap_owners(labels, overlap, params):
    """{overlap region label: the pieces meeting it}, the pairs to join, and the regions."""
    count, regions = cv2.connectedComponents(overlap.astype(np.uint8), connectivity=8)
    moments = _moments(labels) if count > 1 else None  # only where an overlap needs them
    owners, pairs = {}, []
    for r, box in enumerate(ndimage.find_objects(regions), start=1):
        if box is None:
            continue
        window = _grown(box, labels.shape, 3)
        region = regions[window] == r
        if region.sum() < params.min_overlap_area:
            continue
        near = ndimage.binary_dilation(region, np.ones((3, 3), bool), iterations=2) & ~region
        pieces = sorted(int(k) for k in np.unique(labels[window][near]) if k)
        owners[r] = pieces
        ys, xs = np.nonzero(region)
        centre = np.array([xs.mean() + window[1].start, ys.mean() + window[0].start])
        pairs += _pairs(pieces, centre, moments)
    return owners, pairs, regions


def _join_overlaps(labels, overlap, params):
    """Step 3: one (box, mask) per chromosome, pieces joined through the overlaps."""
    owners, pairs, regions = _overlap_owners(labels, overlap, params)
    parent = list(range(int(labels.max()) + 1))

    def root(k):
        while parent[k] != k:
            k = parent[k]
        return k

    for p, q in pairs:
        parent[root(q)] = root(p)
    groups = {}  # root -> (piece labels, overlap region labels)
    for k in range(1, len(parent)):
        groups.setdefault(root(k), (set(), set()))[0].add(k)
    for r, pieces in owners.items():
        for p in pieces or [None]:
            key = root(p) if p is not None else -r  # a region meeting no piece: its own
            groups.setdefault(key, (set(), set()))[1].add(r)
    piece_boxes, region_boxes = ndimage.find_objects(labels), ndimage.find_objects(regions)
    for pieces, owned in groups.values():
        boxes = [piece_boxes[k - 1] for k in pieces if piece_boxes[k - 1] is not None]
        boxes += [region_boxes[r - 1] for r in owned]
        if not boxes:
            continue
        window = (slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes)),
                  slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes)))
        mask = np.isin(labels[window], list(pieces)) | np.isin(regions[window], list(owned))
        yield window, mask


def instances_from_maps(probs, params=None):
    """(3, H, W) probabilities in ``channels.CHANNELS`` order -> list of ``Instance``,
    largest first (see the module doc)."""
    params = params or InstanceParams()
    chromosome = probs[0] > params.chromosome
    overlap = (probs[1] > params.overlap) & chromosome
    touch = (probs[2] > params.touch) & chromosome & ~overlap
    core = (chromosome & ~touch & ~overlap).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=4)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < params.min_piece_area)
    labels[np.isin(labels, small[small > 0])] = 0
    labels = _grow(labels.astype(np.int32), chromosome & ~overlap, params.grow)
    instances = []
    for (ys, xs), mask in _join_overlaps(labels, overlap, params):
        if mask.sum() >= params.min_area:
            score = float(probs[0][ys, xs][mask].mean())
            instances.append(Instance.from_full_mask(mask, score, offset=(xs.start, ys.start)))
    instances.sort(key=lambda inst: -inst.area)
    return instances
