"""Cut-outs from any lab, brought to the model's convention before the canvas (Render-Attention,
Wang et al., Fig. 1 and 4; section II-A and its Algorithm 1).

* **Background polarity.** Bright-field G-band cut-outs are dark chromosomes on a light
  background; fluorescence (Q-band, DAPI) ones are light on dark. ``detect_background`` looks
  at the image's border: Otsu's threshold splits the image into two gray classes, and the
  class that holds most of the border pixels is the background. ``to_convention`` inverts an
  image whose background is not the model's (``ModelConfig.background``).
* **Rotate-and-crop** (``ModelConfig.rotate_crop``). The chromosome's mask (darker than
  Otsu's threshold on the light-background image, largest connected component) gives its
  long axis; the image is turned so that axis is vertical and cropped to the chromosome.
  ``principal-axis``: the axis of the mask's second moments (its principal component).
  ``hough``: the paper's Algorithm 1, Canny edges and probabilistic Hough lines, the axis
  being the length-weighted mean direction of the segments. ``none``: images are used as
  they come (upright, karyogram-oriented cut-outs such as pki3's).
  The turn is the smallest one that makes the axis vertical (|angle| <= 90 degrees), so an
  upright cut-out stays as it is; which end then points down is not decided here: the
  axis has two ends, and polarity is the model's call (``polarity`` in the result, used by
  the karyogram to flip the chromosome q-arm down).
* **Size normalization** (``ModelConfig.size_norm``, a reference length in pixels; 0: off).
  A chromosome's length is ``axis_length``: the extent of its mask (the one above) along the
  mask's principal axis, measured on the cut-out as given, so it does not depend on the
  angle the chromosome lies at nor on rotate-and-crop. Each cut-out of a cell is scaled by
  ``size_norm_scale``: reference length / the median length of the cell's chromosomes, so
  that cells imaged at other magnifications or condensation reach the network at one scale
  while the chromosomes of a cell keep their relative sizes. A cell with fewer than
  ``size_norm_min_count`` measured chromosomes has no reliable median: its cut-outs keep
  their own scale (factor 1), and the result says so.
"""

import math

import cv2
import numpy as np

BACKGROUNDS = ("light", "dark")
ROTATE_CROP_METHODS = ("none", "principal-axis", "hough")
CROP_MARGIN = 2  # pixels of background kept around the rotated chromosome
MIN_ELONGATION = 1.15  # below this (sqrt of the eigenvalue ratio) the axis is not defined
WHITE_LEVEL = 254  # darker than this is chromosome on a white (255) background
MIN_WHITE = 0.02  # an image with less white than this share has no white background
CLOSING_KERNEL = np.ones((3, 3), np.uint8)
HOUGH_MIN_LENGTH = 0.3  # Hough segments shorter than this share of the mask's extent: ignored


