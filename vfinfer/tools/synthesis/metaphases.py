"""Synthetic metaphase images with their chromosome polygons (labelme JSON), made from the
synthetic chromosomes of ``synth`` only: training data for the bundled demo segmentation model
and a metaphase the repository may ship.

Each chromosome of the karyotype is rendered by ``synth.render_chromosome``, turned by a
random angle and placed in a loose disc, as in a spread metaphase: most stand alone, some
touch a neighbour (``touch_rate``), some cross one (``cross_rate``: the overlap belongs to
both). Round nuclei and small debris are added apart from the chromosomes and are not
annotated, as in real annotations. Stains combine by multiplying their transmissions; a dark
(fluorescence-like) image is the inverse of the bright-field one. Nothing comes from real
images.
"""

import math
from pathlib import Path

import cv2
import numpy as np

from vfinfer.io.labelme import write_labelme
from vfinfer.model.classes import TYPE_NAMES
from vfinfer.tools.synthesis.cells import _karyotype_tag, _write_png, render_chromosome

DEFAULT_SIZE = (768, 1024)  # height, width
DEMO_KARYOTYPES = ("46,XX", "46,XY", "47,XY,+21", "47,XX,+18", "45,X", "47,XXY")


def _turned(chromosome, angle):
    """The light-background chromosome turned by ``angle`` degrees: (image, mask)."""
    h, w = chromosome.shape
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    nw, nh = int(math.ceil(w * c + h * s)) + 2, int(math.ceil(w * s + h * c)) + 2
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    matrix[0, 2] += (nw - w) / 2
    matrix[1, 2] += (nh - h) / 2
    image = cv2.warpAffine(chromosome, matrix, (nw, nh), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    mask = cv2.warpAffine((chromosome < 255).astype(np.uint8), matrix, (nw, nh),
                          flags=cv2.INTER_NEAREST, borderValue=0).astype(bool)
    return image, mask


def _fits(mask, union, y, x, mode):
    """Whether ``mask`` placed at (y, x) stands free, touches or crosses ``union``."""
    h, w = mask.shape
    below = union[y:y + h, x:x + w]
    shared = int((below & mask).sum())
    if mode == "cross":
        return 0.04 * mask.sum() <= shared <= 0.2 * mask.sum()
    if shared:
        return False
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    reaches = bool((below & grown).any())
    return reaches if mode == "touch" else not reaches


def _place(rng, mask, union, centre, radius, mode):
    """Top-left (y, x) for ``mask``, or None when 60 tries found no place for ``mode``."""
    h, w = mask.shape
    H, W = union.shape
    owned = np.argwhere(union)
    for _ in range(60):
        if mode == "free" or not len(owned):
            r, a = radius * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            cy, cx = centre[0] + r * math.sin(a), centre[1] + r * math.cos(a)
        else:
            cy, cx = owned[rng.integers(len(owned))] + rng.normal(0, max(h, w) / 3, 2)
        y, x = int(cy - h / 2), int(cx - w / 2)
        if 0 <= y <= H - h and 0 <= x <= W - w and _fits(mask, union, y, x, mode):
            return y, x
    return None


def _add_blobs(rng, transmission, union, count, radii, darkness):
    """Nuclei or debris: textured ellipses apart from the chromosomes (not annotated)."""
    H, W = transmission.shape
    for _ in range(count):
        ry, rx = rng.uniform(*radii), rng.uniform(*radii)
        blob = np.zeros((H, W), np.float32)
        centre = (int(rng.uniform(0, W)), int(rng.uniform(0, H)))
        cv2.ellipse(blob, centre, (int(rx), int(ry)), rng.uniform(0, 180), 0, 360, 1.0, -1)
        if (blob > 0)[union].any() or not blob.any():
            continue
        texture = cv2.GaussianBlur(rng.normal(1.0, 0.25, (H, W)).astype(np.float32), (0, 0), 2)
        blob = cv2.GaussianBlur(blob, (0, 0), 1.0) * rng.uniform(*darkness) * texture
        transmission *= np.clip(1.0 - blob, 0.0, 1.0)


def _compose(rng, karyotype, size, touch_rate, cross_rate):
    """Transmission image, the chromosome masks of one metaphase and their type indices."""
    from vfinfer.calls.karyotype import parse_karyotype

    types = rng.permutation(np.repeat(np.arange(24), parse_karyotype(karyotype)))
    H, W = size
    transmission = np.ones(size, np.float32)
    union = np.zeros(size, bool)
    masks, placed = [], []
    scale, stain = rng.uniform(0.8, 1.0), rng.uniform(0.9, 1.1)
    centre = (H / 2 + rng.normal(0, H / 20), W / 2 + rng.normal(0, W / 20))
    radius = 0.42 * min(H, W)
    for t in types:
        image, mask = _turned(render_chromosome(int(t), rng, scale=scale, stain=stain),
                              rng.uniform(0, 360))
        mode = rng.choice(["free", "touch", "cross"],
                          p=[1 - touch_rate - cross_rate, touch_rate, cross_rate])
        spot = _place(rng, mask, union, centre, radius, mode if masks else "free")
        if spot is None:
            spot = _place(rng, mask, union, (H / 2, W / 2), 0.5 * min(H, W), "free")
        if spot is None:
            continue
        y, x = spot
        h, w = mask.shape
        transmission[y:y + h, x:x + w] *= np.where(mask, image / 255.0, 1.0)
        full = np.zeros(size, bool)
        full[y:y + h, x:x + w] = mask
        union |= full
        masks.append(full)
        placed.append(int(t))
    return transmission, masks, union, placed


def render_metaphase(seed, karyotype="46,XY", size=DEFAULT_SIZE, background="light",
                     touch_rate=0.2, cross_rate=0.12):
    """One synthetic metaphase: (uint8 gray image, list of boolean chromosome masks).

    ``background``: ``"light"`` (bright field, dark chromosomes) or ``"dark"``
    (fluorescence-like). Deterministic given ``seed``. A chromosome that finds no place
    (a crowded small image) is left out, so the masks may be fewer than the karyotype's.
    """
    image, masks, _ = render_typed_metaphase(seed, karyotype, size, background, touch_rate,
                                             cross_rate)
    return image, masks


def render_typed_metaphase(seed, karyotype="46,XY", size=DEFAULT_SIZE, background="light",
                           touch_rate=0.2, cross_rate=0.12):
    """``render_metaphase`` with each mask's type name (``1``-``22``, ``X``, ``Y``) as a
    third element: the truth an end-to-end measurement scores the calls against."""
    if background not in ("light", "dark"):
        raise ValueError(f"background must be light or dark, not {background!r}")
    rng = np.random.default_rng([int(seed), 0x3E7A])
    transmission, masks, union, types = _compose(rng, karyotype, size, touch_rate, cross_rate)
    _add_blobs(rng, transmission, union, int(rng.integers(0, 3)), (30, 55), (0.35, 0.6))
    _add_blobs(rng, transmission, union, int(rng.integers(5, 30)), (1.5, 4.5), (0.3, 0.8))
    H, W = size
    ramp = np.linspace(-1, 1, W, dtype=np.float32)[None, :] * rng.uniform(-0.03, 0.03)
    light = 255.0 * transmission * (rng.uniform(0.92, 0.98) + ramp)
    light += rng.normal(0, 3.0, size)
    gray = np.clip(light, 0, 255)
    if background == "dark":
        gray = 255.0 - gray
    return np.rint(gray).astype(np.uint8), masks, [TYPE_NAMES[t] for t in types]


def broken_chromosome(mask, share=0.15):
    """A chromosome's mask broken across its long axis (principal axis): (the end piece holding
    ``share`` of its pixels, the rest): the break a segmentation makes, to test review flags."""
    ys, xs = np.nonzero(mask)
    centred = np.stack([xs, ys], 1).astype(float)
    centred -= centred.mean(0)
    along = centred @ np.linalg.eigh(centred.T @ centred)[1][:, -1]
    piece = np.zeros_like(mask)
    cut = along < np.quantile(along, share)
    piece[ys[cut], xs[cut]] = True
    return piece, mask & ~piece


def mask_polygon(mask):
    """The outline of a boolean mask's largest part as (N, 2) float (x, y) points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    return max(contours, key=cv2.contourArea).reshape(-1, 2).astype(float)


def write_metaphases(out_dir, seed, count, karyotypes=DEMO_KARYOTYPES, background="mixed",
                     size=DEFAULT_SIZE):
    """Write ``count`` synthetic metaphases as labelme JSON (image embedded, each polygon
    labelled with its chromosome's type name) plus a PNG of each to ``out_dir``; returns the
    paths of the JSON files. ``background``: light, dark or mixed (alternating). An existing
    file raises ValueError (nothing is overwritten)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(int(count)):
        karyotype = karyotypes[k % len(karyotypes)]
        bg = background if background != "mixed" else ("light", "dark")[k % 2]
        name = f"synmeta{int(seed)}-{k:03d}-{_karyotype_tag(karyotype)}-{bg}"
        json_path, png_path = out / f"{name}.json", out / f"{name}.png"
        if json_path.exists() or png_path.exists():
            raise ValueError(f"{json_path} already exists")
        image, masks, types = render_typed_metaphase(int(seed) * 1000 + k, karyotype, size, bg)
        write_labelme(json_path, image, [mask_polygon(m) for m in masks], label=types)
        _write_png(png_path, image)
        paths.append(json_path)
    return paths
