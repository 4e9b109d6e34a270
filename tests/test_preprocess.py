"""Preprocessing (paper III-B): pad to the canvas with 255, resize, per-image z-score."""

import numpy as np

from vfinfer.model.config import preset
from vfinfer.pipeline.preprocess import pad_to_canvas, preprocess, preprocess_batch, zscore


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
