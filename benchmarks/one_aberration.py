"""One labelled cell with one chromosome given a terminal deletion, for a look at the
structural screen on a single case (docs/structural.md, "Measured on pki3"):

    python benchmarks/one_aberration.py ../shared/data/pki3 --labels test.csv \\
        --cell 97002204.13 --type 5 --arm q --size 0.3 --out CASES
    vfinfer run CASES/97002204.13-del5q --model MODEL --out RESULTS

Writes ``OUT/<cell>-del<type><arm>/`` with every chromosome of the cell, the first straight,
q-arm-down chromosome of ``--type`` replaced by ``terminal_deletion`` (the end cap kept), and
prints which file it is and the ISCN-like label.
"""

import argparse
import sys
from pathlib import Path

import cv2

from vfinfer.io.labels import by_cell, read_labels
from vfinfer.model.classes import type_index
from vfinfer.tools.synthesis.structural import terminal_deletion
from vfinfer.tools.synthesis.structural_cases import SourceCell
from vfinfer.util.images import read_gray8


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--labels", default=None)
    parser.add_argument("--cell", required=True)
    parser.add_argument("--type", default="5", help="chromosome: 1-22, X or Y")
    parser.add_argument("--arm", choices=["p", "q"], default="q")
    parser.add_argument("--size", type=float, default=0.3, help="share of the length lost")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    items = by_cell(read_labels(args.data_dir, args.labels)).get(args.cell)
    if not items:
        sys.exit(f"error: no cell {args.cell} in the labels")
    source, wanted = SourceCell(items), type_index(args.type)
    chosen = [i for i, item in enumerate(items) if item.type == wanted and source.changeable(i)]
    if not chosen:
        sys.exit(f"error: cell {args.cell} has no straight, q-arm-down chromosome {args.type}")
    made = terminal_deletion(source.profile(chosen[0]), args.arm, args.size)
    folder = args.out / f"{args.cell}-del{args.type}{args.arm}"
    if folder.exists():
        sys.exit(f"error: {folder} exists: nothing was written (give a new --out)")
    folder.mkdir(parents=True)
    for k, item in enumerate(items):
        image = made.image if k == chosen[0] else read_gray8(item.path)
        cv2.imwrite(str(folder / f"{k:02d}_{item.path.name}"), image)
    print(f"{folder}: {chosen[0]:02d}_{items[chosen[0]].path.name} is {made.iscn}")


if __name__ == "__main__":
    main()
