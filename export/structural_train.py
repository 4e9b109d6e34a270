"""Trainer of the structural score (``vfinfer train-structural``).

    from vfinfer_export.structural_train import train_structural
    train_structural("../shared/data/pki3", "runs/structural", labels_csv="train.csv")

The labelled cells are split by slide: ``val_share`` of the slides are held out for
validation. Training examples (``structural_data``): the normal chromosomes of the training
cells and synthetic aberrations of them, made anew for each epoch (seed + epoch: other
aberrations, other normals drawn); validation examples likewise from the held-out slides,
once, with another seed. Each epoch shuffles the examples and flips each canvas left-right
at random with a random gain on its darkness; binary cross-entropy, Adam, cosine decay of the
learning rate to 5 %. With the arm head, the loss adds ``ARM_WEIGHT`` times the cross-entropy
of the arm logits on the aberrant examples (where the change lies: p, q or both arms); with the
position head, ``POSITION_WEIGHT`` times the smooth L1 of the predicted start and end of the
changed segment.

Each epoch writes ``OUT/last.pt`` (atomic: the weights, the optimizer's state, the batch
order's random state, the step and the history) and ``OUT/history.json``; ``resume`` goes on
from it to the same weights an uninterrupted run reaches. The end chooses the threshold: the
lowest score that flags at most ``1 - specificity`` of the normal validation chromosomes,
records the validation figures at it, and writes ``OUT/structural.pt`` (``save_structural``),
which ``vfinfer export-structural`` adds to a model directory. With ``tta`` "mirror" every
validation score (and so the threshold) is the mean of the canvas's and its left-right
mirror's, as the runtime scores (``vfinfer.pipeline.structural``, "Two views").
"""

import io
import json
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vfinfer.io.labels import read_labels
from vfinfer.pipeline.structural import ARMS, TTA_MODES, darkness
from vfinfer.tools.evaluation.structural import threshold_for_specificity, validation_figures
from vfinfer.util.atomic import write_atomic

from .structural_data import ExampleOptions, make_examples, split_cells
from .structural_model import StructuralNet

SPECIFICITY = 0.99
BATCH = 128
ARM_WEIGHT = 0.5
POSITION_WEIGHT = 1.0
NO_ARM = -1  # the arm target of a normal example (ignored by the loss)


def _stderr(message):
    print(message, file=sys.stderr, flush=True)


def save_structural(net, path, extra=None):
    """Write a checkpoint: weights, the network's spec and ``extra`` (threshold, records)."""
    buffer = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "spec": net.spec(), **(extra or {})}, buffer)
    write_atomic(path, buffer.getvalue())


def load_structural(path):
    """(StructuralNet in eval mode, the checkpoint dict) of ``save_structural``'s file."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
        net = StructuralNet(**payload["spec"])
        net.load_state_dict(payload["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError,
            pickle.UnpicklingError) as exc:
        reason = str(exc).split(".")[0]
        raise ValueError(f"{path}: not a structural-score checkpoint ({reason})") from None
    return net.eval(), payload


def _tensor_darkness(canvas):
    """``vfinfer.pipeline.structural.darkness`` as a tensor (N, C, H, W)."""
    return torch.from_numpy(darkness(canvas))


def _views(net, x, c, tta):
    """(score, arm probabilities or None) of one batch: of the canvas, or with ``tta``
    "mirror" the mean over the canvas and its left-right mirror."""
    outputs = [net.forward_all(view, c) for view in
               ((x, x.flip(-1)) if tta == "mirror" else (x,))]
    score = torch.stack([torch.sigmoid(logit) for logit, _, _ in outputs]).mean(0)
    if outputs[0][1] is None:
        return score, None
    return score, torch.stack([torch.softmax(arm, dim=1) for _, arm, _ in outputs]).mean(0)


def predict(net, canvas, cond, batch=512, tta="none"):
    """(scores (N,) float32, arm probabilities (N, 3) or None without the arm head) of uint8
    canvases and conditions, in eval mode, no gradients; ``tta`` "mirror": the mean over each
    canvas and its mirror (checked by ``train_structural``)."""
    net.eval()
    scores, arms = [], []
    with torch.no_grad():
        for start in range(0, len(canvas), batch):
            x = _tensor_darkness(canvas[start:start + batch])
            score, arm = _views(net, x, torch.from_numpy(cond[start:start + batch]), tta)
            scores.append(score)
            if arm is not None:
                arms.append(arm)
    if not scores:
        return np.zeros(0, np.float32), (np.zeros((0, len(ARMS)), np.float32)
                                         if net.arm_head else None)
    return torch.cat(scores).numpy(), torch.cat(arms).numpy() if arms else None


def arm_targets(arms):
    """The index in ``ARMS`` of each example's arm, ``NO_ARM`` for a normal one (int64)."""
    return np.array([ARMS.index(a) if a else NO_ARM for a in arms], np.int64)


