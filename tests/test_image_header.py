"""Every accepted format's size read from its header, refusals before decoding, and the
strip-wise conversion to 8-bit gray (``vfinfer.util.image_header``, ``vfinfer.util.images``)."""

import cv2
import numpy as np
import pytest

from vfinfer.util import images
from vfinfer.util.image_header import HeaderError, image_size
from vfinfer.util.images import ImageReadError, ImageTooLargeError, decode_gray8, to_gray8

GRAY = np.random.default_rng(0).integers(0, 255, (37, 53), dtype=np.uint8)
RGB = np.dstack([GRAY] * 3)
FLOAT_RGB = RGB.astype(np.float32) / 255


def encoded(ext, image, params=()):
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        pytest.skip(f"this OpenCV build cannot write {ext}")
    return buf.tobytes()


@pytest.mark.parametrize("ext, image, params, fmt", [
    (".png", GRAY, (), "PNG"), (".jpg", GRAY, (), "JPEG"),
    (".jpg", GRAY, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "JPEG"), (".bmp", GRAY, (), "BMP"),
    (".tif", GRAY, (), "TIFF"), (".tif", GRAY.astype(np.uint16), (), "TIFF"),
    (".webp", GRAY, (), "WebP"), (".webp", GRAY, (cv2.IMWRITE_WEBP_QUALITY, 101), "WebP"),
    (".jp2", GRAY, (), "JPEG 2000"), (".pgm", GRAY, (), "PNM"), (".ppm", RGB, (), "PNM"),
    (".pbm", GRAY, (), "PNM"), (".pam", GRAY, (), "PAM"), (".pfm", FLOAT_RGB, (), "PNM"),
    (".sr", GRAY, (), "Sun raster"), (".hdr", FLOAT_RGB, (), "Radiance HDR"),
    (".avif", GRAY, (), "AVIF"),
])
def test_every_accepted_format_gives_its_size(ext, image, params, fmt):
    assert image_size(encoded(ext, image, params)) == (fmt, 53, 37)


def test_gif_and_bigtiff_headers():
    gif = b"GIF89a" + (53).to_bytes(2, "little") + (37).to_bytes(2, "little") + b"\0" * 8
    assert image_size(gif) == ("GIF", 53, 37)
    entries = [(256, 16, 53), (257, 16, 37)]  # BigTIFF: 8-byte counts and values
    ifd = len(entries).to_bytes(8, "little") + b"".join(
        tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + (1).to_bytes(8, "little")
        + value.to_bytes(8, "little") for tag, kind, value in entries)
    big = b"II+\0" + (8).to_bytes(2, "little") + b"\0\0" + (16).to_bytes(8, "little") + ifd
    assert image_size(big) == ("TIFF", 53, 37)


@pytest.mark.parametrize("data, message", [
    (b"", "not a readable image"), (b"just some text", "not a readable image"),
    (b"\x76\x2f\x31\x01" + b"\0" * 40, "OpenEXR images are not accepted"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rXXXX", "PNG header cut short or damaged"),
    (b"RIFF\0\0\0\0WEBPVP9 ", "WebP header"),
])
def test_unreadable_sizes_are_refused(data, message):
    with pytest.raises(HeaderError, match=message):
        image_size(data)


def test_a_huge_declared_image_is_refused_before_decoding(monkeypatch):
    calls = []
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: calls.append(a))
    huge = encoded(".tif", np.full((3000, 3000), 255, np.uint8))
    with pytest.raises(ImageTooLargeError, match="3000 x 3000 pixels, over the limit of 1000000"):
        decode_gray8(huge, "huge.tif", max_pixels=1_000_000)
    assert calls == []  # never handed to the decoder
    with pytest.raises(ImageReadError, match="OpenEXR"):
        decode_gray8(b"\x76\x2f\x31\x01" + b"\0" * 40, "x.exr")


@pytest.mark.parametrize("kind", ["uint16", "rgba16", "float", "bgr8a"])
def test_strips_convert_like_the_whole_image(monkeypatch, kind):
    """A large image converted strip by strip equals the same image in one strip."""
    rng = np.random.default_rng(1)
    shape = (301, 257)
    img = {"uint16": rng.integers(0, 4095, shape, dtype=np.uint16),
           "rgba16": rng.integers(0, 65535, shape + (4,), dtype=np.uint16),
           "float": np.where(rng.random(shape) < 0.01, np.nan, rng.random(shape) * 900),
           "bgr8a": rng.integers(0, 255, shape + (4,), dtype=np.uint8)}[kind]
    if kind == "float":
        img = img.astype(np.float32)
        img[0, 0] = np.inf
    whole = to_gray8(img, "x")
    monkeypatch.setattr(images, "STRIP_PIXELS", 1000)  # about 4 rows a strip
    np.testing.assert_array_equal(to_gray8(img, "x"), whole)
