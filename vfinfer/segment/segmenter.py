"""A metaphase image -> its chromosome instances, with the network or the classical baseline.

    seg = Segmenter()                      # the bundled demo model (synthetic metaphases)
    seg = Segmenter("models/bioimlab-seg") # a trained segmentation model directory
    seg = Segmenter("classical")           # threshold + distance-transform watershed
    found = seg.segment(gray)              # a Segmentation: instances, background, timings

Thread-safe: ``segment`` keeps its state local and ONNX Runtime sessions accept concurrent
runs. Backends: ONNX Runtime on the CPU (default) or CUDA, and OpenVINO; the graph is the one
``vfinfer export-seg`` checked. TensorRT engines are not built for this graph (its FP16
ONNX graph is exported and audited for TensorRT, but no engine build or run has been done).
"""

import time
from dataclasses import dataclass, field

import numpy as np

from vfinfer.backends.base import BackendError
from vfinfer.segment.instances import instances_from_maps
from vfinfer.segment.model import (
    SEG_TTA_FLIPS,
    demo_seg_model_dir,
    load_seg_model,
    prepare_input,
)
from vfinfer.util.geometry import detect_background
from vfinfer.util.images import to_gray8

CLASSICAL = "classical"
SEG_BACKENDS = ("ort", "ort-cuda", "openvino")


@dataclass
class Segmentation:
    """What ``Segmenter.segment`` found: ``instances`` (``vfinfer.segment.instances.Instance``,
    largest first), the image's ``background``, and ms per stage."""

    instances: list
    background: str
    shape: tuple
    timing_ms: dict = field(default_factory=dict)


def network_maps(runner, spec, gray, background="auto", tta="none"):
    """(3, H, W) float32 probabilities of a segmentation graph's ``runner`` for a gray uint8
    image, ``spec`` the model's ``SegInput``; with ``tta`` (``SEG_TTA_FLIPS``) the mean of
    the maps of the image's mirror images, each flipped back."""
    if background == "auto":
        background = detect_background(gray)  # once: a mirror image has the same border
    passes = []
    for axes in SEG_TTA_FLIPS[tta]:
        x, _ = prepare_input(np.flip(gray, axes) if axes else gray, spec, background)
        probs = runner.infer({"image": x})["probs"][0, :, :gray.shape[0], :gray.shape[1]]
        passes.append(np.flip(probs, tuple(a + 1 for a in axes)) if axes else probs)
    return passes[0] if len(passes) == 1 else np.mean(passes, axis=0, dtype=np.float32)


def _runner(model, backend, threads, precision):
    if backend == "openvino":  # fp32 or bf16: OpenVINO's precision hint on the FP32 graph
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("the OpenVINO backend needs: pip install openvino") from None
        from vfinfer.backends.openvino import OvRunner

        return OvRunner(ov.Core(), model.graph_path("fp32"), threads, precision)
    path = model.graph_path(precision)
    from vfinfer.backends import ort

    providers = ort.CPU
    if backend == "ort-cuda":
        if "CUDAExecutionProvider" not in ort.available_providers():
            raise BackendError("ONNX Runtime here has no CUDA execution provider")
        providers = ort.CUDA
    return ort.OrtRunner(path, providers, threads)


class Segmenter:
    """See the module doc. ``model``: a segmentation model directory, ``"classical"``, or
    None for the bundled demo model."""

    def __init__(self, model=None, backend="ort", threads=0, precision="fp32",
                 check_audit=True):
        if backend not in SEG_BACKENDS:
            raise BackendError(f"unknown segmentation backend {backend!r}: choose one of "
                               f"{', '.join(SEG_BACKENDS)}")
        self.classical = str(model) == CLASSICAL
        if self.classical:
            from vfinfer.segment.classical import ClassicalParams

            self.model, self.runner, self.params = None, None, ClassicalParams()
            return
        self.model = load_seg_model(model or demo_seg_model_dir())
        if precision == "int8" and check_audit:
            self.model.check_int8()
        self.params, self.precision = self.model.params, precision
        self.runner = _runner(self.model, backend, threads, precision)

    def describe(self):
        if self.classical:
            return {"kind": CLASSICAL, "method": "Otsu threshold + distance-transform "
                                                "watershed (no training)"}
        described = self.model.describe()
        if self.precision != "fp32":
            described["precision"] = self.precision
        if self.model.tta != "none":
            described["tta"] = self.model.tta
        return described

    def maps(self, gray, background="auto"):
        """(3, H, W) float32 probabilities of the network for a gray uint8 image."""
        return network_maps(self.runner, self.model.input, gray, background, self.model.tta)

    def segment(self, image, background="auto", name="image"):
        """Instances of one metaphase image (2-D array; 16-bit, float or colour converted)."""
        gray = to_gray8(np.asarray(image), name)
        started = time.perf_counter()
        found = detect_background(gray) if background == "auto" else background
        if self.classical:
            from vfinfer.segment.classical import classical_instances

            instances = classical_instances(gray, found, self.params)
            network_ms = (time.perf_counter() - started) * 1000
            return Segmentation(instances, found, gray.shape,
                                {"segmentation": network_ms, "instances": 0.0})
        probs = self.maps(gray, found)
        network_ms = (time.perf_counter() - started) * 1000
        instances = instances_from_maps(probs, self.params)
        instance_ms = (time.perf_counter() - started) * 1000 - network_ms
        return Segmentation(instances, found, gray.shape,
                            {"segmentation": network_ms, "instances": instance_ms})

    def close(self):
        if self.runner is not None:
            self.runner.close()
