"""The segmentation network's three output maps and the training targets they stand for.

Each map is a per-pixel probability (sigmoid of the network's logits):

* ``chromosome``: the pixel lies inside at least one chromosome (the union of the polygons);
* ``overlap``: inside two or more chromosomes (a crossing: the pixel belongs to both);
* ``touch``: inside exactly one chromosome and within ``TOUCH_RADIUS`` pixels of another
  one: the thin band that separates touching chromosomes (and the arms of a crossing from
  its overlap), which the instance step cuts along.

Hand-drawn polygons of neighbours that merely touch often overlap by a pixel or two; such
slivers are not crossings, so the overlap target keeps only regions at least
``MIN_OVERLAP_WIDTH`` pixels wide (a morphological opening); what the opening removes counts
as touch.
"""

import cv2
import numpy as np

CHANNELS = ("chromosome", "overlap", "touch")
TOUCH_RADIUS = 2
MIN_OVERLAP_WIDTH = 3


def _disc(radius):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def target_maps(masks, shape):
    """(3, H, W) uint8 targets (0/1, in ``CHANNELS`` order) from boolean instance masks."""
    count = np.zeros(shape, dtype=np.uint16)
    near = np.zeros(shape, dtype=np.uint16)
    disc = _disc(TOUCH_RADIUS)
    for mask in masks:
        m = mask.astype(np.uint8)
        count += m
        near += cv2.dilate(m, disc)
    chromosome = count >= 1
    overlap = cv2.morphologyEx((count >= 2).astype(np.uint8), cv2.MORPH_OPEN,
                               _disc(MIN_OVERLAP_WIDTH // 2)).astype(bool)
    # a pixel inside one instance is "near another" when more dilated masks reach it than
    # instances cover it; an overlap sliver that the opening removed is touch as well
    touch = chromosome & ~overlap & ((near > count) | (count >= 2))
    return np.stack([chromosome, overlap, touch]).astype(np.uint8)
