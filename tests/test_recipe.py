"""The training recipe levers (``vfinfer_export.recipe``, ``vfinfer_export.data``): real-slide
augmentation, class-balanced sampling, keeping each step's best epoch, transfer from another
model's weights, noise on the boxes the L-Net and the heads train on; size normalization in
training as at run time."""

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny import TINY, TINY_TRUNKS  # noqa: E402

from vfinfer.io.labels import read_labels  # noqa: E402
from vfinfer.pipeline.preprocess import preprocess_batch  # noqa: E402
from vfinfer.tools.synthesis.cells import write_cases  # noqa: E402
from vfinfer.util.images import read_gray8  # noqa: E402
from vfinfer_export.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from vfinfer_export.data import (  # noqa: E402
    REAL_AUGMENT,
    ChromosomeDataset,
    augment,
    balanced_order,
    batches,
    photometric,
)
from vfinfer_export.recipe import resolve_init  # noqa: E402
from vfinfer_export.train import train  # noqa: E402

SHORT = {"gnet": 2, "loc": 1, "local": 2, "heads": 1}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """Two synthetic cells on two slides (92 images), some stored q-arm up."""
    root = tmp_path_factory.mktemp("synth")
    for seed, karyotype in ((4, "46,XY"), (5, "46,XX")):
        write_cases(karyotype, root, seed=seed, cases=1, flip_polarity=0.2)
    return root


@pytest.fixture(scope="module")
def records(synth_dir):
    return read_labels(synth_dir)


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    """A short tiny run with every lever on (size normalization, real augmentation, balanced
    sampling, best epochs kept, box jitter) and the lines it logged."""
    out, lines = tmp_path_factory.mktemp("run") / "run", []
    path = _train(synth_dir, out, lines.append, replace(TINY, size_norm=30.0), augment="real",
                  balance=True, keep_best=True, box_jitter=0.05)
    return path, lines


def _train(synth_dir, out, log, config=TINY, **recipe):
    return train(synth_dir, None, out, preset=config, epochs=SHORT, batch_size=32, lr=2e-3,
                 val_fraction=0.5, seed=0, threads=1, log=log, **recipe)


# --------------------------------------------------------------------------- data


def test_real_augmentation_keeps_shapes_dtypes_and_the_polarity_rule(records):
    paper = ChromosomeDataset(records[:12], TINY, augment=True, seed=3)
    real = ChromosomeDataset(records[:12], TINY, augment=True, seed=3, augment_mode="real",
                             canvases=paper.canvases)
    differs = False
    for epoch in range(8):
        paper.set_epoch(epoch)
        real.set_epoch(epoch)
        for i in range(12):
            p_canvas, p_type, p_pol, p_target = paper.sample(i)
            r_canvas, r_type, r_pol, r_target = real.sample(i)
            assert r_canvas.shape == p_canvas.shape and r_canvas.dtype == np.uint8
            assert r_target.shape == (3,) and r_target.dtype == np.float32
            # the same flips: a vertical flip flips polarity, a mirror does not
            assert (r_type, r_pol) == (p_type, p_pol)
            differs |= not np.array_equal(r_canvas, p_canvas)
            image, _, _, target = real.fetch(i)
            assert image.shape == (1, TINY.g_input, TINY.g_input) and image.dtype == torch.float32
            np.testing.assert_array_equal(real.sample(i)[0], r_canvas)  # seeded
    assert differs
    flips = set()
    for epoch in range(8):
        paper.set_epoch(epoch)
        real.set_epoch(epoch)
        flips.add((paper.sample(0)[2], real.sample(0)[2]))
    assert flips == {(0, 0), (1, 1)}  # both polarities, the same in both modes
    with pytest.raises(ValueError, match="augment_mode"):
        ChromosomeDataset(records[:2], TINY, augment_mode="wild", canvases=paper.canvases[:2])


class Scripted:
    """A generator whose draws are given: ``random()`` from a list, ``uniform`` its upper
    end, ``normal`` its scale everywhere."""

    def __init__(self, draws):
        self.draws = list(draws)

    def random(self):
        return self.draws.pop(0)

    def uniform(self, low, high):
        return high

    def normal(self, loc, scale, size):
        return np.full(size, loc + scale)


