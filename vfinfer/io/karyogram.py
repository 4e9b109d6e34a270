"""Karyogram picture: chromosome cut-outs arranged in the standard clinical layout.

``karyogram_layers`` is a pure function (numpy + OpenCV only, no file I/O) that draws the
picture as two layers: a one-channel gray picture and a mask of what is drawn in red (the
low-confidence frames, the structural marks and their legend). Gray pictures are a third of
the memory a colour canvas moves, and ``vfinfer.util.images.encode_gray_png`` writes them as a
one-channel PNG, or as an indexed (palette) PNG when something is red, in less than half
the encoding time of a colour one (``benchmarks/karyogram_png.py``). ``render_karyogram``
composes the two into an H x W x 3 uint8 BGR image (the same pixels as the PNG decodes to).

Layout (ISCN groups, as in clinical karyograms)::

    1  2  3   |  4  5
    6  7  8  9  10  11  12   |  X
    13 14 15  |  16 17 18
    19 20  |  21 22  |  Y

Every type has a slot: its chromosomes side by side, bottom-aligned on a baseline, with the
label under the line.  All chromosomes share one scale and are shown q-arm down.
"""

import cv2
import numpy as np

from vfinfer.model.classes import N_TYPES, Q_ARM_DOWN, TYPE_NAMES

# Rows of the layout; each row is a tuple of groups, each group a tuple of 0-based types.
LAYOUT = (
    ((0, 1, 2), (3, 4)),
    ((5, 6, 7, 8, 9, 10, 11), (22,)),
    ((12, 13, 14), (15, 16, 17)),
    ((18, 19), (20, 21), (23,)),
)

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = 255
BLACK = 0
LINE_GREY = 190
RED = (0, 0, 255)  # BGR of the red layer
INK = 255  # what the red layer is drawn with (anti-aliased edges under half of it are dropped)

MIN_WIDTH = 1600  # canvas width unless a row needs more
MARGIN = 40  # left/right margin of the canvas
ROW_HEIGHT = 180  # height of the tallest chromosome after scaling, px
MAX_UPSCALE = 2.0
CHROM_GAP = 12  # between the chromosomes of one slot
SLOT_PAD = 14  # minimum free space on each side of a slot's content
MIN_SLOT_CONTENT = 50  # width reserved for an empty (or very narrow) slot
GROUP_GAP = 50  # minimum extra space between ISCN groups of a row
MARKER_ROOM = 24  # free space above the tallest chromosome of a row (for the "?")
MIN_CHROM_AREA = 40  # minimum chromosome area height of a row
BASE_GAP = 8  # between chromosome bottoms and the baseline
MARK_PAD = 4  # low-confidence rectangle distance from the chromosome

TITLE_SCALE, TITLE_THICK = 0.9, 2
LABEL_SCALE, LABEL_THICK = 0.6, 2
TEXT_SCALE, TEXT_THICK = 0.55, 1
MARK_SCALE, MARK_THICK = 0.6, 2

LEGEND_TEXT = "low-confidence call (type or orientation uncertain): please check"
STRUCTURAL_TEXT = "possible structural abnormality (structural score at or above threshold): review"
TRIANGLE = 7  # half width of the structural mark, px


def render_karyogram(images, types, polarities, low_confidence, title="", notes=(),
                     structural=None):
    """Arrange chromosome cut-outs into a karyogram picture: ``karyogram_layers`` composed
    into one H x W x 3 uint8 BGR image (the red layer in pure red)."""
    gray, red = karyogram_layers(images, types, polarities, low_confidence, title, notes,
                                 structural)
    picture = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if red is not None:
        picture[red] = RED
    return picture


