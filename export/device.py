"""Where the trainers compute (``vfinfer train --device``, ``vfinfer train-seg --device``).

``resolve_device("auto" | "cpu" | "cuda")``: auto takes CUDA when PyTorch sees a device, else
the CPU; "cuda" on a machine without one is a ValueError of one line. ``TrainDevice`` is
what a training loop needs of that choice:

* on the CPU nothing changes: batches stay where they are, the loss is computed in FP32,
  ``backward`` and ``optimizer.step`` as always (results identical to a run without it);
* on CUDA the model and every batch move to the device, the forward pass and the loss run
  under ``torch.autocast(device_type="cuda", dtype=torch.float16)`` and the backward pass
  through a ``torch.amp.GradScaler("cuda")`` (scaled loss; a step with inf/NaN gradients is
  skipped and the scale lowered), whose state goes into the resumable checkpoint.

Checkpoints hold CPU tensors whatever device trained them (``cpu_copy``), so they load on a
machine without CUDA; the loaders read them with ``map_location="cpu"`` as well.
"""

import contextlib

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name="auto"):
    """"cpu" or "cuda" for ``name`` (auto: CUDA when ``torch.cuda.is_available()``)."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise ValueError("--device cuda: PyTorch sees no CUDA device here (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                         "use --device cpu or auto")
    if name == "auto":
        return "cuda" if available else "cpu"
    return name


def cpu_copy(tree):
    """``tree`` (tensors in dicts, lists and tuples) with every tensor on the CPU; a tensor
    already there is returned as it is (so a CPU run writes the same checkpoint as before)."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return type(tree)((k, cpu_copy(v)) for k, v in tree.items())
    if isinstance(tree, list):
        return [cpu_copy(v) for v in tree]
    if isinstance(tree, tuple):
        items = [cpu_copy(v) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree


def devices_used(history):
    """The devices a run's epochs trained on (their history entries' "device"), in order of
    first use joined by " then " (a resumed run may have moved); None for a history written
    before devices were recorded."""
    seen = []
    for entry in history:
        if entry.get("device") and entry["device"] not in seen:
            seen.append(entry["device"])
    return " then ".join(seen) or None


class TrainDevice:
    """A training run's device: moving, mixed precision and the optimizer step (see above)."""

    def __init__(self, name="cpu"):
        self.name = resolve_device(name)
        self.cuda = self.name == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.cuda else None

    def describe(self):
        """"cpu", or "cuda (GPU name)" for the training records."""
        if not self.cuda:
            return "cpu"
        return f"cuda ({torch.cuda.get_device_name(torch.cuda.current_device())})"

    @property
    def mixed_precision(self):
        """What the records say about the arithmetic: None on the CPU (FP32 throughout)."""
        return "float16 autocast with GradScaler" if self.cuda else None

    def module(self, module):
        """``module`` on this device (in place, as ``Module.to`` does)."""
        return module.to(self.name) if self.cuda else module

    def batch(self, tensors):
        """A batch (tuple of tensors) on this device; on the CPU the very same tuple."""
        if not self.cuda:
            return tensors
        return tuple(t.to(self.name, non_blocking=True) for t in tensors)

    def autocast(self):
        """The context of a forward pass: float16 autocast on CUDA, nothing on the CPU."""
        if not self.cuda:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def step(self, loss, optimizer):
        """zero_grad, backward and the optimizer step (through the GradScaler on CUDA)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def scaler_state(self):
        """The GradScaler's state for a resumable checkpoint (None on the CPU)."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_scaler_state(self, state):
        """Continue with a checkpoint's GradScaler state (ignored on the CPU or when absent)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
