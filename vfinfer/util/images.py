"""Reading a case: a directory of single-chromosome images from one cell.

Everything here uses OpenCV (``cv2``) and numpy only; no Pillow, no torch.

Public API
----------
``IMAGE_SUFFIXES``
    File suffixes treated as images (compared case-insensitively).
``ImageReadError(path, problem)``
    One file could not be turned into an image. ``str(err)`` is the one-line
    ``"<path>: <problem>"``; ``err.path`` (a ``Path``) and ``err.problem`` are attributes.
``CaseError(path, problem)``
    The case directory itself is unusable (missing, not a directory, no images).
``list_case(case_dir) -> (image_paths, ignored)``
    Image files in natural name order, plus the names of everything else that was skipped.
``read_gray8(path) -> ndarray (H, W) uint8``
    One image as 8-bit gray with the background white (255).
``decode_gray8(data, path) -> ndarray (H, W) uint8``
    The same from the file's bytes in memory (``path`` only names it in messages).
``read_case(case_dir) -> (images, paths, ignored)``
    ``list_case`` + ``read_gray8`` on every file; raises on the first bad file.
``encode_png(image, params=()) -> bytes``
    The one PNG encoder (``FAST_PNG``: the settings for large pictures such as karyograms).
``encode_gray_png(gray, highlight=None, colour=...) -> bytes``
    A gray picture with some pixels in one colour (the karyogram's red marks) as a
    one-channel PNG, or an indexed (palette) one when any pixel is highlighted.

Pixel conversion rules (``read_gray8``)
---------------------------------------
* 8-bit gray: returned unchanged.
* 16-bit gray (uint16): if the image's maximum is above 255 it is scaled by that
  maximum (``v * 255 / max``), otherwise the values are used as they are (8-bit data saved
  in a 16-bit container). A fixed ``/ 257`` would be wrong for microscope cameras that
  write 10-, 12- or 14-bit data into 16-bit files: a 12-bit white background (4095) would
  become 15, i.e. almost black, and the classifier would see a dark image. Chromosome
  images always contain white background, so the image's own maximum is its white level.
* Float: non-finite values are replaced (NaN -> 0, +inf -> largest finite value); if the
  maximum is at most 1.0 the data is taken as the 0..1 convention (``* 255``), if it is
  above 255 it is scaled by its maximum like 16-bit data, otherwise used as 0..255.
  Negative values are clipped to 0.
* Colour (BGR, as OpenCV decodes it): ``cv2.cvtColor(..., COLOR_BGR2GRAY)`` weights.
* With alpha (BGRA, or gray+alpha): composited onto white, so transparent areas become
  background (255).
* Other pixel types (int8, int16, uint32, ...) raise ``ImageReadError``.

Truncated files
---------------
Which partial files OpenCV accepts depends on its version: OpenCV 4.6 decodes a JPEG with
its end cut off without any error and fills the missing part (about 12 % of the pixels
in our test), whereas 4.14 and 5.0 return ``None``. Truncated PNG, TIFF and BMP give
``None`` in all of those versions, but libpng then prints ``libpng error: ...`` straight to
stderr. So before decoding we check the structure ourselves: a PNG's chunks must lead
up to an ``IEND`` chunk, and a JPEG must have an EOI marker (``FF D9``) after its last
start-of-scan. This catches truncation whatever OpenCV version is installed, and keeps
libpng's message off stderr.

EXIF orientation is ignored (``IMREAD_UNCHANGED``); multi-page TIFFs give the first page.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import threading
from pathlib import Path

import cv2
import numpy as np

from vfinfer.util.image_header import HeaderError, image_size

__all__ = [
    "FAST_PNG",
    "IMAGE_SUFFIXES",
    "CaseError",
    "ImageReadError",
    "ImageTooLargeError",
    "MAX_PIXELS",
    "decode_gray8",
    "encode_gray_png",
    "encode_png",
    "list_case",
    "read_case",
    "read_gray8",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
SEGMENTATION_DIR = "segmentation"  # vfinfer segment's masks, overlay and segments.json
# pixels per image file (its header says how many before anything is decoded): 6000 x 6000,
# above any microscope camera's metaphase image; 288 MB decoded as 16-bit RGBA
MAX_PIXELS = 36_000_000
STRIP_PIXELS = 1 << 20  # non-8-bit images are converted this many pixels at a time

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _one_line(text):
    """Collapse whitespace (newlines included) so messages stay on one line."""
    return " ".join(str(text).split())


class _PathError(ValueError):
    """A problem with one path; ``str(err)`` is ``"<path>: <problem>"`` on one line."""

    def __init__(self, path, problem):
        # Both go into args so the exception survives pickling (multiprocessing).
        super().__init__(path, problem)
        self.path = Path(path)
        self.problem = _one_line(problem)

    def __str__(self):
        return f"{self.path}: {self.problem}"


class ImageReadError(_PathError):
    """A single image file could not be read."""


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than the limit (``pixels``)."""

    def __init__(self, path, problem, pixels):
        super().__init__(path, problem)
        self.pixels = pixels


