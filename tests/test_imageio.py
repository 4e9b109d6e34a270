"""Tests for vfinfer.util.images. Every input file is generated in tmp_path."""

import pickle
import struct
import sys
import zlib

import cv2
import numpy as np
import pytest

from vfinfer.util.images import (
    IMAGE_SUFFIXES,
    CaseError,
    ImageReadError,
    list_case,
    read_case,
    read_gray8,
)


def chromosome(h=60, w=40, seed=0):
    """A small 8-bit test image: dark banded blob on white 255 background."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 255, np.uint8)
    bands = rng.integers(0, 200, (h // 2, 1)).astype(np.uint8)
    img[h // 4: h // 4 + h // 2, w // 4: 3 * w // 4] = bands
    return img


def encode(ext, img, params=()):
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def write(path, data):
    path.write_bytes(data)
    return path


def assert_read_error(path, fragment):
    with pytest.raises(ImageReadError) as info:
        read_gray8(path)
    err = info.value
    msg = str(err)
    assert isinstance(err, ValueError)
    assert err.path == path
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg and "\r" not in msg
    assert fragment in msg
    return err


def assert_case_error(path, fragment):
    with pytest.raises(CaseError) as info:
        read_case(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    assert fragment in msg
    return info.value


# ----------------------------------------------------------------------------- bad files


def test_zero_byte_png(tmp_path):
    p = write(tmp_path / "a.png", b"")
    assert_read_error(p, "empty file (0 bytes)")


def test_text_file_named_png(tmp_path):
    p = write(tmp_path / "notes.png", b"this is not an image, just some text\n" * 3)
    assert_read_error(p, "not a readable image (corrupt or not an image file; accepted: PNG")


def test_truncated_png(tmp_path):
    data = encode(".png", chromosome())
    p = write(tmp_path / "cut.png", data[: int(len(data) * 0.7)])
    assert_read_error(p, "truncated PNG")


def test_png_missing_only_iend(tmp_path):
    data = encode(".png", chromosome())
    assert data.endswith(b"IEND\xaeB`\x82")
    p = write(tmp_path / "noiend.png", data[:-12])
    assert_read_error(p, "truncated PNG")


def test_png_with_trailing_bytes_is_fine(tmp_path):
    img = chromosome()
    p = write(tmp_path / "trail.png", encode(".png", img) + b"\x00" * 16)
    np.testing.assert_array_equal(read_gray8(p), img)


@pytest.mark.parametrize("keep", [0.7, -2])
def test_truncated_jpeg(tmp_path, keep):
    data = encode(".jpg", chromosome())
    cut = data[: int(len(data) * keep)] if keep > 0 else data[:keep]
    p = write(tmp_path / "cut.jpg", cut)
    assert_read_error(p, "truncated JPEG")


def test_truncated_tiff(tmp_path):
    data = encode(".tif", chromosome())
    p = write(tmp_path / "cut.tif", data[: int(len(data) * 0.7)])
    assert_read_error(p, "TIFF")


def test_truncated_bmp(tmp_path):
    data = encode(".bmp", chromosome())
    p = write(tmp_path / "cut.bmp", data[: int(len(data) * 0.7)])
    assert_read_error(p, "BMP")


def test_unsupported_pixel_type(tmp_path):
    try:
        p = write(tmp_path / "u32.tif", encode(".tif", np.ones((5, 5), np.uint32)))
    except cv2.error:
        pytest.skip("this OpenCV build cannot write uint32 TIFF")
    if cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED).dtype != np.uint32:
        pytest.skip("this OpenCV build does not round-trip uint32 TIFF")
    assert_read_error(p, "unsupported pixel type uint32")


def test_missing_file(tmp_path):
    assert_read_error(tmp_path / "nope.png", "file not found")


def test_error_pickles(tmp_path):
    err = ImageReadError(tmp_path / "x.png", "empty file (0 bytes)")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.path == err.path
    cerr = pickle.loads(pickle.dumps(CaseError(tmp_path, "case directory not found")))
    assert str(cerr) == f"{tmp_path}: case directory not found"


def test_no_opencv_noise_on_stderr(tmp_path, capfd):
    log = getattr(cv2.utils, "logging", None)
    if log is None:
        pytest.skip("this OpenCV build has no cv2.utils.logging")
    before = log.getLogLevel()
    data = encode(".tif", chromosome())
    p = write(tmp_path / "cut.tif", data[: len(data) // 2])
    q = write(tmp_path / "cut.png", encode(".png", chromosome())[:100])
    for path in (p, q):
        with pytest.raises(ImageReadError):
            read_gray8(path)
    assert capfd.readouterr().err == ""
    # and the process-wide log level is restored afterwards
    assert log.getLogLevel() == before


# ----------------------------------------------------------------------------- good files


def test_png_8bit_roundtrip(tmp_path):
    img = chromosome()
    out = read_gray8(write(tmp_path / "a.png", encode(".png", img)))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_bmp(tmp_path):
    img = chromosome()
    out = read_gray8(write(tmp_path / "a.BMP", encode(".bmp", img)))
    np.testing.assert_array_equal(out, img)


def test_16bit_tiff_full_range(tmp_path):
    img16 = chromosome().astype(np.uint16) * 257  # 255 -> 65535
    out = read_gray8(write(tmp_path / "full.tif", encode(".tif", img16)))
    assert out.dtype == np.uint8 and out.ndim == 2
    np.testing.assert_array_equal(out, chromosome())
    assert out[0, 0] == 255


def test_16bit_tiff_12bit_data(tmp_path):
    img = chromosome()
    img12 = np.round(img.astype(np.float64) * 4095 / 255).astype(np.uint16)  # white = 4095
    out = read_gray8(write(tmp_path / "twelve.tiff", encode(".tif", img12)))
    assert out.dtype == np.uint8
    assert out[0, 0] == 255 and out.max() == 255
    assert np.abs(out.astype(int) - img).max() <= 1


def test_16bit_png_with_8bit_values_kept(tmp_path):
    img = chromosome().astype(np.uint16)  # max 255: already 8-bit data
    out = read_gray8(write(tmp_path / "a.png", encode(".png", img)))
    np.testing.assert_array_equal(out, chromosome())


def test_float_tiff(tmp_path):
    img = chromosome().astype(np.float32) / 255.0
    img[0, 0] = np.nan
    p = write(tmp_path / "f.tif", encode(".tif", img))
    if cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED).dtype != np.float32:
        pytest.skip("this OpenCV build does not round-trip float TIFF")
    out = read_gray8(p)
    assert out.dtype == np.uint8
    expected = chromosome()
    expected[0, 0] = 0
    np.testing.assert_array_equal(out, expected)


def test_rgb_jpeg(tmp_path):
    img = chromosome()
    bgr = cv2.merge([img, img, img])
    bgr[:5, :5] = (255, 0, 0)  # pure blue corner
    data = encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = read_gray8(write(tmp_path / "c.JPEG", data))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out[-1, -1] >= 250  # white background stays white
    assert 20 <= out[1, 1] <= 40  # blue -> about 0.114 * 255 = 29


def test_rgba_png_transparent_background(tmp_path):
    img = chromosome()
    bgra = np.zeros(img.shape + (4,), np.uint8)  # black, fully transparent
    mask = img < 255
    bgra[mask, :3] = img[mask, None]
    bgra[mask, 3] = 255
    bgra[0, 0] = (0, 0, 0, 128)  # half-transparent black -> mid gray
    out = read_gray8(write(tmp_path / "rgba.png", encode(".png", bgra)))
    expected = img.copy()
    expected[0, 0] = 127
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert out[-1, -1] == 255


def _png_chunk(ctype, data):
    crc = zlib.crc32(ctype + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def test_gray_alpha_png(tmp_path):
    # cv2 cannot write 2-channel images, so build a gray+alpha PNG (colour type 4) by hand
    w, h = 4, 3
    row = bytes([100, 255, 0, 0, 100, 0, 30, 255])  # (gray, alpha) pairs
    raw = b"".join(b"\x00" + row for _ in range(h))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    out = read_gray8(write(tmp_path / "ga.png", png))
    assert out.shape == (h, w) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], [100, 255, 255, 30])


def test_one_by_one(tmp_path):
    out = read_gray8(write(tmp_path / "dot.png", encode(".png", np.array([[7]], np.uint8))))
    assert out.shape == (1, 1) and out[0, 0] == 7


def test_large_image(tmp_path):
    img = np.full((6000, 6000), 255, np.uint8)
    img[3000, :] = 0
    data = encode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    out = read_gray8(write(tmp_path / "big.png", data))
    assert out.shape == (6000, 6000) and out.dtype == np.uint8
    assert out[3000].max() == 0 and out[0, 0] == 255


def test_non_ascii_file_name(tmp_path):
    img = chromosome()
    case = tmp_path / "Fall_Müller_染色体"
    case.mkdir()
    p = write(case / "Chromosom_ä_01.png", encode(".png", img))
    np.testing.assert_array_equal(read_gray8(p), img)
    images, paths, _ = read_case(case)
    assert len(images) == 1
    assert paths == [p]


def test_content_sniffed_not_suffix(tmp_path):
    img = chromosome()
    out = read_gray8(write(tmp_path / "really_png.jpg", encode(".png", img)))
    np.testing.assert_array_equal(out, img)


# ----------------------------------------------------------------------------- cases


def test_missing_directory(tmp_path):
    assert_case_error(tmp_path / "gone", "case directory not found")


def test_not_a_directory(tmp_path):
    p = write(tmp_path / "file.png", encode(".png", chromosome()))
    assert_case_error(p, "not a directory")


def test_empty_directory(tmp_path):
    err = assert_case_error(tmp_path, "no chromosome images found (looked for .png, .tif")
    assert isinstance(err, ValueError)
    with pytest.raises(CaseError):
        list_case(tmp_path)


def test_directory_without_images_names_other_entries(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    assert_case_error(tmp_path, "readme.txt")


def test_ignored_entries_and_hidden(tmp_path):
    img = chromosome()
    for name in ("b.png", "a.TIF"):
        write(tmp_path / name, encode(".png" if name.endswith("png") else ".tif", img))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.png", encode(".png", img))
    (tmp_path / "dir.png").mkdir()  # a directory with an image suffix
    write(tmp_path / ".hidden.png", b"")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")

    paths, ignored = list_case(tmp_path)
    assert [p.name for p in paths] == ["a.TIF", "b.png"]
    assert ignored == ["dir.png", "notes.txt", "sub"]

    images, rpaths, rignored = read_case(tmp_path)
    assert rpaths == paths and rignored == ignored
    assert len(images) == 2
    for out in images:
        np.testing.assert_array_equal(out, img)


def test_natural_sort(tmp_path):
    names = ["cell_10.png", "cell_2.png", "cell_1.png", "Cell_3.png", "cell_02b.png"]
    for n in names:
        write(tmp_path / n, b"x")
    paths, _ = list_case(tmp_path)
    assert [p.name for p in paths] == [
        "cell_1.png", "cell_2.png", "cell_02b.png", "Cell_3.png", "cell_10.png",
    ]


def test_all_suffixes_recognised(tmp_path):
    for i, suffix in enumerate(IMAGE_SUFFIXES):
        write(tmp_path / f"x{i}{suffix.upper()}", b"x")
    paths, ignored = list_case(tmp_path)
    assert len(paths) == len(IMAGE_SUFFIXES) and ignored == []


def test_read_case_reports_first_bad_file(tmp_path):
    good = encode(".png", chromosome())
    write(tmp_path / "k_1.png", good)
    write(tmp_path / "k_2.png", good[:50])
    write(tmp_path / "k_10.png", b"")
    with pytest.raises(ImageReadError) as info:
        read_case(tmp_path)
    assert info.value.path == tmp_path / "k_2.png"
    assert "truncated PNG" in str(info.value)


@pytest.mark.skipif(sys.platform == "win32", reason="chmod semantics")
def test_unreadable_file(tmp_path):
    import os

    p = write(tmp_path / "locked.png", encode(".png", chromosome()))
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running with privileges that ignore file permissions")
        assert_read_error(p, "permission denied")
    finally:
        p.chmod(0o644)
