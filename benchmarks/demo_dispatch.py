"""The demo model's karyotypes per dispatch mode on fresh synthetic cells: how often plain
argmax, Algorithm 1 and optimal dispatch name each cell's karyotype exactly, per karyotype.

    python benchmarks/demo_dispatch.py --cells 40 --json benchmarks/results/demo_dispatch.json

Cells ``vfinfer synth --karyotype K --seed S`` for S = 9000 .. 9000 + cells - 1 (the seeds of
the example cells among them), written to a temporary folder. The demo model was trained on
other synthetic cells (seed 2026); its in-domain figures, from which ``--dispatch auto`` chooses,
come from 40 more (seed 7001). Each cell is run once per mode; the verdict is left out (the
karyotype is counted whether or not it would be withheld).
"""

import argparse
import tempfile
from pathlib import Path

from vfinfer.pipeline import Pipeline
from vfinfer.tools.benchmarking.bench import print_and_save
from vfinfer.tools.synthesis.cells import write_cases
from vfinfer.util.images import read_case

KARYOTYPES = ("46,XX", "46,XY", "47,XY,+21", "45,X")
MODES = ("none", "paper", "optimal")
FIRST_SEED = 9000


def karyotype_of(result):
    return result["karyotype"] or result["verdict"].get("withheld_karyotype")


def measure(n_cells, tmp):
    pipes = {mode: Pipeline(dispatch_mode=mode) for mode in MODES}
    exact = {k: dict.fromkeys(MODES, 0) for k in KARYOTYPES}
    calls = {k: {} for k in KARYOTYPES}
    try:
        for karyotype in KARYOTYPES:
            for seed in range(FIRST_SEED, FIRST_SEED + n_cells):
                name = write_cases(karyotype, Path(tmp) / f"{karyotype}-{seed}", seed)[0]
                images = read_case(Path(tmp) / f"{karyotype}-{seed}" / name)[0]
                found = {m: karyotype_of(p.run_case(images, name)) for m, p in pipes.items()}
                calls[karyotype][seed] = found
                for mode, call in found.items():
                    exact[karyotype][mode] += call == karyotype
    finally:
        for pipe in pipes.values():
            pipe.close()
    return exact, calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=40, help="cells per karyotype")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exact, calls = measure(args.cells, tmp)
    print_and_save({"command": "python benchmarks/demo_dispatch.py --cells "
                               f"{args.cells} --json benchmarks/results/demo_dispatch.json",
                    "model": "vfinfer/demo_model", "cells_per_karyotype": args.cells,
                    "seeds": [FIRST_SEED, FIRST_SEED + args.cells - 1],
                    "exact": exact, "calls": calls}, args.json)


if __name__ == "__main__":
    main()
