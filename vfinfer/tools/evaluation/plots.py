"""Pictures of evaluation figures: the confusion heat map, ROC and precision-recall curves
(OpenCV only)."""

import cv2
import numpy as np

from vfinfer.util.images import encode_png

# --------------------------------------------------------------------------- heat map

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (40, 40, 40)
_DARK = np.array([110, 60, 25], dtype=np.float64)  # BGR of a full row (dark blue)


def _text(img, text, org, scale, color=_INK, thickness=1):
    cv2.putText(img, text, (int(org[0]), int(org[1])), _FONT, scale, color, thickness,
                cv2.LINE_AA)


def _size(text, scale, thickness=1):
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    return w, h, base


def _centered(img, text, cx, cy, scale, color=_INK, thickness=1):
    w, h, _ = _size(text, scale, thickness)
    _text(img, text, (cx - w / 2, cy + h / 2), scale, color, thickness)


def _vertical_label(img, text, x, cy, scale, thickness=1):
    """Text reading bottom to top, its left edge at x, centred on cy."""
    w, h, base = _size(text, scale, thickness)
    patch = np.full((h + base + 4, w + 4, 3), 255, dtype=np.uint8)
    _text(patch, text, (2, h + 2), scale, _INK, thickness)
    patch = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)
    top = int(cy - patch.shape[0] / 2)
    img[top:top + patch.shape[0], x:x + patch.shape[1]] = np.minimum(
        img[top:top + patch.shape[0], x:x + patch.shape[1]], patch)


def confusion_png(matrix, names, title=None):
    """A confusion-matrix heat map as PNG bytes (OpenCV only).

    Rows are the true classes, columns the predicted ones. Each cell is shaded by its share
    of its row, i.e. normalized by the true count (white 0 to dark blue 1, on a square-root
    scale so that errors of a few per cent still show); non-zero counts are written in the
    cells, zeros are left blank. Row totals (true counts) are shown on the right.
    """
    m = np.asarray(matrix, dtype=np.int64)
    n = len(names)
    if m.shape != (n, n):
        raise ValueError(f"confusion matrix must be {n} x {n} for {n} names, got {m.shape}")
    totals = m.sum(axis=1)
    share = np.divide(m, totals[:, None], out=np.zeros(m.shape), where=totals[:, None] > 0)
    lay = _confusion_layout(m, names, totals, title)
    img = np.full((lay["height"], lay["width"], 3), 255, dtype=np.uint8)
    if title:
        _text(img, title, (lay["left"], 16 + _size(title, 0.65, 2)[1]), 0.65, _INK, 2)
    _confusion_cells(img, m, share, lay)
    _confusion_labels(img, names, totals, lay)
    return encode_png(img, what="the confusion matrix")


