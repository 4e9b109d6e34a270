"""Preprocessing of one chromosome cut-out into a G-Net input (paper section III-B).

gray 8-bit image -> (``vfinfer.util.geometry``: brought to the model's background
convention, turned upright and cropped when the model asks for it; with size normalization,
scaled by the cell's factor: ``size_normalize``, per cell, so the images of one call are one
cell unless ``cells`` names each image's) -> centred on a square
canvas filled with the pad value (images larger than the canvas are first shrunk to fit,
keeping their aspect) -> resized to the G input -> per-image z-score (eq. 11). Every constant
comes from the model's ModelConfig / manifest. ``preprocess`` and ``to_canvas`` take the
normalized cut-out; the trainer (``vfinfer_export.data``) calls the same functions.
"""

import math

import cv2
import numpy as np

from vfinfer.util.geometry import normalize_cutout, scale_cutout, size_norm_scale

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
    """Eq. 11: (x - mean) / std of one uint8 image, in float32 (``zscore_batch`` of it: the
    trainer and the runtime compute the same numbers)."""
    return zscore_batch(np.ascontiguousarray(image)[None])[0]


def to_canvas(image, config):
    """A normalized uint8 cut-out -> uint8 (g_input, g_input): padded canvas, resized
    (``resize_stack`` of one canvas)."""
    canvas = pad_to_canvas(image, config.canvas, config.pad_value)
    return resize_stack(canvas[None], config.g_input)[0]


def preprocess(image, config):
    """One normalized gray uint8 cut-out -> float32 (g_input, g_input) z-scored G-Net input."""
    return zscore(to_canvas(image, config))


def normalize_each(images, config, background="auto"):
    """``vfinfer.util.geometry.normalize_cutout`` of each image -> (images, facts): in the
    model's background convention, turned by rotate-and-crop, not yet size-normalized."""
    pairs = [normalize_cutout(image, config, background) for image in images]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def normalize_batch(images, config, background="auto", cells=None):
    """``normalize_each``, then ``size_normalize`` -> (images, facts). ``cells``: the cell of
    each image (None: all are one cell)."""
    normalized, facts = normalize_each(images, config, background)
    return size_normalize(normalized, facts, config, cells), facts


def size_normalize(normalized, facts, config, cells=None):
    """Size normalization (``ModelConfig.size_norm``) of normalized cut-outs, cell by cell:
    each image scaled by ``vfinfer.util.geometry.size_norm_scale`` of its cell's ``length``
    facts; the factor goes into each image's facts as ``size_scale`` (1.0 for a cell of too
    few chromosomes). Off (``size_norm`` 0): the images as they are, facts untouched.
    ``cells``: one cell id per image; None: all images are one cell."""
    if not config.size_norm:
        return list(normalized)
    cells = [0] * len(normalized) if cells is None else list(cells)
    if len(cells) != len(normalized):
        raise ValueError(f"{len(normalized)} images but {len(cells)} cell ids")
    scales = {}
    for cell in dict.fromkeys(cells):
        lengths = [f.get("length") for f, c in zip(facts, cells) if c == cell]
        scale = size_norm_scale(lengths, config.size_norm, config.size_norm_min_count)
        scales[cell] = 1.0 if scale is None else scale
    out = []
    for image, fact, cell in zip(normalized, facts, cells):
        fact["size_scale"] = round(scales[cell], 4)
        out.append(scale_cutout(image, scales[cell]))
    return out


def batch_of(normalized, config):
    """Normalized cut-outs -> (N, 1, g_input, g_input) float32 batch: ``to_canvas`` of each
    with the resize done for the whole stack (``resize_stack``), then ``zscore_batch``."""
    canvases = np.empty((len(normalized), config.canvas, config.canvas), dtype=np.uint8)
    for i, image in enumerate(normalized):
        canvases[i] = pad_to_canvas(image, config.canvas, config.pad_value)
    return zscore_batch(resize_stack(canvases, config.g_input))[:, None]


def resize_stack(canvases, size):
    """Each square canvas of an (N, C, C) uint8 stack resized to (size, size): area
    interpolation to shrink, bilinear to enlarge. A shrink whose scale C / size is exact in
    binary floating point (size / gcd(C, size) a power of two, as for 176 -> 128 and
    320 -> 256) is one area resize of the stack seen as a single (N * C, C) image: output
    row ``k * size`` starts exactly on source row ``k * C``, so no output pixel mixes two
    canvases and every number is the one resizing each canvas alone gives (tested).
    Anything else: canvas by canvas."""
    n, side = len(canvases), canvases.shape[1]
    if side == size or n == 0:
        return canvases.reshape(n, size, size)
    step = size // math.gcd(side, size)
    if size < side and step & (step - 1) == 0:
        tall = cv2.resize(canvases.reshape(n * side, side), (size, n * size),
                          interpolation=cv2.INTER_AREA)
        return tall.reshape(n, size, size)
    interpolation = cv2.INTER_AREA if size < side else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c, (size, size), interpolation=interpolation)
                     for c in canvases])


def zscore_batch(canvases):
    """Eq. 11 for each (H, W) image of an (N, H, W) uint8 stack, as one float32 array.

    Each image's mean and variance come from its 256-bin histogram in integers (exact), and
    its pixels go through a 256-entry table of (v - mean) / std computed in float64 and
    rounded to float32 (a blank image: zeros, its std floored at ``STD_FLOOR``)."""
    pixels = canvases.shape[1] * canvases.shape[2]
    levels = np.arange(256, dtype=np.int64)
    hist = np.array([cv2.calcHist([c], [0], None, [256], [0, 256]).ravel() for c in canvases],
                    dtype=np.int64).reshape(len(canvases), 256)
    sums, squares = hist @ levels, hist @ (levels * levels)
    mean = sums / pixels
    std = np.maximum(np.sqrt((pixels * squares - sums * sums) / pixels ** 2), STD_FLOOR)
    table = ((levels - mean[:, None]) / std[:, None]).astype(np.float32)
    out = np.empty(canvases.shape, dtype=np.float32)
    for i, image in enumerate(canvases):
        out[i] = cv2.LUT(image, table[i])
    return out


def preprocess_batch(images, config, background="auto", cells=None):
    """Gray uint8 cut-outs as read -> (N, 1, g_input, g_input) float32 batch (normalized,
    padded, resized, z-scored); ``cells`` as in ``normalize_batch``."""
    return batch_of(normalize_batch(images, config, background, cells)[0], config)
