"""Training examples of the structural score: normal chromosomes of labelled cells and
synthetic aberrations of those same chromosomes (``vfinfer.tools.synthesis.structural``).

Each cell gives its normal chromosomes (all, or ``normals_per_cell`` drawn at random) and up
to ``aberrant_per_cell`` aberrations, each of a kind drawn from ``kinds`` and made from one of
the cell's straight, q-arm-down chromosomes (two of different types for a translocation: both
derivatives are examples), segment sizes uniform in ``size_min..size_max`` of the length.
Aberrant chromosomes are measured against the median length of their normal cell. Every
example goes through ``vfinfer.pipeline.structural`` exactly as at run time (crop to the mask,
fit the canvas, condition on the labelled type and the log relative length).

With ``homologue`` each example also carries its homologue (``with_homologues``): normal
chromosomes their normal partner; aberrant ones the other copy of their type in the cell as
changed, which is normal because at most one chromosome of a type is changed per cell; and
the normal partners of aberrant chromosomes are examples too (label 0, their homologue the
aberrant copy), so that the score learns which copy of an unlike pair is the changed one.
"""

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from vfinfer.io.labels import by_cell, cell_slides
from vfinfer.pipeline.structural import canvas_of, conditions, structural_crop, with_homologues
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
    homologue: bool = False  # pair each chromosome with its homologue (module doc)
    fit: str = "each"  # how a chromosome is scaled onto the canvas (pipeline.structural.FITS)


@dataclass
class Examples:
    """Arrays of examples: ``canvas`` (N, H, W) uint8 ((N, 2, H, W) with the homologue),
    ``cond`` (N, 25) float32 ((N, 27) with the homologue), ``label``
    (N,) 1 = aberrant, ``kind`` ("" for normal), ``size`` (0 for normal), ``cell``, ``arm``
    (p, q or pq; "" for normal), ``segment`` (N, 2): the changed segment's start and end as
    fractions of the source chromosome's length from its p-arm end (0, 0 for normal)."""

    canvas: np.ndarray
    cond: np.ndarray
    label: np.ndarray
    kind: list = field(default_factory=list)
    size: np.ndarray = None
    cell: list = field(default_factory=list)
    arm: list = field(default_factory=list)
    segment: np.ndarray = None

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
    """``{index in the cell: Aberration}`` of up to ``aberrant_per_cell`` aberrations, each of
    a kind drawn from ``options.kinds`` on chromosomes not changed before
    (``structural_cases.draw_one``); with ``homologue``, at most one chromosome per type."""
    changed, blocked = {}, set()
    types = [item.type for item in source.items]
    for _ in range(options.aberrant_per_cell):
        kind = options.kinds[int(rng.integers(len(options.kinds)))]
        made = draw_one(source, blocked, kind, rng, (options.size_min, options.size_max),
                        MAX_TRIES) or {}
        changed.update(made)
        taken = {types[j] for j in made}
        blocked |= {i for i, t in enumerate(types) if t in taken} if options.homologue \
            else set(made)
    return changed


def cell_examples(name, items, seed, options):
    """The ``Examples`` of one cell (module doc); deterministic given ``seed`` and ``name``."""
    rng = np.random.default_rng([seed, *name.encode()])
    source = SourceCell(items)
    cell = _Cell([structural_crop(img) for img in source.images], [it.type for it in items])
    median = float(np.median(cell.lengths))
    chosen = range(len(cell.crops))
    if options.normals_per_cell and options.normals_per_cell < len(cell.crops):
        chosen = sorted(rng.choice(len(cell.crops), options.normals_per_cell, replace=False))
    changed = _aberrations(source, rng, options)
    aberrant = cell.changed_by(changed)
    picks = [(cell, i, "", 0.0) for i in chosen]
    picks += [(aberrant, i, a.kind, a.size) for i, a in sorted(changed.items())]
    if options.homologue:
        picks += [(aberrant, i, "", 0.0) for i in aberrant.partners(changed)]
    canvas, cond = _inputs(picks, median, options)
    kinds = [k for *_, k, _ in picks]
    arms = [changed[i].arm if k else "" for _, i, k, _ in picks]
    segment = np.array([(changed[i].start, changed[i].end) if k else (0.0, 0.0)
                        for _, i, k, _ in picks], np.float32).reshape(-1, 2)
    return Examples(canvas, cond, np.array([k != "" for k in kinds], np.float32), kinds,
                    np.array([s for *_, s in picks], np.float32), [name] * len(picks), arms,
                    segment)


@dataclass
class _Cell:
    """One cell's cropped chromosomes and their types (0-based)."""

    crops: list
    types: list

    @property
    def lengths(self):
        return [c.shape[0] for c in self.crops]

    def changed_by(self, aberrations):
        """The cell with the chromosomes of ``{index: Aberration}`` replaced."""
        crops, types = list(self.crops), list(self.types)
        for i, aberration in aberrations.items():
            crops[i] = structural_crop(aberration.image)
            types[i] = aberration.chromosome_type - 1
        return _Cell(crops, types)

    def partners(self, changed):
        """Unchanged chromosomes of the types of the ``changed`` indices."""
        types = {self.types[i] for i in changed}
        return [i for i, t in enumerate(self.types) if t in types and i not in changed]

    def inputs(self, wanted, median, options):
        """``{index: (canvas, cond)}`` of the ``wanted`` chromosomes; with the homologue,
        every chromosome of the cell is fitted, to be paired."""
        lengths = self.lengths
        if not options.homologue:
            canvases = [canvas_of(self.crops[i], options.height, options.width, options.fit,
                                  median) for i in wanted]
            cond = conditions([self.types[i] for i in wanted], [lengths[i] for i in wanted],
                              median)
            return {i: (canvases[k], cond[k]) for k, i in enumerate(wanted)}
        canvases = np.stack([canvas_of(c, options.height, options.width, options.fit, median)
                             for c in self.crops])
        paired, extra = with_homologues(canvases, self.types, lengths, median)
        cond = np.concatenate([conditions(self.types, lengths, median), extra], axis=1)
        return {i: (paired[i], cond[i]) for i in wanted}


def _inputs(picks, median, options):
    """(canvas, cond) of ``(cell, index, kind, size)`` picks (``_Cell.inputs``)."""
    done = {}
    for cell in {id(c): c for c, *_ in picks}.values():
        wanted = sorted({i for c, i, *_ in picks if c is cell})
        done[id(cell)] = cell.inputs(wanted, median, options)
    canvas = np.stack([done[id(c)][i][0] for c, i, *_ in picks])
    return canvas, np.stack([done[id(c)][i][1] for c, i, *_ in picks])


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
                    [c for p in parts for c in p.cell],
                    [a for p in parts for a in p.arm],
                    np.concatenate([p.segment for p in parts]))