def karyogram_layers(images, types, polarities, low_confidence, title="", notes=(),
                     structural=None):
    """Arrange chromosome cut-outs into a karyogram picture, as (gray, red).

    images: list of 2-D uint8 grayscale cut-outs (white background, dark chromosome).
    types: 0-based type per image (0-21 = autosomes 1-22, 22 = X, 23 = Y).
    polarities: per image, 1 = q-arm down, 0 = q-arm up (flipped vertically for display).
    low_confidence: bool per image; those are framed in red with a "?" and explained in a
        legend line at the bottom.
    title: text of the top line (e.g. "case_01   47,XY,+21"); notes: lines (warnings)
        printed at the bottom, wrapped to the picture width.
    structural: bool per image (None: none), chromosomes flagged by the structural score;
        each gets a red triangle pointing down at its top left corner, explained in a legend
        line.
    Returns (gray, red): the H x W uint8 gray picture and the H x W bool mask of the pixels
    drawn in red, or None when nothing is red. Raises ValueError on inconsistent input.
    """
    images, types, polarities, flags = _validate(images, types, polarities, low_confidence)
    marks = _structural_marks(structural, len(images))
    title = _ascii(title or "")
    notes = [_ascii(n) for n in ([notes] if isinstance(notes, str) else list(notes or ()))]

    if not images:
        return _render_empty(title, notes), None

    chroms = _scaled_chromosomes(images, polarities)
    slots = {t: [] for t in range(N_TYPES)}
    for i, t in enumerate(types):
        slots[t].append(i)

    content_w = {
        t: sum(chroms[i].shape[1] for i in idx) + CHROM_GAP * max(len(idx) - 1, 0)
        for t, idx in slots.items()
    }
    row_required = [
        sum(max(content_w[t], MIN_SLOT_CONTENT) + 2 * SLOT_PAD for g in row for t in g)
        + GROUP_GAP * (len(row) - 1)
        for row in LAYOUT
    ]
    width = max(MIN_WIDTH, max(row_required) + 2 * MARGIN)
    row_tops, row_heights, rows_end = _row_geometry(chroms, slots, _title_height(title))

    footer = _footer_lines(any(flags), notes, width, any(marks))
    footer_h = _footer_height(footer)
    height = rows_end + footer_h + 16

    canvas = np.full((height, width), WHITE, np.uint8)
    red = np.zeros((height, width), np.uint8)
    _draw_title(canvas, title)
    placed = [None] * len(images)  # (x, y, w, h) of each chromosome, for the markers
    for row, top, chrom_h, req in zip(LAYOUT, row_tops, row_heights, row_required):
        _draw_row(canvas, row, top + MARKER_ROOM + chrom_h + BASE_GAP,
                  (width - 2 * MARGIN - req), (slots, chroms, content_w), placed)
    _draw_marks(red, flags, marks, placed)
    _draw_footer((canvas, red), footer, height - footer_h - 16)
    return canvas, (red >= INK // 2 if any(flags) or any(marks) else None)


def _draw_marks(red, flags, marks, placed):
    """The low-confidence frames (``flags``) and structural marks (``marks``) of the
    chromosomes ``placed`` at (x, y, w, h), on the ``red`` layer."""
    for i, flag in enumerate(flags):
        if flag:
            _draw_marker(red, *placed[i])
    for i, mark in enumerate(marks):
        if mark:
            _draw_structural_mark(red, placed[i][0], placed[i][1] - MARK_PAD - 2)


def _row_geometry(chroms, slots, top):
    """Top and chromosome-area height of each row of ``LAYOUT`` from ``top`` down, and where
    the last row ends."""
    label_h = cv2.getTextSize("0", FONT, LABEL_SCALE, LABEL_THICK)[0][1]
    row_tops, row_heights = [], []
    y = top
    for row in LAYOUT:
        chrom_h = max([MIN_CHROM_AREA] + [chroms[i].shape[0] for g in row for t in g
                                          for i in slots[t]])
        row_tops.append(y)
        row_heights.append(chrom_h)
        y += MARKER_ROOM + chrom_h + BASE_GAP + 10 + label_h + 18
    return row_tops, row_heights, y


def _draw_row(canvas, row, base_y, spare, placement, placed):
    """One row of groups; the ``spare`` width is spread one share per slot, two per group
    gap."""
    slots, chroms, content_w = placement
    n_slots = sum(len(g) for g in row)
    share = spare / float(n_slots + 2 * (len(row) - 1))
    x = float(MARGIN)
    for gi, group in enumerate(row):
        if gi:
            x += GROUP_GAP + 2 * share
        for t in group:
            slot_w = max(content_w[t], MIN_SLOT_CONTENT) + 2 * SLOT_PAD + share
            _draw_slot(canvas, slots[t], chroms, t, x + slot_w / 2.0, base_y, placed)
            x += slot_w


# ----------------------------------------------------------------------------- validation


def _validate(images, types, polarities, low_confidence):
    try:
        images = list(images)
        types = list(types)
        polarities = list(polarities)
        flags = list(low_confidence)
    except TypeError as exc:
        raise ValueError(f"render_karyogram: arguments must be sequences ({exc})") from None
    n = len(images)
    for name, seq in (("types", types), ("polarities", polarities),
                      ("low_confidence", flags)):
        if len(seq) != n:
            raise ValueError(
                f"render_karyogram: got {n} images but {len(seq)} {name}; "
                "images, types, polarities and low_confidence must have the same length")
    out_images, out_types, out_pol = [], [], []
    for i, (img, t, p) in enumerate(zip(images, types, polarities)):
        out_images.append(_as_gray(img, i))
        try:
            ti = int(t)
        except (TypeError, ValueError):
            raise ValueError(f"render_karyogram: type {t!r} of image {i} is not an integer") \
                from None
        if ti != t or not 0 <= ti < N_TYPES:
            raise ValueError(
                f"render_karyogram: type {t!r} of image {i} is out of range: "
                f"expected a 0-based index 0-{N_TYPES - 1}")
        if p not in (0, 1):
            raise ValueError(
                f"render_karyogram: polarity {p!r} of image {i} must be 0 (q-arm up) "
                "or 1 (q-arm down)")
        out_types.append(ti)
        out_pol.append(int(p))
    return out_images, out_types, out_pol, [bool(f) for f in flags]


def _structural_marks(structural, n):
    """One bool per image from ``structural`` (None: no marks); ValueError on a count other
    than ``n``."""
    marks = [False] * n if structural is None else [bool(f) for f in structural]
    if len(marks) != n:
        raise ValueError(f"render_karyogram: got {n} images but {len(marks)} structural flags")
    return marks


def _as_gray(img, i):
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"render_karyogram: image {i} has dtype {arr.dtype}, expected uint8")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    if arr.ndim != 2:
        raise ValueError(
            f"render_karyogram: image {i} has shape {arr.shape}, expected a 2-D grayscale image")
    if arr.size == 0:
        raise ValueError(f"render_karyogram: image {i} is empty (shape {arr.shape})")
    return arr


