"""Angle error of the two rotate-and-crop axis estimates (vfinfer.util.geometry) on
rotated rods and rotated synthetic chromosomes, and their time per 46-chromosome cell.

    python benchmarks/rotate_crop_angles.py --json benchmarks/results/rotate_crop_angles.json

Rods: straight capsules, lengths 30-120 px, widths 8-20 px, noise, at 200 seeded angles.
Chromosomes: ``vfinfer.tools.synthesis.cells.render_chromosome`` cut-outs (bent, banded, with their
own small tilt), turned by seeded angles; the truth is the principal axis of the unturned
cut-out plus the turn, so this part measures how well each estimate follows a turn.
Errors are modulo 180 degrees (an axis has no direction).
"""

import argparse
import os
import time

import cv2
import numpy as np

from vfinfer.model.config import preset
from vfinfer.pipeline.preprocess import normalize_batch
from vfinfer.tools.benchmarking.bench import print_and_save
from vfinfer.tools.synthesis.cells import render_chromosome
from vfinfer.util.geometry import (
    chromosome_mask,
    hough_angle,
    principal_axis_angle,
)
from vfinfer.util.machine import cpu_info  # noqa: E402


def rod(angle, length, width, rng):
    size = int(length * 1.6) + 10
    image = np.full((size, size), 250, np.uint8)
    c, half = (size - 1) / 2, (length - width) / 2
    dx, dy = np.sin(np.radians(angle)) * half, -np.cos(np.radians(angle)) * half
    cv2.line(image, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 60,
             thickness=width, lineType=cv2.LINE_AA)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def turned(image, angle):
    """``image`` turned by ``angle`` degrees (top towards the right for positive angles)."""
    h, w = image.shape
    side = int(np.ceil(np.hypot(h, w))) + 4
    canvas = np.full((side, side), 255, np.uint8)
    canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = image
    matrix = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), -angle, 1.0)
    return cv2.warpAffine(canvas, matrix, (side, side), borderValue=255)


def error(found, truth):
    return None if found is None else abs((found - truth + 90) % 180 - 90)


def summary(errors):
    found = [e for e in errors if e is not None]
    return {"n": len(errors), "no_axis": len(errors) - len(found),
            "median_deg": round(float(np.median(found)), 2),
            "p90_deg": round(float(np.percentile(found, 90)), 2),
            "max_deg": round(float(np.max(found)), 2),
            "within_5_deg": round(float(np.mean(np.array(found) <= 5)), 4)}


def measure(samples):
    errs = {"principal-axis": [], "hough": []}
    for image, truth in samples:
        mask = chromosome_mask(image)
        errs["principal-axis"].append(error(principal_axis_angle(mask), truth))
        errs["hough"].append(error(hough_angle(image, mask), truth))
    return {k: summary(v) for k, v in errs.items()}


def cell_time(method, images, repeats=20):
    from dataclasses import replace

    config = replace(preset("compact"), rotate_crop=method)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        normalize_batch(images, config)
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(float(np.median(times)), 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rods = []
    for _ in range(200):
        angle = rng.uniform(-90, 90)
        rods.append((rod(angle, int(rng.integers(30, 121)), int(rng.integers(8, 21)), rng),
                     angle))
    chromosomes = []
    for k in range(200):
        image = render_chromosome(k % 24, rng)
        base = principal_axis_angle(chromosome_mask(image)) or 0.0
        angle = rng.uniform(-90, 90)
        chromosomes.append((turned(image, angle), base + angle))
    cell = [turned(render_chromosome(k % 24, rng), rng.uniform(-90, 90)) for k in range(46)]
    report = {
        "command": "python benchmarks/rotate_crop_angles.py --json "
                   "benchmarks/results/rotate_crop_angles.json",
        "rods": measure(rods), "synthetic_chromosomes": measure(chromosomes),
        "normalize_ms_per_46_chromosome_cell": {m: cell_time(m, cell) for m in
                                                ("none", "principal-axis", "hough")},
        "cpu": cpu_info()["model"], "load_average": os.getloadavg(),
        "note": "timings on a machine shared with other work (see load_average)",
    }
    print_and_save(report, args.json)


if __name__ == "__main__":
    main()
