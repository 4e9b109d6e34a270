"""Backend factory: ``create(name, manifest)`` -> Backend with gnet / lnet / heads runners.

Names: ``ort`` (ONNX Runtime, CPU), ``ort-cuda`` (ONNX Runtime CUDA provider), ``trt``
(TensorRT) and ``auto``, which picks the fastest one available here and never silently
changes precision.
"""

from .base import Backend, BackendError, GraphRunner

BACKEND_NAMES = ("auto", "ort", "ort-cuda", "trt")


def create(name, manifest, threads=0, precision=None):
    """A backend by name; ``precision`` None means the backend's own (fp32 ORT, fp16 TRT)."""
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "trt":
        from . import trt

        # engines are FP16 by construction (vfinfer build verifies it); trt.create refuses
        # any other precision instead of silently running something else
        return trt.create(manifest, threads, precision=precision or "fp16")
    from . import ort

    precision = precision or "fp32"

    if name == "ort-cuda" or (name == "auto" and
                              "CUDAExecutionProvider" in ort.available_providers()):
        return ort.create(manifest, threads, device="cuda", precision=precision)
    return ort.create(manifest, threads, device="cpu", precision=precision)


__all__ = ["Backend", "BackendError", "GraphRunner", "create", "BACKEND_NAMES"]