def _uniform(rng, low, high, shape):
    return torch.from_numpy(rng.uniform(low, high, shape).astype(np.float32))


def _batches(examples, rng):
    """Shuffled training batches: (image, cond, label, arm) tensors, each channel (the
    chromosome, its homologue) flipped left-right and given a gain on its darkness at random,
    on its own."""
    order = rng.permutation(len(examples))
    for start in range(0, len(order), BATCH):
        idx = order[start:start + BATCH]
        x = _tensor_darkness(examples.canvas[idx])
        n, channels = x.shape[:2]
        flip = torch.from_numpy(rng.random((n, channels)) < 0.5)
        x = torch.where(flip[:, :, None, None], x.flip(-1), x)
        x = (x * _uniform(rng, 0.8, 1.2, (n, channels, 1, 1))).clamp(0, 1)
        yield (x, torch.from_numpy(examples.cond[idx]), torch.from_numpy(examples.label[idx]),
               torch.from_numpy(arm_targets([examples.arm[i] for i in idx])),
               torch.from_numpy(examples.segment[idx]))


def _loss(net, x, cond, y, arm, segment):
    """Binary cross-entropy of the score, plus the arm head's cross-entropy and the position
    head's smooth L1 on the aberrant examples."""
    logit, arm_logits, position = net.forward_all(x, cond)
    loss = F.binary_cross_entropy_with_logits(logit, y)
    aberrant = y > 0
    if arm_logits is not None and aberrant.any():
        loss = loss + ARM_WEIGHT * F.cross_entropy(arm_logits, arm, ignore_index=NO_ARM)
    if position is not None and aberrant.any():
        loss = loss + POSITION_WEIGHT * F.smooth_l1_loss(position[aberrant], segment[aberrant],
                                                         beta=0.05)
    return loss


def _epoch(net, optimizer, examples, rng, schedule):
    """One pass over the examples; ``schedule``: (step, total steps, peak learning rate);
    returns (mean loss, steps done)."""
    net.train()
    losses = []
    step, total, lr = schedule
    for x, cond, y, arm, segment in _batches(examples, rng):
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total)))
        loss = _loss(net, x, cond, y, arm, segment)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
    return float(np.mean(losses)), step


def _data(data_dir, labels_csv, seed, val_share, options, workers, log):
    """(train cells, their first epoch's examples, validation examples, the data record)."""
    labels = read_labels(data_dir, labels_csv)
    train_cells, val_cells = split_cells(labels, val_share, seed)
    started = time.perf_counter()
    train = make_examples(train_cells, seed, options, workers)
    val_options = ExampleOptions(**{**options.__dict__, "normals_per_cell": 0})
    val = make_examples(val_cells, seed + 1000, val_options, workers)
    log(f"examples made in {time.perf_counter() - started:.0f} s: train {train.counts()}, "
        f"validation {val.counts()}")
    slides = {lab.cell: lab.slide or lab.cell for lab in labels}
    record = {
        "data_dir": str(data_dir), "labels": str(labels_csv or "labels.csv"),
        "split": f"by slide, {val_share:.0%} of the slides held out for validation",
        "train_cells": len(train_cells), "val_cells": len(val_cells),
        "train_slides": len({slides[c] for c in train_cells}),
        "val_slides": sorted({slides[c] for c in val_cells}),
        "train_examples": train.counts(), "val_examples": val.counts(),
        "aberrations": {"kinds": list(options.kinds), "size_min": options.size_min,
                        "size_max": options.size_max,
                        "made_by": "vfinfer.tools.synthesis.structural (draw_aberration)",
                        "per_cell": options.aberrant_per_cell},
        "normals_per_cell": options.normals_per_cell or "all",
        "homologue": options.homologue,
    }
    return train_cells, train, val, record


