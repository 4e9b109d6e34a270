"""Preprocessing of one chromosome cut-out into a G-Net input (paper section III-B).

gray 8-bit image -> centred on a square canvas filled with the pad value (images larger than
the canvas are first shrunk to fit, keeping their aspect) -> resized to the G input ->
per-image z-score (eq. 11). Every constant comes from the model's ModelConfig / manifest.
"""

import cv2
import numpy as np

STD_FLOOR = 1e-6  # a blank (uniform) image normalizes to zeros instead of dividing by 0


def pad_to_canvas(image, canvas, pad_value):
    """Centre a 2-D uint8 image on a canvas x canvas square of ``pad_value``."""
    height, width = image.shape
    if height > canvas or width > canvas:
        scale = canvas / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        height, width = image.shape
    out = np.full((canvas, canvas), pad_value, dtype=np.uint8)
    top, left = (canvas - height) // 2, (canvas - width) // 2
    out[top:top + height, left:left + width] = image
    return out


def zscore(image):
    """Eq. 11: (x - mean) / std of this one image, in float32."""
    x = image.astype(np.float32)
    mean = x.mean(dtype=np.float64)
    std = x.std(dtype=np.float64)
    return ((x - mean) / max(std, STD_FLOOR)).astype(np.float32)


def preprocess(image, config):
    """One gray uint8 cut-out -> float32 (g_input, g_input) z-scored G-Net input."""
    canvas = pad_to_canvas(image, config.canvas, config.pad_value)
    if config.canvas != config.g_input:
        interpolation = cv2.INTER_AREA if config.g_input < config.canvas else cv2.INTER_LINEAR
        canvas = cv2.resize(canvas, (config.g_input, config.g_input), interpolation=interpolation)
    return zscore(canvas)


def preprocess_batch(images, config):
    """A list of cut-outs -> (N, 1, g_input, g_input) float32 batch."""
    batch = np.empty((len(images), 1, config.g_input, config.g_input), dtype=np.float32)
    for i, image in enumerate(images):
        batch[i, 0] = preprocess(image, config)
    return batch
