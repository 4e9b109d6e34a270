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


def test_test_time_flips_average_the_maps_of_the_mirror_images(tmp_path):
    """``vfinfer tta SEGMODEL mirror|flips``: the maps are the mean of the network's maps of
    the mirror images, each flipped back; a bad mode or manifest value is refused."""
    import shutil

    from click.testing import CliRunner

    from vfinfer.cli import main

    model_dir = tmp_path / "seg"
    shutil.copytree(demo_seg_model_dir(), model_dir)
    image, _ = render_metaphase(5, "46,XY", size=(320, 240))
    plain = Segmenter(model_dir)
    maps = {axes: np.flip(plain.maps(np.flip(image, axes)), tuple(a + 1 for a in axes))
            for axes in ((), (1,), (0,), (0, 1))}
    plain.close()
    assert not np.allclose(maps[()], maps[(1,)], atol=1e-3)  # the network is not symmetric
    for mode, used in (("mirror", ((), (1,))), ("flips", tuple(maps))):
        done = CliRunner().invoke(main, ["tta", str(model_dir), mode])
        assert done.exit_code == 0 and f"-> {mode}" in done.output
        flipped = Segmenter(model_dir)
        assert flipped.describe()["tta"] == mode
        averaged = flipped.maps(image)
        flipped.close()
        assert np.allclose(averaged, np.mean([maps[a] for a in used], axis=0), atol=1e-6)
    manifest = model_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"tta": "flips"', '"tta": "spin"'))
    with pytest.raises(ValueError, match="tta 'spin' is not one of none, mirror, flips"):
        load_seg_model(model_dir)
