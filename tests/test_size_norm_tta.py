"""Size normalization and test-time augmentation: manifest properties applied by the runtime
``Pipeline`` and the PyTorch reference alike (``vfinfer.util.geometry``,
``vfinfer.pipeline.preprocess``, ``vfinfer.pipeline.tta``)."""

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from tiny import TINY

from vfinfer.cli import main
from vfinfer.model.config import ModelConfig, preset
from vfinfer.model.manifest import load_manifest
from vfinfer.pipeline.preprocess import batch_of, normalize_batch, preprocess_batch
from vfinfer.pipeline.tta import add_views, merge_views
from vfinfer.tools.evaluation.inference import groups
from vfinfer.util.geometry import axis_length, chromosome_mask, scale_cutout, size_norm_scale
from vfinfer.util.images import read_case

SIZE_NORM = replace(preset("compact"), size_norm=50.0)


@pytest.fixture(scope="module")
def cell(synth_root):
    case = next(p for p in sorted(synth_root.iterdir()) if p.is_dir() and "46XY" in p.name)
    return read_case(case)[0]


def _rod(length, angle, width=9, side=160):
    image = np.full((side, side), 255, np.uint8)
    centre, radians = side / 2, np.radians(angle)
    dx, dy = np.sin(radians) * length / 2, -np.cos(radians) * length / 2
    cv2.line(image, (round(centre - dx), round(centre - dy)),
             (round(centre + dx), round(centre + dy)), 40, width)
    return image


def _enlarged(images, factor):
    return [cv2.resize(img, (round(img.shape[1] * factor), round(img.shape[0] * factor)),
                       interpolation=cv2.INTER_LINEAR) for img in images]


# --------------------------------------------------------------------------- size normalization


@pytest.mark.parametrize("angle", [0, 30, 60, 90, 135])
def test_axis_length_does_not_depend_on_the_angle(angle):
    upright = axis_length(chromosome_mask(_rod(80, 0)))
    turned = axis_length(chromosome_mask(_rod(80, angle)))
    assert abs(turned - upright) <= 3.0  # rasterization of the line's ends
    assert 80 <= upright <= 92  # the line's length plus its round caps


def test_size_norm_scale_is_the_reference_over_the_cell_median():
    assert size_norm_scale([40, 50, None, 60], 75.0, 3) == pytest.approx(1.5)
    assert size_norm_scale([40, None, 60], 75.0, 3) is None  # two measured: no median
    assert size_norm_scale([], 75.0, 1) is None
    image = np.zeros((20, 10), np.uint8)
    assert scale_cutout(image, 1.0) is image
    assert scale_cutout(image, 1.5).shape == (30, 15) and scale_cutout(image, 0.5).shape == (10, 5)


def test_a_cell_enlarged_1_5x_gives_the_same_network_input(cell):
    """Size normalization takes out the magnification: the G inputs of a cell and of the same
    cell enlarged 1.5x agree within interpolation error; without it they do not."""
    for config in (SIZE_NORM, replace(SIZE_NORM, rotate_crop="principal-axis")):
        plain = replace(config, size_norm=0.0)
        original, facts = normalize_batch(cell, config)
        enlarged, facts_big = normalize_batch(_enlarged(cell, 1.5), config)
        ratio = facts[0]["size_scale"] / facts_big[0]["size_scale"]
        assert ratio == pytest.approx(1.5, rel=0.01)
        normed = np.abs(batch_of(original, config) - batch_of(enlarged, config)).mean()
        unnormed = np.abs(preprocess_batch(cell, plain)
                          - preprocess_batch(_enlarged(cell, 1.5), plain)).mean()
        assert normed < 0.05 and normed < unnormed / 5  # z-score units
        assert all(abs(f["size_scale"] - facts[0]["size_scale"]) < 1e-9 for f in facts)


def test_size_norm_is_per_cell_and_skips_cells_of_too_few_chromosomes(cell):
    small, big = cell[:20], _enlarged(cell[20:40], 2.0)
    _, facts = normalize_batch(small + big, SIZE_NORM, cells=["a"] * 20 + ["b"] * 20)
    scale_a, scale_b = facts[0]["size_scale"], facts[20]["size_scale"]
    assert {f["size_scale"] for f in facts[:20]} == {scale_a}
    assert scale_a / scale_b == pytest.approx(2.0, rel=0.1)
    images, facts = normalize_batch(cell[:1], SIZE_NORM)  # a single cut-out: no median
    assert facts[0]["size_scale"] == 1.0 and facts[0]["length"] > 0
    np.testing.assert_array_equal(images[0], normalize_batch(cell[:1], preset("compact"))[0][0])


