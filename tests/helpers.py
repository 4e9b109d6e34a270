"""Plain helpers the test modules share (fixtures live in conftest.py): hand-built type
probabilities for the dispatch, karyotype and patient tests, the rod scenes of the
segmentation tests, and the loader of a benchmark script as a module.

Type indices are 0-based: index 0 is chromosome 1, 20 is chromosome 21, 22 = X, 23 = Y."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from vfinfer.tools.evaluation.segmentation import iou_matrix

X, Y = 22, 23
MALE = [k for k in range(22) for _ in range(2)] + [X, Y]  # 46,XY in type order
FEMALE = [k for k in range(22) for _ in range(2)] + [X, X]  # 46,XX in type order


def row(top, p=0.99, second=None, q=0.0):
    """One probability row: ``p`` on type ``top``, ``q`` on ``second``, the rest spread evenly."""
    r = np.zeros(24)
    r[top] = p
    if second is not None:
        r[second] = q
    rest = [j for j in range(24) if j not in (top, second)]
    r[rest] = (1.0 - p - q) / len(rest)
    return r


def cell(types, p=0.99):
    """Near-one-hot probabilities (``p`` on the true type) for a list of types."""
    return np.array([row(t, p) for t in types])


SHAPE = (200, 300)  # the rod scenes' image size


def rod(p0, p1, width=9):
    """The mask of a straight chromosome from point ``p0`` to ``p1`` (x, y) in a SHAPE image."""
    mask = np.zeros(SHAPE, np.uint8)
    cv2.line(mask, p0, p1, 1, width)
    return mask.astype(bool)


def best_matches(truth, instances, shape):
    """IoU of every true mask (rows) with every instance found (columns)."""
    return iou_matrix(truth, [inst.full_mask(shape) for inst in instances])


def benchmark_module(name):
    """``benchmarks/NAME.py`` loaded as a module (the folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
