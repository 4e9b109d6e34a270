"""Reference trainer: the four-step strategy of Qin et al. 2019 (section II-C).

    from vfinfer_export.train import train
    model_pt = train("/data/pki3", None, "runs/compact", preset="compact")

Steps (run in this order; each trains only its own parameters, everything else frozen by
``requires_grad`` and left out of the optimizer, and frozen BN layers kept in eval mode):

1. He initialization (``VarifocalNet`` does it on construction).
2. ``gnet``: G-Net trunk + classification subnet, multi-task loss
   L = CE(type) + 0.5 CE(polarity) (eq. 1-3).
3. ``loc``: pre-training of the localization subnet alone (``gnet.loc``) with smooth-L1
   (eq. 8) against the ground-truth boxes of section II-A.4; trunk frozen.
4. ``local``: ``epochs["local"]`` rounds, each one epoch of
   (a) ``local-a``: L-Net on the crops chosen by the fixed localizer (the runtime's crop),
       multi-task loss (eq. 3);
   (b) ``local-b``: localizer fine-tuning with L-Net fixed: the L-Net loss (eq. 3) plus the
       smooth-L1 term (eq. 9), back-propagated into u through the boxcar approximation of the
       crop (eq. 6-7, logistic step with k = 10; ``varifocal_ops.boxcar_crop``).
5. ``heads``: the two MLP heads (Fig. 6) on the frozen G and L features, CE(type) + CE(polarity).

Losses are batch means (the paper writes sums over N, which only rescales the learning
rate). Adam (0.9, 0.999); the paper uses lr 1e-4 decayed x0.1 every 10 epochs
(``lr_schedule="paper"``); the default here is lr 1e-3 with a per-iteration cosine decay to
5 % over each step, which suits the few epochs a CPU can afford. The localizer's steps (loc,
local-b) use lr * ``LOC_LR_SCALE`` (0.1; see there).

Every epoch of every step writes ``OUT/last.pt`` (atomic, ``save_checkpoint`` with extra =
step, epoch, optimizer state, history, split slides, seed, options) and
``OUT/history.json``; the end writes ``OUT/model.pt``, whose ``training_record`` (the exported
manifest's "training" section) names the validation slides. ``OUT/split.json`` names the
training and validation slides from the start of the run. ``resume=True`` continues after the
last completed epoch recorded in ``OUT/last.pt``. Data order and augmentation are seeded
from (seed, epoch number), so a resumed run repeats what the interrupted one would have done.

The recipe levers beyond the paper, all off by default (``RECIPE_DEFAULTS``, recorded in the
run's options and the manifest's training record): ``augment="real"`` (scale jitter, gamma,
blur, noise: ``vfinfer_export.data.REAL_AUGMENT``), ``balance`` (class-balanced sampling in
every step's epochs), ``keep_best`` (each step ends on its best validation epoch),
``box_jitter`` (Gaussian noise of that standard deviation added to the localizer's u of eq. 5
before the crop, in the local-a and heads steps only: the L-Net and the heads learn from boxes
a little off the localizer's, so that a small move of the box, from another lab's image or
from a lower-precision G-Net, does not flip the call) and ``init`` (start from another model's
weights): ``vfinfer_export.recipe``. A step given 0 epochs is skipped (with ``init``: its
weights stay those of the init model).

``device`` (``vfinfer_export.device``): "cpu" (the default here; the command line's default
is auto) trains exactly as described above; "cuda" moves the model and the batches to the
GPU and runs the forward passes under float16 autocast with a GradScaler (its state kept in
``last.pt``). Each history entry and the training record name the device; checkpoints hold
CPU tensors either way. A resumed run may continue on another device.
"""

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vfinfer.io.labels import labels_path, read_labels
from vfinfer.io.review import reviewed_labels
from vfinfer.model.config import ModelConfig
from vfinfer.model.config import preset as preset_config

