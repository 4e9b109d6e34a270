"""Trainer of the segmentation network from labelme JSON (``vfinfer train-seg``).

    from vfinfer_export.seg_train import train_seg
    train_seg("data/metaphases", "runs/seg", files=["original_1.json", ...])

Every training image is read once (``vfinfer.io.labelme``), normalized as the runtime does
(``vfinfer.segment.model.normalized``) and turned into the three target maps
(``vfinfer.segment.channels.target_maps``). An epoch draws ``crops_per_image`` square crops
of ``crop`` pixels from every image, most of them centred on a chromosome pixel, flipped and
turned by multiples of 90 degrees at random, with a random gain, offset and noise on the
intensities; with ``scale_jitter`` S > 0 each crop is also scaled by a random factor between
1 / (1 + S) and 1 + S (log-uniform: a window of crop / factor pixels resized to the crop,
the image bilinearly, the target maps by nearest neighbour), so that the network sees
chromosomes of other sizes than the training images' (other magnifications and cameras).
Loss: per-channel binary cross-entropy (weights ``CHANNEL_WEIGHTS``: touch and overlap are
thin and rare) plus a soft Dice term per channel. Adam, cosine decay of the
learning rate to 5 % over the run.

Each epoch writes ``OUT/last.pt`` (atomic: weights, optimizer state, epoch, history) and
``OUT/history.json``; ``resume=True`` continues after the last completed epoch; data order
and augmentation are seeded from (seed, epoch). The end writes ``OUT/seg.pt`` and exports
``OUT/model`` (``seg_export.export_seg``).

``device`` (``vfinfer_export.device``): "cpu" (the default here; the command line's default
is auto) trains as above; "cuda" moves the network and the batches to the GPU, runs the
forward pass under float16 autocast (the loss in FP32) with a GradScaler. Each history entry
and the training record name the device; checkpoints hold CPU tensors either way.
"""

import io
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from vfinfer.io.labelme import Metaphase, list_labelme, polygon_masks, read_labelme
from vfinfer.segment.channels import target_maps
from vfinfer.segment.model import SegInput, normalized
from vfinfer.util.atomic import write_atomic
from vfinfer.util.geometry import detect_background

from .device import TrainDevice, cpu_copy, devices_used
from .seg_model import SegNet

CHANNEL_WEIGHTS = (1.0, 2.0, 3.0)
ON_CHROMOSOME = 0.8  # share of crops centred on a chromosome pixel
FORMAT = "vfinfer-seg-checkpoint"


def _stderr(message):
    print(message, file=sys.stderr, flush=True)


