"""Synthetic structural aberrations cut from normal, upright G-banded chromosomes.

A chromosome cut-out (karyogram-oriented: upright, p-arm at the top, q-arm down, dark on a white
255 background, as pki3's and ``cells.render_chromosome``'s) is cut into horizontal slabs of
rows, and the slabs are put together again in another order:

- ``axis_profile(image, chromosome_type)``: its extent along the vertical axis (top and bottom
  rows of its mask), the axis column and the width of every row, and the centromere row;
- ``terminal_deletion``, ``interstitial_deletion``, ``duplication``, ``paracentric_inversion``,
  ``pericentric_inversion``, ``translocation`` (two chromosomes in, two derivatives out) and
  ``isochromosome``: each returns an ``Aberration`` (the new image and its label), segment
  positions and sizes given as fractions of the chromosome's length from the p-arm end;
- ``draw_aberration(kind, profiles, rng, size_min, size_max)``: one of them at random.

``vfinfer.tools.synthesis.structural_cases`` writes whole cells with such chromosomes.

The mask: pixels darker than ``WHITE_LEVEL`` (254), closed, holes filled, largest component.
``vfinfer.util.geometry.chromosome_mask`` (Otsu) splits pale chromosomes in two on pki3, so
it is only the fallback for an image without a white background. Pixels outside the mask are
set to 255 before anything is cut, so no speck travels with a slab.

The centromere: the type's centromere index (``cells.CHROMOSOME_FACTS``: p-arm length / total
length) from the top row, then, with ``refine``, the narrowest row within
``REFINE_WINDOW`` of the length around it when that row is a real constriction (a local minimum
of the smoothed width below ``CONSTRICTION`` times the median width) and not in an end cap.

Seams, where two slabs meet:

- sideways: each slab keeps its own shape (bends included) and is moved as a whole so that its
  axis at the seam continues the axis of the slab above it (no step to the side);
- width: both slabs are scaled across (about their axis) to the geometric mean of their two
  widths at the seam, the scaling fading to none over ``TAPER_WIDTHS`` chromosome widths;
- gray levels: ``BLEND_ROWS`` rows on either side of a seam are a linear cross-fade of the two
  slabs, each continued past its cut by its own next rows, so that no cut line shows;
- a terminal deletion would leave a cut end (flat, often through a dark band): the original
  end cap (its last ``CAP_WIDTHS`` chromosome widths of rows, pale and rounded) is joined onto
  the new end like any other slab, so the end keeps the original's outline and shading.

Nothing else changes the pixels: gray levels are only resampled (bilinear) and blended, so
the intensity scale of the source is kept; rows that are not scaled across are copied
exactly (sideways moves are whole pixels). The background stays 255: faint cross-fade residue
more than a pixel outside the result's own mask is cleared.
"""

from collections import namedtuple
from dataclasses import dataclass

import cv2
import numpy as np

from vfinfer.model.classes import TYPE_NAMES
from vfinfer.tools.synthesis.cells import CHROMOSOME_FACTS
from vfinfer.util.geometry import body_mask

KINDS = ("del", "dup", "inv", "t", "i")
BACKGROUND = 255
REFINE_WINDOW = 0.08  # centromere search, +- this share of the length around the estimate
CONSTRICTION = 0.9  # a centromere row is narrower than this times the median width
CAP_WIDTHS = 0.5  # rows of an end cap, in median chromosome widths
CENTROMERE_MARGIN = 0.03  # interstitial segments keep this share of the length off the centromere
BLEND_ROWS = 2  # cross-fade over this many rows on either side of a seam
TAPER_WIDTHS = 1.0  # the width matching fades out over this many median widths of rows
MIN_ISO_ARM = 0.25  # an isochromosome doubles an arm of at least this share of the length

# rows ``first, first + step, ...`` (``count`` of them) of source image ``source``
Piece = namedtuple("Piece", "source first count step")


