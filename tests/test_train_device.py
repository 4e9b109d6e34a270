"""``vfinfer train --device`` and ``vfinfer train-seg --device``: the CPU path trains exactly as
without the flag, CUDA asked for where PyTorch sees none is one usage line, auto resolves to
the CPU on a machine without CUDA, and the device is recorded."""

import collections
import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from vfinfer.cli import main  # noqa: E402
from vfinfer.tools.synthesis.cells import write_cases  # noqa: E402
from vfinfer_export.checkpoint import load_checkpoint  # noqa: E402
from vfinfer_export.device import (  # noqa: E402
    TrainDevice,
    cpu_copy,
    devices_used,
    resolve_device,
)
from vfinfer_export.seg_train import train_seg  # noqa: E402
from vfinfer_export.train import train  # noqa: E402

NO_CUDA = "PyTorch sees no CUDA device here"
# the smallest run the command line allows: 24 images, one epoch of each step, batches of 8
TINY_RUN = ["--limit", "24", "--batch-size", "8", "--epochs-gnet", "1", "--epochs-loc", "1",
            "--epochs-local", "1", "--epochs-heads", "1", "--val-fraction", "0.34",
            "--threads", "1"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """Three synthetic cells, one slide each."""
    root = tmp_path_factory.mktemp("cells")
    for seed, karyotype in ((1, "46,XY"), (2, "46,XX"), (3, "47,XY,+21")):
        write_cases(karyotype, root, seed=seed)
    return root


@pytest.fixture()
def no_cuda(monkeypatch):
    """A machine where PyTorch sees no CUDA device, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_auto_resolves_to_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    assert TrainDevice("auto").describe() == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="PyTorch sees a CUDA device here")
def test_auto_is_the_cpu_on_this_machine():
    assert resolve_device("auto") == "cpu"


def test_cuda_without_cuda_is_a_value_error_of_one_line(no_cuda, tmp_path):
    with pytest.raises(ValueError, match=f"^--device cuda: {NO_CUDA}") as info:
        train(tmp_path / "absent", out_dir=tmp_path / "run", device="cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=f"^--device cuda: {NO_CUDA}"):
        train_seg(tmp_path / "absent", tmp_path / "seg", device="cuda")
    assert not (tmp_path / "run").exists() and not (tmp_path / "seg").exists()


@pytest.mark.parametrize("command", ["train", "train-seg"])
def test_cli_cuda_without_cuda_is_one_usage_line(no_cuda, cells, tmp_path, command):
    result = _cli(command, cells, "--out", tmp_path / "run", "--device", "cuda")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: --device cuda: {NO_CUDA}")
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.slow
def test_cli_device_cpu_trains_the_same_weights_as_no_flag(no_cuda, cells, tmp_path):
    for name, flag in (("plain", []), ("cpu", ["--device", "cpu"])):
        result = _cli("train", cells, "--out", tmp_path / name, *TINY_RUN, *flag)
        assert result.exit_code == 0, result.output
    plain = load_checkpoint(tmp_path / "plain" / "model.pt").state_dict()
    on_cpu = load_checkpoint(tmp_path / "cpu" / "model.pt").state_dict()
    assert plain.keys() == on_cpu.keys()
    assert all(torch.equal(plain[k], on_cpu[k]) for k in plain)
    history = json.loads((tmp_path / "cpu" / "history.json").read_text())
    assert [h["device"] for h in history] == ["cpu"] * 5
    extra = torch.load(tmp_path / "cpu" / "model.pt", weights_only=True)["extra"]
    assert extra["training_record"]["device"] == "cpu"
    assert extra["training_record"]["mixed_precision"] is None
    last = torch.load(tmp_path / "cpu" / "last.pt", weights_only=True)["extra"]
    assert last["grad_scaler"] is None  # no gradient scaler on the CPU


@pytest.mark.slow
def test_train_seg_records_the_device(tmp_path):
    from vfinfer.tools.synthesis.metaphases import write_metaphases
    from vfinfer_export.seg_train import load_seg_checkpoint

    write_metaphases(tmp_path / "data", seed=3, count=1, size=(128, 160))
    path = train_seg(tmp_path / "data", tmp_path / "run", widths=(4, 8), epochs=1, crop=64,
                     crops_per_image=1, batch_size=1, log=lambda _line: None)
    _, extra = load_seg_checkpoint(path)
    assert extra["training"]["device"] == "cpu"
    assert extra["training"]["mixed_precision"] is None
    assert [e["device"] for e in extra["training"]["history"]] == ["cpu"]


def test_cpu_copy_keeps_cpu_tensors_and_the_structure():
    pair = collections.namedtuple("pair", "a b")
    weights = torch.ones(3)
    tree = {"w": weights, "nested": [pair(weights, 2), (weights,)], "n": 1, "s": "x"}
    copied = cpu_copy(tree)
    assert copied["w"] is weights  # a CPU tensor is not copied: a CPU run writes as before
    assert isinstance(copied["nested"][0], pair) and copied["nested"][0].a is weights
    assert copied["nested"][1] == (weights,) and copied["n"] == 1 and copied["s"] == "x"


def test_devices_used_lists_each_device_once_in_order():
    assert devices_used([]) is None
    assert devices_used([{"step": "gnet"}]) is None  # a history from before the field
    history = [{"device": "cpu"}, {"device": "cpu"}, {"device": "cuda (GPU)"}, {}]
    assert devices_used(history) == "cpu then cuda (GPU)"


def test_the_cpu_device_changes_nothing():
    device = TrainDevice("cpu")
    batch = (torch.zeros(2), torch.ones(2))
    assert device.batch(batch) is batch
    assert device.scaler is None and device.scaler_state() is None
    module = torch.nn.Linear(2, 1)
    assert device.module(module) is module
    with device.autocast():
        assert module(torch.ones(1, 2)).dtype == torch.float32