def _ascii(text):
    """One line of text for Hershey fonts: ASCII only (anything else becomes '?')."""
    text = " ".join(str(text).splitlines())
    text = "".join(" " if c.isspace() else c for c in text).strip()
    return text.encode("ascii", "replace").decode("ascii")


# ----------------------------------------------------------------------------- geometry


def _scaled_chromosomes(images, polarities):
    tallest = max(img.shape[0] for img in images)
    scale = min(ROW_HEIGHT / float(tallest), MAX_UPSCALE)
    out = []
    for img, pol in zip(images, polarities):
        if pol != Q_ARM_DOWN:
            img = img[::-1, :]
        h = max(1, round(img.shape[0] * scale))
        w = max(1, round(img.shape[1] * scale))
        if (h, w) != img.shape:
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
            img = cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=interp)
        out.append(np.ascontiguousarray(img))
    return out


def _draw_slot(canvas, indices, chroms, t, centre, base_y, placed):
    widths = [chroms[i].shape[1] for i in indices]
    content = sum(widths) + CHROM_GAP * max(len(indices) - 1, 0)
    x = round(centre - content / 2.0)
    bottom = base_y - BASE_GAP
    for i in indices:
        img = chroms[i]
        h, w = img.shape
        y = bottom - h
        region = canvas[y:y + h, x:x + w]
        np.minimum(region, img, out=region)  # darken: white stays transparent
        placed[i] = (x, y, w, h)
        x += w + CHROM_GAP
    line_w = max(content, MIN_SLOT_CONTENT) + 16
    x0 = round(centre - line_w / 2.0)
    cv2.line(canvas, (x0, base_y), (x0 + line_w, base_y), BLACK, 2, cv2.LINE_8)
    label = TYPE_NAMES[t]
    (tw, th), _ = cv2.getTextSize(label, FONT, LABEL_SCALE, LABEL_THICK)
    cv2.putText(canvas, label, (round(centre - tw / 2.0), base_y + 10 + th), FONT,
                LABEL_SCALE, BLACK, LABEL_THICK, cv2.LINE_AA)


def _draw_marker(red, x, y, w, h):
    """The low-confidence frame and "?" around a chromosome, on the ``red`` layer."""
    x0, y0 = x - MARK_PAD, y - MARK_PAD
    x1, y1 = x + w - 1 + MARK_PAD, min(y + h - 1 + MARK_PAD, y + h + BASE_GAP - 3)
    cv2.rectangle(red, (x0, y0), (x1, y1), INK, 2, cv2.LINE_8)
    (tw, _), _ = cv2.getTextSize("?", FONT, MARK_SCALE, MARK_THICK)
    cv2.putText(red, "?", (x1 - tw + 1, y0 - 5), FONT, MARK_SCALE, INK, MARK_THICK,
                cv2.LINE_AA)


def _draw_structural_mark(red, x, y):
    """A filled triangle pointing down at (x, y) on the ``red`` layer: the structural
    score's flag."""
    points = np.array([[x, y], [x - TRIANGLE, y - 2 * TRIANGLE], [x + TRIANGLE, y - 2 * TRIANGLE]],
                      np.int32)
    cv2.fillConvexPoly(red, points, INK, cv2.LINE_AA)


# ----------------------------------------------------------------------------- text