from .checkpoint import CheckpointError, load_state, save_checkpoint
from .data import (
    AUGMENT_MODES,
    REAL_AUGMENT,
    ChromosomeDataset,
    batches,
    slides_of,
    split_by_slide,
)
from .device import TrainDevice, devices_used
from .models import VarifocalNet
from .recipe import BestEpoch, load_init, resolve_init
from .varifocal_ops import DEFAULT_K, varifocal_crop

STEPS = ("gnet", "loc", "local", "heads")
PARTS = ("gnet", "loc", "local-a", "local-b", "heads")
# Chosen from measured timings of the compact preset, batch 64, on a quiet 2-core CPU
# (synthetic cells, 15.7k training + 2.8k validation images): seconds per epoch about
# gnet 90, loc 28, local-a 47, local-b 43, heads 35, plus ~8 s validation and ~4 s
# augmentation per epoch. On ~18.5k real training images these defaults take ~27 minutes.
DEFAULT_EPOCHS = {"gnet": 8, "loc": 1, "local": 3, "heads": 3}
DEFAULT_BATCH = 64
DEFAULT_LR = 1e-3
LR_SCHEDULES = ("cosine", "paper", "constant")
POLARITY_WEIGHT = 0.5  # lambda of eq. 3
HEADS_POLARITY_WEIGHT = 1.0
LOC_WEIGHT = 1.0  # weight of the smooth-L1 term of eq. 9 while fine-tuning the localizer
BOXCAR_K = DEFAULT_K  # eq. 7
COSINE_FLOOR = 0.05  # the cosine schedule ends at this fraction of lr
# The localization subnet's first FC sees C * loc_pool^2 (8192 in the compact preset)
# features: Adam's per-weight steps of lr 1e-3 move its outputs by several units per step,
# saturating the sigmoid (u collapses to 0 or 1 and stops learning). Its two steps (loc,
# local-b) therefore run at lr * LOC_LR_SCALE.
LOC_LR_SCALE = 0.1
SPLIT_FILE = "split.json"  # OUT/split.json: the training and validation slides by name
# the recipe levers beyond the paper (vfinfer_export.recipe, .data), off unless asked for
RECIPE_DEFAULTS = {"augment": "paper", "balance": False, "keep_best": False, "box_jitter": 0.0,
                   "init": None}


