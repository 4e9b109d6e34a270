"""Training data: labels, slide-wise split, cached G inputs with the paper's augmentation.

* the labels come from ``vfinfer.io.labels.read_labels`` (the one reader of labels.csv, for
  eval, calibrate and domain too): ``Label``s with 0-based types and polarity 1 = q-arm down
  (-1: not labelled); without a slide the cell id stands for the slide (``Label.unit``).
* ``split_by_slide(records, val_fraction, seed)``: seeded, deterministic (train, val) split in
  which no slide is on both sides (chromosomes of one patient stay together, paper III-A).
* ``ChromosomeDataset``: reads every image once (thread pool), pads it to the canvas and
  resizes it to the G input exactly as ``vfinfer.preprocess.preprocess`` does, and caches that
  uint8 canvas. ``__getitem__`` augments the uint8 canvas (paper III-B: horizontal flip,
  rotation by +-[0, 45] degrees with the pad value as border, vertical flip that flips the
  polarity label), z-scores it (eq. 11) and computes the localization target of section
  II-A.4 on the augmented canvas. With size normalization (``ModelConfig.size_norm``) every
  cut-out is scaled by its cell's factor before the canvas, exactly as the runtime does per
  case (``vfinfer.pipeline.preprocess.size_normalize``; the median over the cell's images in
  this data set: all of them, unless ``limit`` took a subset).
* ``augment_mode="real"`` adds, after the paper's flips and rotation, what real slides vary
  in (``REAL_AUGMENT``): a scale jitter (in the rotation's warp), a gamma curve, a Gaussian
  blur and Gaussian noise. A linear contrast or brightness change is not among them: the
  per-image z-score (eq. 11) undoes it. The localization target is computed before blur and
  noise (the target's "darker than the pad value" test must not see the noise).
* ``balanced_order``: class-balanced sampling (``batches(..., balance=True)``).
"""

import math
import os
import random
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from vfinfer.pipeline.preprocess import size_normalize, to_canvas, zscore
from vfinfer.util.geometry import normalize_cutout
from vfinfer.util.images import read_gray8

# A pixel belongs to the chromosome when it is darker than the pad value by more than this
# (the resize to the G input blends the outline into the white background).
DARK_MARGIN = 8
MAX_ROTATION = 45.0  # degrees, paper III-B
# after rotate-and-crop every chromosome is upright: a small turn covers the axis estimate's
# error without showing the network orientations it never meets at run time
MAX_ROTATION_UPRIGHT = 10.0
AUGMENT_MODES = ("paper", "real")
# augment_mode "real": each a draw per image and epoch, after the paper's augmentation. Scale:
# a factor uniform in this range applied with the rotation (about the canvas centre); gamma:
# x -> 255 (x / 255) ** g with log g uniform in +-log(gamma); blur: with this probability, a
# Gaussian of sigma uniform in the range (G-input pixels); noise: with this probability,
# Gaussian noise of sigma uniform in the range (gray levels), clipped to 0..255.
REAL_AUGMENT = {"scale": (0.85, 1.15), "gamma": 1.4, "blur_p": 0.3, "blur_sigma": (0.3, 1.2),
                "noise_p": 0.3, "noise_sigma": (2.0, 8.0)}