def detect_background(image):
    """``"light"`` or ``"dark"``: the gray class (Otsu) holding most of the border pixels.
    A blank image (one gray level) has no background to find: ``"light"``, the default
    convention (the result warns about blank images)."""
    image = np.asarray(image)
    if image.size == 0 or image.min() == image.max():
        return "light"
    threshold, _ = cv2.threshold(image, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return "light" if np.mean(border > threshold) >= 0.5 else "dark"


def to_convention(image, background, convention):
    """The image with ``convention``'s background: inverted when ``background`` differs."""
    return image if background == convention else 255 - image


def chromosome_mask(light_image):
    """Boolean mask of the largest dark connected component of a light-background image."""
    if light_image.min() == light_image.max():
        return np.zeros(light_image.shape, dtype=bool)
    threshold, _ = cv2.threshold(light_image, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = (light_image <= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    if count <= 1:
        return dark.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def body_mask(image):
    """The chromosome's mask on a white-background image: pixels darker than ``WHITE_LEVEL``,
    closed (3 x 3), largest 8-connected component, holes filled. An image with hardly any
    white (under ``MIN_WHITE`` of its pixels: no white background) falls back to Otsu's
    ``chromosome_mask``. The holes are filled by drawing the component's outer outline
    filled (one call, where flood-filling the background took several)."""
    if np.mean(image >= WHITE_LEVEL) < MIN_WHITE:
        return chromosome_mask(image)
    dark = cv2.copyMakeBorder((image < WHITE_LEVEL).view(np.uint8), 1, 1, 1, 1,
                              cv2.BORDER_CONSTANT, value=0)
    dark = cv2.morphologyEx(dark, cv2.MORPH_CLOSE, CLOSING_KERNEL)
    dark[0], dark[-1], dark[:, 0], dark[:, -1] = 0, 0, 0, 0  # closing adds nothing at a border
    contours, hierarchy = cv2.findContours(dark, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outlines = [c for c, h in zip(contours, hierarchy[0] if contours else []) if h[3] < 0]
    mask = np.zeros(image.shape, np.uint8)
    if outlines:
        cv2.drawContours(mask, [_largest(dark, outlines)], -1, 1, thickness=cv2.FILLED,
                         offset=(-1, -1))
    return mask.view(bool)


def _largest(dark, outlines):
    """Of the components' outer ``outlines`` in ``dark``, that of the component with the
    most pixels (the first in raster order of equals)."""
    if len(outlines) == 1:
        return outlines[0]
    _, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return next(c for c in outlines if labels[c[0, 0, 1], c[0, 0, 0]] == largest)


def grain(light_image, mask):
    """The mean absolute difference between neighbouring pixels inside ``mask`` (gray levels):
    how grainy the chromosome is. Bands change over many pixels, so a chromosome's grain
    stays low (about 10 on fluorescence cut-outs, 20 on bright-field ones); a texture of
    noise is several times higher. None for a mask of fewer than two pixels."""
    gray = light_image.astype(np.float32)
    across = np.abs(np.diff(gray, axis=1))[mask[:, 1:] & mask[:, :-1]]
    down = np.abs(np.diff(gray, axis=0))[mask[1:] & mask[:-1]]
    pairs = across.size + down.size
    return (float(across.sum() + down.sum()) / pairs) if pairs else None


def _principal_axes(mask):
    """(pixel coordinates (2, N) as x, y; eigenvalues ascending; eigenvectors as columns) of
    the mask's second moments, or None for fewer than 3 pixels."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return None
    coords = np.stack([xs, ys]).astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(coords))
    return coords, values, vectors


def _moment_axes(mask):
    """(eigenvalues ascending, eigenvectors as columns) of the mask's pixel covariance (as
    ``np.cov`` of its coordinates, from OpenCV's central moments: no coordinate arrays), or
    None for fewer than 3 pixels."""
    moments = cv2.moments(np.ascontiguousarray(mask, dtype=np.uint8), binaryImage=True)
    n = moments["m00"]
    if n < 3:
        return None
    covariance = np.array([[moments["mu20"], moments["mu11"]],
                           [moments["mu11"], moments["mu02"]]]) / (n - 1)
    return np.linalg.eigh(covariance)


def principal_axis_angle(mask):
    """Tilt of the mask's long axis from vertical, degrees in (-90, 90] (positive: the top
    leans right in image coordinates), or None when the mask has no clear long axis."""
    axes = _moment_axes(mask)
    if axes is None:
        return None
    values, vectors = axes
    if values[0] <= 0 and values[1] <= 0:
        return None
    if values[1] < MIN_ELONGATION ** 2 * max(values[0], 1e-9):
        return None
    vx, vy = vectors[:, 1]
    return _tilt(vx, vy)


def axis_length(mask):
    """A chromosome's length: the extent of its mask along the principal axis (the direction
    of the larger second moment), in pixels (max - min of the pixel centres' projections,
    plus one). Independent of the angle the chromosome lies at (up to rasterization); a bent
    chromosome measures its chord-like extent, not its curved length. None for an empty mask;
    a mask of one or two pixels measures its bounding box."""
    axes = _principal_axes(mask)
    if axes is None:
        if not mask.any():
            return None
        rows, cols = np.nonzero(mask)
        return float(max(np.ptp(rows), np.ptp(cols)) + 1)
    coords, _, vectors = axes
    along = vectors[:, 1] @ coords
    return float(along.max() - along.min() + 1)


def size_norm_scale(lengths, reference, min_count):
    """The factor of size normalization for one cell: ``reference`` / the median of the
    cell's chromosome ``lengths`` (``axis_length``; None entries are not measured), or None
    when fewer than ``min_count`` lengths are measured (no reliable median) or the median is
    not positive."""
    measured = [float(x) for x in lengths if x is not None]
    if len(measured) < max(1, int(min_count)):
        return None
    median = float(np.median(measured))
    return float(reference) / median if median > 0 else None


def scale_cutout(image, scale):
    """The cut-out resized by ``scale`` (each side rounded, at least 1 pixel): area averaging
    when shrinking, bilinear when enlarging; ``scale`` 1 returns the image itself."""
    if scale == 1.0:
        return image
    height, width = image.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def hough_angle(light_image, mask):
    """The paper's Algorithm 1: Canny edges of the chromosome and probabilistic Hough line
    segments; the axis is their length-weighted mean direction (doubled-angle average, so
    opposite directions agree). None when no segment is found."""
    extent = max(mask.shape) if mask.any() else 0
    if extent < 4:
        return None
    edges = cv2.Canny(np.where(mask, light_image, 255).astype(np.uint8), 50, 150)
    min_length = max(3, int(HOUGH_MIN_LENGTH * extent))
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=max(3, min_length // 2),
                            minLineLength=min_length, maxLineGap=3)
    if lines is None:
        return None
    segments = np.asarray(lines, dtype=np.float64).reshape(-1, 4)  # OpenCV: (N, 1, 4) or (N, 4)
    x0, y0, x1, y1 = segments.T
    length = np.hypot(x1 - x0, y1 - y0)
    doubled = np.arctan2(y1 - y0, x1 - x0) * 2
    mean = math.atan2(float(np.sum(length * np.sin(doubled))),
                      float(np.sum(length * np.cos(doubled)))) / 2
    return _tilt(math.cos(mean), math.sin(mean))


def _tilt(vx, vy):
    """Angle of the direction (vx, vy) from vertical, folded into (-90, 90]."""
    angle = math.degrees(math.atan2(vx, -vy))  # 0: pointing up; positive: leaning right
    while angle <= -90:
        angle += 180
    while angle > 90:
        angle -= 180
    return angle


def rotate_and_crop(light_image, angle, background=255):
    """Turn a light-background image by ``angle`` degrees (so a long axis at that tilt
    becomes vertical) on a canvas large enough to lose nothing, then crop it to its
    chromosome mask with ``CROP_MARGIN`` pixels around it."""
    height, width = light_image.shape
    if angle:
        radians = math.radians(angle)
        cos, sin = abs(math.cos(radians)), abs(math.sin(radians))
        new_w = int(math.ceil(width * cos + height * sin)) + 2
        new_h = int(math.ceil(width * sin + height * cos)) + 2
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
        matrix[0, 2] += (new_w - width) / 2
        matrix[1, 2] += (new_h - height) / 2
        light_image = cv2.warpAffine(light_image, matrix, (new_w, new_h),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=int(background))
    mask = chromosome_mask(light_image)
    if not mask.any():
        return light_image
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom = max(rows[0] - CROP_MARGIN, 0), min(rows[-1] + CROP_MARGIN + 1, mask.shape[0])
    left, right = max(cols[0] - CROP_MARGIN, 0), min(cols[-1] + CROP_MARGIN + 1, mask.shape[1])
    return np.ascontiguousarray(light_image[top:bottom, left:right])


def normalize_cutout(image, config, background="auto"):
    """One gray uint8 cut-out -> (the image as the model expects it, facts about the input).

    ``background``: ``"auto"`` detects it, ``"light"`` / ``"dark"`` override the detection.
    The facts: ``background`` (of the input), ``tilt`` (degrees of the input chromosome's
    long axis from vertical, principal axis, None if not defined) and ``rotated`` (the turn
    applied, 0 without rotate-and-crop), ``grain`` (of the input chromosome, None for a blank
    image); with size normalization also ``length`` (``axis_length`` of the input, pixels,
    None for a blank image). The cell-wise scaling itself needs the whole cell
    (``vfinfer.pipeline.preprocess.size_normalize``).
    """
    if background not in ("auto", *BACKGROUNDS):
        raise ValueError(f"background must be auto, light or dark, not {background!r}")
    found = detect_background(image) if background == "auto" else background
    light = to_convention(image, found, "light")
    mask = chromosome_mask(light)
    tilt, texture = principal_axis_angle(mask), grain(light, mask)
    rotated = 0.0
    method = config.rotate_crop
    if method != "none":
        angle = tilt if method == "principal-axis" else hough_angle(light, mask)
        rotated = float(angle or 0.0)
        light = rotate_and_crop(light, rotated)
    out = to_convention(light, "light", config.background)
    facts = {"background": found, "tilt": None if tilt is None else round(tilt, 2),
             "rotated": round(rotated, 2),
             "grain": None if texture is None else round(texture, 2)}
    if config.size_norm:
        length = axis_length(mask)
        facts["length"] = None if length is None else round(length, 2)
    return out, facts
