"""The one reader of ``labels.csv``, for every command that takes labels (train, eval,
calibrate, domain) and the benchmarks.

Columns ``cell,file,type,polarity`` (``slide`` optional, any order, more columns ignored):
``file`` relative to DATA_DIR; ``type`` 1-24 or X / Y (23 = X, 24 = Y); ``polarity`` 1 (q-arm
down), 0 (q-arm up) or empty (not labelled, as in collections without polarity labels);
``slide`` empty or absent: the cell stands for its slide. A file listed twice, a listed image
that does not exist, a bad field or no rows at all is refused with a ``ValueError`` naming the
CSV and the line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vfinfer.model.classes import type_index

REQUIRED_COLUMNS = ("cell", "file", "type", "polarity")
NOT_LABELLED = -1  # polarity of an image whose polarity column is empty
MISSING_SHOWN = 3  # missing image files named in the message (all are counted)


@dataclass(frozen=True)
class Label:
    """One labelled chromosome image."""

    cell: str
    slide: str  # "" when the CSV gives none: the cell stands for the slide
    path: Path
    type: int  # 0-based: 0-21 autosomes, 22 = X, 23 = Y
    polarity: int  # 1 = q-arm down, 0 = q-arm up, -1 = not labelled

    @property
    def unit(self) -> str:
        """What keeps images together in a split: the slide, else the cell."""
        return self.slide or self.cell


def labels_path(data_dir, labels_csv=None) -> Path:
    """The labels file: a relative path is looked up in DATA_DIR first, then as given (from
    the current directory); None means DATA_DIR/labels.csv."""
    given = Path("labels.csv" if labels_csv is None else labels_csv)
    inside = Path(data_dir) / given
    if not given.is_absolute() and inside.is_file():
        return inside
    if given.is_file():
        return given
    where = str(given) if given.is_absolute() else f"{given} (not in {data_dir} nor here)"
    raise ValueError(f"labels file not found: {where}")


def read_labels(data_dir, labels_csv=None) -> list[Label]:
    """Read and check a labels CSV.

    Parameters
    ----------
    data_dir : the folder the ``file`` column is relative to.
    labels_csv : relative to ``data_dir`` (default ``labels.csv``), else to the current
        directory, or absolute.

    Returns
    -------
    The labelled images in the CSV's order.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: data directory not found")
    csv_path = labels_path(data_dir, labels_csv)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            labels = _read_rows(csv.reader(handle), csv_path, data_dir)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise ValueError(f"{csv_path}: bad CSV ({exc})") from None
    missing = [f"line {line}: {label.path}" for line, label in labels
               if not label.path.is_file()]
    if missing:
        shown = "; ".join(missing[:MISSING_SHOWN])
        shown += "; ..." if len(missing) > MISSING_SHOWN else ""
        raise ValueError(f"{csv_path}: {len(missing)} of {len(labels)} listed image files are "
                         f"missing: {shown}")
    if not labels:
        raise ValueError(f"{csv_path}: no labelled images (only a header)")
    return [label for _, label in labels]


def _columns(reader, csv_path):
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{csv_path}: empty file (expected a header "
                         f"{','.join(REQUIRED_COLUMNS)})")
    header = [h.strip().lower() for h in header]
    absent = [c for c in REQUIRED_COLUMNS if c not in header]
    if absent:
        raise ValueError(f"{csv_path}: line 1: missing column(s) {', '.join(absent)} "
                         f"(header is {','.join(header)}; need {','.join(REQUIRED_COLUMNS)})")
    wanted = REQUIRED_COLUMNS + (("slide",) if "slide" in header else ())
    return {c: header.index(c) for c in wanted}


def _read_rows(reader, csv_path, data_dir):
    """(line, Label) for every non-blank row; duplicates refused as they are met."""
    col = _columns(reader, csv_path)
    rows, seen = [], {}
    for row in reader:
        line = reader.line_num
        if not any(field.strip() for field in row):
            continue  # blank line
        values = _fields(row, col, csv_path, line)
        file = values["file"]
        if file in seen:
            raise ValueError(f"{csv_path}: line {line}: file {file} is listed again "
                             f"(first on line {seen[file]})")
        seen[file] = line
        rows.append((line, _label(values, csv_path, line, data_dir)))
    return rows


def _fields(row, col, csv_path, line):
    values = {}
    for name, k in col.items():
        value = row[k].strip() if k < len(row) else ""
        # an empty polarity or slide means "not labelled"; a row too short is an error
        if not value and not (name in ("polarity", "slide") and k < len(row)):
            if name == "slide":
                continue
            raise ValueError(f"{csv_path}: line {line}: empty or missing {name!r} "
                             f"(row has {len(row)} fields: {','.join(row)})")
        values[name] = value
    return values


def _label(values, csv_path, line, data_dir):
    try:
        type_ = type_index(values["type"])
    except ValueError:
        raise ValueError(f"{csv_path}: line {line}: type {values['type']!r} is not 1-24 "
                         "(23 = X, 24 = Y), X or Y") from None
    polarity = values["polarity"]
    if polarity not in ("0", "1", ""):
        raise ValueError(f"{csv_path}: line {line}: polarity {polarity!r} is not 0 (q-arm up), "
                         "1 (q-arm down) or empty (not labelled)")
    return Label(values["cell"], values.get("slide", ""), data_dir / values["file"], type_,
                 int(polarity) if polarity else NOT_LABELLED)


def by_cell(labels) -> dict[str, list[Label]]:
    """``{cell: [Label, ...]}``, cells and their images in the CSV's order."""
    cells: dict[str, list[Label]] = {}
    for label in labels:
        cells.setdefault(label.cell, []).append(label)
    return cells


def cell_slides(labels) -> dict[str, str]:
    """``{cell: slide}`` for the cells whose slide the CSV gives (its first row's)."""
    slides: dict[str, str] = {}
    for label in labels:
        if label.slide:
            slides.setdefault(label.cell, label.slide)
    return slides
