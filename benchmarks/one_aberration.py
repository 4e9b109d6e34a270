"""One labelled cell with one chromosome given a terminal deletion, for a look at the
structural screen on a single case, or the same on every cell of a labels CSV
(docs/structural.md, "Measured on pki3"):

    python benchmarks/one_aberration.py ../shared/data/pki3 --labels test.csv \\
        --cell 97002204.13 --type 5 --arm q --size 0.3 --out CASES
    vfinfer run CASES/97002204.13-del5q --model MODEL --out RESULTS

    python benchmarks/one_aberration.py ../shared/data/pki3 --labels test.csv \\
        --type 5 --arm q --size 0.3 --model MODEL --threads 2 --json del5q.json

The first writes ``OUT/<cell>-del<type><arm>/`` with every chromosome of the cell, the first
straight, q-arm-down chromosome of ``--type`` replaced by ``terminal_deletion`` (the end cap
kept), and prints which file it is and the ISCN-like label. The second runs ``--model`` (with
a structural score) on every cell of the labels that has such a chromosome, as it is and with
the deletion, and writes per cell: the flags of the cell as it is, whether the deleted
chromosome is flagged, its score, call and named arm, and the other chromosomes flagged; with
the shares of cells where only the deleted chromosome is flagged and where its arm is named
right.
"""

import argparse
import json
import sys
from pathlib import Path

import cv2

from vfinfer.io.labels import by_cell, read_labels
from vfinfer.model.classes import type_index
from vfinfer.tools.synthesis.structural import terminal_deletion
from vfinfer.tools.synthesis.structural_cases import SourceCell
from vfinfer.util.atomic import write_atomic
from vfinfer.util.images import read_gray8


def deleted_cell(items, wanted, arm, size):
    """(images, the changed index, the ``Aberration``) of a cell with its first straight,
    q-arm-down chromosome of type ``wanted`` (0-based) given the deletion; None without one."""
    source = SourceCell(items)
    chosen = [i for i, item in enumerate(items) if item.type == wanted and source.changeable(i)]
    if not chosen:
        return None
    made = terminal_deletion(source.profile(chosen[0]), arm, size)
    images = [made.image if k == chosen[0] else read_gray8(item.path)
              for k, item in enumerate(items)]
    return images, chosen[0], made


def write_one(args, items):
    """The first form of the module doc."""
    made = deleted_cell(items, type_index(args.type), args.arm, args.size)
    if made is None:
        sys.exit(f"error: cell {args.cell} has no straight, q-arm-down chromosome {args.type}")
    images, index, aberration = made
    folder = args.out / f"{args.cell}-del{args.type}{args.arm}"
    if folder.exists():
        sys.exit(f"error: {folder} exists: nothing was written (give a new --out)")
    folder.mkdir(parents=True)
    for k, (item, image) in enumerate(zip(items, images)):
        cv2.imwrite(str(folder / f"{k:02d}_{item.path.name}"), image)
    print(f"{folder}: {index:02d}_{items[index].path.name} is {aberration.iscn}")


def screen_cell(pipe, name, items, made):
    """The record of one cell, as it is and with the deletion (module doc)."""
    images, index, aberration = made
    files = [item.path.name for item in items]
    before = pipe.run_case([read_gray8(item.path) for item in items], name=name, files=files)
    after = pipe.run_case(images, name=name, files=files)
    row = after["chromosomes"][index]
    return {"cell": name, "changed": files[index], "label": aberration.iscn,
            "flags_as_it_is": before["structural"]["flagged"],
            "deleted_flagged": row["structural"]["flagged"],
            "deleted_score": row["structural"]["score"], "deleted_called": row["type"],
            "arm_named": row["structural"].get("arm"),
            "others_flagged": after["structural"]["flagged"] - row["structural"]["flagged"],
            "warnings": [w for w in after["warnings"] if "structural" in w]}


def screen_all(args, cells):
    """The second form of the module doc."""
    from vfinfer.pipeline import Pipeline

    wanted, rows = type_index(args.type), []
    with Pipeline(args.model, backend="ort", threads=args.threads) as pipe:
        if pipe.structural is None:
            sys.exit(f"error: {args.model} has no structural score")
        for name, items in sorted(cells.items()):
            made = deleted_cell(items, wanted, args.arm, args.size)
            if made is not None:
                rows.append(screen_cell(pipe, name, items, made))
    only = [r["deleted_flagged"] and not r["others_flagged"] for r in rows]
    clean = [r for r in rows if not r["flags_as_it_is"]]
    report = {
        "command": " ".join(sys.argv), "cells": len(rows),
        "deleted_flagged": sum(r["deleted_flagged"] for r in rows),
        "only_deleted_flagged": sum(only),
        "cells_without_flags_as_they_are": len(clean),
        "only_deleted_flagged_of_those": sum(r["deleted_flagged"] and not r["others_flagged"]
                                             for r in clean),
        "arm_named_right_of_flagged": sum(r["arm_named"] == args.arm for r in rows
                                          if r["deleted_flagged"]),
        "called_as_its_type": sum(r["deleted_called"] == args.type for r in rows),
        "per_cell": rows}
    write_atomic(args.json, (json.dumps(report, indent=1) + "\n").encode())
    print({k: v for k, v in report.items() if k not in ("per_cell", "command")})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--labels", default=None)
    parser.add_argument("--cell", help="one cell (the first form)")
    parser.add_argument("--type", default="5", help="chromosome: 1-22, X or Y")
    parser.add_argument("--arm", choices=["p", "q"], default="q")
    parser.add_argument("--size", type=float, default=0.3, help="share of the length lost")
    parser.add_argument("--out", type=Path, help="where the one cell's folder goes")
    parser.add_argument("--model", type=Path, help="screen every cell (the second form)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="the second form's report")
    args = parser.parse_args(argv)
    cells = by_cell(read_labels(args.data_dir, args.labels))
    if args.model:
        if not args.json:
            sys.exit("error: --model needs --json")
        return screen_all(args, cells)
    if not (args.cell and args.out):
        sys.exit("error: give --cell and --out (one case), or --model and --json (all cells)")
    items = cells.get(args.cell)
    if not items:
        sys.exit(f"error: no cell {args.cell} in the labels")
    return write_one(args, items)


if __name__ == "__main__":
    main()
