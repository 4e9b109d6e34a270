"""Split a labelled data set (pki3 layout) into train / test CSVs by slide, never by image.

    python benchmarks/split_by_slide.py ../shared/data/pki3 --test-fraction 0.2 --seed 0 \
        --out /tmp/pki3-split

writes OUT/train.csv and OUT/test.csv with the same columns as DATA_DIR/labels.csv; the
``file`` column stays relative to DATA_DIR. Cells of one slide (one patient) stay together.
"""

import argparse
import csv
import random
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    with open(args.data_dir / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    slide_of = (lambda row: row["slide"]) if "slide" in rows[0] else (lambda row: row["cell"])
    slides = sorted({slide_of(row) for row in rows})
    random.Random(args.seed).shuffle(slides)
    test = set(slides[:round(len(slides) * args.test_fraction)])
    args.out.mkdir(parents=True, exist_ok=True)
    for name, keep in (("train", False), ("test", True)):
        part = [row for row in rows if (slide_of(row) in test) == keep]
        with open(args.out / f"{name}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
        cells = len({row["cell"] for row in part})
        slides_n = len({slide_of(row) for row in part})
        print(f"{name}: {len(part)} images, {cells} cells, {slides_n} slides "
              f"-> {args.out / (name + '.csv')}")


if __name__ == "__main__":
    main()
