"""The bundled demo segmentation model (``vfinfer.segment.model``) and the ``Segmenter`` that
runs it (``vfinfer.segment.segmenter``) on synthetic metaphases and bad inputs. No torch
needed."""

import numpy as np
import pytest

from vfinfer.segment.model import ImageTooLargeError, demo_seg_model_dir, load_seg_model
from vfinfer.segment.segmenter import Segmenter
from vfinfer.tools.synthesis.metaphases import render_metaphase

from helpers import best_matches


def test_demo_model_manifest_and_graph():
    model = load_seg_model(demo_seg_model_dir())
    assert model.data["kind"] == "segmentation"
    assert model.data["op_audit"]["unsupported"] == []
    assert model.data["training"]["data"].startswith("synthetic")
    assert max(v["max_abs"] for v in model.data["parity"]["shapes"].values()) < 1e-4


@pytest.fixture(scope="module")
def demo_segmenter():
    seg = Segmenter()
    yield seg
    seg.close()


@pytest.mark.slow
@pytest.mark.parametrize("background", ["light", "dark"])
def test_demo_model_on_a_synthetic_metaphase(demo_segmenter, background):
    """A metaphase the demo model never saw (seed outside its training set): most
    chromosomes found once, none on a nucleus."""
    image, masks = render_metaphase(424242, "46,XY", background=background)
    found = demo_segmenter.segment(image)
    assert found.background == background
    iou = best_matches(masks, found.instances, image.shape)
    recall = float(np.mean(iou.max(axis=1) >= 0.5))
    precision = float(np.mean(iou.max(axis=0) >= 0.5))
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    assert found.timing_ms["segmentation"] > 0


def test_huge_image_is_refused_with_one_line(demo_segmenter):
    side = demo_segmenter.model.input.max_side + 8
    with pytest.raises(ImageTooLargeError, match="downscale it"):
        demo_segmenter.segment(np.zeros((16, side), np.uint8))


def test_sixteen_bit_image_is_segmented(demo_segmenter):
    image, masks = render_metaphase(11, size=(384, 512), background="dark")
    wide = image.astype(np.uint16) * 200  # a 16-bit camera image
    found = demo_segmenter.segment(wide)
    assert len(found.instances) >= 0.7 * len(masks)


def test_level_quantile_is_numpys_percentile():
    """The histogram quantile of the segmentation input's normalization gives numpy's
    numbers exactly (median and the 99.5th percentile, linear interpolation, float32)."""
    from vfinfer.segment.model import level_quantile

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, tuple(rng.integers(1, 90, 2)), dtype=np.uint8)
              for _ in range(200)]
    images += [np.full((4, 6), 7, np.uint8), np.array([[200]], np.uint8),
               np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(24, 32)]
    for image in images:
        as_float = image.astype(np.float32)
        assert level_quantile(image, 0.5) == float(np.median(as_float))
        assert level_quantile(image, 0.995) == float(np.percentile(as_float, 99.5))