def test_old_configs_and_manifests_keep_their_behaviour(cell, model_dir, fresh_copy):
    old = preset("compact").to_dict()
    for key in ("size_norm", "size_norm_min_count", "tta"):
        old.pop(key)
    config = ModelConfig.from_dict(old)
    assert config.size_norm == 0.0 and config.tta == "none"
    images, facts = normalize_batch(cell, config)
    assert all(set(f) == {"background", "tilt", "rotated", "grain"} for f in facts)
    assert all(a is b for a, b in zip(images, normalize_batch(cell, config)[0]))
    old_dir = fresh_copy(model_dir, "old")
    data = json.loads((old_dir / "manifest.json").read_text())
    for key in ("size_norm", "size_norm_min_count", "tta"):
        data["config"].pop(key, None)
    (old_dir / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(old_dir).config.size_norm == 0.0
    assert load_manifest(old_dir).config.tta == "none"
    with pytest.raises(ValueError, match="tta"):
        replace(config, tta="vertical")
    with pytest.raises(ValueError, match="size_norm"):
        replace(config, size_norm=-1.0)


def test_eval_groups_keep_cells_whole_only_with_size_norm():
    cells = ["a"] * 5 + ["b"] * 3 + ["c"] * 7 + ["d"] * 2
    assert groups(cells, 6) == [(0, 6), (6, 12), (12, 17)]
    assert groups(cells, 6, whole_cells=True) == [(0, 5), (5, 8), (8, 15), (15, 17)]


# --------------------------------------------------------------------------- test-time views


def test_mirror_views_average_the_probabilities_and_keep_the_first_box():
    g_input = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    assert add_views(g_input, "none") is g_input
    views = add_views(g_input, "mirror")
    assert views.shape == (4, 1, 4, 4)
    np.testing.assert_array_equal(views[2:], g_input[..., ::-1])
    outputs = {"type_probs": np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [1.0, 0.0]],
                                      np.float32),
               "boxes": np.arange(16, dtype=np.float32).reshape(4, 4)}
    merged = merge_views(outputs, "mirror", 2)
    np.testing.assert_allclose(merged["type_probs"], [[0.3, 0.7], [0.8, 0.2]], rtol=1e-6)
    np.testing.assert_array_equal(merged["boxes"], outputs["boxes"][:2])
    assert merged["type_probs"].dtype == np.float32


# --------------------------------------------------------------------------- with a tiny model


@pytest.fixture(scope="module")
def tiny_tta(tmp_path_factory):
    """A random-init tiny model with size normalization and mirror TTA, exported; the
    PyTorch model it holds."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from vfinfer_export.models import VarifocalNet
    from vfinfer_export.onnx_export import export_model

    torch.manual_seed(0)
    model = VarifocalNet(replace(TINY, size_norm=30.0, tta="mirror")).eval()
    out = tmp_path_factory.mktemp("tiny") / "tta"
    export_model(model, out, {"kind": "random-init", "seed": 0}, log=lambda *a: None,
                 batches=(2,))
    return out, model


@pytest.mark.slow
def test_tta_parity_between_the_runtime_and_the_pytorch_reference(tiny_tta, cell):
    from vfinfer.pipeline import Pipeline
    from vfinfer_export.reference import ReferencePipeline

    out, model = tiny_tta
    expected = ReferencePipeline(model, batch_size=32).infer(cell)
    with Pipeline(out, backend="ort", batch_size=20) as pipe:
        assert pipe.config.tta == "mirror" and pipe.config.size_norm == 30.0
        got = pipe.infer(cell)
    for key in ("type_probs", "polarity_probs"):
        assert np.abs(got[key] - expected[key]).max() < 1e-4
        np.testing.assert_array_equal(got[key].argmax(1), expected[key].argmax(1))
    assert np.abs(got["boxes"] - expected["boxes"]).max() < 1.0


def test_tta_is_the_mean_of_the_image_and_its_mirror(tiny_tta, cell, tmp_path):
    from vfinfer.pipeline import Pipeline

    out, _ = tiny_tta
    with Pipeline(out, backend="ort") as pipe:
        g_input = batch_of(normalize_batch(cell, pipe.config)[0], pipe.config)
        mirrored = pipe.infer_prepared(g_input)
        result = pipe.run_case(cell[:3], name="three")
    runner = CliRunner()
    done = runner.invoke(main, ["tta", str(out), "none"])
    assert done.exit_code == 0 and "tta mirror -> none" in done.output
    try:
        with Pipeline(out, backend="ort") as pipe:
            plain = pipe.infer_prepared(g_input)
            flipped = pipe.infer_prepared(np.ascontiguousarray(g_input[..., ::-1]))
    finally:
        assert runner.invoke(main, ["tta", str(out), "mirror"]).exit_code == 0
    for key in ("type_probs", "polarity_probs"):
        np.testing.assert_allclose(mirrored[key], (plain[key] + flipped[key]) / 2, atol=1e-6)
    np.testing.assert_array_equal(mirrored["boxes"], plain["boxes"])
    assert any("size normalization not applied: 3 measured" in w for w in result["warnings"])
    assert {c["size_scale"] for c in result["chromosomes"]} == {1.0}
    assert runner.invoke(main, ["tta", str(out), "sideways"]).exit_code == 2


@pytest.mark.slow
def test_export_records_tta(tiny_tta, tmp_path):
    from vfinfer_export.checkpoint import save_checkpoint

    _, model = tiny_tta
    plain = type(model)(replace(model.config, tta="none")).eval()
    plain.load_state_dict(model.state_dict())
    save_checkpoint(plain, tmp_path / "plain.pt")
    out = tmp_path / "m"
    done = CliRunner().invoke(main, ["export", str(tmp_path / "plain.pt"), "--tta", "mirror",
                                     "--out", str(out)])
    assert done.exit_code == 0, done.output
    config = load_manifest(out).config
    assert config.tta == "mirror" and config.size_norm == 30.0
