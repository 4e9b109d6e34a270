"""The segmentation model directory: ``seg.onnx`` (and ``seg_fp16.onnx``) plus ``manifest.json``
with ``"kind": "segmentation"``, kept apart from the classifier's directory because the two are
trained on different data.

The manifest holds everything the runtime needs: the input convention (``input``: background
the network was trained on, the multiple the padded image must be, the largest side taken,
the intensity normalization), the instance step's thresholds (``instances``), the graphs with
their sha256, the parity report, the training data and figures (``training``, ``figures``).

Input normalization (``prepare_input``, used by the trainer as well): the image is brought to
the model's background (dark: chromosomes bright), then ``(x - median) / (p99.5 - median)``
(median: the background level; the 99.5th percentile: the brightest chromosome pixels; at
least ``MIN_SPREAD`` apart), clipped to [-2, 6], and padded with the background to the
multiple.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from vfinfer.segment.instances import InstanceParams
from vfinfer.util.atomic import write_json_atomic
from vfinfer.util.geometry import detect_background, to_convention

SEG_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# test-time flips of the maps (``vfinfer.segment.segmenter.network_maps``): the network on the
# image and its mirror images, each map flipped back, the probabilities averaged
SEG_TTA_FLIPS = {"none": ((),), "mirror": ((), (1,)), "flips": ((), (1,), (0,), (0, 1))}
MIN_SPREAD = 8.0
DEFAULT_MAX_SIDE = 4096


class SegModelError(ValueError):
    """A segmentation model directory that cannot be used (message names file and problem)."""


class ImageTooLargeError(ValueError):
    """The image exceeds the model's ``max_side``."""


@dataclass
class SegInput:
    background: str = "dark"
    multiple: int = 8
    max_side: int = DEFAULT_MAX_SIDE

    @classmethod
    def from_dict(cls, values):
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})

    def to_dict(self):
        return {"background": self.background, "multiple": self.multiple,
                "max_side": self.max_side,
                "normalize": "(x - median) / (p99.5 - median), clipped to [-2, 6], "
                             "on the image in this background convention"}


def normalized(gray, background_found, spec):
    """The gray uint8 image as the network sees it (float32, unpadded)."""
    levels = to_convention(gray, background_found, spec.background)
    if spec.background == "light":
        levels = 255 - levels  # the statistics below treat chromosomes as bright
    low, high = level_quantile(levels, 0.5), level_quantile(levels, 0.995)
    x = (levels.astype(np.float32) - low) / max(high - low, MIN_SPREAD)
    return np.clip(x, -2.0, 6.0)


def level_quantile(levels, q):
    """``np.percentile(levels.astype(np.float32), 100 * q)`` (its linear interpolation, in
    float32, the same number) from the histogram of a uint8 image: no sort of its pixels."""
    cumulative = np.cumsum(np.bincount(levels.ravel(), minlength=256))
    n = int(cumulative[-1])
    position = (n - 1) * q
    below = int(np.floor(position))
    value = [np.float32(np.searchsorted(cumulative, k + 1)) for k in (below, min(below + 1, n - 1))]
    t = np.float32(position - below)
    step = value[1] - value[0]
    return float(value[1] - step * (np.float32(1) - t) if t >= 0.5 else value[0] + step * t)


