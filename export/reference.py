"""The whole Varifocal-Net pipeline in PyTorch, for tests and benchmarks only.

It shares the runtime's preprocessing (``vfinfer.pipeline.preprocess``, NumPy: background,
rotate-and-crop, size normalization over the images of one ``infer`` call, which are one
cell) and its test-time views (``vfinfer.pipeline.tta``) so the comparison isolates what the
runtime does differently: the exported graphs, the eq. 5 box decode and the crop between the
engines (here ``grid_sample``, in the runtime a NumPy gather).
"""

import time
from pathlib import Path

import numpy as np
import torch

from vfinfer.pipeline.preprocess import preprocess_batch
from vfinfer.pipeline.tta import add_views, merge_views

from .checkpoint import load_checkpoint
from .models import random_model
from .varifocal_ops import crop_and_resize_torch, decode_boxes_torch


class ReferencePipeline:
    """Eager PyTorch inference with a loaded VarifocalNet (eval mode, no grad)."""

    def __init__(self, model, batch_size=64):
        self.model = model.eval()
        self.config = model.config
        self.batch_size = batch_size

    @torch.no_grad()
    def infer_batch(self, g_input):
        """(N, 1, G, G) float32 array -> dict of NumPy arrays like ``Pipeline.infer``."""
        config = self.config
        image = torch.from_numpy(g_input)
        g_features, loc, _, _ = self.model.gnet(image)
        boxes = decode_boxes_torch(loc, config.t1, config.t2)
        crops = crop_and_resize_torch(image, boxes, config.l_input)
        l_features = self.model.lnet(crops)[0]
        type_probs, polarity_probs = self.model.heads.probabilities(g_features, l_features)
        return {"type_probs": type_probs.numpy(), "polarity_probs": polarity_probs.numpy(),
                "loc": loc.numpy(), "boxes": boxes.numpy()}

    def infer(self, images, cells=None):
        """Gray uint8 cut-outs (one cell, unless ``cells`` names each image's) -> network
        outputs averaged over the model's test-time views, ``batch_size`` inputs at a time."""
        g_input = preprocess_batch(images, self.config, cells=cells)
        views = add_views(g_input, self.config.tta)
        parts = [self.infer_batch(views[i:i + self.batch_size])
                 for i in range(0, len(views), self.batch_size)]
        outputs = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        return merge_views(outputs, self.config.tta, len(g_input))


def time_reference_pipeline(manifest, cases, threads, warmup_s, batch_size):
    """Milliseconds per case of the eager pipeline on ``cases`` (lists of images).

    Uses the checkpoint the model directory was exported from when it is still there, else
    the same architecture with random weights (speed does not depend on weight values).
    """
    if threads:
        torch.set_num_threads(threads)
    source = manifest.data.get("source", {})
    if source.get("kind") == "checkpoint" and Path(source.get("path", "")).is_file():
        model, weights = load_checkpoint(source["path"]), f"checkpoint {source['path']}"
    else:
        model, weights = random_model(manifest.config), "same architecture, random init"
    reference = ReferencePipeline(model, batch_size=batch_size)
    deadline = time.perf_counter() + warmup_s
    while time.perf_counter() < deadline:
        reference.infer(cases[0])
    times = []
    for images in cases:
        start = time.perf_counter()
        reference.infer(images)
        times.append((time.perf_counter() - start) * 1000)
    return {"times_ms": times, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "weights": weights}
