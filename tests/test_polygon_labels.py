"""Type labels for annotated polygons from labelled cut-outs (the end-to-end benchmark's truth):
a synthetic metaphase cut into shuffled, turned and mirrored cut-outs gets every polygon back
with its own cut-out; cut-outs of another metaphase label nothing."""

import cv2
import numpy as np
import pytest

from vfinfer.tools.evaluation.polygon_labels import (
    chromosome_core,
    chromosome_pixels,
    label_polygons,
    orientations,
)
from vfinfer.tools.synthesis.metaphases import render_metaphase

SIZE = (480, 640)


def cut_out(image, mask, rng):
    """A lab's cut-out: the mask's box with a one-pixel halo, 0 elsewhere (dark background),
    turned by a random quarter turn and mirrored at random."""
    halo = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    rows, cols = np.flatnonzero(halo.any(1)), np.flatnonzero(halo.any(0))
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    crop = np.where(halo[box], image[box], 0).astype(np.uint8)
    return list(orientations(crop))[int(rng.integers(8))]


@pytest.fixture(scope="module")
def metaphase():
    return render_metaphase(11, "46,XY", size=SIZE, background="dark")


@pytest.mark.slow
def test_every_polygon_gets_its_own_cutout(metaphase):
    image, masks = metaphase
    rng = np.random.default_rng(0)
    order = rng.permutation(len(masks))
    cutouts = [cut_out(image, masks[k], rng) for k in order]
    names = [f"polygon {k}" for k in order]
    labels = label_polygons(image, cutouts, names, masks)
    right = sum(t == f"polygon {j}" for j, t in enumerate(labels.types))
    assert labels.labelled >= 0.9 * len(masks)
    assert right == labels.labelled  # what is labelled is labelled right
    assert labels.coverage == labels.labelled / len(masks)
    assert all(s >= 0.98 for s in labels.scores if s is not None)


@pytest.mark.slow
def test_cutouts_of_another_metaphase_label_nothing(metaphase):
    image, masks = metaphase
    other, other_masks = render_metaphase(12, "46,XY", size=SIZE, background="dark")
    rng = np.random.default_rng(1)
    cutouts = [cut_out(other, m, rng) for m in other_masks]
    labels = label_polygons(image, cutouts, ["x"] * len(cutouts), masks)
    assert labels.labelled == 0
    assert labels.types == [None] * len(masks)


def test_pixels_and_core_of_light_and_dark_cutouts():
    dark = np.zeros((9, 9), np.uint8)
    dark[2:7, 3:6] = 90
    dark[3:6, 4] = 200
    assert chromosome_pixels(dark).sum() == 15
    assert chromosome_core(dark, chromosome_pixels(dark)).sum() == 3
    light = 255 - dark
    assert chromosome_pixels(light).sum() == 15
    assert chromosome_core(light, chromosome_pixels(light)).sum() == 3


@pytest.mark.slow
def test_correlation_without_the_same_gray_values_labels_nothing(metaphase):
    image, masks = metaphase
    rng = np.random.default_rng(2)
    brighter = [np.where(c > 0, np.clip(c.astype(int) + 40, 0, 255), 0).astype(np.uint8)
                for c in (cut_out(image, m, rng) for m in masks)]
    labels = label_polygons(image, brighter, ["x"] * len(brighter), masks)
    assert labels.labelled == 0


@pytest.mark.slow
def test_a_few_pairs_in_an_image_are_taken_for_chance(metaphase):
    image, masks = metaphase
    rng = np.random.default_rng(3)
    few = [cut_out(image, m, rng) for m in masks[:9]]
    assert label_polygons(image, few, ["x"] * 9, masks).labelled == 0
    assert label_polygons(image, few, ["x"] * 9, masks, min_paired=5).labelled == 9
