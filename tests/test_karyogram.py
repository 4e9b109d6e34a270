"""Tests of the karyogram picture (synthetic inputs only, no data files)."""

import cv2
import numpy as np
import pytest

from vfinfer.io.karyogram import render_karyogram

DARK, LIGHT = 30, 160


def asymmetric(h=60, w=16):
    """A chromosome-like rectangle, dark at the top half and light at the bottom half."""
    img = np.full((h + 6, w + 6), 255, np.uint8)
    img[3:3 + h // 2, 3:3 + w] = DARK
    img[3 + h // 2:3 + h, 3:3 + w] = LIGHT
    return img


def plain(h, w=16, value=100):
    img = np.full((h + 6, w + 6), 255, np.uint8)
    img[3:3 + h, 3:3 + w] = value
    return img


def components(picture, lo, hi, min_area=50):
    """Bounding boxes (x, y, w, h) of the gray blobs with values in [lo, hi], left to right."""
    gray = picture.astype(np.int16)
    blue_red = np.abs(gray[:, :, 0] - gray[:, :, 2]) < 3
    is_gray = blue_red & (np.abs(gray[:, :, 1] - gray[:, :, 2]) < 3)
    mask = (is_gray & (gray[:, :, 0] >= lo) & (gray[:, :, 0] <= hi)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes = [tuple(int(v) for v in stats[i, :4]) for i in range(1, n) if stats[i, 4] >= min_area]
    return sorted(boxes)


def red_pixels(picture):
    b, g, r = (picture[:, :, k].astype(np.int16) for k in range(3))
    return int(np.count_nonzero((r > 200) & (g < 80) & (b < 80)))


def full_set():
    types = [t for t in range(22) for _ in range(2)] + [22, 23]
    images = [plain(150 - 5 * min(t, 22)) for t in types]
    return images, types, [1] * len(types), [False] * len(types)


def test_shape_and_dtype():
    images, types, pols, low = full_set()
    out = render_karyogram(images, types, pols, low, title="case_01   46,XY",
                           notes=["a warning " * 60])
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert 1400 <= out.shape[1] <= 1800
    assert 400 <= out.shape[0] <= 1400
    assert out[0, 0].tolist() == [255, 255, 255]
    assert cv2.imencode(".png", out)[0]
    # all 46 chromosomes are drawn as separate blobs of their gray value
    assert len(components(out, 90, 110)) == 46


def test_polarity_zero_is_flipped():
    def darker_end(polarity):
        out = render_karyogram([asymmetric()], [0], [polarity], [False])
        boxes = components(out, 0, 230, min_area=500)
        assert len(boxes) == 1
        x, y, w, h = boxes[0]
        chrom = out[y:y + h, x:x + w, 0].astype(float)
        top, bottom = chrom[: h // 3].mean(), chrom[-(h // 3):].mean()
        return "top" if top < bottom else "bottom"

    assert darker_end(1) == "top"  # q-arm down already: drawn as given
    assert darker_end(0) == "bottom"  # q-arm up: flipped vertically


def test_empty_input():
    out = render_karyogram([], [], [], [], title="case_02", notes=["nothing found"])
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert np.count_nonzero(out < 128) > 0  # the "no chromosomes" text


def test_three_chromosomes_in_one_slot():
    images = [plain(80), plain(60), plain(70), plain(50)]
    out = render_karyogram(images, [20, 20, 20, 0], [1, 0, 1, 1], [False] * 4)
    boxes = components(out, 90, 110)
    assert len(boxes) == 4
    # the three chromosomes of type 21 are bottom-aligned on one baseline, side by side,
    # in the last row (below chromosome 1)
    bottoms = {}
    for x, y, w, h in boxes:
        bottoms.setdefault(y + h, []).append((x, w))
    assert sorted(len(v) for v in bottoms.values()) == [1, 3]
    row4 = sorted(next(v for v in bottoms.values() if len(v) == 3))
    assert all(x1 >= x0 + w0 + 8 for (x0, w0), (x1, _) in zip(row4, row4[1:]))
    assert max(bottoms) == next(b for b, v in bottoms.items() if len(v) == 3)


def test_zero_and_one_chromosome_slots_render():
    out = render_karyogram([plain(40)], [23], [1], [False])
    assert len(components(out, 90, 110)) == 1


def test_low_confidence_marker_is_red():
    images, types, pols, low = full_set()
    plain_out = render_karyogram(images, types, pols, low)
    assert red_pixels(plain_out) == 0
    low[3] = True
    marked = render_karyogram(images, types, pols, low)
    assert red_pixels(marked) > 50
    assert marked.shape[0] > plain_out.shape[0]  # the legend line


@pytest.mark.parametrize("which", ["types", "polarities", "low_confidence"])
def test_mismatched_lengths(which):
    args = {"types": [0, 1], "polarities": [1, 1], "low_confidence": [False, False]}
    args[which] = args[which][:1]
    with pytest.raises(ValueError, match="same length"):
        render_karyogram([plain(40), plain(40)], **args)


def test_bad_values():
    with pytest.raises(ValueError, match="type"):
        render_karyogram([plain(40)], [24], [1], [False])
    with pytest.raises(ValueError, match="polarity"):
        render_karyogram([plain(40)], [0], [2], [False])
    with pytest.raises(ValueError, match="uint8"):
        render_karyogram([plain(40).astype(float)], [0], [1], [False])


def test_png_is_gray_without_flags_and_colour_with_them():
    """karyogram_png drops to one channel only when no red frame is drawn, losing nothing."""
    from vfinfer.io.results import karyogram_png

    images = [asymmetric(), asymmetric(40), plain(30)]
    for flags in ([False, False, False], [False, True, False]):
        result = {"case": "c", "karyotype": "46,XX", "warnings": ["a note"],
                  "chromosomes": [{"type": t, "polarity": "q-arm down", "low_confidence": f}
                                  for t, f in zip(("1", "1", "X"), flags)]}
        drawn = render_karyogram(images, [0, 0, 22], [1, 1, 1], flags, title="c   46,XX",
                                 notes=["a note"])
        decoded = cv2.imdecode(np.frombuffer(karyogram_png(result, images), np.uint8),
                               cv2.IMREAD_UNCHANGED)
        if any(flags):
            assert decoded.ndim == 3 and np.array_equal(decoded, drawn)
        else:
            assert decoded.ndim == 2 and np.array_equal(decoded, drawn[:, :, 0])
            assert np.array_equal(drawn[:, :, 0], drawn[:, :, 2])
            assert np.array_equal(drawn[:, :, 0], drawn[:, :, 1])


def test_indexed_png_decodes_to_the_gray_picture_with_the_highlight():
    """encode_gray_png: a free gray level carries the colour (exact); with every level in
    use, the rarest is merged into its neighbour and nothing else changes."""
    from vfinfer.util.images import encode_gray_png

    rng = np.random.default_rng(0)
    highlight = np.zeros((40, 64), bool)
    highlight[5:9, 10:30] = True
    for gray in (rng.integers(0, 200, (40, 64), dtype=np.uint8),  # 200-255 unused
                 np.arange(40 * 64, dtype=np.uint16).reshape(40, 64).astype(np.uint8)):
        rarest = int(np.argmin(np.bincount(gray.ravel(), minlength=256)))
        decoded = cv2.imdecode(np.frombuffer(encode_gray_png(gray, highlight, (255, 0, 0)),
                                             np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape == (40, 64, 3)
        assert (decoded[highlight] == (0, 0, 255)).all()  # BGR of RGB red
        kept = ~highlight & (gray != rarest)
        assert np.array_equal(decoded[kept][:, 0], gray[kept])
        assert np.array_equal(decoded[kept][:, 0], decoded[kept][:, 2])
        moved = ~highlight & (gray == rarest)
        assert (np.abs(decoded[moved][:, 0].astype(int) - rarest) <= 1).all()
    plain = encode_gray_png(gray, np.zeros_like(highlight))
    assert cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_UNCHANGED).ndim == 2