@dataclass(frozen=True, eq=False)
class AxisProfile:
    """An upright chromosome cut-out measured along its vertical axis.

    ``image``: float32, 255 outside the mask. ``top``, ``bottom``: its first and last rows
    (inclusive). ``centromere``: the centromere row (the first q-arm row). ``centre``, ``width``:
    the axis column and the mask width of every image row (smoothed; outside top..bottom the
    nearest end's). ``refined``: the centromere is the width minimum
    (else the type's centromere index)."""

    image: np.ndarray
    chromosome_type: int  # 1-24 (23 = X, 24 = Y)
    top: int
    bottom: int
    centromere: int
    centre: np.ndarray
    width: np.ndarray
    median_width: float
    refined: bool

    @property
    def length(self):
        """Rows from the top to the bottom row, both counted."""
        return self.bottom - self.top + 1

    @property
    def name(self):
        """The type as ISCN writes it: 1-22, X or Y."""
        return TYPE_NAMES[self.chromosome_type - 1]

    @property
    def cap_rows(self):
        """Rows of a rounded end cap: ``CAP_WIDTHS`` median widths, at most a sixth of the
        length."""
        return int(max(1, min(round(CAP_WIDTHS * self.median_width), self.length // 6)))

    def row(self, fraction):
        """The row at ``fraction`` of the length from the top (p-arm end)."""
        return self.top + int(round(float(fraction) * self.length))

    def fraction(self, row):
        """The share of the length from the top to ``row``."""
        return (row - self.top) / self.length

    def arm_rows(self, arm):
        """``(first, stop)`` rows of the p arm (above the centromere) or the q arm."""
        return (self.top, self.centromere) if arm == "p" else (self.centromere, self.bottom + 1)


@dataclass(frozen=True, eq=False)
class Aberration:
    """One aberrant chromosome and its label.

    ``kind``: del, dup, inv, t or i. ``chromosome_type``: 1-24 (a derivative: its centromere's
    chromosome). ``arm``: p, q, or pq (a pericentric inversion). ``start``, ``end``: the changed
    segment as fractions of the source chromosome's length from its p-arm end (deleted,
    duplicated, inverted, given away, or the arm an isochromosome doubles); ``size`` = end -
    start. ``iscn``: ISCN-like text with fractional positions. ``pieces``: the rows it is made
    of (``Piece`` tuples, sources numbered as given), ``top``: the image row of its first row.
    """

    image: np.ndarray
    kind: str
    chromosome_type: int
    arm: str
    start: float
    end: float
    size: float
    iscn: str
    pieces: tuple
    top: int

    def source_rows(self):
        """``(source, row)`` of each chromosome row of ``image`` from ``top`` down, as an
        (N, 2) int array (rows inside a seam's cross-fade: the piece they belong to)."""
        rows = [(p.source, p.first + i * p.step) for p in self.pieces for i in range(p.count)]
        return np.array(rows, dtype=int).reshape(-1, 2)


# -- the axis profile ---------------------------------------------------------------------------
def _smooth(values, sigma):
    """A 1-D Gaussian smoothing with the ends held (edge padding)."""
    radius = max(1, int(3 * sigma))
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma).ravel()
    return np.convolve(np.pad(values, radius, mode="edge"), kernel, mode="valid")


def _row_extents(mask, top, bottom):
    """(axis column, width) of every image row: the middle and the span of the mask's row,
    rows outside ``top..bottom`` (or empty) taking their nearest measured neighbour's."""
    rows = np.arange(mask.shape[0])
    has = mask.any(axis=1)
    left = np.argmax(mask, axis=1).astype(np.float64)
    right = (mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)).astype(np.float64)
    known = has & (rows >= top) & (rows <= bottom)
    centre = np.interp(rows, rows[known], ((left + right) / 2)[known])
    width = np.interp(rows, rows[known], (right - left + 1)[known])
    return centre, width


def axis_profile(image, chromosome_type, refine=True):
    """The ``AxisProfile`` of an upright cut-out (2-D uint8, dark on white, p-arm up) of type
    ``chromosome_type`` (1-24). ``refine``: move the centromere from the type's centromere
    index to the width minimum near it, when there is a clear one (module docstring)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {image.shape}")
    if not 1 <= int(chromosome_type) <= len(TYPE_NAMES):
        raise ValueError(f"chromosome type must be 1-24 (23 = X, 24 = Y), got {chromosome_type}")
    mask = body_mask(image)
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) < 8:
        raise ValueError(f"no chromosome of at least 8 rows found (mask has {len(rows)} rows)")
    top, bottom = int(rows[0]), int(rows[-1])
    centre, raw_width = _row_extents(mask, top, bottom)
    width = _smooth(raw_width, 1.0)
    clean = np.where(mask, image, BACKGROUND).astype(np.float32)
    median_width = float(np.median(raw_width[top:bottom + 1]))
    index = CHROMOSOME_FACTS[int(chromosome_type) - 1][1]
    profile = AxisProfile(clean, int(chromosome_type), top, bottom, 0, _smooth(centre, 2.0),
                          width, median_width, False)
    guess = profile.row(index)
    found = _constriction(profile, guess) if refine else None
    return _with_centromere(profile, guess if found is None else found, found is not None)


def _with_centromere(profile, row, refined):
    """The profile with its centromere at ``row``."""
    fields = dict(profile.__dict__, centromere=int(row), refined=bool(refined))
    return AxisProfile(**fields)


def _constriction(profile, guess):
    """The row of the narrowest smoothed width within ``REFINE_WINDOW`` of the length around
    ``guess`` (end caps left out), or None when it is not a clear constriction: at the edge of
    the window (no local minimum) or not below ``CONSTRICTION`` times the median width."""
    half = max(2, int(round(REFINE_WINDOW * profile.length)))
    lo = max(guess - half, profile.top + profile.cap_rows)
    hi = min(guess + half, profile.bottom - profile.cap_rows)
    if hi - lo < 2:
        return None
    window = profile.width[lo:hi + 1]
    j = int(np.argmin(window))
    if j in (0, len(window) - 1) or window[j] > CONSTRICTION * profile.median_width:
        return None
    return lo + j


# -- putting slabs together ---------------------------------------------------------------------
def _lateral_shifts(profiles, pieces):
    """Sideways shift of each piece, whole pixels (so that rows not scaled across are copied
    exactly, not resampled): the first stays, each next one moves so that its axis at its first
    row meets the axis of the piece above at that one's last row."""
    shifts = [0]
    for above, below in zip(pieces[:-1], pieces[1:]):
        last = above.first + (above.count - 1) * above.step
        meet = profiles[above.source].centre[last] + shifts[-1]
        shifts.append(int(round(meet - profiles[below.source].centre[below.first])))
    return shifts


def _width_factors(profiles, pieces, starts):
    """(pieces, rows) scaling across: at each seam both pieces reach the geometric mean of
    their widths there, fading to 1 over ``TAPER_WIDTHS`` median widths into each piece."""
    n = starts[-1]
    factors = np.ones((len(pieces), n))
    rows = np.arange(n)
    for k in range(1, len(pieces)):
        above, below, seam = pieces[k - 1], pieces[k], starts[k]
        a_prof, b_prof = profiles[above.source], profiles[below.source]
        w_above = a_prof.width[above.first + (above.count - 1) * above.step]
        w_below = b_prof.width[below.first]
        meet = float(np.sqrt(w_above * w_below))
        for j, piece, width, dist in ((k - 1, above, w_above, np.maximum(0, seam - 1 - rows)),
                                      (k, below, w_below, np.maximum(0, rows - seam))):
            taper = max(1.0, min(TAPER_WIDTHS * profiles[piece.source].median_width,
                                 piece.count))
            ramp = np.clip(1.0 - dist / taper, 0.0, 1.0)
            factors[j] *= 1.0 + (meet / width - 1.0) * ramp
    return factors


def _blend_weights(pieces, starts):
    """(pieces, rows) weights summing to 1 per row: each piece owns its rows, with a linear
    cross-fade over ``BLEND_ROWS`` rows on either side of each seam (fewer for short pieces)."""
    n = starts[-1]
    centres = np.arange(n) + 0.5
    weights = np.zeros((len(pieces), n))
    for k in range(len(pieces)):
        rise = np.ones(n) if k == 0 else _ramp(centres, starts[k], pieces, k)
        fall = (np.ones(n) if k == len(pieces) - 1
                else 1.0 - _ramp(centres, starts[k + 1], pieces, k + 1))
        weights[k] = rise * fall
    return weights


def _ramp(centres, seam, pieces, k):
    """0 above the seam before piece ``k``, 1 below it, linear over the cross-fade rows."""
    half = min(BLEND_ROWS, pieces[k - 1].count // 2, pieces[k].count // 2)
    if half == 0:
        return (centres >= seam).astype(np.float64)
    return np.clip((centres - (seam - half)) / (2 * half), 0.0, 1.0)


def _render(profiles, pieces, margin_from=0):
    """The image made of ``pieces`` (rows of ``profiles``' images), seams as in the module
    docstring, with the white margin ``profiles[margin_from]`` has. Returns (image, its first
    chromosome row)."""
    starts = np.concatenate([[0], np.cumsum([p.count for p in pieces])]).astype(int)
    n = int(starts[-1])
    factors = _width_factors(profiles, pieces, starts)
    weights = _blend_weights(pieces, starts)
    shifts = _lateral_shifts(profiles, pieces)
    reach = int(np.ceil(max(p.image.shape[1] for p in profiles) * max(1.0, factors.max())))
    left = reach + max(0, -min(shifts)) + 2
    canvas_w = left + reach + max(0, max(shifts)) + 2
    out = np.zeros((n, canvas_w), dtype=np.float32)
    for k, piece in enumerate(pieces):
        _add_piece(out, profiles[piece.source], piece, starts[k], shifts[k] + left, factors[k],
                   weights[k])
    image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    near = cv2.dilate(body_mask(image).astype(np.uint8), np.ones((3, 3), np.uint8))
    image[near == 0] = BACKGROUND  # faint cross-fade residue beside the chromosome
    return _crop(image, _margin(profiles[margin_from]))


def _add_piece(out, profile, piece, start, offset, factors, weights):
    """Add one piece's weighted rows to ``out`` (float32, rows x columns): its source rows
    (continued past its ends where a cross-fade reaches beyond it), moved sideways by
    ``offset`` and scaled across about its axis by ``factors``."""
    rows = np.flatnonzero(weights > 0)
    if len(rows) == 0:
        return
    src = np.clip(piece.first + (rows - start) * piece.step, 0, profile.image.shape[0] - 1)
    axis = profile.centre[src]
    xs = np.arange(out.shape[1], dtype=np.float64)
    map_x = axis[:, None] + (xs[None, :] - offset - axis[:, None]) / factors[rows, None]
    map_y = np.repeat(src[:, None].astype(np.float32), out.shape[1], axis=1)
    sampled = cv2.remap(profile.image, map_x.astype(np.float32), map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
    out[rows] += sampled * weights[rows, None].astype(np.float32)


def _margin(profile):
    """The source's white margin around its chromosome (its narrowest side), in pixels."""
    height, width = profile.image.shape
    cols = np.flatnonzero((profile.image < BACKGROUND).any(axis=0))
    return int(min(profile.top, height - 1 - profile.bottom, cols[0], width - 1 - cols[-1]))


def _crop(image, margin):
    """The chromosome rows cropped across to their non-white columns, ``margin`` white pixels
    added on every side. Returns (image, its first chromosome row)."""
    cols = np.flatnonzero((image < BACKGROUND).any(axis=0))
    image = image[:, cols[0]:cols[-1] + 1]
    return np.pad(image, margin, constant_values=BACKGROUND), margin


# -- the aberrations ----------------------------------------------------------------------------
def _text(fraction):
    return f"{fraction:.2f}"


def _label(profile, kind, arm, rows, text, pieces, rendered):
    """An ``Aberration`` of ``profile``'s type, its changed segment ``rows`` (first, stop)."""
    image, top = rendered
    start, end = profile.fraction(rows[0]), profile.fraction(rows[1])
    return Aberration(image, kind, profile.chromosome_type, arm, round(start, 4),
                      round(end, 4), round(end - start, 4), text, tuple(pieces), top)


def _segment(profile, start, size):
    """(first, stop) rows of the segment of ``size`` (fraction of the length) from ``start``."""
    first = profile.row(start)
    stop = first + int(round(float(size) * profile.length))
    if stop - first < 1 or first < profile.top or stop > profile.bottom + 1:
        raise ValueError(f"segment {start:.3f} + {size:.3f} of chromosome {profile.name} is "
                         f"not a segment of at least one row inside its {profile.length} rows")
    return first, stop


def _centromere_margin(profile):
    return max(1, int(round(CENTROMERE_MARGIN * profile.length)))


def _interstitial_arm(profile, first, stop):
    """The arm holding rows ``first..stop`` clear of its end cap and the centromere margin."""
    cen, cap, margin = profile.centromere, profile.cap_rows, _centromere_margin(profile)
    if profile.top + cap <= first and stop <= cen - margin:
        return "p"
    if cen + margin <= first and stop <= profile.bottom + 1 - cap:
        return "q"
    raise ValueError(f"segment {_text(profile.fraction(first))}-{_text(profile.fraction(stop))}"
                     f" of chromosome {profile.name} is not inside one arm clear of its ends and "
                     f"centromere (at {_text(profile.fraction(cen))})")


def _distal_rows(profile, arm, size):
    """(first, stop) rows of the distal segment of ``arm`` of ``size`` (fraction of the
    length), which must leave the centromere margin."""
    if arm not in ("p", "q"):
        raise ValueError(f"arm must be p or q, got {arm!r}")
    rows = int(round(float(size) * profile.length))
    margin = _centromere_margin(profile)
    first, stop = ((profile.top, profile.top + rows) if arm == "p"
                   else (profile.bottom + 1 - rows, profile.bottom + 1))
    if rows < 1 or (stop > profile.centromere - margin if arm == "p"
                    else first < profile.centromere + margin):
        raise ValueError(f"a distal segment of {size:.3f} does not fit in the {arm} arm of "
                         f"chromosome {profile.name} (centromere at "
                         f"{_text(profile.fraction(profile.centromere))})")
    return first, stop


def terminal_deletion(profile, arm, size):
    """del: the distal ``size`` (fraction of the length) of ``arm`` removed. The original end
    cap (``cap_rows``, the pale rounded telomeric end) is joined onto the new end, as a healed
    broken end carries a new telomere, so the removed rows start just inside the cap: ``start``
    and ``end`` say which. ISCN-like text with the one breakpoint, as ISCN writes a terminal
    deletion: ``del(5)(p:0.20)`` (p-ter to 0.20 lost), ``del(5)(q:0.80)``."""
    if arm not in ("p", "q"):
        raise ValueError(f"arm must be p or q, got {arm!r}")
    rows, cap = int(round(float(size) * profile.length)), profile.cap_rows
    cen, margin = profile.centromere, _centromere_margin(profile)
    first = profile.top + cap if arm == "p" else profile.bottom + 1 - cap - rows
    stop = first + rows
    if rows < 1 or (stop > cen - margin if arm == "p" else first < cen + margin):
        raise ValueError(f"a terminal deletion of {size:.3f} does not fit in the {arm} arm of "
                         f"chromosome {profile.name} (centromere at "
                         f"{_text(profile.fraction(cen))}, end cap {cap} rows)")
    pieces = _deleted(profile, first, stop)
    point = stop if arm == "p" else first
    text = f"del({profile.name})({arm}:{_text(profile.fraction(point))})"
    return _label(profile, "del", arm, (first, stop), text, pieces, _render([profile], pieces))


def _whole(profile, first, stop):
    """The pieces above row ``first`` and from row ``stop`` down."""
    return [Piece(0, profile.top, first - profile.top, 1),
            Piece(0, stop, profile.bottom + 1 - stop, 1)]


def _deleted(profile, first, stop):
    """Pieces of the chromosome without rows ``first..stop``."""
    return _whole(profile, first, stop)


def _duplicated(profile, first, stop):
    """Pieces of the chromosome with rows ``first..stop`` twice, one after the other."""
    return [Piece(0, profile.top, stop - profile.top, 1),
            Piece(0, first, profile.bottom + 1 - first, 1)]


def _inverted(profile, first, stop):
    """Pieces of the chromosome with rows ``first..stop`` reversed top to bottom."""
    above, below = _whole(profile, first, stop)
    return [above, Piece(0, stop - 1, stop - first, -1), below]


def _interstitial(kind, profile, start, size, make_pieces):
    """An aberration of a segment inside one arm, labelled ``kind(5)(q:0.62-0.80)``."""
    first, stop = _segment(profile, start, size)
    arm = _interstitial_arm(profile, first, stop)
    pieces = make_pieces(profile, first, stop)
    text = (f"{kind}({profile.name})({arm}:{_text(profile.fraction(first))}-"
            f"{_text(profile.fraction(stop))})")
    return _label(profile, kind, arm, (first, stop), text, pieces, _render([profile], pieces))


def interstitial_deletion(profile, start, size):
    """del: a segment (from ``start``, ``size`` long, fractions of the length) inside one arm
    removed, the parts above and below joined: ``del(5)(q:0.62-0.80)``."""
    return _interstitial("del", profile, start, size, _deleted)


def duplication(profile, start, size):
    """dup: a segment inside one arm repeated in tandem (directly after itself):
    ``dup(5)(q:0.62-0.80)``."""
    return _interstitial("dup", profile, start, size, _duplicated)


def paracentric_inversion(profile, start, size):
    """inv: a segment inside one arm reversed top to bottom: ``inv(5)(q:0.62-0.80)``."""
    return _interstitial("inv", profile, start, size, _inverted)


def pericentric_inversion(profile, start, size):
    """inv: a segment spanning the centromere (by the centromere margin on either side, clear
    of the end caps) reversed top to bottom; arm ``pq``: ``inv(5)(p:0.20q:0.45)``."""
    first, stop = _segment(profile, start, size)
    cen, margin, cap = profile.centromere, _centromere_margin(profile), profile.cap_rows
    if not (profile.top + cap <= first <= cen - margin
            and cen + margin <= stop <= profile.bottom + 1 - cap):
        raise ValueError(f"segment {_text(profile.fraction(first))}-"
                         f"{_text(profile.fraction(stop))} of chromosome {profile.name} does not "
                         f"span its centromere (at {_text(profile.fraction(cen))}) clear of "
                         "its ends")
    pieces = _inverted(profile, first, stop)
    text = (f"inv({profile.name})(p:{_text(profile.fraction(first))}"
            f"q:{_text(profile.fraction(stop))})")
    return _label(profile, "inv", "pq", (first, stop), text, pieces, _render([profile], pieces))


def isochromosome(profile, arm):
    """i: ``arm`` doubled, mirrored at the centromere in place of the other arm (i(q): the
    mirrored q arm on top, then the centromere row and the q arm): ``i(5)(q10)``. Its
    length is about twice that arm's."""
    cen, top, bottom = profile.centromere, profile.top, profile.bottom
    if arm not in ("p", "q"):
        raise ValueError(f"arm must be p or q, got {arm!r}")
    first, stop = profile.arm_rows(arm)
    if stop - first < 2:
        raise ValueError(f"the {arm} arm of chromosome {profile.name} has under two rows")
    if arm == "q":
        pieces = [Piece(0, bottom, bottom - cen, -1), Piece(0, cen, bottom + 1 - cen, 1)]
    else:
        pieces = [Piece(0, top, cen + 1 - top, 1), Piece(0, cen - 1, cen - top, -1)]
    text = f"i({profile.name})({arm}10)"
    return _label(profile, "i", arm, (first, stop), text, pieces, _render([profile], pieces))


def _iscn_order(profiles):
    """Indices of ``profiles`` in ISCN's order: sex chromosomes first, then by number."""
    return sorted(range(len(profiles)), key=lambda k: (profiles[k].chromosome_type <= 22,
                                                       profiles[k].chromosome_type))


def _incoming(source, profile, arm, rows, onto_arm):
    """The piece of ``profile``'s distal segment ``rows`` of ``arm``, turned so that its
    telomere points outwards on ``onto_arm`` of the other chromosome (up on p, down on q)."""
    first, stop = rows
    telomere_first = arm == "p"  # rows first..stop run from the telomere inwards on p
    if telomere_first == (onto_arm == "p"):
        return Piece(source, first, stop - first, 1)
    return Piece(source, stop - 1, stop - first, -1)


def _derivative(profiles, own, arms, rows, text):
    """der(own): chromosome ``own`` (0 or 1) with its distal segment swapped for the other's."""
    other = 1 - own
    profile = profiles[own]
    first, stop = rows[own]
    incoming = _incoming(other, profiles[other], arms[other], rows[other], arms[own])
    if arms[own] == "q":
        pieces = [Piece(own, profile.top, first - profile.top, 1), incoming]
    else:
        pieces = [incoming, Piece(own, stop, profile.bottom + 1 - stop, 1)]
    rendered = _render(profiles, pieces, margin_from=own)
    return _label(profile, "t", arms[own], rows[own], f"der({profile.name}){text}", pieces,
                  rendered)


def translocation(profile_a, arm_a, size_a, profile_b, arm_b, size_b):
    """t: the distal segments of ``arm_a`` of one chromosome and ``arm_b`` of another of a
    different type exchanged (each ``size`` a fraction of its own chromosome's length).
    Returns (der(a), der(b)); each is labelled with its own given-away segment and the text
    ``der(9)t(9;22)(q:0.80;q:0.85)`` (ISCN order, each breakpoint as a fraction of its
    chromosome's length from the p-arm end). Pieces: source 0 is a, 1 is b."""
    if profile_a.chromosome_type == profile_b.chromosome_type:
        raise ValueError(f"a translocation needs two chromosomes of different types, got "
                         f"{profile_a.name} twice")
    profiles, arms = (profile_a, profile_b), (arm_a, arm_b)
    rows = (_distal_rows(profile_a, arm_a, size_a), _distal_rows(profile_b, arm_b, size_b))

    def breakpoint(k):
        first, stop = rows[k]
        return profiles[k].fraction(stop if arms[k] == "p" else first)

    order = _iscn_order(profiles)
    names = ";".join(profiles[k].name for k in order)
    points = ";".join(f"{arms[k]}:{_text(breakpoint(k))}" for k in order)
    text = f"t({names})({points})"
    return (_derivative(profiles, 0, arms, rows, text),
            _derivative(profiles, 1, arms, rows, text))


# -- drawn at random ----------------------------------------------------------------------------
def _start_window(profile, rows, where):
    """(lowest, highest) first row of a segment of ``rows`` rows: inside the ``p`` or ``q`` arm
    (clear of its end cap and the centromere margin) or, ``where="pq"``, spanning the
    centromere; None when there is no room."""
    top, bottom, cen = profile.top, profile.bottom, profile.centromere
    cap, margin = profile.cap_rows, _centromere_margin(profile)
    if where == "p":
        lo, hi = top + cap, cen - margin - rows
    elif where == "q":
        lo, hi = cen + margin, bottom + 1 - cap - rows
    else:
        lo, hi = max(top + cap, cen + margin - rows), min(cen - margin, bottom + 1 - cap - rows)
    return (lo, hi) if rows >= 1 and hi >= lo else None


def _draw_placed(kind, profile, rng, size):
    """An interstitial deletion, duplication or inversion (``where``: an arm, or ``pq`` for
    a pericentric inversion) of ``size`` at a random place with room, or None."""
    rows = int(round(size * profile.length))
    pericentric = kind == "inv" and rng.random() < 0.5
    options = ["pq"] if pericentric else ["p", "q"]
    windows = [w for w in (_start_window(profile, rows, where) for where in options) if w]
    if not windows:
        return None
    lo, hi = windows[int(rng.integers(len(windows)))]
    start = profile.fraction(int(rng.integers(lo, hi + 1)))
    size = rows / profile.length
    if kind == "del":
        return interstitial_deletion(profile, start, size)
    if kind == "dup":
        return duplication(profile, start, size)
    op = pericentric_inversion if pericentric else paracentric_inversion
    return op(profile, start, size)


def _arms_with_room(profile, size, keep=0):
    """The arms from which a segment of ``size`` can be cut between the centromere margin and
    ``keep`` rows at the arm's end."""
    rows, margin = int(round(size * profile.length)), _centromere_margin(profile)
    room = {"p": profile.centromere - margin - profile.top - keep,
            "q": profile.bottom + 1 - profile.centromere - margin - keep}
    return [arm for arm in ("p", "q") if 1 <= rows <= room[arm]]


def draw_aberration(kind, profiles, rng, size_min=0.1, size_max=0.3):
    """A random aberration of ``kind`` (one of ``KINDS``) of the chromosome ``profiles[0]``
    (and ``profiles[1]`` for t, of another type), the segment's size drawn uniformly from
    ``size_min..size_max`` (fraction of the length; the i kind doubles a whole arm of at least
    ``MIN_ISO_ARM``); del is terminal or interstitial, inv paracentric or pericentric, each
    half the time. Returns a list of ``Aberration`` (two for t), or None when it does not fit
    this chromosome."""
    if kind not in KINDS:
        raise ValueError(f"unknown aberration kind {kind!r}: expected one of {', '.join(KINDS)}")
    profile = profiles[0]
    if kind == "i":
        arms = [arm for arm, (first, stop) in ((a, profile.arm_rows(a)) for a in "pq")
                if (stop - first) / profile.length >= MIN_ISO_ARM]
        return [isochromosome(profile, arms[int(rng.integers(len(arms)))])] if arms else None
    size = float(rng.uniform(size_min, size_max))
    if kind == "t":
        return _draw_translocation(profiles, rng, size, float(rng.uniform(size_min, size_max)))
    if kind == "del" and rng.random() < 0.5:
        arms = _arms_with_room(profile, size, keep=profile.cap_rows)
        return ([terminal_deletion(profile, arms[int(rng.integers(len(arms)))], size)]
                if arms else None)
    placed = _draw_placed(kind, profile, rng, size)
    return None if placed is None else [placed]


def _draw_translocation(profiles, rng, size_a, size_b):
    """Both derivatives of a translocation between ``profiles[0]`` and ``[1]``, arms drawn
    among those with room, or None."""
    arms_a = _arms_with_room(profiles[0], size_a)
    arms_b = _arms_with_room(profiles[1], size_b)
    if not arms_a or not arms_b or profiles[0].chromosome_type == profiles[1].chromosome_type:
        return None
    arm_a = arms_a[int(rng.integers(len(arms_a)))]
    arm_b = arms_b[int(rng.integers(len(arms_b)))]
    return list(translocation(profiles[0], arm_a, size_a, profiles[1], arm_b, size_b))
