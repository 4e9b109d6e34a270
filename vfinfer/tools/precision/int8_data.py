"""The images INT8 quantization calibrates on and checks on: case directories read, split when no
holdout is given, and proved disjoint (directories, files and pixels)."""

import hashlib
from pathlib import Path

import numpy as np

from vfinfer.util.images import read_case


def split_case_dirs(case_dirs):
    """No holdout given: calibrate on the first half (rounded up), check on the rest."""
    case_dirs = list(case_dirs)
    if len(case_dirs) < 2:
        raise ValueError("need at least two calibration case directories to hold some out for "
                         "the agreement check, or give holdout case directories")
    cut = (len(case_dirs) + 1) // 2
    return case_dirs[:cut], case_dirs[cut:]


def _image_key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()
                        + str(image.shape).encode()).hexdigest()


def read_case_dirs(case_dirs):
    """All images of ``case_dirs`` (gray uint8) and their paths, in the given order."""
    images, paths = [], []
    for case_dir in case_dirs:
        case_images, case_paths, _ignored = read_case(case_dir)
        images += case_images
        paths += [str(Path(p).resolve()) for p in case_paths]
    return images, paths


def check_disjoint(calib_dirs, holdout_dirs, calib, holdout):
    """Raise ValueError if calibration and holdout share a directory, a file or an image.

    ``calib`` / ``holdout`` are ``(images, paths)``. Returns the audit entry.
    """
    shared_dirs = {str(Path(d).resolve()) for d in calib_dirs} & \
        {str(Path(d).resolve()) for d in holdout_dirs}
    if shared_dirs:
        raise ValueError(f"holdout case directories are also calibration directories: "
                         f"{', '.join(sorted(shared_dirs))}")
    shared_files = set(calib[1]) & set(holdout[1])
    if shared_files:
        raise ValueError(f"{len(shared_files)} holdout images are also calibration images, "
                         f"e.g. {sorted(shared_files)[0]}")
    calib_keys = {_image_key(img) for img in calib[0]}
    same = sum(1 for img in holdout[0] if _image_key(img) in calib_keys)
    if same:
        raise ValueError(f"{same} holdout images have the same pixels as calibration images "
                         "(copied cases?); the agreement check needs unseen images")
    return {"disjoint": True, "checked": "case directories, file paths and pixel content"}


def even_subset(items, limit):
    """At most ``limit`` items, evenly spaced (all of them when they fit)."""
    if limit is None or len(items) <= limit:
        return list(items)
    index = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in index]


def read_inputs(calib_case_dirs, holdout_case_dirs, max_calib_images):
    """Calibration and holdout images (checked disjoint) and how they were split."""
    calib_dirs = [Path(d) for d in calib_case_dirs]
    if holdout_case_dirs:
        holdout_dirs = [Path(d) for d in holdout_case_dirs]
        split = "given"
    else:
        calib_dirs, holdout_dirs = split_case_dirs(calib_dirs)
        split = (f"automatic: the first {len(calib_dirs)} of "
                 f"{len(calib_dirs) + len(holdout_dirs)} case directories calibrate, "
                 "the rest are held out")
    if not calib_dirs:
        raise ValueError("no calibration case directories given")
    calib, holdout = read_case_dirs(calib_dirs), read_case_dirs(holdout_dirs)
    disjoint = check_disjoint(calib_dirs, holdout_dirs, calib, holdout)
    return {"calib_dirs": calib_dirs, "holdout_dirs": holdout_dirs, "split": split,
            "calib": calib, "holdout": holdout, "disjoint": disjoint,
            "calib_images": even_subset(calib[0], max_calib_images)}
