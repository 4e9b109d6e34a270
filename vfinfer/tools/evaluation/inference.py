"""Inference over labelled images: every labelled image through one dispatch-off Pipeline, in
groups, with the seeded vertical flips of --flip-half; the probabilities vfinfer eval and
vfinfer calibrate compute their figures from."""

import time

import numpy as np

from vfinfer.io.labels import by_cell, labels_path, read_labels
from vfinfer.model.classes import N_TYPES
from vfinfer.pipeline import Pipeline
from vfinfer.util.images import read_gray8

MAX_GROUP = 1024  # images read and sent to the pipeline at a time
PROGRESS_EVERY_S = 5.0


def flip_selection(n_images, seed):
    """The images that ``flip_half`` flips: ``n_images // 2`` sorted indices, seeded."""
    rng = np.random.default_rng([int(seed), 0xF11B])
    return np.sort(rng.permutation(int(n_images))[: int(n_images) // 2])


def labelled_rows(cells, flip_half, seed):
    """(rows, cell of each row, true types, true polarities, flipped mask) of all cells;
    with ``flip_half`` a seeded half is flipped and its polarity labels with it."""
    rows = [(cell, row) for cell, cell_rows in cells.items() for row in cell_rows]
    case_ids = [cell for cell, _ in rows]
    true_type = np.array([row.type for _, row in rows], dtype=np.int64)
    true_pol = np.array([row.polarity for _, row in rows], dtype=np.int64)
    flipped = np.zeros(len(rows), dtype=bool)
    if flip_half:
        flipped[flip_selection(len(rows), seed)] = True
        true_pol = np.where(flipped & (true_pol >= 0), 1 - true_pol, true_pol)
    return rows, case_ids, true_type, true_pol, flipped


def groups(cells, size, whole_cells=False):
    """(start, stop) ranges of about ``size`` rows; with ``whole_cells`` (a model with size
    normalization, whose scale is a cell's median) a range ends only where a cell does, so no
    cell is split (a cell larger than ``size`` is one range). ``cells``: the cell of each row,
    each cell's rows together."""
    n, start, ranges = len(cells), 0, []
    while start < n:
        stop = min(start + size, n)
        if whole_cells:
            ends = [i for i in range(start + 1, stop + 1) if i == n or cells[i] != cells[i - 1]]
            stop = ends[-1] if ends else next(i for i in range(stop, n + 1)
                                              if i == n or cells[i] != cells[i - 1])
        ranges.append((start, stop))
        start = stop
    return ranges


def infer_rows(pipe, rows, flipped, log):
    """Type and polarity probabilities of every labelled row, in groups; also the seconds
    spent in the networks."""
    n = len(rows)
    type_probs = np.empty((n, N_TYPES), dtype=np.float64)
    pol_probs = np.empty((n, 2), dtype=np.float64)
    group = max(1, min(pipe.batch_size, MAX_GROUP))
    cells = [cell for cell, _ in rows]
    infer_s, last_log, facts = 0.0, time.perf_counter(), []
    for start, stop in groups(cells, group, whole_cells=bool(pipe.config.size_norm)):
        images = [_read(rows[i][1].path, flipped[i]) for i in range(start, stop)]
        t0 = time.perf_counter()
        out = pipe.infer(images, cells=cells[start:stop])
        infer_s += time.perf_counter() - t0
        type_probs[start:stop] = out["type_probs"]
        pol_probs[start:stop] = out["polarity_probs"]
        facts += out.get("facts") or [{}] * (stop - start)
        if time.perf_counter() - last_log >= PROGRESS_EVERY_S and stop < n:
            log(f"  {stop}/{n} images")
            last_log = time.perf_counter()
    return type_probs, pol_probs, infer_s, facts


def cell_probabilities(data_dir, labels_csv=None, model_dir=None, backend="auto", threads=0,
                       batch_size=None, keep=None, log=print, precision=None):
    """Type probabilities of labelled cells from one dispatch-off pass, as in ``evaluate``
    (no flipping); used by ``vfinfer calibrate``.

    ``keep``: a predicate on the cell name (None keeps every cell); only kept cells are run.
    Returns a dict: ``probs`` ({cell: N x 24 array}), ``true`` ({cell: N 0-based types}),
    ``labels`` (the CSV used), ``model``, ``backend`` and ``threshold`` (Algorithm 1's).
    """
    cells = by_cell(read_labels(data_dir, labels_csv))
    if keep is not None:
        cells = {cell: rows for cell, rows in cells.items() if keep(cell)}
    if not cells:
        raise ValueError("no labelled cell is left after the selection")
    rows = [(cell, row) for cell, cell_rows in cells.items() for row in cell_rows]
    ids = np.array([cell for cell, _ in rows])
    true_type = np.array([row.type for _, row in rows], dtype=np.int64)
    with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                  dispatch_mode="none", precision=precision) as pipe:
        model, engine = pipe.manifest.summary(), pipe.backend.describe()
        threshold = pipe.manifest.threshold
        log(f"running {len(rows)} images of {len(cells)} cells on {engine.get('name')}")
        type_probs, _, _, _ = infer_rows(pipe, rows, np.zeros(len(rows), dtype=bool), log)
    return {"probs": {c: type_probs[ids == c] for c in cells},
            "true": {c: true_type[ids == c] for c in cells},
            "labels": str(labels_path(data_dir, labels_csv)),
            "model": model, "backend": engine, "threshold": threshold}


def _read(path, flip):
    image = read_gray8(path)
    return np.ascontiguousarray(np.flipud(image)) if flip else image
