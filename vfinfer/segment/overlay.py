"""The overlay a user checks a segmentation on: the metaphase with every instance's outline
and a translucent fill in its own colour, and its number (or, after classification, its call)
beside it, followed by ``split?`` / ``join?`` where ``vfinfer.segment.review`` flags it. Overlap
pixels show both colours blended."""

import cv2
import numpy as np

from vfinfer.util.images import encode_png

ALPHA = 0.35


def _colour(k):
    """A distinct, saturated colour per instance (golden-ratio hue steps), BGR."""
    hue = int((k * 0.618034 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _label_at(canvas, text, box, colour):
    x0, y0, x1, _ = box
    scale = 0.4 if canvas.shape[1] < 1200 else 0.6
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip((x0 + x1 - w) // 2, 0, canvas.shape[1] - w))
    y = int(np.clip(y0 - 3, h + 1, canvas.shape[0] - 1))
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3,
                cv2.LINE_AA)
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def draw_overlay(gray, cutouts, labels=None):
    """BGR uint8 image: ``cutouts`` (``vfinfer.segment.cutouts.Cutout``) drawn on ``gray``;
    ``labels`` (optional, one string per cut-out) replaces the numbers."""
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    for k, cut in enumerate(cutouts):
        x0, y0, x1, y1 = cut.box
        region = canvas[y0:y1, x0:x1]
        region[cut.mask] = (1 - ALPHA) * region[cut.mask] + ALPHA * np.float32(_colour(k))
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    for k, cut in enumerate(cutouts):
        outline = np.asarray(cut.polygon, np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [outline], True, _colour(k), 1, cv2.LINE_AA)
        text = labels[k] if labels is not None else str(k + 1)
        text += "".join(f" {flag}?" for flag in getattr(cut, "review", ()))
        _label_at(canvas, text, cut.box, _colour(k))
    return canvas


def overlay_png(gray, cutouts, labels=None):
    """``draw_overlay`` encoded as PNG bytes."""
    return encode_png(draw_overlay(gray, cutouts, labels), what="the overlay")
