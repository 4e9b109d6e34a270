"""Reference trainer: data, varifocal ops, the four-step strategy, checkpoints and resume."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny import TINY, TINY_TRUNKS  # noqa: E402

from vfinfer.io.labels import Label, read_labels  # noqa: E402
from vfinfer.pipeline.crop import crop_and_resize, decode_boxes  # noqa: E402
from vfinfer.pipeline.preprocess import preprocess  # noqa: E402
from vfinfer.tools.synthesis.cells import write_cases  # noqa: E402
from vfinfer.util.images import read_gray8  # noqa: E402
from vfinfer_export.checkpoint import load_checkpoint  # noqa: E402
from vfinfer_export.data import (  # noqa: E402
    ChromosomeDataset,
    batches,
    localization_target,
    split_by_slide,
)
from vfinfer_export.models import VarifocalNet  # noqa: E402
from vfinfer_export.train import make_optimizer, part_loss, prepare, train  # noqa: E402
from vfinfer_export.varifocal_ops import (  # noqa: E402
    boxcar_crop,
    crop_and_resize_torch,
    decode_boxes_torch,
)

ALLOWED = {
    "gnet": ("gnet.trunk.", "gnet.cls."),
    "loc": ("gnet.loc.",),
    "local-a": ("lnet.",),
    "local-b": ("gnet.loc.",),
    "heads": ("heads.",),
}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """Three synthetic cells, one slide each (138 images), some stored q-arm up."""
    root = tmp_path_factory.mktemp("synth")
    for seed, karyotype in ((1, "46,XY"), (2, "46,XX"), (3, "47,XY,+21")):
        write_cases(karyotype, root, seed=seed, cases=1, flip_polarity=0.2)
    return root


@pytest.fixture(scope="module")
def tiny_set(synth_dir):
    records = read_labels(synth_dir)
    return ChromosomeDataset(records, TINY, augment=True, seed=0)


def _fixed_batch(dataset, n=24):
    return next(batches(dataset, n, shuffle_seed=[0, 0]))


# --------------------------------------------------------------------------- data


def test_training_reads_labels_like_eval(synth_dir):
    """The trainer takes its labels from ``vfinfer.io.labels`` (tests/test_labels.py): what
    eval accepts, train accepts (X/Y letters included)."""
    records = read_labels(synth_dir)
    assert len(records) == 46 + 46 + 47
    assert {r.unit for r in records} == {"synth-1", "synth-2", "synth-3"}


def test_split_by_slide_keeps_slides_apart():
    rng = np.random.default_rng(0)
    records = [Label(f"cell{i}", f"slide{rng.integers(30)}", f"f{i}.png", 0, 1)
               for i in range(600)]
    for seed in range(5):
        train_set, val_set = split_by_slide(records, 0.2, seed)
        assert len(train_set) + len(val_set) == len(records)
        assert not {r.slide for r in train_set} & {r.slide for r in val_set}
        assert 0.15 * len(records) <= len(val_set) <= 0.4 * len(records)
        assert split_by_slide(records, 0.2, seed) == (train_set, val_set)
    assert split_by_slide(records, 0.2, 0) != split_by_slide(records, 0.2, 1)
    # without slides the cell id is the unit
    cells = [Label(f"c{i // 4}", "", f"f{i}.png", 0, 1) for i in range(80)]
    train_set, val_set = split_by_slide(cells, 0.25, 0)
    assert not {r.cell for r in train_set} & {r.cell for r in val_set} and val_set


def test_dataset_input_equals_runtime_preprocess(tiny_set):
    plain = ChromosomeDataset(tiny_set.records[:5], TINY, canvases=tiny_set.canvases[:5])
    for i in range(5):
        image, type_index, polarity, _ = plain[i]
        expected = preprocess(read_gray8(plain.records[i].path), TINY)
        np.testing.assert_array_equal(image.numpy()[0], expected)
        assert (type_index, polarity) == (plain.records[i].type, plain.records[i].polarity)


def test_augmentation_flips_polarity_and_is_seeded(tiny_set):
    polarities = {}
    for epoch in range(6):
        tiny_set.set_epoch(epoch)
        canvas, _, polarity = tiny_set.item(0)
        polarities[epoch] = polarity
        again = tiny_set.item(0)
        np.testing.assert_array_equal(canvas, again[0])
    assert set(polarities.values()) == {0, 1}
    tiny_set.set_epoch(0)


def test_localization_target_centre_and_size():
    sizes = []
    for half in (2, 10, 12, 14, 30):
        canvas = np.full((64, 64), 255, np.uint8)
        canvas[32 - half:32 + half, 30:34] = 40  # a vertical bar centred on the image
        target = localization_target(canvas, TINY)
        assert target[0] == target[1] == 0.5
        sizes.append(float(target[2]))
    assert sizes[0] == 0.0 and sizes[-1] == 1.0
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert sizes[2] == pytest.approx((12 - 8) / 8)  # eq. 5 inverted, T1 = 16
    assert localization_target(np.full((64, 64), 255, np.uint8), TINY)[2] == 0.0


def test_localization_target_grows_with_chromosome(tiny_set):
    plain = ChromosomeDataset(tiny_set.records, TINY, canvases=tiny_set.canvases)
    extents = [(float((plain.canvases[i] < 200).any(1).sum()), float(plain[i][3][2]))
               for i in range(len(plain))]
    small = [u for h, u in extents if h < 14]
    large = [u for h, u in extents if h > 40]
    assert small and large and max(small) < min(large)


# --------------------------------------------------------------------------- varifocal ops


def _boxes_and_images(seed=0, n=6):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, 64, 64)).astype(np.float32)
    loc = rng.uniform(size=(n, 3)).astype(np.float32)
    loc[0], loc[1] = 0.0, 1.0
    return images, loc


def test_torch_crop_matches_runtime_crop():
    images, loc = _boxes_and_images()
    boxes = decode_boxes(loc, TINY.t1, TINY.t2)
    torch_boxes = decode_boxes_torch(torch.from_numpy(loc), TINY.t1, TINY.t2)
    np.testing.assert_allclose(torch_boxes.numpy(), boxes, atol=1e-5)
    boxes[2] = [-5.0, -3.5, 70.0, 66.0]  # edge clamp
    got = crop_and_resize_torch(torch.from_numpy(images), torch.from_numpy(boxes), 32)
    np.testing.assert_allclose(got.numpy(), crop_and_resize(images, boxes, 32), atol=1e-5)


def test_boxcar_crop_tends_to_plain_crop_and_passes_gradient():
    images, loc = _boxes_and_images(1)
    x = torch.from_numpy(images)
    boxes = decode_boxes_torch(torch.from_numpy(loc), TINY.t1, TINY.t2)
    plain = crop_and_resize_torch(x, boxes, 32)
    sharp = boxcar_crop(x, boxes, 32, k=1e4)
    np.testing.assert_allclose(sharp.numpy(), plain.numpy(), atol=1e-5)
    soft = boxcar_crop(x, boxes, 32, k=10)
    assert float((soft - plain).abs().max()) < 0.1

    u = torch.tensor(loc, requires_grad=True)
    crop = boxcar_crop(x, decode_boxes_torch(u, TINY.t1, TINY.t2), 32, k=10)
    weights = torch.from_numpy(np.random.default_rng(2).normal(size=crop.shape).astype(np.float32))
    (crop * weights).sum().backward()
    assert torch.isfinite(u.grad).all()
    assert (u.grad.abs().sum(0) > 0).all()  # x, y and l all receive gradient


# --------------------------------------------------------------------------- training steps


@pytest.mark.slow
@pytest.mark.parametrize("trunk", sorted(TINY_TRUNKS))
def test_loss_falls_on_a_fixed_batch(tiny_set, trunk):
    torch.manual_seed(0)
    model = VarifocalNet(TINY_TRUNKS[trunk])
    batch = _fixed_batch(tiny_set)
    params = prepare(model, "gnet")
    optimizer = make_optimizer(params, 3e-3)
    losses = []
    for _ in range(12):
        loss = part_loss(model, "gnet", batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("trunk", sorted(TINY_TRUNKS))
@pytest.mark.parametrize("part", ["gnet", "loc", "local-a", "local-b", "heads"])
def test_each_step_changes_only_its_parameters(tiny_set, part, trunk):
    torch.manual_seed(0)
    model = VarifocalNet(TINY_TRUNKS[trunk])
    batch = _fixed_batch(tiny_set, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = prepare(model, part)
    optimizer = make_optimizer(params, 1e-2)
    loss = part_loss(model, part, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = ALLOWED[part]
    assert changed, part
    assert all(k.startswith(allowed) for k in changed), sorted(
        k for k in changed if not k.startswith(allowed))
    # every trainable parameter moved (Adam's first step moves all with a gradient)
    trainable = {k for k, _ in model.named_parameters() if k.startswith(allowed)}
    assert trainable <= changed, sorted(trainable - changed)
    if part in ("gnet", "local-a"):  # the trained trunk's BN statistics move, and only those
        assert any(k.endswith("running_mean") for k in changed)
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}


# --------------------------------------------------------------------------- full runs


class _Stop(Exception):
    pass


def _train(synth_dir, out, log, resume=False):
    return train(synth_dir, None, out, preset=TINY,
                 epochs={"gnet": 2, "loc": 1, "local": 1, "heads": 1}, batch_size=32,
                 lr=2e-3, val_fraction=0.3, seed=0, resume=resume, threads=1, log=log)


@pytest.mark.slow
def test_train_and_resume(synth_dir, tmp_path):
    lines = []
    full = _train(synth_dir, tmp_path / "full", lines.append)
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    assert [h["step"] for h in history] == ["gnet", "gnet", "loc", "local-a", "local-b", "heads"]
    assert all(h["val_type_acc"] is not None for h in history if h["step"] != "loc")
    assert sum(line.startswith("gnet epoch") for line in lines) == 2
    model = load_checkpoint(full)
    assert model.config == TINY

    def stop_after_first_epoch(line):
        if line.startswith("gnet epoch 1/"):
            raise _Stop

    with pytest.raises(_Stop):
        _train(synth_dir, tmp_path / "cut", stop_after_first_epoch)
    assert (tmp_path / "cut" / "last.pt").is_file()
    assert not (tmp_path / "cut" / "model.pt").exists()
    resumed_lines = []
    resumed = _train(synth_dir, tmp_path / "cut", resumed_lines.append, resume=True)
    assert not any(line.startswith("gnet epoch 1/") for line in resumed_lines)
    assert any(line.startswith("gnet epoch 2/") for line in resumed_lines)
    resumed_history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [h["step"] for h in resumed_history] == [h["step"] for h in history]
    full_state = load_checkpoint(full).state_dict()
    resumed_state = load_checkpoint(resumed).state_dict()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, atol=1e-5, rtol=1e-4)
    extra = torch.load(resumed, weights_only=True)["extra"]
    assert not set(extra["split"]["train"]) & set(extra["split"]["val"])


def _without_polarity(synth_dir, root, invert=False, rotate=0):
    """A copy of the synthetic cells whose labels leave polarity empty; ``invert`` makes them
    fluorescence-like (light on dark), ``rotate`` turns every cut-out by that many degrees."""
    import csv

    import cv2

    root.mkdir()
    rows = list(csv.DictReader(open(synth_dir / "labels.csv", newline="")))
    for row in rows:
        image = read_gray8(synth_dir / row["file"])
        if rotate:
            image = np.rot90(image, k=rotate // 90).copy()
        if invert:
            image = 255 - image
        (root / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / row["file"]), image)
        row["polarity"] = ""
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.slow
def test_labels_without_polarity_through_train_export_and_eval(synth_dir, tmp_path):
    from dataclasses import replace

    from vfinfer.pipeline import Pipeline
    from vfinfer.tools.evaluation.evaluate import evaluate
    from vfinfer.tools.evaluation.report import format_report
    from vfinfer_export.onnx_export import export_model

    data = _without_polarity(synth_dir, tmp_path / "data", invert=True, rotate=90)
    assert all(r.polarity == -1 for r in read_labels(data))
    lines = []
    config = replace(TINY, rotate_crop="principal-axis")
    path = train(data, None, tmp_path / "run", preset=config,
                 epochs={"gnet": 1, "loc": 1, "local": 1, "heads": 1}, batch_size=32,
                 val_fraction=0.3, seed=0, threads=1, log=lines.append)
    assert "polarity labelled on 0" in lines[0]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(h["val_polarity_acc"] is None for h in history)
    assert all(np.isfinite(h["train_loss"]) for h in history)
    model = load_checkpoint(path)
    assert model.config.rotate_crop == "principal-axis"
    export_model(model, tmp_path / "model", {"kind": "test"}, log=lambda *a: None,
                 batches=(2,))
    with Pipeline(tmp_path / "model") as pipe:
        assert not pipe.manifest.polarity_trained
        images = [read_gray8(r.path) for r in read_labels(data)[:5]]
        result = pipe.run_case(images)
    assert {c["polarity"] for c in result["chromosomes"]} == {"not called"}
    assert {c["background"] for c in result["chromosomes"]} == {"dark"}
    assert all(abs(c["rotated"]) > 45 for c in result["chromosomes"])  # lying: turned upright
    assert any("trained without polarity labels" in w for w in result["warnings"])
    res = evaluate(data, model_dir=tmp_path / "model", log=lambda *a: None, flip_half=True)
    assert res["polarity"]["note"] == "not labelled" and res["polarity"]["accuracy"] is None
    assert "Polarity: not labelled" in format_report(res)
    assert all(c["polarity_accuracy"] is None for c in res["cells"])
