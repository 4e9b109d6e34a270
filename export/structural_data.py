"""Training examples of the structural score: normal chromosomes of labelled cells and
synthetic aberrations of those same chromosomes (``vfinfer.tools.synthesis.structural``).

Each cell gives its normal chromosomes (all, or ``normals_per_cell`` drawn at random) and up
to ``aberrant_per_cell`` aberrations, each of a kind drawn from ``kinds`` and made from one of
the cell's straight, q-arm-down chromosomes (two of different types for a translocation: both
derivatives are examples), segment sizes uniform in ``size_min..size_max`` of the length.
Aberrant chromosomes are measured against the median length of their normal cell. Every
example goes through ``vfinfer.pipeline.structural`` exactly as at run time (crop to the mask,
fit the canvas, condition on the labelled type and the log relative length).
"""

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from vfinfer.io.labels import by_cell, cell_slides
from vfinfer.pipeline.structural import conditions, fit_canvas, structural_crop
from vfinfer.tools.synthesis.structural import KINDS
from vfinfer.tools.synthesis.structural_cases import SourceCell, draw_one

MAX_TRIES = 20  # chromosomes and sizes tried per aberration


@dataclass
class ExampleOptions:
    """How the examples of one cell are made."""

    height: int
    width: int
    kinds: tuple = KINDS
    size_min: float = 0.05
    size_max: float = 0.4
    normals_per_cell: int = 0  # 0: every chromosome of the cell
    aberrant_per_cell: int = 8


@dataclass
class Examples:
    """Arrays of examples: ``canvas`` (N, H, W) uint8, ``cond`` (N, 25) float32, ``label``
    (N,) 1 = aberrant, ``kind`` ("" for normal), ``size`` (0 for normal), ``cell``."""

    canvas: np.ndarray
    cond: np.ndarray
    label: np.ndarray
    kind: list = field(default_factory=list)
    size: np.ndarray = None
    cell: list = field(default_factory=list)

    def __len__(self):
        return len(self.label)

    def counts(self):
        """Normal and aberrant examples, the latter per kind."""
        kinds = {k: self.kind.count(k) for k in sorted(set(self.kind) - {""})}
        return {"normal": int((self.label == 0).sum()), "aberrant": int(self.label.sum()),
                "aberrant_by_kind": kinds}


def split_cells(labels, val_share, seed):
    """(train cells, validation cells): whole slides held out, about ``val_share`` of them."""
    cells = by_cell(labels)
    slides = cell_slides(labels)
    names = sorted({slides.get(c, c) for c in cells})
    rng = np.random.default_rng([seed, 0x57A1])
    held = set(rng.permutation(names)[:max(1, round(val_share * len(names)))].tolist())
    train = {c: items for c, items in cells.items() if slides.get(c, c) not in held}
    val = {c: items for c, items in cells.items() if slides.get(c, c) in held}
    return train, val


def _aberrations(source, rng, options):
    """Up to ``aberrant_per_cell`` ``Aberration``s of the cell, each of a kind drawn from
    ``options.kinds`` on chromosomes not changed before (``structural_cases.draw_one``)."""
    changed = {}
    for _ in range(options.aberrant_per_cell):
        kind = options.kinds[int(rng.integers(len(options.kinds)))]
        changed.update(draw_one(source, changed, kind, rng,
                                (options.size_min, options.size_max), MAX_TRIES) or {})
    return list(changed.values())


def cell_examples(name, items, seed, options):
    """The ``Examples`` of one cell (module doc); deterministic given ``seed`` and ``name``."""
    rng = np.random.default_rng([seed, *name.encode()])
    source = SourceCell(items)
    crops = [structural_crop(img) for img in source.images]
    median = float(np.median([c.shape[0] for c in crops]))
    chosen = range(len(crops))
    if options.normals_per_cell and options.normals_per_cell < len(crops):
        chosen = sorted(rng.choice(len(crops), options.normals_per_cell, replace=False))
    pairs = [(crops[i], items[i].type, "", 0.0) for i in chosen]
    for aberration in _aberrations(source, rng, options):
        pairs.append((structural_crop(aberration.image), aberration.chromosome_type - 1,
                      aberration.kind, aberration.size))
    canvas = np.stack([fit_canvas(c, options.height, options.width) for c, *_ in pairs])
    cond = conditions([t for _, t, _, _ in pairs], [c.shape[0] for c, *_ in pairs], median)
    return Examples(canvas, cond, np.array([k != "" for *_, k, _ in pairs], np.float32),
                    [k for *_, k, _ in pairs], np.array([s for *_, s in pairs], np.float32),
                    [name] * len(pairs))


def _cell_job(job):
    return cell_examples(*job)


def make_examples(cells, seed, options, workers=1):
    """``cell_examples`` of every cell of ``{name: labels}``, joined (in ``workers``
    processes)."""
    jobs = [(name, items, seed, options) for name, items in sorted(cells.items())]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_cell_job, jobs, chunksize=4))
    else:
        parts = [_cell_job(job) for job in jobs]
    return join(parts)


def join(parts):
    """One ``Examples`` of several."""
    return Examples(np.concatenate([p.canvas for p in parts]),
                    np.concatenate([p.cond for p in parts]),
                    np.concatenate([p.label for p in parts]),
                    [k for p in parts for k in p.kind],
                    np.concatenate([p.size for p in parts]),
                    [c for p in parts for c in p.cell])
