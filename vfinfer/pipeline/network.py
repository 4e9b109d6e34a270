"""One network pass: G-Net -> eq. 5 box -> crop -> L-Net -> heads (paper Fig. 2, eq. 5).

The only place the three graphs are chained. ``Pipeline`` runs it on its backend; the FP16
and INT8 tools and the benchmarks run it on backends built from other graph files
(``vfinfer.backends.ort.backend_from_paths``), so every comparison goes through the same
steps and the same session settings as ``vfinfer run``.
"""

import time

import numpy as np

from vfinfer.pipeline.crop import crop_and_resize, decode_boxes

OUTPUT_KEYS = ("type_probs", "polarity_probs", "loc", "boxes")


def run_network(backend, g_input, config, timing=None, keep_feeds=False):
    """The outputs of one batch of preprocessed G inputs ``(N, 1, g, g)`` float32.

    ``backend``: anything with ``gnet``, ``lnet`` and ``heads`` runners whose
    ``infer(feeds) -> {name: array}`` follows ``vfinfer.backends.base.GraphRunner``.
    Returns ``type_probs`` (N, 24), ``polarity_probs`` (N, 2), ``loc`` (N, 3, the localizer's
    u) and ``boxes`` (N, 4, eq. 5, G-input pixels); with ``keep_feeds`` also ``feeds``: each
    graph's inputs ``{role: {input name: array}}`` as this pass computed them (calibration).
    ``timing`` (a dict) collects ms per stage.
    """
    clock = Clock({} if timing is None else timing)
    g_out = backend.gnet.infer({"image": g_input})
    clock.lap("gnet")
    boxes = decode_boxes(g_out["loc"], config.t1, config.t2)
    crops = crop_and_resize(g_input, boxes, config.l_input)
    clock.lap("crop")
    l_out = backend.lnet.infer({"crop": crops})
    clock.lap("lnet")
    head_feeds = {"g_features": g_out["g_features"], "l_features": l_out["l_features"]}
    heads = backend.heads.infer(head_feeds)
    clock.lap("heads")
    out = {"type_probs": heads["type_probs"], "polarity_probs": heads["polarity_probs"],
           "loc": g_out["loc"], "boxes": boxes}
    if keep_feeds:
        out["feeds"] = {"gnet": {"image": g_input}, "lnet": {"crop": crops},
                        "heads": head_feeds}
    return out


def run_network_batched(backend, g_input, config, batch_size, timing=None, keep_feeds=False):
    """``run_network`` over ``g_input`` in chunks of ``batch_size``, outputs concatenated."""
    parts = [run_network(backend, g_input[start:start + batch_size], config, timing,
                         keep_feeds)
             for start in range(0, len(g_input), batch_size)]
    if not parts:
        raise ValueError("no images to run the networks on")
    return concatenate(parts)


def concatenate(parts):
    """Concatenate a list of (possibly nested) dicts of arrays along the batch axis."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: concatenate([p[key] for p in parts]) for key in first}
    return first if len(parts) == 1 else np.concatenate(parts)


class Clock:
    """Adds elapsed milliseconds per stage into a dict."""

    def __init__(self, timing):
        self.timing = timing
        self.last = time.perf_counter()

    def lap(self, stage):
        now = time.perf_counter()
        self.timing[stage] = self.timing.get(stage, 0.0) + (now - self.last) * 1000
        self.last = now
