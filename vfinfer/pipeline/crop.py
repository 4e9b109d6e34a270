"""The varifocal step between G-Net and L-Net: eq. 5 box decode and crop-and-resize.

``decode_boxes`` maps the localization output (u_x, u_y, u_l) in [0, 1] to a square box in
G-input pixels (eq. 5). ``crop_and_resize`` cuts that box out of the normalized G input and
resizes it bilinearly to the L-Net input. Sampling uses half-pixel centres inside the box,
clamped to the box's own pixel centres and to the image; for a box on whole pixels this is
exactly the paper's "crop by indexed slicing, then bilinear rescale" (section II-A.3), and
it stays continuous in the box, so runtimes whose localizer outputs differ in the last float
bit crop the same.
"""

import numpy as np


def decode_boxes(loc, t1, t2):
    """Eq. 5: (N, 3) u -> (N, 4) float32 boxes [x0, y0, x1, y1] in G-input pixels.

    centre = T1 + u_{x,y} * T2; half side t_l = u_l * T1 / 2 + T1 / 2.
    """
    loc = np.asarray(loc, dtype=np.float32)
    if loc.ndim != 2 or loc.shape[1] != 3:
        raise ValueError(f"localization output must be N x 3, got shape {loc.shape}")
    if not np.isfinite(loc).all():
        raise ValueError("the localizer returned NaN or infinite values (a numerical problem in "
                         "the G-Net graph or its precision); its boxes cannot be decoded")
    centre_x = t1 + loc[:, 0] * t2
    centre_y = t1 + loc[:, 1] * t2
    half = loc[:, 2] * (t1 / 2) + t1 / 2
    return np.stack(
        [centre_x - half, centre_y - half, centre_x + half, centre_y + half], axis=1
    ).astype(np.float32)


def _sample_positions(start, stop, out_size, limit):
    """Source pixel coordinates of ``out_size`` half-pixel-centred samples of [start, stop)."""
    step = (stop - start) / out_size  # (N,)
    src = start[:, None] + (np.arange(out_size, dtype=np.float32) + 0.5) * step[:, None] - 0.5
    src = np.clip(src, start[:, None], (stop - 1)[:, None])  # stay on the box's pixels
    src = np.clip(src, 0, limit - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, limit - 1)
    return low, high, (src - low).astype(np.float32)


def crop_and_resize(images, boxes, out_size):
    """Bilinear crop of (N, 1, H, W) ``images`` to (N, 1, out_size, out_size) by ``boxes``."""
    images = np.asarray(images, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    n, _, height, width = images.shape
    if boxes.shape != (n, 4):
        raise ValueError(f"expected {n} x 4 boxes, got shape {boxes.shape}")
    x0, x1, fx = _sample_positions(boxes[:, 0], boxes[:, 2], out_size, width)
    y0, y1, fy = _sample_positions(boxes[:, 1], boxes[:, 3], out_size, height)
    plane = images[:, 0]
    rows = np.arange(n)[:, None, None]
    top = (plane[rows, y0[:, :, None], x0[:, None, :]] * (1 - fx[:, None, :])
           + plane[rows, y0[:, :, None], x1[:, None, :]] * fx[:, None, :])
    bottom = (plane[rows, y1[:, :, None], x0[:, None, :]] * (1 - fx[:, None, :])
              + plane[rows, y1[:, :, None], x1[:, None, :]] * fx[:, None, :])
    out = top * (1 - fy[:, :, None]) + bottom * fy[:, :, None]
    return out[:, None].astype(np.float32)