def training_files(data_dir, files=None):
    """What to train on: a COCO JSON file's metaphases (``data_dir`` is a .json file;
    ``files`` then names the images to keep), or labelme files (``files``: names in
    ``data_dir``, default all of them)."""
    if Path(data_dir).is_file():
        from vfinfer.io.labelme import read_coco

        metaphases = read_coco(data_dir)
        return [m for m in metaphases if files is None or m.path.name in set(files)]
    if files is None:
        return list_labelme(data_dir)
    paths = [Path(data_dir) / name for name in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not found: {', '.join(missing[:5])}")
    return paths


def load_examples(paths, spec, log=_stderr):
    """[(normalized image (H, W) float32, targets (3, H, W) uint8)] for labelme files (or
    ``Metaphase`` objects read already) and the record of the chromosome areas."""
    examples, areas = [], []
    for path in paths:
        metaphase = path if isinstance(path, Metaphase) else read_labelme(path)
        gray = metaphase.image
        masks = polygon_masks(metaphase.polygons, gray.shape)
        areas += [int(m.sum()) for m in masks]
        x = normalized(gray, detect_background(gray), spec)
        examples.append((x, target_maps(masks, gray.shape)))
    log(f"read {len(examples)} annotated images, "
        f"{sum(int(t[0].sum()) for _, t in examples)} chromosome pixels")
    return examples, areas_record(areas)


def areas_record(areas):
    """Percentiles of the annotated chromosome areas (pixels): the instance step's
    ``min_area`` is set from them (``seg_export.instance_params``)."""
    values = np.asarray(areas, dtype=float)
    return {"chromosomes": int(values.size), "p1": round(float(np.percentile(values, 1)), 1),
            "median": round(float(np.median(values)), 1)}


def _crop_at(rng, x, t, size, scale_jitter=0.0):
    """One random crop (padded with the background when the image is smaller), scaled by a
    random factor when ``scale_jitter`` > 0 (see the module doc)."""
    if scale_jitter > 0:
        factor = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(scale_jitter))
        window = max(8, int(round(size / factor)))
        xc, tc = _crop_at(rng, x, t, window)
        return (cv2.resize(xc, (size, size), interpolation=cv2.INTER_LINEAR),
                np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
                          for m in tc]))
    h, w = x.shape
    if rng.random() < ON_CHROMOSOME and t[0].any():
        ys, xs = np.nonzero(t[0])
        k = rng.integers(len(ys))
        cy, cx = ys[k], xs[k]
    else:
        cy, cx = rng.integers(h), rng.integers(w)
    y0 = int(np.clip(cy - size // 2, 0, max(h - size, 0)))
    x0 = int(np.clip(cx - size // 2, 0, max(w - size, 0)))
    xc = np.full((size, size), float(np.median(x)), np.float32)
    tc = np.zeros((3, size, size), np.uint8)
    part = x[y0:y0 + size, x0:x0 + size]
    xc[:part.shape[0], :part.shape[1]] = part
    tc[:, :part.shape[0], :part.shape[1]] = t[:, y0:y0 + size, x0:x0 + size]
    return xc, tc


def _augment(rng, x, t):
    k = int(rng.integers(4))
    x, t = np.rot90(x, k), np.rot90(t, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, t = x[:, ::-1], t[:, :, ::-1]
    x = x * rng.uniform(0.75, 1.3) + rng.uniform(-0.1, 0.1)
    x = x + rng.normal(0, rng.uniform(0, 0.08), x.shape)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(t)


def epoch_batches(examples, seed, epoch, crop, crops_per_image, batch_size, scale_jitter=0.0):
    """The epoch's augmented crops in batches of (x (B,1,S,S), targets (B,3,S,S))."""
    rng = np.random.default_rng([seed, epoch, 0x5E6])
    items = [_augment(rng, *_crop_at(rng, x, t, crop, scale_jitter))
             for x, t in examples for _ in range(crops_per_image)]
    order = rng.permutation(len(items))
    for start in range(0, len(order), batch_size):
        chosen = [items[i] for i in order[start:start + batch_size]]
        xs = torch.from_numpy(np.stack([c[0] for c in chosen])[:, None])
        ts = torch.from_numpy(np.stack([c[1] for c in chosen]).astype(np.float32))
        yield xs, ts


def seg_loss(logits, targets):
    """Weighted per-channel BCE + soft Dice (see the module doc)."""
    weights = torch.tensor(CHANNEL_WEIGHTS, dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    bce = (bce.mean(dim=(0, 2, 3)) * weights).sum() / weights.sum()
    probs = torch.sigmoid(logits)
    inter = (probs * targets).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (probs.sum(dim=(0, 2, 3)) + targets.sum(dim=(0, 2, 3)) + 1)
    return bce + (dice * weights).sum() / weights.sum()


def save_seg_checkpoint(net, path, extra=None):
    payload = {"format": FORMAT, "widths": list(net.widths),
               "state_dict": cpu_copy(net.state_dict()), "extra": cpu_copy(extra or {})}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def load_seg_checkpoint(path):
    """(SegNet with the weights, the checkpoint's extra dict); ValueError on a wrong file."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a vfinfer segmentation checkpoint (made by train-seg)")
    net = SegNet(payload["widths"])
    net.load_state_dict(payload["state_dict"])
    return net.eval(), payload.get("extra", {})


def _learning_rate(base, step, total):
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1))))


def _run_epochs(net, optimizer, examples, options, state, out, log, device):
    per_epoch = math.ceil(len(examples) * options["crops_per_image"] / options["batch_size"])
    total = per_epoch * options["epochs"]
    for epoch in range(state["epoch"], options["epochs"]):
        started, losses = time.perf_counter(), []
        net.train()
        for i, batch in enumerate(epoch_batches(
                examples, options["seed"], epoch, options["crop"],
                options["crops_per_image"], options["batch_size"],
                options.get("scale_jitter", 0.0))):
            xs, ts = device.batch(batch)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(options["lr"], epoch * per_epoch + i, total)
            with device.autocast():
                logits = net(xs)
            loss = seg_loss(logits.float() if device.cuda else logits, ts)
            device.step(loss, optimizer)
            losses.append(float(loss.detach()))
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
                 "seconds": round(time.perf_counter() - started, 1),
                 "device": device.describe()}
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        save_seg_checkpoint(net, out / "last.pt", {
            "epoch": state["epoch"], "history": state["history"], "options": options,
            "optimizer": optimizer.state_dict(), "grad_scaler": device.scaler_state()})
        write_atomic(out / "history.json", json.dumps(state["history"], indent=1).encode())
        log(f"epoch {entry['epoch']}/{options['epochs']}: loss {entry['loss']:.4f}, "
            f"{entry['seconds']:.0f} s")


def train_seg(data_dir, out_dir, files=None, widths=(16, 32, 64, 96), epochs=40, crop=256,
              crops_per_image=4, batch_size=8, lr=2e-3, seed=0, threads=0, resume=False,
              background="dark", data_description=None, log=_stderr, device="cpu",
              scale_jitter=0.0):
    """Train on the labelme files of ``data_dir`` (all, or the names in ``files``); returns
    the path of ``OUT/seg.pt``. ``data_description`` (e.g. how synthetic data was made) goes
    into the training record instead of the directory name. ``device``: cpu | cuda | auto.
    ``scale_jitter``: see the module doc (0: off). See the module doc."""
    device = TrainDevice(device)  # before any work: --device cuda without CUDA fails here
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = training_files(data_dir, files)
    names = [p.path.name if isinstance(p, Metaphase) else p.name for p in paths]
    options = {"data": str(data_dir), "files": names, "widths": list(widths),
               "epochs": int(epochs), "crop": int(crop), "crops_per_image": int(crops_per_image),
               "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
               "background": background, "scale_jitter": float(scale_jitter)}
    net, state, extra = SegNet(widths), {"epoch": 0, "history": []}, None
    if resume and (out / "last.pt").is_file():
        net, extra = load_seg_checkpoint(out / "last.pt")
        state = {"epoch": extra["epoch"], "history": extra["history"]}
        log(f"resuming after epoch {state['epoch']}")
    optimizer = torch.optim.Adam(device.module(net).parameters(), lr=lr)
    if extra is not None:
        optimizer.load_state_dict(extra["optimizer"])
        device.load_scaler_state(extra.get("grad_scaler"))
    if device.cuda:
        log(f"device: {device.describe()}, {device.mixed_precision}")
    examples, areas = load_examples(paths, SegInput(background=background), log)
    _run_epochs(net, optimizer, examples, options, state, out, log, device)
    record = {"data": data_description or str(data_dir), "images": len(paths),
              "files": options["files"], "areas": areas,
              "options": {k: v for k, v in options.items() if k not in ("data", "files")},
              "history": state["history"],
              "minutes": round(sum(e["seconds"] for e in state["history"]) / 60, 1),
              "device": devices_used(state["history"]),
              "mixed_precision": device.mixed_precision}
    save_seg_checkpoint(net.eval(), out / "seg.pt", {"training": record})
    return out / "seg.pt"
