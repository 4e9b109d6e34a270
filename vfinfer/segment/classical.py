"""The classical baseline: Otsu threshold + distance-transform watershed, no training.

The textbook pipeline the papers compare against (Render-Attention, section I, steps 1-2 and
a marker-controlled split in place of curvature cut points):

1. bring the image to a dark background, smooth it (Gaussian, ``sigma``) and threshold it by
   Otsu's method; drop components under ``min_area`` pixels (debris);
2. markers: the cores of the distance transform, pixels at least ``core_fraction`` of their
   connected component's largest distance (and ``min_peak`` pixels) from the background;
   the neck where two chromosomes touch is thinner, so each gets a core of its own;
3. watershed of the negated distance transform from those markers inside the foreground:
   touching chromosomes split where the distance map has a saddle;
4. drop regions under ``min_area`` and nuclei: round blobs (solidity above
   ``nucleus_solidity``, axis ratio under ``nucleus_elongation``) over ``nucleus_factor``
   times the median region's area.

It cannot give an overlap pixel to two chromosomes (each pixel gets one marker), which is
exactly what the network's overlap map adds; both are measured by ``vfinfer eval-seg``. Every
instance scores 1.0 (the method has no confidence), so its AP is that of one operating point.
"""

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from vfinfer.segment.instances import Instance
from vfinfer.util.geometry import to_convention


@dataclass
class ClassicalParams:
    sigma: float = 1.0
    min_area: int = 30
    core_fraction: float = 0.4
    min_peak: float = 1.5
    nucleus_factor: float = 2.5
    nucleus_solidity: float = 0.9
    nucleus_elongation: float = 1.5


def _foreground(gray, background, params):
    bright = to_convention(gray, background, "dark")
    smooth = cv2.GaussianBlur(bright, (0, 0), params.sigma)
    _, fg = cv2.threshold(smooth, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= params.min_area)
    return np.isin(labels, keep[keep > 0])


def _markers(distance, fg, params):
    count, components = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    peak = ndimage.maximum(distance, components, np.arange(count))
    level = np.maximum(params.core_fraction * np.asarray(peak)[components], params.min_peak)
    _, markers = cv2.connectedComponents((fg & (distance >= level)).astype(np.uint8),
                                         connectivity=8)
    return markers.astype(np.int32)


def _is_nucleus(mask, typical_area, params):
    area = int(mask.sum())
    if area < params.nucleus_factor * typical_area:
        return False
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
    ys, xs = np.nonzero(mask)
    values = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])))
    elongation = float(np.sqrt(values[-1] / max(values[0], 1e-6)))
    return area / max(hull, 1.0) > params.nucleus_solidity and \
        elongation < params.nucleus_elongation


def classical_instances(gray, background, params=None):
    """Instances of a gray uint8 metaphase image (see the module doc)."""
    params = params or ClassicalParams()
    fg = _foreground(gray, background, params)
    if not fg.any():
        return []
    distance = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5)
    markers = _markers(distance, fg, params)
    relief = cv2.normalize(-distance, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    labels = cv2.watershed(cv2.cvtColor(relief, cv2.COLOR_GRAY2BGR), markers.copy())
    labels[~fg] = 0  # watershed lines (-1) and the background
    regions = [(box, labels[box] == k) for k, box in
               enumerate(ndimage.find_objects(np.maximum(labels, 0)), start=1)
               if box is not None]
    regions = [(box, mask) for box, mask in regions if mask.sum() >= params.min_area]
    typical = float(np.median([mask.sum() for _, mask in regions])) if regions else 0.0
    instances = []
    for (ys, xs), mask in regions:
        if not _is_nucleus(mask, typical, params):
            instances.append(Instance((xs.start, ys.start, xs.stop, ys.stop),
                                      np.ascontiguousarray(mask), 1.0))
    instances.sort(key=lambda inst: -inst.area)
    return instances