class CaseError(_PathError):
    """The case directory is unusable."""


# --------------------------------------------------------------------------- OpenCV logging
#
# OpenCV logs decoder failures itself ("[ERROR:0@0.03] global grfmt_tiff.cpp ..."), which is
# noise for us because every failure becomes an ImageReadError. The log level is
# process-global, so rather than changing it for the whole process we silence it only
# while a decode runs and put the caller's level back afterwards. A counter under a lock
# makes this correct when several threads decode at once.

_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved_level = None


def _cv_logging():
    try:
        return cv2.utils.logging
    except AttributeError:  # very old or stripped builds
        return None


@contextlib.contextmanager
def _quiet_opencv():
    global _quiet_depth, _saved_level
    log = _cv_logging()
    if log is None:
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                _saved_level = log.getLogLevel()
                log.setLogLevel(log.LOG_LEVEL_SILENT)
            except Exception:  # noqa: BLE001 - logging control is best effort
                _saved_level = None
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _saved_level is not None:
                with contextlib.suppress(Exception):
                    log.setLogLevel(_saved_level)
                _saved_level = None


# --------------------------------------------------------------------------- listing a case


def _natural_key(name):
    """Sort key: digit runs compare as numbers (``_2`` before ``_10``), text ignoring case."""
    parts = re.split(r"(\d+)", name)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return key, name


def _is_hidden(entry):
    if entry.name.startswith("."):
        return True
    attrs = 0
    with contextlib.suppress(OSError):
        attrs = getattr(entry.stat(), "st_file_attributes", 0)
    return bool(attrs & getattr(stat, "FILE_ATTRIBUTE_HIDDEN", 0))


def _check_case_dir(case_dir):
    path = Path(case_dir)
    if not path.exists():
        raise CaseError(path, "case directory not found")
    if not path.is_dir():
        raise CaseError(path, "not a directory (expected a folder of chromosome images)")
    return path


def list_case(case_dir):
    """List a case directory.

    Returns ``(image_paths, ignored)``: ``image_paths`` are the files whose suffix is in
    ``IMAGE_SUFFIXES`` (any case), in natural name order; ``ignored`` are the names of the
    other entries (non-image files and subdirectories), also in natural order. Hidden
    entries (names starting with ``.``, or with the Windows hidden attribute) and the
    ``segmentation`` folder that ``vfinfer segment`` writes beside its cut-outs are skipped
    and not listed.

    Raises ``CaseError`` if the directory is missing, is not a directory, cannot be listed,
    or holds no image files.
    """
    path = _check_case_dir(case_dir)
    images, ignored = [], []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if _is_hidden(entry) or (entry.name == SEGMENTATION_DIR and entry.is_dir()):
                    continue
                try:
                    is_file = entry.is_file()
                except OSError:
                    is_file = False
                if is_file and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    images.append(entry.name)
                else:
                    ignored.append(entry.name)
    except OSError as exc:
        raise CaseError(path, f"cannot list directory ({exc.strerror or exc})") from exc

    images.sort(key=_natural_key)
    ignored.sort(key=_natural_key)
    if not images:
        looked_for = ", ".join(IMAGE_SUFFIXES)
        problem = f"no chromosome images found (looked for {looked_for})"
        if ignored:
            shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
            problem += f"; other entries: {shown}"
        raise CaseError(path, problem)
    return [path / name for name in images], ignored


# --------------------------------------------------------------------------- reading one file


def _png_truncated(data):
    """True if the PNG chunk sequence runs past the end of the data before ``IEND``."""
    pos = len(_PNG_SIGNATURE)
    end = len(data)
    while pos + 8 <= end:
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if ctype == b"IEND":
            return False
        pos += 12 + length  # length + type + data + CRC
    return True


def _jpeg_truncated(data):
    """True if there is no EOI marker after the last start-of-scan marker."""
    eoi = data.rfind(b"\xff\xd9")
    sos = data.rfind(b"\xff\xda")
    return eoi < 0 or eoi < sos


def _measured(raw, path):
    """(format, width, height) from the header, or the file is refused."""
    try:
        return image_size(raw)
    except HeaderError as exc:
        raise ImageReadError(path, str(exc)) from None


