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


def network_pass(model, image):
    """The networks on a batch of G inputs, on whatever device ``image`` and ``model`` are:
    G-Net, the eq. 5 boxes (decoded in FP32, as the FP16 graphs keep the localizer's output),
    the crop, L-Net, the heads' softmax -> dict of tensors ``type_probs``, ``polarity_probs``,
    ``loc``, ``boxes``. Call it under ``torch.no_grad``."""
    config = model.config
    g_features, loc, _, _ = model.gnet(image)
    boxes = decode_boxes_torch(loc.float(), config.t1, config.t2)
    crops = crop_and_resize_torch(image, boxes, config.l_input)
    l_features = model.lnet(crops)[0]
    type_probs, polarity_probs = model.heads.probabilities(g_features, l_features)
    return {"type_probs": type_probs, "polarity_probs": polarity_probs, "loc": loc,
            "boxes": boxes}


class ReferencePipeline:
    """Eager PyTorch inference with a loaded VarifocalNet (eval mode, no grad)."""

    def __init__(self, model, batch_size=64):
        self.model = model.eval()
        self.config = model.config
        self.batch_size = batch_size

    @torch.no_grad()
    def infer_batch(self, g_input):
        """(N, 1, G, G) float32 array -> dict of NumPy arrays like ``Pipeline.infer``."""
        outputs = network_pass(self.model, torch.from_numpy(g_input))
        return {key: value.numpy() for key, value in outputs.items()}

    def infer(self, images, cells=None):
        """Gray uint8 cut-outs (one cell, unless ``cells`` names each image's) -> network
        outputs averaged over the model's test-time views, ``batch_size`` inputs at a time."""
        g_input = preprocess_batch(images, self.config, cells=cells)
        views = add_views(g_input, self.config.tta)
        parts = [self.infer_batch(views[i:i + self.batch_size])
                 for i in range(0, len(views), self.batch_size)]
        outputs = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        return merge_views(outputs, self.config.tta, len(g_input))


class EagerTimer:
    """The eager pipeline of a model directory, timed one case at a time (``vfinfer bench``
    interleaves it with the runtime case by case).

    Uses the checkpoint the model directory was exported from when it is still there, else
    the same architecture with random weights (speed does not depend on weight values).
    ``threads`` (0: PyTorch's default) sets torch's intra-op threads.
    """

    def __init__(self, manifest, threads=0, batch_size=64):
        if threads:
            torch.set_num_threads(threads)
        source = manifest.data.get("source", {})
        if source.get("kind") == "checkpoint" and Path(source.get("path", "")).is_file():
            model = load_checkpoint(source["path"])
            self.weights = f"checkpoint {source['path']}"
        else:
            model, self.weights = random_model(manifest.config), "same architecture, random init"
        self.reference = ReferencePipeline(model, batch_size=batch_size)

    def warm_up(self, images, seconds):
        """Run ``images`` (one case) again and again for ``seconds``."""
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            self.reference.infer(images)

    def __call__(self, images):
        """Milliseconds of one case, preprocessing to the heads (as the runtime's stages)."""
        start = time.perf_counter()
        self.reference.infer(images)
        return (time.perf_counter() - start) * 1000

    def describe(self):
        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "weights": self.weights}