def prepare_input(gray, spec, background="auto"):
    """(network input (1, 1, Hp, Wp) float32, background found) for a gray uint8 image."""
    height, width = gray.shape
    if max(height, width) > spec.max_side:
        raise ImageTooLargeError(
            f"image is {width} x {height} px, larger than the {spec.max_side} px per side this "
            "segmentation model takes (manifest input.max_side); downscale it")
    found = detect_background(gray) if background == "auto" else background
    x = normalized(gray, found, spec)
    m = spec.multiple
    pad_h, pad_w = (-height) % m, (-width) % m
    if pad_h or pad_w:
        x = cv2.copyMakeBorder(x, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
    return x[None, None], found


@dataclass
class SegModel:
    """A checked segmentation model directory (``load_seg_model`` makes it): the directory
    and its parsed ``manifest.json``."""

    model_dir: Path
    data: dict[str, Any]

    @property
    def input(self) -> SegInput:
        """The input convention: background, padding multiple, largest side."""
        return SegInput.from_dict(self.data["input"])

    @property
    def tta(self) -> str:
        """The test-time flips of the maps: ``none`` (one pass), ``mirror`` (and the
        left-right mirror image: 2 passes) or ``flips`` (and the up-down and both-ways mirror
        images: 4 passes); set by ``vfinfer tta``."""
        return self.data.get("tta", "none")

    @property
    def params(self) -> InstanceParams:
        """The thresholds of the instance step."""
        return InstanceParams.from_dict(self.data.get("instances", {}))

    def graph_path(self, precision: str = "fp32") -> Path:
        """The file of the graph the manifest lists as ``seg`` (``"fp32"``) or
        ``seg_<precision>``; SegModelError when it lists none for ``precision``."""
        role = "seg" if precision == "fp32" else f"seg_{precision}"
        entry = self.data["graphs"].get(role)
        if entry is None:
            raise SegModelError(f"{self.model_dir}: no {precision} segmentation graph "
                                f"(available: {', '.join(sorted(self.data['graphs']))})")
        return self.model_dir / entry["file"]

    def check_int8(self):
        """SegModelError unless ``vfinfer quantize-seg`` found the INT8 graph usable."""
        audit = self.data.get("int8_audit")
        if not isinstance(audit, dict):
            raise SegModelError(f"{self.model_dir}: no checked INT8 segmentation graph; make "
                                "one with 'vfinfer quantize-seg'")
        if audit.get("usable") is not True:
            raise SegModelError(f"{self.model_dir}: the INT8 segmentation graph is marked "
                                f"unusable: {audit.get('reason', 'no reason recorded')}")

    def describe(self) -> dict[str, Any]:
        return {"dir": str(self.model_dir), "kind": "network",
                "trained_on": self.data.get("training", {}).get("data")}


def load_seg_model(model_dir: Union[str, os.PathLike]) -> SegModel:
    """Read and check a segmentation model directory.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A directory made by ``vfinfer train-seg`` or ``vfinfer export-seg`` (``manifest.json``
        with ``"kind": "segmentation"`` and ``seg.onnx``); ``demo_seg_model_dir()`` for the
        bundled demo.

    Returns
    -------
    SegModel
        The directory and its manifest.

    Raises
    ------
    SegModelError
        A missing directory, manifest or ``seg.onnx``, invalid JSON, a classifier directory
        given instead, another ``schema_version``, or a missing ``input``, ``graphs`` or
        ``instances`` section (a ValueError; the message names the file).
    """
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not model_dir.is_dir():
        raise SegModelError(f"{model_dir}: segmentation model directory not found")
    if not path.is_file():
        raise SegModelError(f"{path}: not found; a segmentation model directory is made by "
                            "'vfinfer train-seg' or 'vfinfer export-seg'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != "segmentation":
        raise SegModelError(f"{path}: not a segmentation model (a classifier directory goes "
                            "to --model, a segmentation one to --seg-model)")
    if data.get("schema_version") != SEG_SCHEMA_VERSION:
        raise SegModelError(f"{path}: schema_version {data.get('schema_version')!r} is not "
                            f"{SEG_SCHEMA_VERSION}; re-export the segmentation model")
    for key in ("input", "graphs", "instances"):
        if key not in data:
            raise SegModelError(f"{path}: missing '{key}'")
    if data.get("tta", "none") not in SEG_TTA_FLIPS:
        raise SegModelError(f"{path}: tta {data['tta']!r} is not one of "
                            f"{', '.join(SEG_TTA_FLIPS)}")
    graph = model_dir / data["graphs"].get("seg", {}).get("file", "seg.onnx")
    if not graph.is_file():
        raise SegModelError(f"{graph}: segmentation graph missing")
    return SegModel(model_dir, data)


def is_seg_model_dir(model_dir: Union[str, os.PathLike]) -> bool:
    """Whether ``model_dir``'s manifest says it is a segmentation model (False for anything
    else, an unreadable manifest included: the classifier's loader names that problem)."""
    try:
        data = json.loads((Path(model_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == "segmentation"


def set_seg_tta(model_dir: Union[str, os.PathLike], mode: str) -> str:
    """Set a segmentation model directory's test-time flips (``SegModel.tta``); the graph is
    untouched, the instance thresholds stay those tuned without them. Returns the previous
    mode."""
    model = load_seg_model(model_dir)
    if mode not in SEG_TTA_FLIPS:
        raise SegModelError(f"tta of a segmentation model must be one of "
                            f"{', '.join(SEG_TTA_FLIPS)}, not {mode!r}")
    previous, model.data["tta"] = model.tta, mode
    write_json_atomic(model.model_dir / MANIFEST_NAME, model.data)
    return previous


def demo_seg_model_dir() -> Path:
    """The demo segmentation model shipped in the package (trained on synthetic metaphases)."""
    return Path(__file__).parent.parent / "demo_seg_model"