def test_each_augmentation_keeps_shapes_and_the_polarity_rule(records):
    canvas = ChromosomeDataset(records[:1], TINY).canvases[0]
    # draws: horizontal flip, vertical flip, rotation sign (< 0.5: yes); no turn, scale 1
    mirrored, polarity = augment(canvas, 1, Scripted([0.0, 0.9, 0.9]), 255, 0.0, (1.0, 1.0))
    np.testing.assert_array_equal(mirrored, canvas[:, ::-1])
    assert polarity == 1  # a left-right mirror keeps the q-arm where it was
    flipped, polarity = augment(canvas, 1, Scripted([0.9, 0.0, 0.9]), 255, 0.0, (1.0, 1.0))
    np.testing.assert_array_equal(flipped, canvas[::-1])
    assert polarity == 0  # a vertical flip turns q-arm down into q-arm up
    assert augment(canvas, -1, Scripted([0.9, 0.0, 0.9]), 255, 0.0)[1] == -1  # unknown stays
    smaller, _ = augment(canvas, 1, Scripted([0.9, 0.9, 0.9]), 255, 0.0, (0.5, 0.5))
    assert smaller.shape == canvas.shape and (smaller < 200).sum() < (canvas < 200).sum() / 2
    no_blur_noise = dict(REAL_AUGMENT, blur_p=0.0, noise_p=0.0)
    gamma = photometric(canvas, Scripted([0.5, 0.5]), no_blur_noise)
    mid = (canvas > 60) & (canvas < 200)
    assert np.all(gamma[canvas == 255] == 255) and np.all(gamma[mid] < canvas[mid])
    for only in ("blur_p", "noise_p"):
        params = dict(no_blur_noise, **{only: 1.0})
        out = photometric(canvas, Scripted([0.0, 0.0]), params)
        assert out.shape == canvas.shape and out.dtype == np.uint8
        assert not np.array_equal(out, gamma)


def test_balanced_sampling_draws_classes_evenly_on_a_skewed_set():
    types = np.array([0] * 900 + [1] * 90 + [2] * 9 + [3] * 1)
    draws = np.concatenate([balanced_order(types, np.random.default_rng(seed))
                            for seed in range(10)])
    shares = np.bincount(types[draws], minlength=4) / len(draws)
    assert np.all(np.abs(shares - 0.25) < 0.02), shares
    plain = np.bincount(types[np.random.default_rng(0).permutation(len(types))]) / len(types)
    assert plain[0] == 0.9


def test_repeated_draws_of_an_image_are_augmented_anew(records):
    dataset = ChromosomeDataset(records[:4], TINY, augment=True, seed=0)
    dataset.set_epoch(0)
    first, again = dataset.fetch(0), dataset.fetch(0, repeat=1)
    assert not torch.equal(first[0], again[0]) or first[2] != again[2]
    images, types, _, _ = next(batches(dataset, 4, shuffle_seed=[0, 0], balance=True))
    assert images.shape == (4, 1, TINY.g_input, TINY.g_input) and types.dtype == torch.long


def test_training_inputs_are_size_normalized_per_cell_like_the_runtime(records):
    config = replace(TINY, size_norm=30.0)
    dataset = ChromosomeDataset(records, config)
    cells = [r.cell for r in records]
    expected = preprocess_batch([read_gray8(r.path) for r in records], config, cells=cells)
    for i in (0, 50, len(records) - 1):
        np.testing.assert_array_equal(dataset[i][0].numpy(), expected[i])


# --------------------------------------------------------------------------- the trainer


def test_keep_best_and_every_lever_are_recorded(trained):
    path, lines = trained
    extra = torch.load(path, weights_only=True)["extra"]
    recipe = extra["training_record"]["recipe"]
    assert recipe["augment"] == "real" and recipe["balance"] and recipe["keep_best"]
    assert recipe["box_jitter"] == 0.05
    assert set(recipe["kept_epochs"]) == {"gnet", "loc", "local", "heads"}
    assert sum(line.startswith("keep-best:") for line in lines) == 4
    assert tuple(extra["options"]["real_augment"]["scale"]) == (0.85, 1.15)
    assert load_checkpoint(path).config.size_norm == 30.0


