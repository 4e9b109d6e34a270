"""Time per metaphase by stage: segmentation network, instance step, cut-outs, classification.

    python benchmarks/metaphase_speed.py --images 20 --threads 2 [--seg-precision int8] \
        --json benchmarks/results/metaphase_speed_demo.json
    python benchmarks/metaphase_speed.py --data ../shared/data/bioimlab/metaphases \
        --list SEGSPLIT/test.txt --model CLASSIFIER --seg-model SEGMODEL --threads 2 --json ...

Without ``--data`` the images are synthetic metaphases (``vfinfer synth-metaphase``, light
background, 1024 x 768 or ``--size``, seeds 5000...) and the models the bundled demo ones.
One untimed warm-up image first; median and p90 over the images; ``classification`` is the
classifier's whole pipeline (normalize, G-Net, crop, L-Net, heads, dispatch, verdict).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from vfinfer.io.labelme import read_labelme, read_names
from vfinfer.pipeline.metaphase import MetaphasePipeline
from vfinfer.util.stats import percentiles

STAGES = ("segmentation", "instances", "cutouts", "classification", "total")


def images_from(args):
    if args.data is None:
        from vfinfer.tools.synthesis.metaphases import render_metaphase

        size = tuple(int(v) for v in args.size.split("x")) if args.size else None
        extra = {"size": size[::-1]} if size else {}  # --size is W x H, render takes (H, W)
        return [render_metaphase(5000 + k, "46,XY", **extra)[0] for k in range(args.images + 1)]
    names = read_names(args.list) if args.list else sorted(
        p.name for p in args.data.glob("*.json"))
    return [read_labelme(args.data / n).image for n in names[:args.images + 1]]


def timed(mp, image):
    started = time.perf_counter()
    result = mp.run_image(image)
    wall = (time.perf_counter() - started) * 1000
    t = result["timing_ms"]
    seg = t["segmentation"] + t["instances"] + t["cutouts"]
    return {"segmentation": t["segmentation"], "instances": t["instances"],
            "cutouts": t["cutouts"], "classification": wall - seg, "total": wall,
            "chromosomes": result["n_chromosomes"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--list", type=Path)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--seg-model")
    parser.add_argument("--seg-precision", default="fp32", choices=("fp32", "int8"))
    parser.add_argument("--size", help="synthetic metaphases of WIDTHxHEIGHT (default 1024x768)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    images = images_from(args)
    with MetaphasePipeline(args.model, seg_model=args.seg_model, threads=args.threads,
                           backend="ort", seg_precision=args.seg_precision) as mp:
        timed(mp, images[0])  # warm-up
        rows = [timed(mp, image) for image in images[1:]]
    report = {
        "command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
        "images": len(rows), "image_size": list(images[1].shape), "threads": args.threads,
        "seg_precision": args.seg_precision,
        "chromosomes_median": float(np.median([r["chromosomes"] for r in rows])),
        "ms": {s: percentiles([r[s] for r in rows], digits=1) for s in STAGES},
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
