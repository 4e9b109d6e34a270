"""Metaphase annotations in labelme JSON, the format labs annotate in.

A labelme file holds one image (``imageData``: the image file's bytes, base64; or
``imagePath``: a file beside the JSON) and a list of ``shapes``; each ``polygon`` shape is one
chromosome (touching and overlapping chromosomes have overlapping polygons). Shapes of any
other kind (``rectangle``, ``point``...) or with a label in ``skip_labels`` are not
chromosomes and are left out, as are polygons with fewer than three points.

``read_labelme(path)`` returns a ``Metaphase`` (gray uint8 image as it is: dark or light
background, polygons in pixel coordinates); ``write_labelme`` writes one (used for the
synthetic metaphases). A file that cannot be used raises ``LabelmeError`` with one line naming
the file and the problem.
"""

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vfinfer.model.classes import TYPE_NAMES
from vfinfer.util.atomic import write_atomic
from vfinfer.util.images import ImageReadError, _PathError, decode_gray8, encode_png, read_gray8


class LabelmeError(_PathError):
    """A labelme file could not be used."""


@dataclass
class Metaphase:
    """One annotated metaphase: ``image`` (H, W) uint8, one (N, 2) float array of (x, y)
    points per chromosome in ``polygons`` and each polygon's labelme label in ``labels``
    (``chr`` in most annotations; synthetic metaphases name the chromosome's type)."""

    path: Path
    image: np.ndarray
    polygons: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    @property
    def name(self):
        return self.path.stem


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise LabelmeError(path, "file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelmeError(path, f"not a JSON file ({exc})") from None
    except OSError as exc:
        raise LabelmeError(path, f"cannot read file ({exc.strerror or exc})") from None


def _image_of(doc, path):
    """The annotated image: embedded ``imageData``, else the ``imagePath`` file beside it."""
    data = doc.get("imageData")
    if data:
        try:
            raw = base64.b64decode(data, validate=False)
        except (binascii.Error, TypeError, ValueError):
            raise LabelmeError(path, "imageData is not valid base64") from None
        try:
            return decode_gray8(raw, f"{path} (imageData)")
        except ImageReadError as exc:
            raise LabelmeError(path, f"embedded image unreadable: {exc.problem}") from None
    image_path = doc.get("imagePath")
    if not image_path:
        raise LabelmeError(path, "no image: neither imageData nor imagePath is set")
    try:
        return read_gray8(path.parent / image_path)
    except ImageReadError as exc:
        raise LabelmeError(path, f"image {image_path}: {exc.problem}") from None


def _polygons_of(doc, path, skip_labels):
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise LabelmeError(path, "no 'shapes' list (not a labelme annotation)")
    polygons, labels = [], []
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise LabelmeError(path, f"shape {k} is not an object")
        if shape.get("shape_type", "polygon") != "polygon" or shape.get("label") in skip_labels:
            continue
        try:
            points = np.asarray(shape.get("points"), dtype=np.float64)
        except (TypeError, ValueError):
            raise LabelmeError(path, f"shape {k}: points are not numbers") from None
        if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
            raise LabelmeError(path, f"shape {k}: points must be a list of [x, y] pairs")
        if len(points) >= 3:
            polygons.append(points)
            labels.append(shape.get("label"))
    return polygons, labels


def read_labelme(path, skip_labels=()):
    """Read one labelme JSON file (see the module doc). Raises ``LabelmeError``."""
    path = Path(path)
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise LabelmeError(path, "not a labelme annotation (the JSON is not an object)")
    polygons, labels = _polygons_of(doc, path, set(skip_labels))
    image = _image_of(doc, path)
    height, width = doc.get("imageHeight"), doc.get("imageWidth")
    if (height, width) != (None, None) and (height, width) != image.shape:
        raise LabelmeError(path, f"imageHeight x imageWidth {height} x {width} does not match "
                                 f"the image ({image.shape[0]} x {image.shape[1]})")
    return Metaphase(path=path, image=image, polygons=polygons, labels=labels)


def read_names(path):
    """File names from a text file, one per line (blank lines and ``#`` comments skipped):
    the ``--list`` of the segmentation commands and the split files."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def polygon_types(metaphase):
    """The type name (``1``-``22``, ``X``, ``Y``) of each polygon of ``metaphase``, from its
    labels (``vfinfer synth-metaphase`` labels each polygon with its chromosome's type);
    ``LabelmeError`` naming the file when a label is not a type name."""
    unknown = sorted({str(label) for label in metaphase.labels if label not in TYPE_NAMES})
    if unknown:
        raise LabelmeError(metaphase.path, f"polygon labels {unknown} are not type names")
    return list(metaphase.labels)


def list_labelme(data_dir):
    """The ``*.json`` files of a directory, sorted; ``LabelmeError`` if there are none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LabelmeError(data_dir, "not a directory of labelme JSON files")
    files = sorted(data_dir.glob("*.json"))
    if not files:
        raise LabelmeError(data_dir, "no labelme .json files in this directory")
    return files


def polygon_masks(polygons, shape):
    """One boolean (H, W) mask per polygon (filled, pixel centres inside or on the edge)."""
    masks = []
    for points in polygons:
        canvas = np.zeros(shape, dtype=np.uint8)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
        masks.append(canvas.astype(bool))
    return masks


def write_labelme(path, image, polygons, label="chr"):
    """Write ``image`` (uint8 gray) with ``polygons`` as a labelme 4.5 JSON file, the image
    embedded as PNG. Atomic. ``label``: one for every polygon, or a list of one each."""
    path = Path(path)
    png = encode_png(image, what=str(path))
    labels = [label] * len(polygons) if isinstance(label, str) else list(label)
    if len(labels) != len(polygons):
        raise ValueError(f"{len(labels)} labels for {len(polygons)} polygons")
    doc = {
        "version": "4.5.6", "flags": {},
        "shapes": [{"label": name, "points": np.asarray(p, dtype=float).round(2).tolist(),
                    "group_id": None, "shape_type": "polygon", "flags": {}}
                   for p, name in zip(polygons, labels)],
        "imagePath": path.with_suffix(".png").name,
        "imageData": base64.b64encode(png).decode("ascii"),
        "imageHeight": int(image.shape[0]), "imageWidth": int(image.shape[1]),
    }
    write_atomic(path, json.dumps(doc).encode("utf-8"))


def read_coco(path, image_dir=None):
    """The metaphases of a COCO instance-segmentation JSON file (``images``,
    ``annotations`` with polygon ``segmentation``; RLE annotations are not read): a list of
    ``Metaphase``, images read from ``image_dir`` (default: beside the JSON) by
    ``file_name``. Raises ``LabelmeError`` naming the file and the problem."""
    path = Path(path)
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("annotations"), list):
        raise LabelmeError(path, "not a COCO annotation file (no 'images' and 'annotations')")
    folder = Path(image_dir) if image_dir is not None else path.parent
    polygons = {}
    for k, ann in enumerate(doc["annotations"]):
        segmentation = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(segmentation, list):
            raise LabelmeError(path, f"annotation {k}: segmentation is not a polygon list")
        for flat in segmentation:
            points = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
            if len(points) >= 3:
                polygons.setdefault(ann.get("image_id"), []).append(points)
    metaphases = []
    for entry in doc["images"]:
        try:
            image = read_gray8(folder / entry["file_name"])
        except (KeyError, TypeError):
            raise LabelmeError(path, "an image entry has no file_name") from None
        except ImageReadError as exc:
            raise LabelmeError(path, f"image {entry['file_name']}: {exc.problem}") from None
        metaphases.append(Metaphase(folder / entry["file_name"], image,
                                    polygons.get(entry.get("id"), [])))
    return metaphases


def read_metaphase_image(path):
    """A metaphase image file as gray uint8: an image file (``read_gray8``) or a labelme
    JSON file's image (its annotation is not used). Raises ``ImageReadError`` or
    ``LabelmeError``."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_labelme(path).image
    return read_gray8(path)