def _stderr(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parts and losses


def trainable(model, part):
    """The modules whose parameters ``part`` updates (all others are frozen)."""
    return {
        "gnet": [model.gnet.trunk, model.gnet.cls],
        "loc": [model.gnet.loc],
        "local-a": [model.lnet],
        "local-b": [model.gnet.loc],
        "heads": [model.heads],
    }[part]


def prepare(model, part):
    """Freeze everything but ``part``'s modules, set train/eval modes, return its parameters.

    Frozen modules are in eval mode, so their BN running statistics do not move.
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: choose one of {', '.join(PARTS)}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for module in trainable(model, part):
        module.train()
        for p in module.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def loc_loss(u, target):
    """Eq. 8: smooth-L1 summed over (x, y, l), averaged over the batch."""
    return F.smooth_l1_loss(u, target, reduction="none", beta=1.0).sum(1).mean()


def cls_loss(type_logits, polarity_logits, types, polarities, weight=POLARITY_WEIGHT):
    """Eq. 3: CE(type) + weight * CE(polarity), batch means. Images without a polarity label
    (-1) add nothing to the polarity term; a batch with none adds no polarity term at all."""
    loss = F.cross_entropy(type_logits, types)
    labelled = polarities >= 0
    if bool(labelled.any()):
        loss = loss + weight * F.cross_entropy(polarity_logits[labelled], polarities[labelled])
    return loss


def jittered(loc, sigma, generator):
    """The localizer's u of eq. 5 plus Gaussian noise of standard deviation ``sigma`` drawn
    from ``generator`` (a CPU ``torch.Generator``), kept in the sigmoid's range [0, 1]."""
    noise = torch.randn(loc.shape, generator=generator).to(loc.device, loc.dtype)
    return (loc + sigma * noise).clamp(0.0, 1.0)


def part_loss(model, part, batch, boxcar_k=BOXCAR_K, loc_weight=LOC_WEIGHT, move_box=None):
    """Training loss of ``part`` on one batch (images, types, polarities, loc targets).

    Call ``prepare(model, part)`` first; frozen parts run without building a graph.
    ``move_box``: a function of the localizer's u applied before the crop in the local-a and
    heads steps (the ``box_jitter`` lever; None: the localizer's own boxes).
    """
    move_box = move_box or (lambda loc: loc)
    images, types, polarities, targets = batch
    config = model.config
    gnet, lnet = model.gnet, model.lnet
    if part == "gnet":
        trunk_out = gnet.trunk(images)
        _, type_logits, polarity_logits = gnet.cls(trunk_out)
        return cls_loss(type_logits, polarity_logits, types, polarities)
    if part == "loc":
        with torch.no_grad():
            trunk_out = gnet.trunk(images)
        return loc_loss(gnet.loc(trunk_out), targets)
    if part == "local-a":
        with torch.no_grad():
            loc = move_box(gnet.loc(gnet.trunk(images)))
            crops = varifocal_crop(images, loc, config)
        _, type_logits, polarity_logits = lnet(crops)
        return cls_loss(type_logits, polarity_logits, types, polarities)
    if part == "local-b":
        with torch.no_grad():
            trunk_out = gnet.trunk(images)
        loc = gnet.loc(trunk_out)
        crops = varifocal_crop(images, loc, config, k=boxcar_k)
        _, type_logits, polarity_logits = lnet(crops)
        loss = cls_loss(type_logits, polarity_logits, types, polarities)
        if loc_weight:
            loss = loss + loc_weight * loc_loss(loc, targets)
        return loss
    if part == "heads":
        with torch.no_grad():
            g_features, loc, _, _ = gnet(images)
            l_features = lnet(varifocal_crop(images, move_box(loc), config))[0]
        type_logits, polarity_logits = model.heads(g_features, l_features)
        return cls_loss(type_logits, polarity_logits, types, polarities,
                        HEADS_POLARITY_WEIGHT)
    raise ValueError(f"unknown part {part!r}")


def make_optimizer(params, lr):
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


def learning_rate(base, schedule, iteration, total, iterations_per_epoch):
    if schedule == "constant" or total <= 1:
        return base
    if schedule == "paper":  # x0.1 every 10 epochs
        return base * 0.1 ** (iteration // max(1, 10 * iterations_per_epoch))
    progress = iteration / max(1, total - 1)
    return base * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, part, dataset, batch_size, device=None):
    """Validation of ``part``'s outputs -> dict(val_loss, val_type_acc, val_polarity_acc).

    gnet: G-Net classification subnet; loc: smooth-L1 and mean |u_l - u_l*|; local-a/b: L-Net
    on the runtime crop of the current localizer; heads: the MLP heads. ``device``: the
    run's ``TrainDevice`` (default: the CPU, where the model is built).
    """
    if dataset is None or len(dataset) == 0:
        return {"val_loss": None, "val_type_acc": None, "val_polarity_acc": None}
    device = device or TrainDevice("cpu")
    model.eval()
    total_loss, n, type_ok, pol_ok, n_pol, l_err = 0.0, 0, 0, 0, 0, 0.0
    for batch in batches(dataset, batch_size):
        batch = device.batch(batch)
        _images, types, polarities, targets = batch
        with device.autocast():
            loss, outputs = _validation_outputs(model, part, batch)
        if part == "loc":
            l_err += float((outputs[:, 2] - targets[:, 2]).abs().sum())
        else:
            type_logits, pol_logits = outputs
            type_ok += int((type_logits.argmax(1) == types).sum())
            labelled = polarities >= 0
            pol_ok += int((pol_logits.argmax(1)[labelled] == polarities[labelled]).sum())
            n_pol += int(labelled.sum())
        total_loss += float(loss) * len(types)
        n += len(types)
    result = {"val_loss": total_loss / n}
    if part == "loc":
        result.update(val_type_acc=None, val_polarity_acc=None, val_ul_mae=l_err / n)
    else:
        result.update(val_type_acc=type_ok / n,
                      val_polarity_acc=pol_ok / n_pol if n_pol else None)
    return result


def _validation_outputs(model, part, batch):
    """(loss, outputs) of ``part`` on one validation batch: the localizer's u for the loc
    step, else the (type, polarity) logits that ``part`` trains."""
    images, types, polarities, targets = batch
    g_features, loc, g_type, g_pol = model.gnet(images)
    if part == "loc":
        return loc_loss(loc, targets), loc
    if part == "gnet":
        logits = (g_type, g_pol)
    else:
        l_features, l_type, l_pol = model.lnet(varifocal_crop(images, loc, model.config))
        logits = model.heads(g_features, l_features) if part == "heads" else (l_type, l_pol)
    weight = HEADS_POLARITY_WEIGHT if part == "heads" else POLARITY_WEIGHT
    return cls_loss(logits[0], logits[1], types, polarities, weight), logits


# --------------------------------------------------------------------------- schedule


def schedule(epochs):
    """Flat list of (part, epoch, n_epochs_of_that_part) units, one epoch each, in order."""
    units = [("gnet", e, epochs["gnet"]) for e in range(epochs["gnet"])]
    units += [("loc", e, epochs["loc"]) for e in range(epochs["loc"])]
    for r in range(epochs["local"]):
        units += [("local-a", r, epochs["local"]), ("local-b", r, epochs["local"])]
    units += [("heads", e, epochs["heads"]) for e in range(epochs["heads"])]
    return units


def _step_of(part):
    return "local" if part.startswith("local") else part


def _normalize_epochs(epochs):
    merged = dict(DEFAULT_EPOCHS)
    if epochs:
        unknown = sorted(set(epochs) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown step(s) in epochs: {', '.join(unknown)} "
                             f"(steps: {', '.join(STEPS)})")
        merged.update({k: int(v) for k, v in epochs.items()})
    if any(v < 0 for v in merged.values()):
        raise ValueError(f"epochs must be non-negative, got {merged}")
    return merged


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


# --------------------------------------------------------------------------- main entry


def train(data_dir, labels=None, out_dir="runs/vfnet", preset="compact", epochs=None,
          batch_size=DEFAULT_BATCH, lr=DEFAULT_LR, lr_schedule="cosine", val_fraction=0.15,
          seed=0, resume=False, threads=None, limit=None, log=None, augment="paper",
          balance=False, keep_best=False, init=None, device="cpu", corrections=(),
          box_jitter=0.0):
    """Train a Varifocal-Net with the four-step strategy; return the Path of OUT/model.pt.

    ``data_dir``: folder of the labels and images; ``labels``: the labels CSV (default
    ``data_dir/labels.csv``). ``preset``: a preset name or a ``ModelConfig``. ``epochs``:
    dict with any of gnet / loc / local (alternation rounds) / heads, missing ones from
    ``DEFAULT_EPOCHS``. ``lr_schedule``: cosine | paper | constant. ``limit``: use a seeded
    random subset of that many labelled images (quick trials). ``threads``: torch threads.
    ``log``: callable taking one line (default: stderr). With ``resume=True`` the run in
    ``out_dir/last.pt`` continues with its own recorded options (``epochs`` may be raised to
    train longer).

    The recipe levers, each off by default (``RECIPE_DEFAULTS``; docs/training.md, "Recipe"):
    ``augment`` paper | real (``vfinfer_export.data.REAL_AUGMENT``); ``balance``: class-balanced
    sampling (``vfinfer_export.data.balanced_order``); ``keep_best``: each step ends on its best
    validation epoch; ``box_jitter``: noise on the localizer's u for the L-Net and heads
    steps (module doc); ``init``: a checkpoint or exported model directory whose weights the
    run starts from (both ``vfinfer_export.recipe``). ``device``: cpu | cuda | auto (module doc).
    ``corrections``: directories of reviewed cases whose corrected calls are added to the
    training data (``vfinfer.io.review.reviewed_labels``).
    """
    log = log or _stderr
    device = TrainDevice(device)  # before any work: --device cuda without CUDA fails here
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path = out_dir / "last.pt"
    if threads:
        torch.set_num_threads(int(threads))
    _check_choices(lr_schedule, batch_size, augment, box_jitter)
    config = preset if isinstance(preset, ModelConfig) else preset_config(preset)
    resuming = resume and last_path.is_file()
    recipe = {"augment": augment, "balance": bool(balance), "keep_best": bool(keep_best),
              "box_jitter": float(box_jitter),
              "init": resolve_init(init) if init and not resuming else None}
    options = _run_options(data_dir, labels, config, epochs, batch_size, lr, lr_schedule,
                           val_fraction, seed, limit, recipe)
    options["corrections"] = [str(path) for path in corrections]
    state, options = _resume(resume, last_path, options, epochs, log)
    config = ModelConfig.from_dict(options["config"])
    _seed_everything(options["seed"])
    model = VarifocalNet(config)  # step 1: He initialization (seeded above)
    run = {"history": [], "done": 0, "optimizer_states": {}, "options": options,
           "last_path": last_path, "out_dir": out_dir, "best": BestEpoch(), "device": device}
    if state is not None:
        _restore(model, state, run, last_path, log)
    elif options["init"]:  # before reading the data: a network that differs fails at once
        load_init(model, options["init"], log)
    device.module(model)
    if device.cuda:
        log(f"device: {device.describe()}, {device.mixed_precision}")
    train_set, val_set, run["split"] = _datasets(data_dir, labels, options, config, threads,
                                                 state, last_path, log)
    _write_json(out_dir / SPLIT_FILE, split_record(run["split"], options))
    units = schedule(options["epochs"])
    _train_units(model, units, train_set, val_set, run, log)
    return _save_final(model, units, run, train_set.polarity_labelled, log)


def _check_choices(lr_schedule, batch_size, augment, box_jitter):
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}: choose one of "
                         f"{', '.join(LR_SCHEDULES)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if augment not in AUGMENT_MODES:
        raise ValueError(f"unknown augment {augment!r}: choose one of "
                         f"{', '.join(AUGMENT_MODES)}")
    if box_jitter < 0:
        raise ValueError(f"box_jitter must be >= 0, got {box_jitter}")


