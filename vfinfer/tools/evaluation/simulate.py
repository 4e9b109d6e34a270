"""Abnormal cells simulated from normal labelled ones, for calibrating and testing abnormality
calls when real abnormal cells are few.

A trisomy k cell is a normal cell with one more chromosome k; a monosomy (or a chromosome lost
in preparation) is a normal cell with one fewer; 45,X, 47,XXX, 47,XXY and 47,XYY likewise.
So from each normal cell with known true types, ``simulate_abnormal`` makes abnormal cells
out of real network outputs:

- gain of autosome k (``+k``) / an extra X or Y: the probability row of a real chromosome of
  that true type from *another* cell (the donor; another cell of the same slide when there is
  one, so staining and preparation match) is added;
- loss of autosome k (``-k``) / of an X or the Y: one of the cell's own rows of that true
  type is removed.

The kinds cycle gain, loss, sex variant over ``per_cell`` simulated cells per normal cell;
the chromosome is drawn at random (seeded). What this cannot show: a real trisomy's extra
chromosome is a third image of the same cell, not a copy from a neighbour, and real
abnormal cells may differ in preparation. Simulated cells may take part in a fit
(``vfinfer calibrate``), but figures on them are reported apart from the figures on real
abnormal cells, never mixed into them.
"""

import numpy as np

from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.model.classes import TYPE_NAMES
from vfinfer.tools.evaluation.metrics import abnormal_cells

__all__ = ["SIMULATED_KINDS", "simulate_abnormal"]

SIMULATED_KINDS = ("gain", "loss", "sex")
X, Y = 22, 23


def simulate_abnormal(probs_by_cell, true_by_cell, slides=None, per_cell=3, seed=0):
    """Simulated abnormal cells from the normal (46,XX or 46,XY) labelled cells.

    ``probs_by_cell`` / ``true_by_cell``: mappings cell -> N x 24 probabilities and N 0-based
    true types. ``slides``: mapping cell -> slide (donors come from the same slide when it
    has another cell). Returns three dicts keyed by the new cells' names
    (``"<cell>~sim<j>:<change>"``): probabilities, true types and
    ``{"kind", "change", "karyotype", "source"}``.
    """
    if per_cell < 0:
        raise ValueError(f"per_cell must be >= 0, got {per_cell}")
    names = list(probs_by_cell)
    slides = slides or {}
    true = {c: np.asarray(true_by_cell[c], dtype=np.int64).reshape(-1) for c in names}
    abnormal = dict(zip(names, abnormal_cells([true[c] for c in names])))
    normal = [c for c in names if not abnormal[c]
              and ((true[c] == X).sum(), (true[c] == Y).sum()) in ((2, 0), (1, 1))]
    rng = np.random.default_rng(seed)
    probs_out, true_out, info = {}, {}, {}
    for cell in normal:
        p, t = np.asarray(probs_by_cell[cell], dtype=np.float64), true[cell]
        male = bool((t == Y).any())
        for j in range(per_cell):
            kind = SIMULATED_KINDS[j % len(SIMULATED_KINDS)]
            sign, chrom = _draw_change(kind, male, rng)
            if sign == "+":
                donor = _donor_row(cell, chrom, names, probs_by_cell, true, slides, rng)
                if donor is None:
                    continue  # no chromosome of that type elsewhere (e.g. no male cell)
                new_p, new_t = np.vstack([p, donor[None, :]]), np.append(t, chrom)
            else:
                rows = np.flatnonzero(t == chrom)
                drop = rng.choice(rows)
                new_p, new_t = np.delete(p, drop, axis=0), np.delete(t, drop)
            label = f"{sign}{TYPE_NAMES[chrom]}"
            name = f"{cell}~sim{j}:{label}"
            probs_out[name], true_out[name] = new_p, new_t
            info[name] = {"kind": kind, "change": label, "source": cell,
                          "karyotype": karyotype_summary(new_t)[0]}
    return probs_out, true_out, info


def _draw_change(kind, male, rng):
    """(sign, 0-based type) of one simulated change."""
    if kind == "gain":
        return "+", int(rng.integers(22))
    if kind == "loss":
        return "-", int(rng.integers(22))
    options = [("-", Y), ("+", X), ("+", Y)] if male else [("-", X), ("+", X)]
    return options[int(rng.integers(len(options)))]


def _donor_row(cell, chrom, names, probs_by_cell, true, slides, rng):
    """A probability row of a real chromosome of true type ``chrom`` from another cell."""
    others = [c for c in names if c != cell and (true[c] == chrom).any()]
    same_slide = [c for c in others if slides.get(c) is not None
                  and slides.get(c) == slides.get(cell)]
    pool = same_slide or others
    if not pool:
        return None
    donor = pool[int(rng.integers(len(pool)))]
    rows = np.flatnonzero(true[donor] == chrom)
    return np.asarray(probs_by_cell[donor], dtype=np.float64)[rng.choice(rows)]
