"""Backend factory: ``create(name, manifest)`` -> Backend with gnet / lnet / heads runners.

Names: ``ort`` (ONNX Runtime, CPU), ``ort-cuda`` (ONNX Runtime CUDA provider), ``trt``
(TensorRT) and ``auto``, which picks the fastest one available here and never silently
changes precision.
"""

from .base import Backend, BackendError, GraphRunner

BACKEND_NAMES = ("auto", "ort", "ort-cuda", "trt")


def create(name, manifest, threads=0, precision="fp32"):
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "trt":
        raise BackendError("the TensorRT backend is not part of vfinfer 0.1.0 yet; "
                           "use --backend ort (ONNX Runtime)")
    from . import ort

    if name == "ort-cuda" or (name == "auto" and
                              "CUDAExecutionProvider" in ort.available_providers()):
        return ort.create(manifest, threads, device="cuda", precision=precision)
    return ort.create(manifest, threads, device="cpu", precision=precision)


__all__ = ["Backend", "BackendError", "GraphRunner", "create", "BACKEND_NAMES"]
