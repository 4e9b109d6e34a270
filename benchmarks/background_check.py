"""Background detection on real collections, and that the preprocessing of upright
bright-field cut-outs is unchanged by the normalization step (rotate-and-crop off).

    python benchmarks/background_check.py ../shared/data/pki3 ../shared/data/bioimlab/cells \
        --json benchmarks/results/background_check.json

For each data set (a labels.csv folder): how many cut-outs ``detect_background`` finds light
and dark, and the principal-axis tilt of their chromosomes (median, p90). For every image it
also compares ``preprocess_batch`` (normalize, then canvas, resize, z-score) with the canvas,
resize and z-score alone: identical arrays wherever the image already has the model's light
background, i.e. an unchanged input for models without rotate-and-crop.
"""

import argparse
import csv
from pathlib import Path

import numpy as np

from vfinfer.model.config import preset
from vfinfer.pipeline.preprocess import preprocess
from vfinfer.tools.benchmarking.bench import print_and_save
from vfinfer.util.geometry import normalize_cutout
from vfinfer.util.images import read_gray8
from vfinfer.util.stats import percentiles


def check(data_dir, config):
    rows = list(csv.DictReader(open(Path(data_dir) / "labels.csv", newline="")))
    kinds, tilts, changed_light, max_diff_light = {"light": 0, "dark": 0}, [], 0, 0.0
    for row in rows:
        image = read_gray8(Path(data_dir) / row["file"])
        normalized, facts = normalize_cutout(image, config)
        kinds[facts["background"]] += 1
        if facts["tilt"] is not None:
            tilts.append(abs(facts["tilt"]))
        if facts["background"] == "light":
            diff = float(np.abs(preprocess(normalized, config) - preprocess(image, config)).max())
            changed_light += diff > 0
            max_diff_light = max(max_diff_light, diff)
    return {"images": len(rows), "background": kinds,
            "abs_tilt_deg": percentiles(tilts, digits=2),
            "light_images_changed_by_normalize": changed_light,
            "light_images_max_abs_diff": max_diff_light}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    config = preset("compact")
    report = {"command": "python benchmarks/background_check.py " + " ".join(args.data_dirs),
              "config": "compact, rotate_crop none, background light",
              "data": {str(d): check(d, config) for d in args.data_dirs}}
    print_and_save(report, args.json)


if __name__ == "__main__":
    main()
