"""Instances -> cut-outs the classifier takes (Render-Attention's rotate-and-crop module).

Each chromosome is cut out of the metaphase with its mask (one pixel wider, so the blurred
edge stays) on the image's own background level (0 or 255: the cut-outs look like those a
lab exports, dark or light), turned upright and cropped as the classifier's manifest asks
(``ModelConfig.rotate_crop``). A classifier without rotate-and-crop was trained on
karyogram-oriented cut-outs, which are upright, so its cut-outs are turned by the principal
axis as well: a chromosome lies at any angle in a metaphase. The turn uses the instance's own
mask (not a threshold of the cut-out), so a neighbour reaching into the box does not tilt it.
Names: ``chr_01.png``, ``chr_02.png``, ... in the order of the instances (largest first).
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

from vfinfer.segment.instances import Instance
from vfinfer.segment.review import review_flags
from vfinfer.util.geometry import (
    hough_angle,
    principal_axis_angle,
    rotate_and_crop,
    to_convention,
)

MARGIN = 3  # pixels of context around the mask's box before the turn


@dataclass
class Cutout:
    name: str
    image: np.ndarray  # gray uint8, the metaphase's background convention
    mask: np.ndarray  # bool, the instance's mask in ``box``
    box: tuple  # (x0, y0, x1, y1) in the metaphase image, end-exclusive
    angle: float  # degrees turned
    score: float
    polygon: list
    review: list = field(default_factory=list)  # "split" / "join" (vfinfer.segment.review)

    def record(self):
        """The JSON-friendly description (result.json, segmentation/segments.json)."""
        return {"file": self.name, "box": list(self.box), "area": int(self.mask.sum()),
                "score": round(self.score, 4), "angle": round(self.angle, 2),
                "review": list(self.review), "polygon": self.polygon}


def cutout_name(k):
    return f"chr_{k + 1:02d}.png"


def _masked_crop(gray, instance, background):
    """The instance's box plus ``MARGIN``, pixels off its (dilated) mask set to background."""
    height, width = gray.shape
    x0, y0, x1, y1 = instance.box
    X0, Y0 = max(x0 - MARGIN, 0), max(y0 - MARGIN, 0)
    X1, Y1 = min(x1 + MARGIN, width), min(y1 + MARGIN, height)
    mask = np.zeros((Y1 - Y0, X1 - X0), np.uint8)
    mask[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = instance.mask
    keep = cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)
    light = to_convention(gray[Y0:Y1, X0:X1], background, "light").copy()
    light[~keep] = 255
    return light, mask.astype(bool)


def make_cutout(gray, instance, background, method, k):
    """One ``Cutout`` of ``instance`` (see the module doc); ``method``: the classifier's
    rotate-and-crop (``none`` is treated as ``principal-axis``)."""
    light, mask = _masked_crop(gray, instance, background)
    angle = None
    if method == "hough":
        angle = hough_angle(light, mask)
    if angle is None:
        angle = principal_axis_angle(mask)
    angle = float(angle or 0.0)
    upright = rotate_and_crop(light, angle)
    image = to_convention(upright, "light", background)
    return Cutout(cutout_name(k), np.ascontiguousarray(image), instance.mask, instance.box,
                  angle, instance.score, instance.polygon().tolist())


def make_cutouts(gray, instances, background, method):
    """The cut-outs of ``instances``, each with its review flags (``vfinfer.segment.review``)."""
    cutouts = [make_cutout(gray, inst, background, method, k)
               for k, inst in enumerate(instances)]
    for cut, flags in zip(cutouts, review_flags(cutouts, gray.shape)):
        cut.review = flags
    return cutouts


def joined_cutout(gray, polygons, background, method="principal-axis"):
    """The cut-out of one chromosome that segmentation found as several pieces: the union of
    the pieces' ``polygons`` (each [[x, y], ...] in ``gray``), cut like any instance."""
    union = np.zeros(gray.shape, np.uint8)
    for polygon in polygons:
        cv2.fillPoly(union, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
    piece = Instance.from_full_mask(union.astype(bool), 1.0)
    return make_cutout(gray, piece, background, method, 0).image
