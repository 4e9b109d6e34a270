"""The segmented objects a person should probably split or join: what a cytogeneticist checks
first on an automatic segmentation (staff of a clinical system join 7.5 % and split 4.6 % of
chromosomes in one published field study).

Each object is measured against the other objects of its metaphase, so neither magnification
nor stain matters:

* ``split``: probably two or more chromosomes in one object: its area is over ``SPLIT_AREA``
  times the 90th percentile of the objects' areas (about the size of chromosomes 1-5, so two
  large chromosomes in one object stand out), or its mask fills less than ``MIN_SOLIDITY`` of
  its convex hull (a cross, or two chromosomes touching at an angle; a bent chromosome fills
  more).
* ``join``: probably a piece of a chromosome: under ``JOIN_AREA`` times the median object's area
  (the smallest chromosomes, 21, 22 and Y, are about 0.4 times it) and within ``JOIN_GAP``
  pixels of another object.

The thresholds are set on annotated single chromosomes (``benchmarks/review_flags.py``; results
in ``benchmarks/results/review_flags_*.json``): of BioImLab's 5,869 (its 135 metaphases with at
least 30), the largest is 1.69 times its metaphase's 90th-percentile area, 0.34 % fill less
than half their convex hull and 0.48 % are under 0.25 times the median area (0.34 % flagged
split, 0.05 % join); of 278 in 6 synthetic metaphases (``vfinfer synth-metaphase --count 6
--seed 13``) one is 1.84 times the 90th percentile and flagged split, none is flagged join.
What they catch on BioImLab: a 15 % end piece broken off a chromosome 89 % of the time, two
touching chromosomes merged into one object only 19 % (side by side or end to end they are
neither large nor hollow enough). Fewer than ``MIN_OBJECTS`` objects give no median to judge by
and no flags. Flags are suggestions for review; nothing is changed.

Once the objects are classified (``vfinfer run``, the server; not ``vfinfer segment``, which
does not classify), ``merge_suspects`` adds ``split`` to objects that are large, hollow *and*
not confidently typed: at least ``MERGE_AREA`` times the median object's area, solidity at most
``MERGE_SOLIDITY``, the called type's probability under ``MERGE_PROB``. Shape alone cannot tell
a merge from a bent chromosome, a classifier is rarely sure of two chromosomes at once
(``benchmarks/merged_objects.py`` on the demo models' own segmentation of synthetic
metaphases: the shape flags above catch 1 of 46 merged objects; this rule 26 of 46 at 11 of
1,302 single chromosomes, chosen from a grid as the most merges at <= 1 % of single
chromosomes, and 11 of 28 at 11 of 870 on metaphases it was not chosen on).
"""

import cv2
import numpy as np

SPLIT_AREA = 1.8  # times the 90th-percentile area
MIN_SOLIDITY = 0.5
JOIN_AREA = 0.25
JOIN_GAP = 3  # pixels
MIN_OBJECTS = 10
MERGE_AREA = 1.4  # times the median area
MERGE_SOLIDITY = 0.75
MERGE_PROB = 0.99


def solidity(mask):
    """The share of its convex hull that a mask's largest part fills (1.0 for a convex one)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 1.0
    largest = max(contours, key=cv2.contourArea)
    hull = cv2.contourArea(cv2.convexHull(largest))
    return float(cv2.contourArea(largest) / hull) if hull > 0 else 1.0


def _near_another(k, objects, shape):
    """Whether object ``k`` lies within ``JOIN_GAP`` pixels of any other object."""
    x0, y0, x1, y1 = objects[k].box
    X0, Y0 = max(x0 - JOIN_GAP, 0), max(y0 - JOIN_GAP, 0)
    X1, Y1 = min(x1 + JOIN_GAP, shape[1]), min(y1 + JOIN_GAP, shape[0])
    window = np.zeros((Y1 - Y0, X1 - X0), np.uint8)
    window[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = objects[k].mask
    grown = cv2.dilate(window, np.ones((2 * JOIN_GAP + 1,) * 2, np.uint8)).astype(bool)
    for j, other in enumerate(objects):
        a0, b0, a1, b1 = other.box
        if j == k or a0 >= X1 or b0 >= Y1 or a1 <= X0 or b1 <= Y0:
            continue
        c0, d0, c1, d1 = max(a0, X0), max(b0, Y0), min(a1, X1), min(b1, Y1)
        if (grown[d0 - Y0:d1 - Y0, c0 - X0:c1 - X0]
                & other.mask[d0 - b0:d1 - b0, c0 - a0:c1 - a0]).any():
            return True
    return False


def review_flags(objects, shape):
    """Per object (anything with ``mask`` (bool) over ``box`` (x0, y0, x1, y1)) of one
    metaphase of ``shape``: the list of its flags, ``"split"`` and/or ``"join"``."""
    flags = [[] for _ in objects]
    if len(objects) < MIN_OBJECTS:
        return flags
    areas = np.array([obj.mask.sum() for obj in objects], float)
    median, large = float(np.median(areas)), float(np.percentile(areas, 90))
    for k, obj in enumerate(objects):
        if areas[k] > SPLIT_AREA * large or solidity(obj.mask) < MIN_SOLIDITY:
            flags[k].append("split")
        if areas[k] < JOIN_AREA * median and _near_another(k, objects, shape):
            flags[k].append("join")
    return flags


def merge_suspects(objects, type_probs):
    """Per object of one metaphase (as ``review_flags`` takes them), with the called type's
    probability of each: whether it is probably two chromosomes that neither shape flag
    caught (large, hollow and not confidently typed; see the module doc)."""
    if len(objects) < MIN_OBJECTS:
        return [False] * len(objects)
    areas = np.array([obj.mask.sum() for obj in objects], float)
    median = float(np.median(areas))
    return [bool(area >= MERGE_AREA * median and prob < MERGE_PROB
                 and solidity(obj.mask) <= MERGE_SOLIDITY)
            for obj, area, prob in zip(objects, areas, type_probs)]