def _gray_and_weight(img, dtype):
    """One strip as (gray values, alpha weight 0..1 or None), not yet scaled."""
    alpha = None
    if img.ndim == 3:
        channels = img.shape[2]
        if channels in (2, 4):
            alpha = img[:, :, -1]
            img = img[:, :, :-1]
        gray = img[:, :, 0] if channels == 2 else cv2.cvtColor(np.ascontiguousarray(img),
                                                                cv2.COLOR_BGR2GRAY)
    else:
        gray = img
    if alpha is None:
        return gray, None
    if dtype.kind == "f":
        return gray, np.clip(np.nan_to_num(alpha.astype(np.float32)), 0.0, 1.0)
    return gray, alpha.astype(np.float32) / float(np.iinfo(dtype).max)


def _strips(img):
    """Row ranges of at most ``STRIP_PIXELS`` pixels each."""
    rows = max(1, STRIP_PIXELS // max(img.shape[1], 1))
    return [(r, min(r + rows, img.shape[0])) for r in range(0, img.shape[0], rows)]


def _levels(img, dtype):
    """(largest finite value, largest visible value) of a uint16 or float image, where a
    non-finite value counts as the module doc says (NaN and -inf as 0, +inf as the largest
    finite value) and visible means not fully transparent."""
    finite_top, visible_top, visible_inf = 0.0, 0.0, False
    for r0, r1 in _strips(img):
        gray, weight = _gray_and_weight(img[r0:r1], dtype)
        values = gray.astype(np.float32, copy=False)
        finite = np.isfinite(values)
        if finite.any():
            finite_top = max(finite_top, float(values[finite].max()))
        shown = weight is None or weight > 0
        visible = finite & shown
        if visible.any():
            visible_top = max(visible_top, float(values[visible].max()))
        visible_inf |= bool(np.any(np.isposinf(values) & shown))
    return finite_top, max(visible_top, finite_top if visible_inf else 0.0)


def _strip_to_gray8(img, dtype, levels):
    """One strip to uint8 by the rules of the module doc, given the whole image's levels."""
    gray, weight = _gray_and_weight(img, dtype)
    if gray.dtype == np.uint8:
        values = gray.astype(np.float32) if weight is not None else gray
    else:
        finite_top, top = levels
        values = gray.astype(np.float32)
        if dtype.kind == "f":
            np.nan_to_num(values, copy=False, nan=0.0, posinf=finite_top, neginf=0.0)
        if dtype.kind == "f" and top <= 1.0:
            values *= 255.0
        elif top > 255.0:
            values *= 255.0 / top
        np.clip(values, 0.0, 255.0, out=values)
    if weight is not None:
        values = values * weight + 255.0 * (1.0 - weight)
    if values.dtype == np.uint8:
        return values
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_gray8(img, path):
    """Convert a decoded OpenCV array to (H, W) uint8 with a white background.

    Anything but 8-bit gray is converted a strip of rows at a time, so a large 16-bit or
    alpha image needs its own size plus the result, not several float copies of itself."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (2, 3, 4)):
        raise ImageReadError(path, f"unsupported image layout {img.shape}")
    if img.size == 0:
        raise ImageReadError(path, "image has no pixels")
    dtype = img.dtype
    if dtype == np.uint8 and img.ndim == 2:
        return np.ascontiguousarray(img)
    if dtype not in (np.uint8, np.uint16) and dtype.kind != "f":
        raise ImageReadError(path, f"unsupported pixel type {dtype.name}")
    if dtype.kind == "f" and dtype != np.float32:
        img = img.astype(np.float32)  # cvtColor does not take float16/float64
    levels = None if dtype == np.uint8 else _levels(img, dtype)
    out = np.empty(img.shape[:2], np.uint8)
    for r0, r1 in _strips(img):
        out[r0:r1] = _strip_to_gray8(img[r0:r1], dtype, levels)
    return out


def read_gray8(path):
    """Read one image file as an (H, W) uint8 gray array with a white (255) background.

    Uses ``np.fromfile`` + ``cv2.imdecode`` so non-ASCII paths work on Windows. Raises
    ``ImageReadError`` (message ``"<path>: <problem>"``) for anything that is not a
    complete, decodable image with a supported pixel type.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageReadError(path, "is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageReadError(path, "permission denied") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    except MemoryError as exc:
        raise ImageReadError(path, "file too large to load into memory") from exc

    return decode_gray8(data, path)


def decode_gray8(data, path, max_pixels=MAX_PIXELS):
    """``read_gray8`` on the bytes of an image file already in memory (``data``: bytes or a
    uint8 array); ``path`` names the file in the messages (e.g. an uploaded part's name).

    The size is read from the header first (``vfinfer.util.image_header``): a format whose
    size cannot be read is refused, and so is an image over ``max_pixels`` (None: no limit),
    with ``ImageTooLargeError``, before anything is decoded."""
    if not isinstance(data, np.ndarray):
        data = np.frombuffer(data, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")

    raw = data.tobytes()
    fmt, width, height = _measured(raw, path)
    if max_pixels and width * height > max_pixels:
        raise ImageTooLargeError(path, f"{width} x {height} pixels, over the limit of "
                                       f"{max_pixels}", width * height)
    if fmt == "PNG" and _png_truncated(raw):
        raise ImageReadError(path, "truncated PNG file (the end of the file is missing)")
    if fmt == "JPEG" and _jpeg_truncated(raw):
        raise ImageReadError(path, "truncated JPEG file (the end of the file is missing)")

    try:
        with _quiet_opencv():
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(path, f"OpenCV could not decode it ({_one_line(exc)})") from exc
    except MemoryError as exc:
        raise ImageReadError(path, "image too large to decode into memory") from exc

    if img is None:
        raise ImageReadError(path, f"corrupt or truncated {fmt} file (OpenCV could not decode it)")

    try:
        return to_gray8(img, path)
    except cv2.error as exc:
        raise ImageReadError(path, f"OpenCV could not convert it ({_one_line(exc)})") from exc


# --------------------------------------------------------------------------- reading a case


def read_case(case_dir):
    """Read every image of a case.

    Returns ``(images, paths, ignored)``: ``images[i]`` is ``read_gray8(paths[i])``, in the
    natural name order of ``list_case``; ``ignored`` are the skipped entries' names.
    Raises ``CaseError`` for directory problems and ``ImageReadError`` for the first file
    that cannot be read.
    """
    paths, ignored = list_case(case_dir)
    images = [read_gray8(p) for p in paths]
    return images, paths, ignored


# zlib's fastest level with run-length matching and the "up" filter: on karyograms (large
# white areas, repeated rows) as fast as OpenCV's default and about 8 % smaller; PNG is
# lossless whatever the settings. A one-channel picture encodes about 3x faster.
FAST_PNG = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
            cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP)


def encode_png(image, params=(), what="the picture"):
    """``image`` (gray, BGR or BGRA, uint8 or uint16) as PNG bytes; ``params`` as for
    ``cv2.imencode`` (e.g. ``FAST_PNG``). Raises ValueError naming ``what`` when OpenCV cannot
    encode it."""
    ok, encoded = cv2.imencode(".png", image, list(params))
    if not ok:
        raise ValueError(f"could not encode {what} as PNG")
    return encoded.tobytes()


# zlib's fastest level with run-length matching for indexed PNGs (Pillow), as FAST_PNG does for
# one-channel ones: on a karyogram as fast, and about 12 % larger
PALETTE_PNG = {"compress_level": 1, "compress_type": 3}  # 3: zlib.Z_RLE


def encode_gray_png(gray, highlight=None, colour=(255, 0, 0), what="the picture"):
    """A 2-D uint8 ``gray`` picture as PNG bytes, the pixels of the bool mask ``highlight``
    (None: none) shown in ``colour`` (RGB).

    Without a highlighted pixel: a one-channel PNG (``FAST_PNG``). With one: an indexed PNG
    (Pillow) whose palette is the gray ramp with one entry given to ``colour``: a gray level
    the picture does not use, so it decodes to exactly the gray picture with the highlighted
    pixels in ``colour``; when all 256 levels occur, the rarest one is merged into its
    neighbour. One byte per pixel, where a colour PNG would take three and over twice as
    long to encode."""
    if highlight is None or not highlight.any():
        return encode_png(gray, FAST_PNG, what)
    from PIL import Image  # the one user of Pillow; imported when a picture needs it

    counts = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel()
    index = int(np.argmin(counts))  # a free level when there is one
    indexed = gray.copy()
    if counts[index]:
        indexed[indexed == index] = index - 1 if index else 1
    indexed[highlight] = index
    palette = np.repeat(np.arange(256, dtype=np.uint8), 3)
    palette[3 * index:3 * index + 3] = colour
    picture = Image.frombytes("P", (gray.shape[1], gray.shape[0]), indexed.tobytes())
    picture.putpalette(palette.tobytes())
    buffer = io.BytesIO()
    try:
        picture.save(buffer, "PNG", **PALETTE_PNG)
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not encode {what} as PNG ({exc})") from None
    return buffer.getvalue()