def _confusion_layout(m, names, totals, title):
    """Cell size, font scales and margins of the heat map."""
    n = len(names)
    cell = int(np.clip(840 // max(n, 1), 34, 90))
    count_scale = 0.42 if cell < 60 else 0.6
    widest = max(_size(str(v), count_scale)[0] for v in m.ravel())
    if widest > cell - 6:
        count_scale *= (cell - 6) / widest
    name_scale = 0.5 if cell < 60 else 0.6
    name_w = max(_size(str(s), name_scale)[0] for s in names)
    name_h = max(_size(str(s), name_scale)[1] for s in names)
    label_scale = 0.6
    total_w = max(_size(str(v), name_scale)[0] for v in list(totals) + ["n"]) + 16
    left = 14 + _size("true", label_scale)[1] + 14 + name_w + 10
    top = 16 + (_size(title, 0.65, 2)[1] + 18 if title else 0)
    grid = n * cell
    rotate_cols = name_w > cell - 6
    col_label_h = (name_w if rotate_cols else name_h) + 14
    bottom = col_label_h + _size("predicted", label_scale)[1] + 24 + 30
    return {"cell": cell, "count_scale": count_scale, "name_scale": name_scale,
            "name_w": name_w, "name_h": name_h, "label_scale": label_scale,
            "total_w": total_w, "left": left, "top": top, "grid": grid,
            "rotate_cols": rotate_cols, "col_label_h": col_label_h,
            "width": max(left + grid + total_w + 16, 460), "height": top + grid + bottom}


def _confusion_cells(img, m, share, lay):
    """Shaded cells with their counts, grid lines and the outlined diagonal."""
    cell, left, top, grid = lay["cell"], lay["left"], lay["top"], lay["grid"]
    n = len(m)
    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            v = np.sqrt(share[i, j])  # square root: a few % of a row still shows
            color = 255.0 * (1.0 - v) + _DARK * v
            img[y0:y0 + cell, x0:x0 + cell] = color.astype(np.uint8)
            if m[i, j]:
                ink = (255, 255, 255) if v > 0.5 else _INK
                _centered(img, str(m[i, j]), x0 + cell / 2, y0 + cell / 2,
                          lay["count_scale"], ink)
    for k in range(n + 1):  # grid lines
        cv2.line(img, (left + k * cell, top), (left + k * cell, top + grid), (205, 205, 205), 1)
        cv2.line(img, (left, top + k * cell), (left + grid, top + k * cell), (205, 205, 205), 1)
    for k in range(n):  # the diagonal, outlined
        x0, y0 = left + k * cell, top + k * cell
        cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (60, 60, 60), 1)


def _confusion_labels(img, names, totals, lay):
    """Row and column names, row totals, axis titles and the note on the shading."""
    cell, left, top, grid = lay["cell"], lay["left"], lay["top"], lay["grid"]
    scale, total_w = lay["name_scale"], lay["total_w"]
    for i, name in enumerate(names):  # row names (true), right-aligned
        w, h, _ = _size(str(name), scale)
        _text(img, str(name), (left - 10 - w, top + i * cell + cell / 2 + h / 2), scale)
    for j, name in enumerate(names):  # column names (predicted), below the grid
        cx = left + j * cell + cell / 2
        if lay["rotate_cols"]:
            _vertical_label(img, str(name), int(cx - lay["name_h"] / 2),
                            top + grid + 8 + lay["name_w"] / 2, scale)
        else:
            _centered(img, str(name), cx, top + grid + 8 + lay["name_h"] / 2, scale)
    for i, total in enumerate(totals):  # row totals
        w, h, _ = _size(str(total), scale)
        _text(img, str(total), (left + grid + total_w - 6 - w, top + i * cell + cell / 2 + h / 2),
              scale, (120, 120, 120))
    w, h, _ = _size("n", scale)
    _text(img, "n", (left + grid + total_w - 6 - w, top - 6), scale, (120, 120, 120))
    _centered(img, "predicted", left + grid / 2, top + grid + lay["col_label_h"] + 12,
              lay["label_scale"], _INK, 1)
    _vertical_label(img, "true", 14, top + grid // 2, lay["label_scale"])
    note = "shade: share of the true class's row (square-root scale); blank = 0"
    _text(img, note, (left, lay["height"] - 12), 0.45, (120, 120, 120))


# --------------------------------------------------------------------------- ROC picture

_CURVE_COLORS = {"cells": (180, 90, 20), "patients": (30, 120, 230)}  # BGR: blue, orange


def _operating_point(curve, threshold):
    """The ROC point of the lowest listed threshold >= ``threshold`` (what flagging at
    ``threshold`` gives), or the origin."""
    above = [p for p in curve["points"]
             if p["threshold"] is not None and p["threshold"] >= threshold]
    return min(above, key=lambda p: p["threshold"]) if above else curve["points"][0]


def roc_png(curves, threshold=None, title=None, size=560):
    """ROC curves as PNG bytes (OpenCV only): ``curves`` maps a name ("cells", "patients")
    to ``roc_curve``-style dicts; ``threshold`` marks each curve's operating point."""
    margin_l, margin_b, margin_t, margin_r = 70, 60, 50 if title else 20, 20
    width, height = margin_l + size + margin_r, margin_t + size + margin_b
    img = np.full((height, width, 3), 255, dtype=np.uint8)

    def xy(fpr, tpr):
        return (int(round(margin_l + fpr * size)), int(round(margin_t + (1 - tpr) * size)))

    if title:
        _text(img, title, (margin_l, 30), 0.6, _INK, 1)
    cv2.rectangle(img, xy(0, 1), xy(1, 0), (120, 120, 120), 1)
    for k in range(1, 10):
        v = k / 10
        cv2.line(img, xy(v, 0), xy(v, 1), (235, 235, 235), 1)
        cv2.line(img, xy(0, v), xy(1, v), (235, 235, 235), 1)
    cv2.line(img, xy(0, 0), xy(1, 1), (200, 200, 200), 1, cv2.LINE_AA)
    for k in range(0, 11, 2):
        v = k / 10
        label = f"{v:.1f}"
        w, h, _ = _size(label, 0.45)
        _text(img, label, (xy(v, 0)[0] - w / 2, xy(v, 0)[1] + h + 8), 0.45)
        _text(img, label, (xy(0, v)[0] - w - 8, xy(0, v)[1] + h / 2), 0.45)
    _centered(img, "false alarm rate (normal flagged)", margin_l + size / 2, height - 18, 0.5)
    _vertical_label(img, "sensitivity (abnormal flagged)", 6, margin_t + size // 2, 0.5)
    legend_y = margin_t + size - 16
    for name, curve in curves.items():
        pts = [(p["fpr"], p["tpr"]) for p in curve["points"]
               if p["fpr"] is not None and p["tpr"] is not None]
        if len(pts) < 2:
            continue
        color = _CURVE_COLORS.get(name, _INK)
        line = np.array([xy(f, t) for f, t in pts], dtype=np.int32)
        cv2.polylines(img, [line], False, color, 2, cv2.LINE_AA)
        if threshold is not None:
            point = _operating_point(curve, threshold)
            if point["fpr"] is not None and point["tpr"] is not None:
                cv2.circle(img, xy(point["fpr"], point["tpr"]), 6, color, 2, cv2.LINE_AA)
        auc = curve.get("auc")
        text = (f"{name}: {curve['n_positive']} abnormal, {curve['n_negative']} normal"
                + ("" if auc is None else f", AUC {auc:.3f}"))
        x0, y0 = xy(0.38, 0)[0], legend_y
        cv2.line(img, (x0, y0 - 5), (x0 + 24, y0 - 5), color, 2, cv2.LINE_AA)
        _text(img, text, (x0 + 30, y0), 0.45)
        legend_y -= 22
    if threshold is not None:
        _text(img, f"circles: threshold {threshold:g}", (xy(0.38, 0)[0] + 30, legend_y), 0.45,
              (120, 120, 120))
    return encode_png(img, what="the ROC curve")


def pr_png(scores, positive, threshold, title, size=560):
    """Precision against recall (sensitivity) as PNG bytes, the point of flagging at
    ``threshold`` circled (precision at the mix of ``positive`` given, not at a clinical
    prevalence)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(positive, bool)[order]
    tp = np.cumsum(hits)
    recall, precision = tp / max(hits.sum(), 1), tp / np.arange(1, len(hits) + 1)
    margin, top = 70, 50
    img = np.full((top + size + 60, margin + size + 20, 3), 255, np.uint8)

    def xy(r, p):
        return int(round(margin + r * size)), int(round(top + (1 - p) * size))

    cv2.rectangle(img, xy(0, 1), xy(1, 0), (120, 120, 120), 1)
    for k in range(0, 11, 2):
        _text(img, f"{k / 10:.1f}", (xy(k / 10, 0)[0] - 10, top + size + 20), 0.45)
        _text(img, f"{k / 10:.1f}", (margin - 40, xy(0, k / 10)[1] + 5), 0.45)
    line = np.array([xy(r, p) for r, p in zip(recall, precision)], np.int32)
    cv2.polylines(img, [line], False, (180, 90, 20), 2, cv2.LINE_AA)
    at = int(np.sum(np.asarray(scores) >= threshold))
    if at:
        cv2.circle(img, xy(recall[at - 1], precision[at - 1]), 6, (30, 120, 230), 2,
                   cv2.LINE_AA)
    _text(img, title, (margin, 20), 0.5)
    _centered(img, "recall (sensitivity)", margin + size / 2, top + size + 44, 0.5)
    _text(img, "precision", (5, top - 6), 0.5)
    return encode_png(img, what="the PR curve")
