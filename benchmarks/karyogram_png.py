"""What the karyogram costs to draw and to encode, and its size, per example cell.

    python benchmarks/karyogram_png.py --repeats 30 --json benchmarks/results/karyogram_png.json

The bundled demo model classifies each cell of ``examples/`` (``vfinfer synth`` cells); then,
``--repeats`` times each, median ms: drawing (``karyogram_layers``), encoding as written
(``encode_gray_png``: one channel, or indexed when something is red) and, for comparison,
encoding the composed colour picture (``render_karyogram``) with OpenCV's ``FAST_PNG``, as the
karyogram was written before; with the bytes of each file.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from vfinfer.io.karyogram import karyogram_layers, render_karyogram
from vfinfer.io.results import summary_of
from vfinfer.model.classes import type_index
from vfinfer.pipeline import Pipeline
from vfinfer.util.images import FAST_PNG, encode_gray_png, encode_png, read_case


def median_ms(work, repeats):
    """Median ms of ``repeats`` calls of ``work``, and its last result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 2), result


def measure(result, images, repeats):
    """The figures of one classified cell (see the module doc)."""
    rows = result["chromosomes"]
    args = (images, [type_index(c["type"]) for c in rows],
            [0 if c["polarity"] == "q-arm up" else 1 for c in rows],
            [c["low_confidence"] for c in rows])
    title, notes = f"{result['case']}   {summary_of(result)}", result["warnings"]
    draw_ms, (gray, red) = median_ms(lambda: karyogram_layers(*args, title, notes), repeats)
    written_ms, written = median_ms(lambda: encode_gray_png(gray, red), repeats)
    colour = render_karyogram(*args, title, notes)
    colour_ms, before = median_ms(lambda: encode_png(colour, FAST_PNG), repeats)
    return {"case": result["case"], "red_marks": red is not None, "draw_ms": draw_ms,
            "encode_ms": written_ms, "bytes": len(written),
            "colour_encode_ms": colour_ms, "colour_bytes": len(before)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, default=Path("examples"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cases = sorted(p for p in args.examples.iterdir() if p.is_dir())
    rows = []
    with Pipeline(threads=2) as pipeline:
        for case in cases:
            images, paths, _ = read_case(case)
            result = pipeline.run_case(images, case.name, [p.name for p in paths])
            rows.append(measure(result, images, args.repeats))
    report = {"command": " ".join(["python", *sys.argv]), "machine": platform.processor()
              or platform.machine(), "repeats": args.repeats, "cases": rows}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
