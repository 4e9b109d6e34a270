"""The objects of a segmentation flagged for a split or a join: a synthetic metaphase with two
chromosomes merged into one object and one chromosome broken in two."""

import numpy as np
import pytest

from vfinfer.segment.instances import Instance
from vfinfer.segment.review import MIN_OBJECTS, review_flags, solidity
from vfinfer.tools.synthesis.metaphases import broken_chromosome, render_metaphase

SIZE = (768, 1024)
pytestmark = pytest.mark.slow  # a 768 x 1024 metaphase rendered: over a second


@pytest.fixture(scope="module")
def masks():
    return render_metaphase(21, "46,XY", size=SIZE)[1]


def objects_of(masks):
    return [Instance.from_full_mask(m, 1.0) for m in masks]


def test_single_chromosomes_are_not_flagged(masks):
    assert review_flags(objects_of(masks), SIZE) == [[] for _ in masks]


def test_a_merged_pair_and_a_broken_chromosome_are_flagged(masks):
    areas = np.array([m.sum() for m in masks])
    big = np.argsort(areas)[-2:]
    middle = int(np.argsort(areas)[len(areas) // 2])
    piece, rest = broken_chromosome(masks[middle])
    others = [m for k, m in enumerate(masks) if k not in (*big, middle)]
    merged = masks[big[0]] | masks[big[1]]
    flags = review_flags(objects_of([merged, piece, rest] + others), SIZE)
    assert flags[0] == ["split"]
    assert flags[1] == ["join"]  # the small end piece, next to the rest of its chromosome
    assert flags[2:] == [[] for _ in flags[2:]]


def test_a_cross_fills_little_of_its_hull_and_too_few_objects_give_no_flags(masks):
    cross = np.zeros((61, 61), bool)
    cross[28:33, :] = True
    cross[:, 28:33] = True
    assert solidity(cross) < 0.5 < solidity(cross[28:33, :])
    few = objects_of(masks[:MIN_OBJECTS - 1])
    assert review_flags(few, SIZE) == [[] for _ in few]
