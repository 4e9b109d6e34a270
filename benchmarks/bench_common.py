"""What the serving and Ray benchmarks share: synthetic cells, machine facts, percentiles."""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from vfinfer.tools.benchmarking.bench import cpu_facts
from vfinfer.tools.synthesis.cells import write_cases

KARYOTYPES = ("46,XY", "46,XX", "47,XY,+21", "45,X")


def make_cells(root, n_cells, distinct=8, keep=None):
    """``n_cells`` case directories under ``root``: ``distinct`` synthetic cells rendered,
    the rest copies of them under new names (rendering is the slow part). ``keep`` limits
    the images per cell (the first ``keep`` files), for small-cell runs."""
    root = Path(root)
    source = root / "source"
    for i in range(distinct):
        write_cases(KARYOTYPES[i % len(KARYOTYPES)], source, seed=100 + i)
    originals = sorted(p for p in source.iterdir() if p.is_dir())
    cells = []
    for k in range(n_cells):
        dst = root / "cells" / f"cell{k:04d}"
        dst.mkdir(parents=True)
        for png in sorted(originals[k % len(originals)].glob("*.png"))[:keep]:
            shutil.copyfile(png, dst / png.name)
        cells.append(dst)
    return cells


def machine():
    """CPU model, cores and the load average at the time (the machine may be busy)."""
    facts = cpu_facts()
    return {"cpu": facts["model"], "cores": facts["cores"], "ghz_reported": facts["ghz"],
            "loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()],
            "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def stats_ms(seconds):
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    return {"n": int(ms.size), "median_ms": round(float(np.median(ms)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "mean_ms": round(float(ms.mean()), 1)}


def command():
    return "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def save(report, path):
    """The machine's state at the end into ``report``, and the JSON to ``path`` (if any)."""
    report["machine_after"] = machine()
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
