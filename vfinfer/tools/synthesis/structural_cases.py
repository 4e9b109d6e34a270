"""Cells with synthetic structural aberrations, written in the Pki-3 layout.

``write_structural_cases(source_dir, out_dir, seed, ...)`` copies labelled normal cells (a folder
with a ``labels.csv``: pki3, or cells of ``vfinfer synth``) and replaces ``per_cell`` of each
copy's chromosomes by aberrant versions (``vfinfer.tools.synthesis.structural``; a
translocation replaces two chromosomes of different types by its two derivatives). It writes:

- ``out_dir/<cell>/<cell>_<nn>.png``: every chromosome of the copy (``nn``: its place in the
  source cell's rows), re-encoded as PNG whether it was changed or not;
- ``out_dir/labels.csv``: ``cell,slide,file,type,polarity`` as the source's (a derivative keeps
  its centromere's type; ``slide``: the source's, else the source cell, so that a split by
  slide keeps a copy with its original);
- ``out_dir/structural.csv``: ``cell,file,kind,type,arm,start,end,size,iscn``, one row per
  aberrant chromosome (the ground truth; chromosomes not listed are normal).

Copies are named ``<source cell>-st<seed>-<round>`` (``round`` counts passes over the source
cells when more copies than cells are asked for); names and file order carry no label. Only
chromosomes labelled q-arm down (polarity 1) and nearly straight (the axis wanders by at most
``STRAIGHT_LIMIT`` chromosome widths sideways; slabs of rows are meaningless across a bent or
tilted chromosome) are changed. Deterministic given ``seed``. Everything is written into a
temporary folder beside ``out_dir`` (each file atomically), which is renamed to ``out_dir`` at
the end; an existing, non-empty ``out_dir`` is refused.
"""

import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vfinfer.io.labels import NOT_LABELLED, by_cell, cell_slides, read_labels
from vfinfer.tools.synthesis.cells import LABEL_HEADER
from vfinfer.tools.synthesis.structural import KINDS, axis_profile, draw_aberration
from vfinfer.util.atomic import write_atomic
from vfinfer.util.images import encode_png, read_gray8

STRUCTURAL_HEADER = ["cell", "file", "kind", "type", "arm", "start", "end", "size", "iscn"]
STRAIGHT_LIMIT = 0.5  # sideways wander of a changeable chromosome's axis, in its widths
MAX_TRIES = 40  # chromosomes and sizes tried per aberration before a cell is given up


def check_options(kinds, size_min, size_max, cells, per_cell):
    """One-line ValueErrors for options that cannot work."""
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be among {','.join(KINDS)}, got {','.join(kinds) or 'none'}")
    if not 0.0 < float(size_min) <= float(size_max) < 1.0:
        raise ValueError(f"segment sizes must satisfy 0 < size-min <= size-max < 1, got "
                         f"{size_min} and {size_max}")
    if cells is not None and int(cells) < 1:
        raise ValueError(f"cells must be at least 1, got {cells}")
    if int(per_cell) < 1:
        raise ValueError(f"per_cell must be at least 1, got {per_cell}")


