"""Checkpoints: round trip, bare state_dicts, pickled modules, mismatch messages."""

import json

import pytest
import torch

from vfinfer.model.config import preset
from vfinfer_export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vfinfer_export.models import VarifocalNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return VarifocalNet(preset("compact")).eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(model, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, extra={"epoch": 3})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert same_weights(loaded, model)
    assert not loaded.training


def test_bare_state_dict_needs_a_config(model, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="carries no model config"):
        load_checkpoint(path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"preset": "compact"}))
    assert same_weights(load_checkpoint(path, config_file), model)
    config_file.write_text(json.dumps(model.config.to_dict()))
    assert same_weights(load_checkpoint(path, config_file), model)
    assert same_weights(load_checkpoint(path, "compact"), model)


def test_data_parallel_prefix_is_accepted(model, tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    assert same_weights(load_checkpoint(path, "compact"), model)


def test_pickled_module_needs_explicit_trust(model, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_checkpoint(path)
    assert same_weights(load_checkpoint(path, trust_pickle=True), model)


def test_mismatch_lists_keys_by_name(model, tmp_path):
    state = dict(model.state_dict())
    del state["heads.type_mlp.fc2.bias"]
    state["gnet.extra.weight"] = torch.zeros(3)
    state["lnet.cls.fc_type.weight"] = torch.zeros(24, 7)
    path = tmp_path / "broken.pt"
    torch.save({"config": model.config.to_dict(), "state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys: heads.type_mlp.fc2.bias" in message
    assert "unexpected keys: gnet.extra.weight" in message
    assert "wrongly shaped keys: lnet.cls.fc_type.weight (checkpoint (24, 7), model (24, 2048))" \
        in message
    assert "\n" not in message


@pytest.mark.slow
def test_other_preset_is_a_shape_mismatch(model, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    with pytest.raises(CheckpointError, match="does not match the paper model"):
        load_checkpoint(path, "paper")


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