def test_keep_best_puts_back_the_best_epoch():
    """A step whose last epoch is worse ends on its best one, also when the record went
    through ``last.pt``; a tie keeps the later epoch; the loc step goes by its loss."""
    from vfinfer_export.recipe import BestEpoch

    model = torch.nn.Linear(2, 2)
    best, prefixes = BestEpoch(), ("weight", "bias")
    best.offer(model, "gnet", {"epoch": 0, "val_type_acc": 0.5}, prefixes)
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    best.offer(model, "gnet", {"epoch": 1, "val_type_acc": 0.4}, prefixes)
    restored = BestEpoch(best.record())  # through last.pt
    line = restored.finish(model, "gnet", {"epoch": 1, "val_type_acc": 0.4})
    assert "epoch 1 kept" in line
    torch.testing.assert_close(model.weight, kept)
    assert restored.kept == {"gnet": {"epoch": 0, "score": 0.5}}
    best = BestEpoch()
    best.offer(model, "loc", {"epoch": 0, "val_type_acc": None, "val_loss": 0.3}, prefixes)
    best.offer(model, "loc", {"epoch": 1, "val_type_acc": None, "val_loss": 0.3}, prefixes)
    assert "the last epoch (2) is the best" in best.finish(model, "loc", {"epoch": 1})


def test_resume_with_keep_best_matches_an_uninterrupted_run(synth_dir, tmp_path):
    class Stop(Exception):
        pass

    def stop(line):  # mid-way through the alternation: its best round so far is in last.pt
        if line.startswith("local-b epoch 1/"):
            raise Stop

    full = _train(synth_dir, tmp_path / "full", lambda line: None, keep_best=True,
                  box_jitter=0.05)
    with pytest.raises(Stop):
        _train(synth_dir, tmp_path / "cut", stop, keep_best=True, box_jitter=0.05)
    resumed = train(synth_dir, None, tmp_path / "cut", preset=TINY, epochs=SHORT,
                    batch_size=32, lr=2e-3, val_fraction=0.5, seed=0, threads=1,
                    log=lambda line: None, resume=True, keep_best=True, box_jitter=0.05)
    a, b = load_checkpoint(full).state_dict(), load_checkpoint(resumed).state_dict()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, atol=1e-5, rtol=1e-4)


def test_box_jitter_moves_the_boxes_of_the_l_net_and_heads_steps_only():
    """The noise is seeded by (seed, unit), stays in the sigmoid's range, and only the local-a
    and heads steps get it (the localizer's own steps learn from its real boxes)."""
    from vfinfer_export.train import _box_mover

    options = {"seed": 3, "box_jitter": 0.05}
    assert _box_mover({"seed": 3, "box_jitter": 0.0}, "local-a", 4) is None
    for part in ("gnet", "loc", "local-b"):
        assert _box_mover(options, part, 4) is None
    loc = torch.tensor([[0.0, 0.5, 1.0]] * 200)
    moved = _box_mover(options, "local-a", 4)(loc)
    again = _box_mover(options, "heads", 4)(loc)
    other = _box_mover(options, "local-a", 5)(loc)
    torch.testing.assert_close(moved, again)  # the same draw for the same (seed, unit)
    assert not torch.equal(moved, other)
    assert moved.min() >= 0.0 and moved.max() <= 1.0
    spread = (moved[:, 1] - 0.5).std().item()
    assert 0.035 < spread < 0.065  # about sigma where the clamp does not bite


def test_box_jitter_changes_the_crops_the_l_net_learns_from():
    from vfinfer_export.models import VarifocalNet
    from vfinfer_export.train import part_loss, prepare

    torch.manual_seed(0)
    model = VarifocalNet(TINY)
    batch = (torch.randn(4, 1, TINY.g_input, TINY.g_input), torch.tensor([0, 1, 2, 3]),
             torch.tensor([0, 1, 0, 1]), torch.full((4, 3), 0.5))
    for part in ("local-a", "heads"):
        prepare(model, part)
        losses = []
        for move_box in (None, lambda loc: loc, lambda loc: (loc + 0.2).clamp(0, 1)):
            torch.manual_seed(1)  # the same dropout draws for each
            losses.append(float(part_loss(model, part, batch, move_box=move_box).detach()))
        plain, same, shifted = losses
        assert plain == same
        assert plain != shifted


