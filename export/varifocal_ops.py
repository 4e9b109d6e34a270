"""Differentiable varifocal step in torch (paper section II-A.3 and II-A.5).

* ``decode_boxes_torch``: eq. 5, (N, 3) localizer output u -> (N, 4) float boxes
  [x0, y0, x1, y1] in G-input pixels; the torch twin of ``vfinfer.pipeline.crop.decode_boxes``.
* ``crop_and_resize_torch``: the crop of ``vfinfer.pipeline.crop.crop_and_resize`` written with
  ``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``,
  ``padding_mode="border"``): ``out_size`` x ``out_size`` half-pixel-centred samples inside
  the float box, their source coordinates clamped to the box's own pixel centres and then to
  the image (the border padding). Differentiable in the images and in the boxes.
* ``boxcar_mask``: the 2-D boxcar of eq. 6 with the logistic step H(x) = 1 / (1 + exp(-k x))
  of eq. 7, evaluated at pixel centres.
* ``boxcar_crop``: x_loc = x * boxcar(t(u)), then the crop of x_loc by the box (the paper's
  approximation used to train the localizer through the crop); the gradient reaches u both
  through the mask and through the sampling positions. The bilinear crop reads the pixels
  the box overlaps, whose centres lie up to half a pixel outside a box that is not on whole
  pixels, so the mask used here is the box grown by ``BOXCAR_MARGIN`` = 1 pixel on every
  side: every pixel the crop reads then lies strictly inside the mask, and as k grows the
  boxcar crop tends to exactly the plain (runtime) crop. With the paper's k = 10 the two
  differ by under 1 % on the outermost samples only.

Coordinates: pixel ``i`` covers [i, i + 1) and has its centre at i + 0.5, so the box
[0, W) x [0, H) with ``out_size == W == H`` reproduces the image exactly.
"""

import torch
from torch.nn import functional as F

DEFAULT_K = 10.0  # eq. 7 sharpness used in the paper
BOXCAR_MARGIN = 1.0  # pixels the mask extends past the box (the crop reads that far)


def decode_boxes_torch(loc, t1, t2):
    """Eq. 5: (N, 3) u in [0, 1] -> (N, 4) boxes [x0, y0, x1, y1] (G-input pixels).

    centre = T1 + u_{x,y} * T2; half side t_l = u_l * T1 / 2 + T1 / 2.
    """
    if loc.dim() != 2 or loc.shape[1] != 3:
        raise ValueError(f"localization output must be N x 3, got shape {tuple(loc.shape)}")
    centre_x = t1 + loc[:, 0] * t2
    centre_y = t1 + loc[:, 1] * t2
    half = loc[:, 2] * (t1 / 2) + t1 / 2
    return torch.stack(
        [centre_x - half, centre_y - half, centre_x + half, centre_y + half], dim=1
    )


def _grid_axis(start, stop, out_size, size):
    """Normalized (align_corners=False) grid coordinates of ``out_size`` half-pixel-centred
    samples of [start, stop), as ``vfinfer.pipeline.crop._sample_positions`` places them."""
    steps = (torch.arange(out_size, dtype=start.dtype, device=start.device) + 0.5) / out_size
    # source coordinate in pixel-index units (pixel i is centred on i)
    src = start[:, None] + steps[None, :] * (stop - start)[:, None] - 0.5
    # stay on the box's own pixel centres; the image edge is the grid's border padding
    src = torch.minimum(torch.maximum(src, start[:, None]), (stop - 1)[:, None])
    return (src + 0.5) * (2.0 / size) - 1.0


def crop_and_resize_torch(images, boxes, out_size):
    """Bilinear crop of (N, C, H, W) ``images`` to (N, C, out_size, out_size) by ``boxes``.

    Same sampling as ``vfinfer.pipeline.crop.crop_and_resize``; differentiable in both arguments.
    """
    n, _, height, width = images.shape
    if boxes.shape != (n, 4):
        raise ValueError(f"expected {n} x 4 boxes, got shape {tuple(boxes.shape)}")
    boxes = boxes.to(images.dtype)
    gx = _grid_axis(boxes[:, 0], boxes[:, 2], out_size, width)  # (N, out)
    gy = _grid_axis(boxes[:, 1], boxes[:, 3], out_size, height)  # (N, out)
    shape = (n, out_size, out_size)
    grid = torch.stack([gx[:, None, :].expand(shape), gy[:, :, None].expand(shape)], dim=3)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def boxcar_mask(boxes, height, width, k=DEFAULT_K, margin=0.0):
    """Eq. 6-7: (N, 1, H, W) soft mask, ~1 inside each box (grown by ``margin`` pixels on
    every side) and ~0 outside, evaluated at pixel centres."""
    boxes = boxes if boxes.is_floating_point() else boxes.to(torch.float32)
    xs = torch.arange(width, dtype=boxes.dtype, device=boxes.device) + 0.5
    ys = torch.arange(height, dtype=boxes.dtype, device=boxes.device) + 0.5
    mask_x = (torch.sigmoid(k * (xs[None, :] - (boxes[:, 0:1] - margin)))
              - torch.sigmoid(k * (xs[None, :] - (boxes[:, 2:3] + margin))))  # (N, W)
    mask_y = (torch.sigmoid(k * (ys[None, :] - (boxes[:, 1:2] - margin)))
              - torch.sigmoid(k * (ys[None, :] - (boxes[:, 3:4] + margin))))  # (N, H)
    return (mask_y[:, :, None] * mask_x[:, None, :])[:, None]


def boxcar_crop(images, boxes, out_size, k=DEFAULT_K, margin=BOXCAR_MARGIN):
    """x_loc = x * boxcar(box) (eq. 6), then the bilinear crop of x_loc by the box."""
    _, _, height, width = images.shape
    masked = images * boxcar_mask(boxes, height, width, k, margin).to(images.dtype)
    return crop_and_resize_torch(masked, boxes, out_size)


def varifocal_crop(images, loc, config, k=None):
    """Localizer output -> L-Net input: plain crop (``k=None``, as the runtime does) or the
    boxcar-approximated crop with sharpness ``k`` (for training the localizer). The boxes
    are decoded in FP32 even from a float16 ``loc`` (mixed-precision training): in float16
    a coordinate near 128 px would move in steps of 1/16 px."""
    boxes = decode_boxes_torch(loc.float(), config.t1, config.t2)
    if k is None:
        return crop_and_resize_torch(images, boxes, config.l_input)
    return boxcar_crop(images, boxes, config.l_input, k)


__all__ = [
    "BOXCAR_MARGIN",
    "DEFAULT_K",
    "boxcar_crop",
    "boxcar_mask",
    "crop_and_resize_torch",
    "decode_boxes_torch",
    "varifocal_crop",
]
