"""Training levers beyond the paper's recipe, each off unless asked for (``vfinfer train``):

* ``--init MODEL_OR_CHECKPOINT`` (``resolve_init``, ``load_init``): start from another
  model's weights instead of He initialization (transfer, e.g. from pki3 to another lab's
  cut-outs). A ``.pt`` checkpoint, or an exported model directory whose manifest records the
  checkpoint it was exported from (``source``: kind ``checkpoint``, its path and sha256). Its
  network must be the one this run trains: the same sizes and trunk; the properties applied
  around the network (background, rotate-and-crop, size normalization, test-time
  augmentation, the dispatch threshold) may differ. Every weight is taken (G-Net with its
  localizer, L-Net, heads); the four steps then train as usual, from those weights.
* ``--keep-best`` (``BestEpoch``): at the end of each step, the step's own parameters go back
  to the epoch with the best validation type accuracy of that step (the loc step, which has
  none, by its lowest validation loss; the L-Net / localizer alternation by its rounds'
  ``local-b`` figures); a tie keeps the later epoch. The best state is in every ``last.pt``,
  so a resumed run keeps the same choice.
"""

from pathlib import Path

import torch

from vfinfer.model.manifest import ModelDirError, load_manifest, sha256_file

from .checkpoint import CheckpointError, load_checkpoint

# applied around the network, not part of it: an --init model may differ in these
AROUND_THE_NETWORK = ("preset", "background", "rotate_crop", "size_norm", "size_norm_min_count",
                      "tta", "dispatch_threshold")


def resolve_init(path):
    """``--init``'s argument -> {"path": as given, "checkpoint": the file, "sha256"}.

    A model directory is followed to the checkpoint its manifest records; CheckpointError
    when it records none, the file is gone or it changed since the export."""
    path = Path(path)
    checkpoint = path
    if path.is_dir():
        try:
            source = load_manifest(path).data.get("source") or {}
        except ModelDirError as exc:
            raise CheckpointError(f"--init {path}: {exc}") from None
        if source.get("kind") != "checkpoint" or not source.get("path"):
            raise CheckpointError(
                f"--init {path}: the model was not exported from a checkpoint (its manifest's "
                f"source is {source.get('kind') or 'not recorded'}): no weights to start from")
        checkpoint = Path(source["path"])
        if not checkpoint.is_file():
            raise CheckpointError(f"--init {path}: its manifest's source checkpoint "
                                  f"{checkpoint} is not there (give the .pt file instead)")
        digest = sha256_file(checkpoint)
        if source.get("sha256") and source["sha256"] != digest:
            raise CheckpointError(f"--init {path}: {checkpoint} changed since the model was "
                                  "exported (sha256 differs from the manifest's source)")
        return {"path": str(path), "checkpoint": str(checkpoint), "sha256": digest}
    if not path.is_file():
        raise CheckpointError(f"--init {path}: neither a checkpoint file nor a model directory")
    return {"path": str(path), "checkpoint": str(path), "sha256": sha256_file(path)}


def network_differences(theirs, ours):
    """The config fields, other than ``AROUND_THE_NETWORK``, in which two configs differ."""
    ours_dict, theirs_dict = ours.to_dict(), theirs.to_dict()
    return [name for name in ours_dict
            if name not in AROUND_THE_NETWORK and theirs_dict.get(name) != ours_dict[name]]


def load_init(model, init, log):
    """Load the weights of ``init`` (``resolve_init``'s record) into ``model``;
    CheckpointError naming what differs when its network is another one."""
    checkpoint = Path(init["checkpoint"])
    if sha256_file(checkpoint) != init["sha256"]:
        raise CheckpointError(f"--init {init['path']}: {checkpoint} changed since this run "
                              "started (sha256 differs)")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    own_config = isinstance(payload, dict) and payload.get("config") is not None
    source = load_checkpoint(checkpoint, None if own_config else model.config)
    config = model.config
    differ = network_differences(source.config, config)
    if differ:
        raise CheckpointError(
            f"--init {init['path']}: its network ({source.config.preset}, trunk "
            f"{source.config.trunk}) is not the one this run trains ({config.preset}, trunk "
            f"{config.trunk}): they differ in {', '.join(differ)}; train with --preset "
            f"{source.config.preset} to start from it")
    model.load_state_dict(source.state_dict())
    log(f"init: weights of {checkpoint} ({source.config.preset})")
    return model


def _score(entry):
    """Higher is better: validation type accuracy, else minus the validation loss."""
    if entry.get("val_type_acc") is not None:
        return float(entry["val_type_acc"])
    return None if entry.get("val_loss") is None else -float(entry["val_loss"])


class BestEpoch:
    """The best epoch of the running step and its parameters (``--keep-best``).

    ``offer`` after each candidate epoch; ``finish`` at the step's end puts the best
    parameters back when an earlier epoch was better. ``record`` / ``BestEpoch(record)``
    carry it through ``last.pt``.
    """

    def __init__(self, record=None):
        record = record or {}
        self.step, self.epoch = record.get("step"), record.get("epoch")
        self.score, self.state = record.get("score"), record.get("state")
        self.kept = dict(record.get("kept") or {})

    def record(self):
        return {"step": self.step, "epoch": self.epoch, "score": self.score,
                "state": self.state, "kept": self.kept}

    def offer(self, model, step, entry, prefixes):
        """Remember this epoch's ``prefixes`` parameters if its score is the step's best."""
        score = _score(entry)
        if score is None:
            return
        if self.step != step or self.score is None or score >= self.score:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if k.startswith(prefixes)}
            self.step, self.epoch, self.score, self.state = step, entry["epoch"], score, state

    def finish(self, model, step, last_entry):
        """End of ``step``: restore its best epoch's parameters if it was not the last; the
        line saying what was kept."""
        if self.step != step or self.state is None:
            self.kept[step] = None
            return f"keep-best: {step}: no validation figures, the last epoch stays"
        if self.epoch != last_entry["epoch"]:
            model.load_state_dict(self.state, strict=False)
            line = (f"keep-best: {step}: epoch {self.epoch + 1} kept (score {self.score:.4f}; "
                    f"the last, epoch {last_entry['epoch'] + 1}: {_score(last_entry):.4f})")
        else:
            line = f"keep-best: {step}: the last epoch ({self.epoch + 1}) is the best"
        self.kept[step] = {"epoch": self.epoch, "score": self.score}
        self.step = self.epoch = self.score = self.state = None
        return line