def _restore(model, state, run, last_path, log):
    """Continue from ``last.pt``: its weights, history, optimizers and best-epoch record."""
    load_state(model, state["state_dict"], last_path)
    extra = state["extra"]
    run.update(history=list(extra["history"]), done=int(extra["done"]),
               optimizer_states=extra.get("optimizer") or {}, best=BestEpoch(extra.get("best")))
    run["device"].load_scaler_state(extra.get("grad_scaler"))
    epoch = extra["epoch"]
    log(f"resume: {run['done']} epoch(s) done, last {extra['step']} "
        f"epoch {epoch + 1 if epoch is not None else '-'}")


def _save_final(model, units, run, labelled, log):
    """``OUT/model.pt`` (with the manifest's training record) and ``OUT/history.json``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    options, split = run["options"], run["split"]
    model_path = run["out_dir"] / "model.pt"
    record = training_record(split, options, labelled, run["best"].kept,
                             devices_used(run["history"]), run["device"].mixed_precision)
    save_checkpoint(model, model_path, {"step": "done", "epoch": None, "done": len(units),
                                        "history": run["history"], "split": split,
                                        "seed": options["seed"], "options": options,
                                        "training_record": record})
    _write_json(run["out_dir"] / "history.json", run["history"])
    log(f"saved {model_path}; validation slides in {run['out_dir'] / SPLIT_FILE}")
    return model_path


def training_record(split, options, labelled, kept=None, device=None, mixed_precision=None):
    """What the exported manifest keeps about the training (its "training" section): where
    the data was (absolute paths, so that ``vfinfer export`` finds the validation cells from
    any directory), the slide counts, the validation slides by name, the recipe and the
    device (``devices_used``) with its arithmetic (None: FP32 throughout)."""
    init = options.get("init")
    return {"data_dir": str(Path(options["data_dir"]).resolve()),
            "labels": str(labels_path(options["data_dir"], options["labels"]).resolve()),
            "train_slides": len(split["train"]), "val_slides": len(split["val"]),
            "validation_slides": list(split["val"]),
            "polarity_labelled_images": labelled,
            "polarity": ("trained" if labelled else
                         "not trained: no polarity labels (the polarity head is untrained)"),
            "recipe": {"augment": options.get("augment", "paper"),
                       "balance": options.get("balance", False),
                       "keep_best": options.get("keep_best", False),
                       "kept_epochs": kept if options.get("keep_best") else None,
                       "box_jitter": options.get("box_jitter", 0.0),
                       "init": init and {"checkpoint": init["checkpoint"],
                                         "sha256": init["sha256"]}},
            "device": device, "mixed_precision": mixed_precision}


def split_record(split, options):
    """``OUT/split.json``: the slides (cells where the labels name no slide) the trainer
    trained on and those it held out for validation, by name, with the data they come from
    (``vfinfer export`` fits the domain figures and the dispatch calibration on the latter)."""
    return {"data_dir": str(Path(options["data_dir"]).resolve()),
            "labels": str(labels_path(options["data_dir"], options["labels"]).resolve()),
            "val_fraction": options["val_fraction"], "seed": options["seed"],
            "validation": list(split["val"]), "train": list(split["train"])}


def _run_options(data_dir, labels, config, epochs, batch_size, lr, lr_schedule, val_fraction,
                 seed, limit, recipe=None):
    """Everything that defines a run, recorded in its checkpoints."""
    return {
        "data_dir": str(data_dir), "labels": None if labels is None else str(labels),
        "preset": config.preset, "config": config.to_dict(),
        "epochs": _normalize_epochs(epochs), "batch_size": int(batch_size), "lr": float(lr),
        "lr_schedule": lr_schedule, "val_fraction": float(val_fraction), "seed": int(seed),
        "limit": None if limit is None else int(limit), "polarity_weight": POLARITY_WEIGHT,
        "heads_polarity_weight": HEADS_POLARITY_WEIGHT, "loc_weight": LOC_WEIGHT,
        "boxcar_k": BOXCAR_K, "cosine_floor": COSINE_FLOOR, "loc_lr_scale": LOC_LR_SCALE,
        "optimizer": "adam(0.9, 0.999)", **RECIPE_DEFAULTS, **(recipe or {}),
        "real_augment": REAL_AUGMENT,
    }


def _resume(resume, last_path, options, epochs, log):
    """(checkpoint state or None, the options to use: the checkpoint's when resuming; a
    checkpoint from before the recipe levers runs with them off)."""
    if resume and last_path.is_file():
        state = _load_resume(last_path)
        stored = {**RECIPE_DEFAULTS, "real_augment": REAL_AUGMENT,
                  **state["extra"]["options"]}
        free = ("epochs", "data_dir", "labels", "init", "corrections")
        changed = sorted(k for k in options if k not in free and options[k] != stored.get(k))
        if changed:
            log(f"resume: using the checkpoint's {', '.join(changed)} (differ from the call)")
        return state, {**stored, "epochs": options["epochs"] if epochs else stored["epochs"],
                       "data_dir": options["data_dir"], "labels": options["labels"],
                       "corrections": options["corrections"]}
    if resume:
        log(f"resume: {last_path} not found, starting a new run")
    return None, options


def _datasets(data_dir, labels, options, config, threads, state, last_path, log):
    """Training and validation sets, split by slide, and the split itself."""
    seed = options["seed"]
    records = read_labels(data_dir, labels)
    for reviewed in options["corrections"]:
        added = reviewed_labels(reviewed)
        log(f"data: {len(added)} reviewed chromosome images from {reviewed}")
        records += added
    if options["limit"] is not None and options["limit"] < len(records):
        keep = sorted(random.Random(seed).sample(range(len(records)), options["limit"]))
        records = [records[i] for i in keep]
    train_records, val_records = split_by_slide(records, options["val_fraction"], seed)
    split = {"train": slides_of(train_records), "val": slides_of(val_records)}
    if state is not None and state["extra"].get("split") != split:
        raise CheckpointError(f"{last_path}: the train/validation split differs from this "
                              "data (labels changed?); cannot resume")
    started = time.perf_counter()
    train_set = ChromosomeDataset(train_records, config, augment=True, seed=seed,
                                  threads=threads, augment_mode=options["augment"])
    val_set = ChromosomeDataset(val_records, config, balance_polarity=True,
                                threads=threads) if val_records else None
    labelled = sum(r.polarity >= 0 for r in train_records)
    log(f"data: {len(train_records)} train images ({len(split['train'])} slides), "
        f"{len(val_records)} validation images ({len(split['val'])} slides), "
        f"loaded in {time.perf_counter() - started:.1f}s; polarity labelled on {labelled}")
    train_set.polarity_labelled = labelled
    return train_set, val_set, split


def _train_units(model, units, train_set, val_set, run, log):
    """One epoch per schedule unit from ``run["done"]`` on, a resumable checkpoint after
    each. (channels-last would make the G-Net step ~20 % faster on CPU, but torch 2.13's CPU
    backward of a 1x1 stride-2 conv in channels-last crashes the process for small widths.)"""
    options, optimizers = run["options"], {}
    batch_size = options["batch_size"]
    for index, (part, epoch, n_epochs) in enumerate(units):
        if index < run["done"]:
            continue
        step = _step_of(part)
        # optimizers live for one step; a new step starts with fresh Adam state
        for name in [n for n in optimizers if _step_of(n) != step]:
            del optimizers[name]
        params = prepare(model, part)
        if part not in optimizers:
            optimizers[part] = make_optimizer(params, options["lr"])
            if part in run["optimizer_states"]:
                optimizers[part].load_state_dict(run["optimizer_states"][part])
        tic = time.perf_counter()
        train_loss, lr_now = _train_epoch(model, part, optimizers[part], train_set, run,
                                          index, epoch, n_epochs)
        train_seconds = time.perf_counter() - tic
        metrics = evaluate(model, part, val_set, max(batch_size, 64), run["device"])
        entry = {"step": part, "epoch": epoch, "epochs": n_epochs, "train_loss": train_loss,
                 **metrics, "lr": lr_now, "train_seconds": round(train_seconds, 2),
                 "seconds": round(time.perf_counter() - tic, 2),
                 "device": run["device"].describe()}
        run["history"].append(entry)
        run["done"] = index + 1
        kept = _keep_best(model, units, index, entry, run["best"]) \
            if options["keep_best"] else None
        extra = {"step": part, "epoch": epoch, "done": run["done"],
                 "optimizer": {k: v.state_dict() for k, v in optimizers.items()},
                 "history": run["history"], "split": run["split"], "seed": options["seed"],
                 "options": options, "best": run["best"].record(),
                 "grad_scaler": run["device"].scaler_state()}
        save_checkpoint(model, run["last_path"], extra)
        _write_json(run["out_dir"] / "history.json", run["history"])
        _log_epoch(log, entry)
        if kept:
            log(kept)


def step_prefixes(model, step):
    """The state_dict prefixes of the modules that ``step`` trains (``trainable``)."""
    names = {id(module): name for name, module in model.named_modules()}
    parts = [part for part in PARTS if _step_of(part) == step]
    return tuple(sorted({names[id(m)] + "." for part in parts for m in trainable(model, part)}))


def _keep_best(model, units, index, entry, best):
    """``--keep-best`` after unit ``index``: offer the epoch (an alternation round counts at
    its local-b half) and, at the step's last unit, go back to the step's best epoch; the
    line to log at a step's end, else None."""
    part = entry["step"]
    step = _step_of(part)
    if part != "local-a":
        best.offer(model, step, entry, step_prefixes(model, step))
    if index + 1 == len(units) or _step_of(units[index + 1][0]) != step:
        return best.finish(model, step, entry)
    return None