def split_by_slide(records, val_fraction, seed):
    """Split ``records`` into (train, val) by slide, about ``val_fraction`` of the images in val.

    Slides are shuffled with ``seed`` and moved to validation until it holds at least
    ``val_fraction`` of the images; at least one slide stays on each side when there are two
    or more and ``0 < val_fraction < 1``. Order within each side follows ``records``.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    sizes = OrderedDict()
    for r in records:
        key = r.unit
        sizes[key] = sizes.get(key, 0) + 1
    slides = sorted(sizes)
    random.Random(int(seed)).shuffle(slides)
    target = val_fraction * len(records)
    val_slides, count = set(), 0
    if val_fraction > 0 and len(slides) > 1:
        for slide in slides[:-1]:  # the last one always stays in training
            if count >= target and val_slides:
                break
            val_slides.add(slide)
            count += sizes[slide]
    train = [r for r in records if r.unit not in val_slides]
    val = [r for r in records if r.unit in val_slides]
    return train, val


def slides_of(records):
    return sorted({r.unit for r in records})


def to_g_canvas(image, config):
    """uint8 image as read -> uint8 (g_input, g_input): the runtime's preprocessing up to the
    z-score (``vfinfer.util.geometry`` with automatic background detection, then the
    same padding and resize call), without size normalization (it needs the whole cell:
    ``load_canvases``)."""
    return to_canvas(normalize_cutout(image, config)[0], config)


def localization_target(canvas, config):
    """Ground truth (u_x*, u_y*, u_l*) of section II-A.4 for a uint8 G-input canvas.

    u_x* = u_y* = 0.5; t_l is the half side of the smallest square centred on the eq. 5 box
    centre at u = 0.5 (T1 + T2 / 2, the image centre for g_input = 2 T1 + T2) that covers every
    chromosome pixel (darker than pad value - DARK_MARGIN), and u_l* = (t_l - T1/2) / (T1/2)
    clipped to [0, 1] (eq. 5 inverted).
    """
    dark_rows = np.flatnonzero((canvas < config.pad_value - DARK_MARGIN).any(axis=1))
    dark_cols = np.flatnonzero((canvas < config.pad_value - DARK_MARGIN).any(axis=0))
    if dark_rows.size == 0:
        u_l = 0.0
    else:
        centre = config.t1 + 0.5 * config.t2
        # pixel i covers [i, i + 1)
        half = max(centre - dark_cols[0], dark_cols[-1] + 1 - centre,
                   centre - dark_rows[0], dark_rows[-1] + 1 - centre)
        u_l = float(np.clip((half - config.t1 / 2) / (config.t1 / 2), 0.0, 1.0))
    return np.array([0.5, 0.5, u_l], dtype=np.float32)


def flip_polarity(polarity):
    """The label of a vertically flipped image (an unknown one, -1, stays unknown)."""
    return 1 - polarity if polarity in (0, 1) else polarity


def augment(canvas, polarity, rng, pad_value, max_rotation=MAX_ROTATION, scale_jitter=None):
    """Paper III-B augmentation of a uint8 canvas -> (canvas, polarity); ``scale_jitter``
    (low, high): also a random scale in the same warp (``augment_mode="real"``), drawn after
    the paper's draws so that the paper's stay as they were."""
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    if rng.random() < 0.5:
        canvas = canvas[::-1]
        polarity = flip_polarity(polarity)
    angle = rng.uniform(0.0, max_rotation) * (1.0 if rng.random() < 0.5 else -1.0)
    scale = 1.0 if scale_jitter is None else rng.uniform(*scale_jitter)
    side = canvas.shape[0]
    matrix = cv2.getRotationMatrix2D(((side - 1) / 2.0, (side - 1) / 2.0), angle, scale)
    canvas = cv2.warpAffine(np.ascontiguousarray(canvas), matrix, (side, side),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=int(pad_value))
    return canvas, polarity


def photometric(canvas, rng, params=None):
    """The ``augment_mode="real"`` intensity changes of a uint8 canvas (``REAL_AUGMENT``):
    gamma, then blur and noise each with their probability. Shape and dtype are kept; the
    labels do not change."""
    params = params or REAL_AUGMENT
    gamma = math.exp(rng.uniform(-1.0, 1.0) * math.log(params["gamma"]))
    table = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255)
    out = table.astype(np.uint8)[canvas]
    if rng.random() < params["blur_p"]:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*params["blur_sigma"]))
    if rng.random() < params["noise_p"]:
        noise = rng.normal(0.0, rng.uniform(*params["noise_sigma"]), out.shape)
        out = np.clip(out + noise, 0, 255).astype(np.uint8)
    return out


def load_canvases(paths, config, threads=None, cells=None):
    """Read, normalize (size normalization per cell: ``cells``, the cell of each path; None:
    one cell) and pad/resize every image -> uint8 array (N, g_input, g_input)."""
    out = np.empty((len(paths), config.g_input, config.g_input), dtype=np.uint8)
    normalized, facts = [None] * len(paths), [None] * len(paths)

    def read(i):
        normalized[i], facts[i] = normalize_cutout(read_gray8(paths[i]), config)

    def place(i):
        out[i] = to_canvas(normalized[i], config)

    workers = threads or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(read, range(len(paths)), chunksize=64):
            pass
        normalized = size_normalize(normalized, facts, config, cells)
        for _ in pool.map(place, range(len(paths)), chunksize=64):
            pass
    return out


def balanced_order(types, rng):
    """Class-balanced sampling: ``len(types)`` indices drawn with replacement, each image
    with probability proportional to 1 / (the number of images of its type), so that every
    type present is drawn equally often in expectation (rare types repeat, frequent ones are
    left out more)."""
    types = np.asarray(types, dtype=np.int64)
    weights = 1.0 / np.bincount(types)[types]
    return rng.choice(len(types), size=len(types), replace=True, p=weights / weights.sum())


class ChromosomeDataset(torch.utils.data.Dataset):
    """Cached uint8 G-input canvases of ``records`` for one ModelConfig.

    ``__getitem__(i)`` -> (image float32 (1, g, g), type, polarity, loc target float32 (3,)).
    With ``augment=True`` each item is augmented by a generator seeded from (seed, epoch, i),
    so an epoch is reproducible in any order and after a resume; call ``set_epoch``.
    ``augment_mode``: ``paper`` (flips and rotation) or ``real`` (also ``REAL_AUGMENT``).
    ``balance_polarity=True`` (no augmentation; used for validation) flips every other image
    vertically and labels it q-arm up, so that polarity accuracy is measured on both classes
    (the stored images are all q-arm down).
    """

    def __init__(self, records, config, augment=False, seed=0, balance_polarity=False,
                 threads=None, canvases=None, augment_mode="paper"):
        if augment_mode not in AUGMENT_MODES:
            raise ValueError(f"augment_mode must be one of {', '.join(AUGMENT_MODES)}, not "
                             f"{augment_mode!r}")
        self.records = list(records)
        self.config = config
        self.augment = bool(augment)
        self.augment_mode = augment_mode
        self.seed = int(seed)
        self.balance_polarity = bool(balance_polarity)
        self.epoch = 0
        self.types = np.array([r.type for r in self.records], dtype=np.int64)
        self.polarities = np.array([r.polarity for r in self.records], dtype=np.int64)
        if canvases is None:
            canvases = load_canvases([r.path for r in self.records], config, threads,
                                     cells=[r.cell for r in self.records])
        self.canvases = canvases

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.records)

    def item(self, index, repeat=0):
        """(uint8 canvas after augmentation, type, polarity)."""
        return self.sample(index, repeat)[:3]

    def sample(self, index, repeat=0):
        """(uint8 canvas after augmentation, type, polarity, localization target). ``repeat``:
        the how-manieth draw of this image in the epoch (balanced sampling draws some images
        more than once; each draw gets its own augmentation)."""
        canvas = self.canvases[index]
        polarity = int(self.polarities[index])
        rng = None
        if self.augment:
            key = [self.seed, self.epoch, int(index)] + ([int(repeat)] if repeat else [])
            rng = np.random.default_rng(key)
            limit = MAX_ROTATION if self.config.rotate_crop == "none" else MAX_ROTATION_UPRIGHT
            jitter = REAL_AUGMENT["scale"] if self.augment_mode == "real" else None
            canvas, polarity = augment(canvas, polarity, rng, self.config.pad_value, limit,
                                       jitter)
        elif self.balance_polarity and index % 2 == 1:
            canvas, polarity = canvas[::-1], flip_polarity(polarity)
        target = localization_target(canvas, self.config)
        if rng is not None and self.augment_mode == "real":
            canvas = photometric(canvas, rng)
        return canvas, int(self.types[index]), polarity, target

    def fetch(self, index, repeat=0):
        """``__getitem__`` of one draw of an image (``sample``'s ``repeat``)."""
        canvas, type_index, polarity, target = self.sample(index, repeat)
        return (torch.from_numpy(zscore(canvas)[None]), type_index, polarity,
                torch.from_numpy(target))

    def __getitem__(self, index):
        return self.fetch(index)


def batches(dataset, batch_size, shuffle_seed=None, balance=False):
    """Yield collated batches (images, types, polarities, loc targets) of ``dataset``.

    ``shuffle_seed`` None keeps the order; otherwise a seeded permutation (deterministic).
    ``balance`` (with a ``shuffle_seed``): a class-balanced draw (``balanced_order``) instead
    of the permutation, each repeated draw of an image augmented anew.
    """
    order = np.arange(len(dataset))
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        order = balanced_order(dataset.types, rng) if balance else rng.permutation(len(dataset))
    seen = {}
    for start in range(0, len(order), batch_size):
        items = []
        for i in order[start:start + batch_size]:
            repeat = seen[int(i)] = seen.get(int(i), -1) + 1
            items.append(dataset.fetch(int(i), repeat) if repeat else dataset[int(i)])
        yield (torch.stack([it[0] for it in items]),
               torch.tensor([it[1] for it in items], dtype=torch.long),
               torch.tensor([it[2] for it in items], dtype=torch.long),
               torch.stack([it[3] for it in items]))


__all__ = [
    "AUGMENT_MODES",
    "ChromosomeDataset",
    "REAL_AUGMENT",
    "augment",
    "balanced_order",
    "batches",
    "load_canvases",
    "localization_target",
    "photometric",
    "slides_of",
    "split_by_slide",
    "to_g_canvas",
]
