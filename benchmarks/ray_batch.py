"""``vfinfer run --ray`` against ``vfinfer run``: wall time for N synthetic cells (default 200)
with 1 and 2 Ray actors on a local Ray instance, and the overhead per cell. A benchmark, not a
test: it prints and writes JSON.

    python benchmarks/ray_batch.py --cells 200 --json benchmarks/results/ray_batch.json

Every run writes the full results (result.json, result.csv, karyogram.png) into its own
output directory. ``ray.init`` is timed apart; the Ray runs include starting the actors and
building their pipelines.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command, machine, make_cells, save  # noqa: E402

from vfinfer.cluster.ray_run import run_on_ray  # noqa: E402
from vfinfer.io.runner import run_cases  # noqa: E402


def timed(run, **kwargs):
    started = time.perf_counter()
    failed = run(**kwargs)
    return round(time.perf_counter() - started, 2), failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    quiet = {"echo": lambda line: None}
    with tempfile.TemporaryDirectory() as tmp:
        cells = make_cells(Path(tmp), args.cells)
        report = {"command": command(), "machine_before": machine(), "cells": args.cells,
                  "cell_note": "8 synthetic cells of 45-47 chromosomes rendered, copied to "
                               f"{args.cells} case directories; karyograms written"}
        wall, failed = timed(run_cases, case_dirs=cells, out_dir=Path(tmp) / "plain",
                             threads=args.cpus, **quiet)
        report["vfinfer_run"] = {"threads": args.cpus, "wall_s": wall,
                                 "ms_per_cell": round(wall / args.cells * 1000, 1),
                                 "failed": len(failed)}
        print(json.dumps(report["vfinfer_run"]))
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
        report["ray_init_s"] = round(time.perf_counter() - started, 2)
        report["ray"] = []
        for actors in args.actors:
            wall, failed = timed(run_on_ray, case_dirs=cells, actors=actors,
                                 out_dir=Path(tmp) / f"ray{actors}", **quiet)
            row = {"actors": actors, "threads_per_actor": max(1, args.cpus // actors),
                   "wall_s": wall, "ms_per_cell": round(wall / args.cells * 1000, 1),
                   "overhead_ms_per_cell_vs_vfinfer_run": round(
                       (wall - report["vfinfer_run"]["wall_s"]) / args.cells * 1000, 1),
                   "failed": len(failed)}
            report["ray"].append(row)
            print(json.dumps(row))
        ray.shutdown()
    save(report, args.json)


if __name__ == "__main__":
    main()