def _title_height(title):
    if not title:
        return 16
    th = cv2.getTextSize(title, FONT, TITLE_SCALE, TITLE_THICK)[0][1]
    return 22 + th + 16 + 8


def _draw_title(canvas, title):
    if not title:
        return
    width = canvas.shape[1]
    th = cv2.getTextSize(title, FONT, TITLE_SCALE, TITLE_THICK)[0][1]
    cv2.putText(canvas, _fit(title, width - 2 * MARGIN, TITLE_SCALE, TITLE_THICK),
                (MARGIN, 22 + th), FONT, TITLE_SCALE, BLACK, TITLE_THICK, cv2.LINE_AA)
    y = 22 + th + 16
    cv2.line(canvas, (MARGIN, y), (width - MARGIN, y), LINE_GREY, 1)


def _fit(text, max_w, scale, thick):
    """Cut a single line with '...' so that it fits max_w pixels."""
    if cv2.getTextSize(text, FONT, scale, thick)[0][0] <= max_w:
        return text
    while text and cv2.getTextSize(text + "...", FONT, scale, thick)[0][0] > max_w:
        text = text[:-1]
    return text + "..."


def _wrap(text, max_w, scale=TEXT_SCALE, thick=TEXT_THICK):
    """Greedy word wrap to max_w pixels; over-long words are broken."""

    def fits(s):
        return cv2.getTextSize(s, FONT, scale, thick)[0][0] <= max_w

    lines, line = [], ""
    for word in text.split():
        cand = f"{line} {word}" if line else word
        if fits(cand):
            line = cand
            continue
        if line:
            lines.append(line)
        while not fits(word) and len(word) > 1:
            k = len(word)
            while k > 1 and not fits(word[:k]):
                k -= 1
            lines.append(word[:k])
            word = word[k:]
        line = word
    if line:
        lines.append(line)
    return lines or [""]


def _footer_lines(legend, notes, width, structural=False):
    """[(kind, text)] with kind 'legend', 'structural' or 'note'."""
    max_w = width - 2 * MARGIN
    lines = []
    if legend:
        lines.append(("legend", LEGEND_TEXT))
    if structural:
        lines.append(("structural", STRUCTURAL_TEXT))
    for note in notes:
        if not note:
            continue
        for k, part in enumerate(_wrap(note, max_w - 16)):
            lines.append(("note", ("- " if k == 0 else "  ") + part))
    return lines


def _line_step():
    return cv2.getTextSize("Ag", FONT, TEXT_SCALE, TEXT_THICK)[0][1] + 12


def _footer_height(lines):
    if not lines:
        return 0
    return 14 + len(lines) * _line_step() + 4


def _draw_footer(layers, lines, top):
    """The footer's lines: text on the gray canvas, the legends' symbols on the red layer
    (``layers``: (canvas, red))."""
    if not lines:
        return
    canvas, red = layers
    width = canvas.shape[1]
    cv2.line(canvas, (MARGIN, top), (width - MARGIN, top), LINE_GREY, 1)
    step = _line_step()
    th = cv2.getTextSize("Ag", FONT, TEXT_SCALE, TEXT_THICK)[0][1]
    y = top + 14 + th
    for kind, text in lines:
        x = MARGIN
        if kind == "legend":
            cv2.rectangle(red, (x, y - th - 2), (x + 14, y + 3), INK, 2)
            cv2.putText(red, "?", (x + 18, y), FONT, TEXT_SCALE, INK, 2, cv2.LINE_AA)
            x += 18 + cv2.getTextSize("?", FONT, TEXT_SCALE, 2)[0][0] + 8
            text = "= " + text
        elif kind == "structural":
            _draw_structural_mark(red, x + TRIANGLE, y + 2)
            x += 2 * TRIANGLE + 8
            text = "= " + text
        cv2.putText(canvas, text, (x, y), FONT, TEXT_SCALE, BLACK, TEXT_THICK, cv2.LINE_AA)
        y += step


def _render_empty(title, notes):
    width = MIN_WIDTH
    title_h = _title_height(title)
    body_h = 160
    footer = _footer_lines(False, notes, width)
    footer_h = _footer_height(footer)
    height = title_h + body_h + footer_h + 16
    canvas = np.full((height, width), WHITE, np.uint8)
    _draw_title(canvas, title)
    msg = "no chromosomes"
    (tw, th), _ = cv2.getTextSize(msg, FONT, 1.0, 2)
    cv2.putText(canvas, msg, ((width - tw) // 2, title_h + (body_h + th) // 2), FONT, 1.0,
                BLACK, 2, cv2.LINE_AA)
    _draw_footer((canvas, None), footer, height - footer_h - 16)
    return canvas