def train_structural(data_dir, out_dir, labels_csv=None, epochs=8, seed=0, threads=0,
                     val_share=0.15, options=None, lr=2e-3, net=None, log=_stderr,
                     tta="mirror", resume=False):
    """Train, choose the threshold, write ``OUT/structural.pt``; returns its path.
    ``resume``: go on from ``OUT/last.pt`` (the same network and options)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    net = net or StructuralNet()
    options = options or ExampleOptions(net.height, net.width, homologue=net.homologue,
                                        fit=net.fit)
    if (options.homologue, options.fit) != (net.homologue, net.fit):
        raise ValueError("the examples and the network disagree on the homologue channel or "
                         "the canvas fit")
    workers = max(1, int(threads or 1))
    out = Path(out_dir)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    first, step, history = _resumed(out / "last.pt", net, optimizer, rng) if resume \
        else (0, 0, [])
    train_cells, train, val, record = _data(data_dir, labels_csv, seed, val_share, options,
                                            workers, log)
    out.mkdir(parents=True, exist_ok=True)
    total = epochs * math.ceil(len(train) / BATCH)
    step = first * math.ceil(len(train) / BATCH) if step is None else step  # an older last.pt
    started = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    for epoch in range(first, epochs):
        if epoch:  # new aberrations (and normals drawn) each epoch
            train = make_examples(train_cells, seed + epoch, options, workers)
        loss, step = _epoch(net, optimizer, train, rng, (step, total, lr))
        history.append(_validate(net, val, tta, epoch, epochs, loss, started, log))
        save_structural(net, out / "last.pt", {
            "epoch": epoch + 1, "step": step, "history": history, "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "optimizer": optimizer.state_dict()})
        write_atomic(out / "history.json", json.dumps(history, indent=1).encode())
    return _finish(net, out, val, record, history, {"epochs": epochs, "seed": seed,
                                                    "threads": threads, "lr": lr, "tta": tta,
                                                    "seconds": round(time.perf_counter()
                                                                     - started, 1)}, log)


def _resumed(path, net, optimizer, rng):
    """(the next epoch, the step, the history) of ``last.pt``, its weights loaded into
    ``net``, its optimizer and random states (when recorded) into ``optimizer``, ``rng`` and
    torch's."""
    if not path.exists():
        raise ValueError(f"{path}: nothing to resume (no last.pt in the run folder)")
    saved, payload = load_structural(path)
    if saved.spec() != net.spec():
        raise ValueError(f"{path}: trained with another network ({saved.spec()}); resume with "
                         f"the options it was started with")
    net.load_state_dict(saved.state_dict())
    if "optimizer" in payload:
        optimizer.load_state_dict(payload["optimizer"])
    if "rng" in payload:
        rng.bit_generator.state = payload["rng"]
    if "torch_rng" in payload:  # the dropout's
        torch.set_rng_state(payload["torch_rng"])
    history = list(payload.get("history") or _history_file(path.parent))
    return int(payload["epoch"]), payload.get("step"), history


def _history_file(out):
    """The epochs in ``OUT/history.json`` ([] without it)."""
    path = out / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def _validate(net, val, tta, epoch, epochs, loss, started, log):
    """One epoch's history record: the validation figures at 99 % specificity."""
    scores, arms = predict(net, val.canvas, val.cond, tta=tta)
    figures = validation_figures(scores, val, threshold_for_specificity(
        scores[val.label == 0], SPECIFICITY), arms)
    log(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}, validation AUC "
        f"{figures['auc'] or 0:.4f}, "
        f"sensitivity at {SPECIFICITY:.0%} specificity {figures['sensitivity']:.3f} "
        f"({time.perf_counter() - started:.0f} s)")
    return {"epoch": epoch + 1, "loss": round(loss, 5), "val_auc": figures["auc"],
            "val_sensitivity": figures["sensitivity"],
            "val_arm_right": figures.get("arm", {}).get("right_of_flagged"),
            "seconds": round(time.perf_counter() - started, 1)}


def _finish(net, out, val, record, history, run, log):
    """Choose the threshold on the validation normals (scored with ``run["tta"]``), write
    ``structural.pt``."""
    scores, arms = predict(net, val.canvas, val.cond, tta=run["tta"])
    threshold = threshold_for_specificity(scores[val.label == 0], SPECIFICITY)
    figures = validation_figures(scores, val, threshold, arms)
    log(f"threshold {threshold:.6f} (target specificity {SPECIFICITY:.0%}, "
        f"{'two views' if run['tta'] == 'mirror' else 'one view'}): validation "
        f"specificity {figures['specificity']:.4f}, sensitivity {figures['sensitivity']:.4f}, "
        f"AUC {figures['auc'] or 0:.4f}")
    path = out / "structural.pt"
    save_structural(net, path, {
        "threshold": threshold, "target_specificity": SPECIFICITY, "validation": figures,
        "tta": run["tta"],
        "training": {**record, **run, "history": history}})
    return path
