"""Preprocessing (paper III-B): pad to the canvas with 255, resize, per-image z-score."""

import cv2
import numpy as np
import pytest

from vfinfer.model.config import preset
from vfinfer.pipeline.preprocess import (
    pad_to_canvas,
    preprocess,
    preprocess_batch,
    resize_stack,
    zscore,
    zscore_batch,
)


def test_pad_centres_the_image():
    image = np.zeros((10, 4), np.uint8)
    canvas = pad_to_canvas(image, 20, 255)
    rows, cols = np.nonzero(canvas == 0)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 8, 11)
    assert canvas[0, 0] == 255


def test_larger_images_shrink_keeping_aspect():
    image = np.zeros((400, 100), np.uint8)
    canvas = pad_to_canvas(image, 200, 255)
    rows, cols = np.nonzero(canvas < 128)
    assert rows.max() - rows.min() + 1 == 200
    assert cols.max() - cols.min() + 1 == 50


def test_zscore_eq11():
    x = zscore(np.arange(100, dtype=np.uint8).reshape(10, 10))
    assert abs(x.mean()) < 1e-6 and abs(x.std() - 1) < 1e-5
    assert np.all(zscore(np.full((5, 5), 255, np.uint8)) == 0)  # blank: zeros, not NaN


def test_preprocess_uses_the_config_constants():
    config = preset("compact")
    image = np.full((50, 20), 90, np.uint8)
    x = preprocess(image, config)
    assert x.shape == (config.g_input, config.g_input) and x.dtype == np.float32
    batch = preprocess_batch([image, image[:10]], config)
    assert batch.shape == (2, 1, config.g_input, config.g_input)
    np.testing.assert_array_equal(batch[0, 0], x)


@pytest.mark.parametrize("side,size", [(176, 128), (320, 256), (200, 128), (150, 96),
                                       (128, 128), (100, 128), (130, 97)])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_resize_stack_is_each_canvas_resized_alone(side, size, n):
    """The stack's one area resize (exact binary scales), or canvas by canvas (the rest),
    gives to_canvas's numbers."""
    rng = np.random.default_rng(side + n)
    canvases = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    interpolation = cv2.INTER_AREA if size < side else cv2.INTER_LINEAR
    alone = [cv2.resize(c, (size, size), interpolation=interpolation) for c in canvases]
    stacked = resize_stack(canvases, size)
    assert stacked.shape == (n, size, size) and stacked.dtype == np.uint8
    assert np.array_equal(stacked, np.array(alone, np.uint8).reshape(n, size, size))


def test_zscore_batch_is_zscore_of_each():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
    images[1] = 255  # blank: zeros
    images[2, :, :16] = 0  # two levels
    images[3] = np.clip(rng.normal(230, 5, (32, 32)), 0, 255)  # narrow histogram
    batch = zscore_batch(images)

    def eq11(image):  # numpy's two-pass mean and std, in float64, then float32
        x = image.astype(np.float64)
        return ((x - x.mean()) / max(x.std(), 1e-6)).astype(np.float32)

    single = np.stack([eq11(image) for image in images])
    assert np.array_equal(np.stack([zscore(image) for image in images]), batch)
    assert batch.dtype == np.float32 and batch.shape == images.shape
    assert np.abs(batch - single).max() <= 1e-6 and np.mean(batch == single) > 0.999
    assert np.all(batch[1] == 0)
