"""A trained model complete when exported: the trainer names its validation slides, and
``vfinfer export`` fits the domain figures and the optimal-dispatch calibration on them
(vfinfer.tools.evaluation.validation_fit), or says plainly that the data is not reachable."""

import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from vfinfer.cli import main  # noqa: E402
from vfinfer.model.config import ModelConfig  # noqa: E402
from vfinfer.pipeline import Pipeline  # noqa: E402
from vfinfer.tools.evaluation.calibration_data import read_ids  # noqa: E402
from vfinfer.tools.synthesis.cells import write_cases  # noqa: E402
from vfinfer_export.checkpoint import load_checkpoint  # noqa: E402
from vfinfer_export.train import train  # noqa: E402

pytestmark = pytest.mark.slow  # every test trains and exports a model

TINY = ModelConfig(
    preset="tiny", canvas=96, g_input=64, l_input=32, t1=16, t2=32, stem_channels=8,
    stem_stride=1, widths=(8, 16, 16), units_per_block=1, cls_pool=4, loc_pool=8,
    loc_hidden=16, mlp_hidden=16,
)
KARYOTYPES = ["46,XY", "46,XX"] * 4 + ["47,XY,+21", "45,X"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Ten synthetic cells, one slide each; a tiny model trained one epoch per step with half
    of the slides held out for validation."""
    root = tmp_path_factory.mktemp("complete")
    data = root / "data"
    for seed, karyotype in enumerate(KARYOTYPES, start=40):
        write_cases(karyotype, data, seed=seed)
    lines = []
    checkpoint = train(data, None, root / "run", preset=TINY,
                       epochs={"gnet": 1, "loc": 1, "local": 1, "heads": 1}, batch_size=64,
                       val_fraction=0.5, seed=0, threads=1, log=lines.append)
    return root, data, checkpoint, lines


def test_the_trainer_names_its_validation_slides(run):
    root, data, checkpoint, lines = run
    extra = torch.load(checkpoint, weights_only=True)["extra"]
    record = extra["training_record"]
    assert record["validation_slides"] == extra["split"]["val"]
    assert record["val_slides"] == len(record["validation_slides"]) >= 4
    assert record["data_dir"] == str(data.resolve())
    assert record["labels"] == str((data / "labels.csv").resolve())
    split = json.loads((root / "run" / "split.json").read_text())
    assert split["validation"] == record["validation_slides"]
    assert not set(split["train"]) & set(split["validation"])
    assert read_ids(root / "run" / "split.json") == set(split["validation"])
    assert load_checkpoint(checkpoint).training_record == record
    assert "validation slides in" in lines[-1]
    history = json.loads((root / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == ["gnet", "loc", "local-a", "local-b", "heads"]


def test_export_fits_the_domain_and_the_calibration_on_them(run):
    root, data, checkpoint, _ = run
    out = root / "model"
    done = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "fitting the domain figures and the optimal-dispatch calibration on the trainer's" \
        in done.output
    assert "--dispatch auto will use " in done.output
    manifest = json.loads((out / "manifest.json").read_text())
    slides = manifest["training"]["validation_slides"]
    n_val = len(slides)
    domain = manifest["domain"]
    assert domain["fitted_on"]["cells"] == n_val
    assert f"the trainer's {n_val} validation slides" in domain["fitted_on"]["source"]
    exact = domain["karyotype_exact"]
    assert exact["cells"] == n_val and set(exact) == {"none", "paper", "optimal", "cells"}
    calibration = manifest["dispatch"]["calibration"]  # 3 simulated per normal cell: >= 10
    assert calibration["n_cells"] >= n_val and calibration["n_simulated"] > 0
    assert calibration["data"]["slides"] == sorted(slides)
    assert manifest["dispatch"]["optimal"]["threshold"] == calibration["chosen"]["threshold"]
    fit = manifest["training"]["validation_fit"]
    assert fit["fitted"] and fit["calibration"] == "stored in dispatch.optimal"
    with Pipeline(out) as pipe:
        assert pipe.auto_reason.startswith("auto: ")
        assert f"on its {n_val} validation cells" in pipe.auto_reason
    assert read_ids(out / "manifest.json") == set(slides)


def test_export_says_when_the_data_is_not_reachable(run):
    root, _, checkpoint, _ = run
    out = root / "elsewhere"
    done = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(out),
                                     "--data-dir", str(root / "moved")])
    assert done.exit_code == 0, done.output
    assert ("no domain figures and no dispatch calibration fitted: the training data is not "
            f"reachable ({root / 'moved'}: the training data directory is not here)") \
        in done.output
    assert "vfinfer calibrate DATA_DIR --labels LABELS --model" in done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert "domain" not in manifest and "optimal" not in manifest["dispatch"]
    fit = manifest["training"]["validation_fit"]
    assert not fit["fitted"] and "not here" in fit["reason"] and "--data-dir" in fit["by_hand"]
    skipped = CliRunner().invoke(main, ["export", str(checkpoint), "--out",
                                        str(root / "bare"), "--no-fit"])
    assert skipped.exit_code == 0 and "fitting" not in skipped.output
    assert "validation_fit" not in json.loads((root / "bare" / "manifest.json").read_text())[
        "training"]