def test_box_jitter_below_zero_is_refused(synth_dir, tmp_path):
    with pytest.raises(ValueError, match="box_jitter must be >= 0"):
        _train(synth_dir, tmp_path / "run", lambda line: None, box_jitter=-0.1)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_init_from_a_checkpoint_and_from_an_exported_model(trained, synth_dir, tmp_path):
    from vfinfer_export.onnx_export import export_model

    path, _ = trained
    source = load_checkpoint(path)
    export_model(source, tmp_path / "model", {"kind": "checkpoint", "path": str(path),
                                              "sha256": resolve_init(path)["sha256"]},
                 log=lambda *a: None, batches=(2,))
    assert resolve_init(tmp_path / "model")["checkpoint"] == str(path)
    for init in (path, tmp_path / "model"):
        lines = []
        out = train(synth_dir, None, tmp_path / f"from-{init.name}", preset=TINY,
                    epochs={"gnet": 0, "loc": 0, "local": 0, "heads": 0}, val_fraction=0.5,
                    seed=1, threads=1, log=lines.append, init=init)
        assert any(line.startswith("init: weights of") for line in lines)
        started = load_checkpoint(out)  # no epochs: exactly the weights it started from
        for key, value in source.state_dict().items():
            torch.testing.assert_close(started.state_dict()[key], value)
        record = torch.load(out, weights_only=True)["extra"]["training_record"]["recipe"]
        assert record["init"]["checkpoint"] == str(path)


@pytest.mark.slow
def test_init_refuses_another_network_and_models_without_a_checkpoint(trained, synth_dir,
                                                                       tmp_path, model_dir):
    path, _ = trained
    with pytest.raises(CheckpointError, match="differ in .*trunk.*--preset tiny"):
        train(synth_dir, None, tmp_path / "vgg", preset=TINY_TRUNKS["vgg16-res"],
              epochs={"gnet": 0, "loc": 0, "local": 0, "heads": 0}, threads=1,
              log=lambda line: None, init=path)
    with pytest.raises(CheckpointError, match="not exported from a checkpoint"):
        resolve_init(model_dir)  # the session's random-init export
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_init(tmp_path / "nothing.pt")


def test_old_runs_resume_with_the_levers_off(synth_dir, tmp_path):
    """A last.pt written before the levers existed (no recipe keys in its options) resumes
    with them off."""
    class Stop(Exception):
        pass

    def stop(line):
        if line.startswith("gnet epoch 1/"):
            raise Stop

    with pytest.raises(Stop):
        _train(synth_dir, tmp_path / "old", stop)
    last = tmp_path / "old" / "last.pt"
    payload = torch.load(last, weights_only=True)
    for key in ("augment", "balance", "keep_best", "box_jitter", "init", "real_augment"):
        payload["extra"]["options"].pop(key)
    payload["extra"].pop("best")
    torch.save(payload, last)
    lines = []
    path = train(synth_dir, None, tmp_path / "old", preset=TINY, epochs=SHORT, batch_size=32,
                 lr=2e-3, val_fraction=0.5, seed=0, threads=1, log=lines.append, resume=True)
    assert not any("using the checkpoint's" in line for line in lines)
    recipe = torch.load(path, weights_only=True)["extra"]["training_record"]["recipe"]
    assert recipe == {"augment": "paper", "balance": False, "keep_best": False,
                      "kept_epochs": None, "box_jitter": 0.0, "init": None}
    assert json.loads((tmp_path / "old" / "history.json").read_text())



def test_cli_passes_skipped_steps_and_the_box_jitter(monkeypatch, synth_dir, tmp_path):
    """``--epochs-gnet 0 --epochs-loc 0`` reach the trainer as skipped steps (with --init: only
    the L-Net and the heads retrained), ``--box-jitter`` as the lever; out of range is usage."""
    from click.testing import CliRunner

    import vfinfer_export.train as trainer
    from vfinfer.cli import main

    seen = {}

    def fake_train(data_dir, labels, out_dir, **options):
        seen.update(options)
        return tmp_path / "model.pt"

    monkeypatch.setattr(trainer, "train", fake_train)
    args = ["train", str(synth_dir), "--out", str(tmp_path / "run"), "--device", "cpu",
            "--epochs-gnet", "0", "--epochs-loc", "0"]
    result = CliRunner().invoke(main, [*args, "--box-jitter", "0.02"])
    assert result.exit_code == 0, result.output
    assert seen["epochs"] == {"gnet": 0, "loc": 0} and seen["box_jitter"] == 0.02
    result = CliRunner().invoke(main, [*args, "--box-jitter", "0.5"])
    assert result.exit_code == 2 and "--box-jitter" in result.output