def write_structural_cases(source_dir, out_dir, seed=0, labels_csv=None, kinds=KINDS,
                           size_min=0.1, size_max=0.3, cells=None, per_cell=1):
    """Write ``cells`` copies (default: one per source cell) of the labelled cells in
    ``source_dir`` (``labels_csv``: default ``source_dir/labels.csv``) to the new folder
    ``out_dir``, each with ``per_cell`` aberrations of a kind drawn from ``kinds`` (del, dup,
    inv, t, i), segment sizes from ``size_min..size_max`` (fractions of the chromosome's
    length). Layout and files in the module docstring. Returns (copy names, structural.csv
    rows as dicts)."""
    kinds = tuple(kinds)
    check_options(kinds, size_min, size_max, cells, per_cell)
    seed, out_dir = int(seed), Path(out_dir)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    _refuse_existing(out_dir)
    labels = read_labels(source_dir, labels_csv)
    slides = cell_slides(labels)
    plan = _copies(by_cell(labels), cells, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    os.chmod(work, 0o755)  # mkdtemp's folder is private; the output is not
    try:
        label_rows, truth = [], []
        for k, (name, cell, items) in enumerate(plan):
            rng = np.random.default_rng([seed, k, 0x57C])
            changed = _aberrate(items, rng, kinds, (size_min, size_max), per_cell, cell)
            rows, found = _write_copy(work, name, slides.get(cell, cell), items, changed)
            label_rows += rows
            truth += found
        _write_csv(work / "labels.csv", LABEL_HEADER, label_rows)
        _write_csv(work / "structural.csv", STRUCTURAL_HEADER,
                   [[row[c] for c in STRUCTURAL_HEADER] for row in truth])
        _publish(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return [name for name, _, _ in plan], truth


def _refuse_existing(out_dir):
    """A ValueError when ``out_dir`` exists and is not an empty folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} already exists and is not empty: nothing was written "
                         "(give a new output folder)")


def _publish(work, out_dir):
    """Rename the finished folder ``work`` to ``out_dir`` (an empty ``out_dir`` is replaced)."""
    _refuse_existing(out_dir)
    if out_dir.is_dir():
        out_dir.rmdir()
    os.rename(work, out_dir)


def _copies(cells, count, seed):
    """(copy name, source cell, its labels) for ``count`` copies (default one per cell): each
    pass over the cells takes them in a seeded order, kept in the source's order within a
    pass."""
    names = list(cells)
    count = len(names) if count is None else int(count)
    rng = np.random.default_rng([seed, 0xCE11])
    plan, rounds = [], 0
    while len(plan) < count:
        take = sorted(rng.permutation(len(names))[:count - len(plan)])
        plan += [(f"{names[i]}-st{seed}-{rounds}", names[i], cells[names[i]]) for i in take]
        rounds += 1
    return plan


class SourceCell:
    """A source cell's chromosomes, their axis profiles measured when first asked for."""

    def __init__(self, items):
        self.items = items
        self.images = [read_gray8(label.path) for label in items]
        self._profiles = {}

    def profile(self, i):
        """The axis profile of chromosome ``i``, or None when it has none (too small)."""
        if i not in self._profiles:
            try:
                self._profiles[i] = axis_profile(self.images[i], self.items[i].type + 1)
            except ValueError:
                self._profiles[i] = None
        return self._profiles[i]

    def changeable(self, i):
        """Labelled q-arm down, measurable and nearly straight (``STRAIGHT_LIMIT``)."""
        if self.items[i].polarity != 1 or self.profile(i) is None:
            return False
        profile = self.profile(i)
        wander = np.ptp(profile.centre[profile.top:profile.bottom + 1])
        return wander <= STRAIGHT_LIMIT * profile.median_width


def _aberrate(items, rng, kinds, sizes, per_cell, cell):
    """(the cell's ``SourceCell``, ``{index in the cell: Aberration}``) for ``per_cell``
    aberrations, each of a kind drawn from ``kinds``; a cell without room for one raises a
    ValueError naming it."""
    source, changed = SourceCell(items), {}
    for _ in range(per_cell):
        kind = kinds[int(rng.integers(len(kinds)))]
        made = draw_one(source, changed, kind, rng, sizes)
        if made is None:
            raise ValueError(f"cell {cell}: no unchanged, straight, q-arm-down chromosome has "
                             f"room for a {kind} of size {sizes[0]}-{sizes[1]}")
        changed.update(made)
    return source, changed


def draw_one(source, changed, kind, rng, sizes, tries=MAX_TRIES):
    """``{index: Aberration}`` of one aberration of ``kind`` (``sizes``: min, max) on
    chromosomes of the ``SourceCell`` not in ``changed``, tried on up to ``tries``
    chromosomes and sizes, or None."""
    for _ in range(tries):
        picked = _pick(source, changed, kind, rng)
        if picked is None:
            return None
        made = draw_aberration(kind, [source.profile(i) for i in picked], rng, *sizes)
        if made:
            return dict(zip(picked, made))
    return None


def _pick(source, changed, kind, rng):
    """Indices of one changeable chromosome not yet changed (two of different types for a
    translocation), drawn at random; None when there are none."""
    free = [i for i in range(len(source.items)) if i not in changed and source.changeable(i)]
    if not free:
        return None
    first = free[int(rng.integers(len(free)))]
    if kind != "t":
        return [first]
    others = [i for i in free if source.items[i].type != source.items[first].type]
    return None if not others else [first, others[int(rng.integers(len(others)))]]


def _write_copy(work, name, slide, items, aberrated):
    """Write one copy's PNGs; returns (its labels.csv rows, its structural.csv rows)."""
    source, changed = aberrated
    (work / name).mkdir()
    label_rows, truth = [], []
    for nn, label in enumerate(items):
        rel = f"{name}/{name}_{nn:02d}.png"
        made = changed.get(nn)
        image = source.images[nn] if made is None else made.image
        write_atomic(work / rel, encode_png(image, what=rel))
        polarity = "" if label.polarity == NOT_LABELLED else label.polarity
        label_rows.append([name, slide, rel, label.type + 1, polarity])
        if made is not None:
            truth.append({"cell": name, "file": rel, "kind": made.kind,
                          "type": made.chromosome_type, "arm": made.arm,
                          "start": f"{made.start:.4f}", "end": f"{made.end:.4f}",
                          "size": f"{made.size:.4f}", "iscn": made.iscn})
    return label_rows, truth


def _write_csv(path, header, rows):
    """A CSV file with ``header`` and ``rows``, written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


__all__ = ["MAX_TRIES", "STRAIGHT_LIMIT", "STRUCTURAL_HEADER", "check_options", "draw_one",
           "write_structural_cases"]
