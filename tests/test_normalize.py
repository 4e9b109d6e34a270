"""Cut-outs from any lab (vfinfer.util.geometry): background polarity, rotate-and-crop."""

import cv2
import numpy as np
import pytest

from vfinfer.model.config import preset
from vfinfer.tools.synthesis.cells import render_chromosome
from vfinfer.util.geometry import (
    CROP_MARGIN,
    chromosome_mask,
    detect_background,
    grain,
    hough_angle,
    normalize_cutout,
    principal_axis_angle,
    rotate_and_crop,
)


def rod(angle, length=80, width=16, size=130, light=True, seed=0):
    """A capsule (rounded rod) tilted ``angle`` degrees from vertical (top leaning right),
    dark on a light background (or the inverse), with a little noise."""
    image = np.full((size, size), 250, np.uint8)
    c = (size - 1) / 2
    half = (length - width) / 2
    dx, dy = np.sin(np.radians(angle)) * half, -np.cos(np.radians(angle)) * half
    cv2.line(image, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 60,
             thickness=width, lineType=cv2.LINE_AA)
    noise = np.random.default_rng(seed).normal(0, 4, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image if light else 255 - image


def angle_error(found, truth):
    """Difference of two axis angles, modulo 180 degrees."""
    return abs((found - truth + 90) % 180 - 90)


@pytest.mark.parametrize("light", [True, False])
def test_background_of_synthetic_cells(light):
    rng = np.random.default_rng(3)
    images = [render_chromosome(t, rng) for t in range(24)]
    if not light:  # fluorescence: bright chromosomes on black
        images = [255 - img for img in images]
    found = {detect_background(img) for img in images}
    assert found == {"light" if light else "dark"}


def test_dark_images_are_brought_to_the_light_convention():
    config = preset("compact")
    light = render_chromosome(5, np.random.default_rng(1))
    out, facts = normalize_cutout(255 - light, config)
    assert facts["background"] == "dark"
    np.testing.assert_array_equal(out, light)  # inverted back exactly
    forced, facts = normalize_cutout(light, config, background="dark")  # the override wins
    assert facts["background"] == "dark" and forced.mean() < 128


@pytest.mark.parametrize("angle", [-80, -45, -20, 0, 15, 30, 60, 89])
def test_principal_axis_recovers_the_rod_angle(angle):
    mask = chromosome_mask(rod(angle))
    assert angle_error(principal_axis_angle(mask), angle) < 2.0


@pytest.mark.parametrize("angle", [-60, -20, 10, 45, 75])
def test_hough_recovers_the_rod_angle(angle):
    image = rod(angle)
    assert angle_error(hough_angle(image, chromosome_mask(image)), angle) < 4.0


@pytest.mark.parametrize("angle", [-70, -30, 25, 50, 88])
def test_rotate_and_crop_turns_upright_and_crops_tight(angle):
    image = rod(angle)
    out = rotate_and_crop(image, principal_axis_angle(chromosome_mask(image)))
    mask = chromosome_mask(out)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    # tight: the mask reaches to within the margin of every edge
    assert rows[0] <= CROP_MARGIN and cols[0] <= CROP_MARGIN
    assert out.shape[0] - 1 - rows[-1] <= CROP_MARGIN and out.shape[1] - 1 - cols[-1] <= CROP_MARGIN
    assert out.shape[0] > 3 * out.shape[1]  # the 80 x 16 rod now stands upright
    assert abs(principal_axis_angle(mask)) < 2.0


def test_an_upright_cutout_is_left_as_it_is_and_round_blobs_are_not_turned():
    config = preset("compact")
    upright = rod(0)
    assert principal_axis_angle(chromosome_mask(upright)) == pytest.approx(0, abs=1.0)
    blob = np.full((60, 60), 250, np.uint8)
    cv2.circle(blob, (30, 30), 20, 50, -1)
    assert principal_axis_angle(chromosome_mask(blob)) is None  # no long axis
    from dataclasses import replace
    rotating = replace(config, rotate_crop="principal-axis")
    _, facts = normalize_cutout(blob, rotating)
    assert facts["rotated"] == 0.0 and facts["tilt"] is None


def test_rotate_crop_is_off_by_default_and_keeps_the_image():
    config = preset("compact")
    image = rod(40)
    out, facts = normalize_cutout(image, config)
    assert out is image and facts["rotated"] == 0.0
    assert angle_error(facts["tilt"], 40) < 2.0  # measured all the same (for the verdict)


def test_config_rejects_unknown_conventions():
    from dataclasses import replace
    with pytest.raises(ValueError, match="rotate_crop"):
        replace(preset("compact"), rotate_crop="sideways")
    with pytest.raises(ValueError, match="background"):
        replace(preset("compact"), background="grey")


def test_grain_tells_bands_from_noise():
    """Bands change over many pixels; a texture of noise changes at every one. The fact is
    measured on the input, whichever its background."""
    rng = np.random.default_rng(3)
    banded = render_chromosome(4, rng)
    noise = np.full((90, 40), 255, np.uint8)
    noise[10:80, 8:32] = rng.integers(0, 200, (70, 24))
    low = grain(banded, chromosome_mask(banded))
    high = grain(noise, chromosome_mask(noise))
    assert low < 30 < 45 < high
    _, facts = normalize_cutout(255 - banded, preset("compact"))
    assert facts["background"] == "dark" and facts["grain"] == pytest.approx(low, abs=0.01)
    assert grain(np.full((5, 5), 255, np.uint8), np.zeros((5, 5), bool)) is None
