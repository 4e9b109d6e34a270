"""Checkpoints: save and load ``{config, state_dict}``, bare state_dicts and pickled modules.

Accepted inputs (section "Checkpoints" of the foundation issue):
* a vfinfer checkpoint: ``{"format": "vfinfer-checkpoint", "config": {...}, "state_dict": ...}``;
* a bare state_dict, with the model config given separately (a JSON file holding either the
  full config or ``{"preset": "compact"}`` plus overrides, or a preset name);
* a whole pickled ``nn.Module`` (common in this field). Unpickling runs code from the file,
  so it is refused unless ``trust_pickle=True`` is passed explicitly.
Key mismatches are reported by name: missing, unexpected and wrongly shaped keys.
"""

import io
import json
import pickle
from pathlib import Path

import torch

from vfinfer.model.config import ModelConfig, preset
from vfinfer.util.atomic import write_atomic

from .device import cpu_copy
from .models import VarifocalNet

FORMAT = "vfinfer-checkpoint"
_LISTED = 12  # names shown per kind of mismatch before "and N more"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def save_checkpoint(model, path, extra=None):
    """Write ``{format, config, state_dict, extra}`` atomically, every tensor on the CPU
    (a model trained on a GPU loads where there is none)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": cpu_copy(model.state_dict()),
        "extra": cpu_copy(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def config_from_file(path):
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read model config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: model config must be a JSON object")
    data = data.get("config", data)
    try:
        if "preset" in data and not set(ModelConfig.__dataclass_fields__) <= set(data):
            data = {**preset(data["preset"]).to_dict(), **data}  # a preset plus overrides
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model config ({exc})") from None


def _strip_prefix(state_dict):
    """Drop the 'module.' prefix that DataParallel / DDP put on every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _describe(names):
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def load_state(model, state_dict, source):
    """Load ``state_dict`` into ``model`` or raise naming every mismatched key."""
    state_dict = _strip_prefix(dict(state_dict))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if wrong:
        problems.append(f"wrongly shaped keys: {_describe(wrong)}")
    if problems:
        raise CheckpointError(
            f"{source}: does not match the {model.config.preset} model: " + "; ".join(problems)
        )
    model.load_state_dict(state_dict)
    return model


def load_checkpoint(path, config=None, trust_pickle=False):
    """Load a model from ``path``; ``config`` is a ModelConfig, preset name or JSON path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if isinstance(config, str) and not Path(config).suffix:
        config = preset(config)
    elif isinstance(config, (str, Path)):
        config = config_from_file(config)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        payload = _load_pickled_module(path, trust_pickle)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None

    if isinstance(payload, torch.nn.Module):
        module = payload
        config = config or getattr(module, "config", None)
        payload = {"state_dict": module.state_dict()}
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict or a module, found {type(payload)}")
    if "state_dict" in payload:
        if payload.get("config") is not None and config is None:
            try:
                config = ModelConfig.from_dict(payload["config"])
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: bad config in checkpoint ({exc})") from None
        state_dict = payload["state_dict"]
    else:
        state_dict = payload
    if config is None:
        raise CheckpointError(
            f"{path}: a bare state_dict carries no model config; pass --config CONFIG.json "
            "or --preset NAME"
        )
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: state_dict values must all be tensors")
    model = load_state(VarifocalNet(config), state_dict, path).eval()
    extra = payload.get("extra") if isinstance(payload.get("extra"), dict) else {}
    model.training_record = _training_record(extra)  # into the manifest's "training"
    return model


def _training_record(extra):
    """The trainer's record of a checkpoint, or None; a checkpoint written before the record
    named its validation slides gets them from the split it kept beside it."""
    record = extra.get("training_record")
    split = extra.get("split")
    if record and "validation_slides" not in record and isinstance(split, dict) \
            and isinstance(split.get("val"), list):
        record = {**record, "validation_slides": list(split["val"])}
    return record


def _load_pickled_module(path, trust_pickle):
    if not trust_pickle:
        raise CheckpointError(
            f"{path}: holds pickled Python objects (e.g. a whole model); loading it would run "
            "code from the file. If you trust its origin, pass --trust-pickle"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: could not unpickle ({exc})") from None
