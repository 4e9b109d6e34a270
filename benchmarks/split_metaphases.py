"""Split labelme metaphase files by case (several images of one case stay together).

    python benchmarks/split_metaphases.py ../shared/data/bioimlab/metaphases \
        --test-cells SPLIT/test.csv --out SEGSPLIT
    python benchmarks/split_metaphases.py DATA --test-fraction 0.2 --seed 0 --out SEGSPLIT

Writes SEGSPLIT/train.txt and SEGSPLIT/test.txt (one JSON file name per line). The case of
``original_104a.json`` is 104; ``--test-cells`` takes the held-out cells of a classification
split (``benchmarks/split_by_slide.py``: a labels CSV whose ``cell`` column reads
``bio104``), so the segmentation and the classifier are tested on the same unseen cases.
"""

import argparse
import csv
import re
from pathlib import Path

import numpy as np


def case_of(name):
    """The case number in ``original_104a.json`` or ``bio104``, as an int (None if none)."""
    found = re.search(r"(\d+)", Path(name).stem)
    return int(found.group(1)) if found else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--test-cells", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted(p.name for p in args.data.glob("*.json"))
    cases = sorted({case_of(f) for f in files})
    if args.test_cells:
        with open(args.test_cells, newline="") as fh:
            test = {case_of(row["cell"]) for row in csv.DictReader(fh)}
    else:
        rng = np.random.default_rng(args.seed)
        n_test = max(1, round(args.test_fraction * len(cases)))
        test = set(rng.choice(cases, n_test, replace=False).tolist())
    args.out.mkdir(parents=True, exist_ok=True)
    split = {"train": [f for f in files if case_of(f) not in test],
             "test": [f for f in files if case_of(f) in test]}
    for part, names in split.items():
        (args.out / f"{part}.txt").write_text("".join(n + "\n" for n in names))
        print(f"{part}: {len(names)} images of {len({case_of(n) for n in names})} cases")


if __name__ == "__main__":
    main()