def _train_epoch(model, part, optimizer, train_set, run, index, epoch, n_epochs):
    """One epoch of ``part`` on the run's device; returns (mean training loss, last learning
    rate)."""
    options, device = run["options"], run["device"]
    batch_size = options["batch_size"]
    iterations = math.ceil(len(train_set) / batch_size)
    base_lr = options["lr"] * (options["loc_lr_scale"] if part in ("loc", "local-b") else 1)
    train_set.set_epoch(index)
    move_box = _box_mover(options, part, index)
    total_loss, n, lr_now = 0.0, 0, base_lr
    for i, batch in enumerate(batches(train_set, batch_size,
                                      shuffle_seed=[options["seed"], index],
                                      balance=options["balance"])):
        lr_now = learning_rate(base_lr, options["lr_schedule"],
                               epoch * iterations + i, n_epochs * iterations, iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        batch = device.batch(batch)
        with device.autocast():
            loss = part_loss(model, part, batch, options["boxcar_k"], options["loc_weight"],
                             move_box)
        device.step(loss, optimizer)
        total_loss += float(loss.detach()) * len(batch[1])
        n += len(batch[1])
    return total_loss / max(1, n), lr_now


def _box_mover(options, part, index):
    """The ``box_jitter`` lever for one epoch of ``part`` (None where it does not apply): its
    noise seeded from (seed, unit index), so a resumed run draws what the interrupted one
    would have drawn."""
    sigma = options.get("box_jitter", 0.0)
    if not sigma or part not in ("local-a", "heads"):
        return None
    seed = int(np.random.SeedSequence([options["seed"], index]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(seed)
    return lambda loc: jittered(loc, sigma, generator)


def _log_epoch(log, entry):
    extra_text = (f" val_ul_mae {entry['val_ul_mae']:.4f}" if "val_ul_mae" in entry else "")
    log(f"{entry['step']} epoch {entry['epoch'] + 1}/{entry['epochs']} train_loss "
        f"{entry['train_loss']:.4f} val_loss {_fmt(entry['val_loss'], '.4f')} "
        f"val_type_acc {_fmt(entry['val_type_acc'], '.4f')} "
        f"val_polarity_acc {_fmt(entry['val_polarity_acc'], '.4f')}{extra_text} "
        f"lr {entry['lr']:.2e} {entry['seconds']:.1f}s")


def _load_resume(path):
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    extra = payload.get("extra") if isinstance(payload, dict) else None
    if not extra or "done" not in extra or "options" not in extra:
        raise CheckpointError(f"{path}: not a training checkpoint of this trainer")
    return payload


def _write_json(path, data):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = [
    "DEFAULT_EPOCHS",
    "PARTS",
    "STEPS",
    "evaluate",
    "learning_rate",
    "loc_loss",
    "make_optimizer",
    "part_loss",
    "prepare",
    "schedule",
    "train",
]
