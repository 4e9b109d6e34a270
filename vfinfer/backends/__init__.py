"""Backend factory: ``create(name, manifest)`` -> Backend with gnet / lnet / heads runners.

Names: ``ort`` (ONNX Runtime, CPU), ``ort-cuda`` (ONNX Runtime CUDA provider), ``trt``
(TensorRT), ``openvino`` (optional, CPU, f32 or bf16) and ``auto``: TensorRT when the model
directory has engines that pass their checks on this machine, else ONNX Runtime's CUDA
provider when present, else the CPU. What ``auto`` passed over and why is kept in the
backend's details (and so in every result).
"""

from vfinfer.backends.base import Backend, BackendError, GraphRunner

BACKEND_NAMES = ("auto", "ort", "ort-cuda", "trt", "openvino")


def create(name, manifest, threads=0, precision=None):
    """A backend by name; ``precision`` None means the backend's own (fp32 ORT, fp16 TRT)."""
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "trt":
        from vfinfer.backends import trt

        # engines are FP16 by construction (vfinfer build verifies it); trt.create refuses
        # any other precision instead of silently running something else
        return trt.create(manifest, threads, precision=precision or "fp16")
    if name == "openvino":
        from vfinfer.backends import openvino

        return openvino.create(manifest, threads, precision=precision or "fp32")
    from vfinfer.backends import ort

    skipped = []
    if name == "auto" and manifest.data.get("engines"):
        try:
            from vfinfer.backends import trt

            return trt.create(manifest, threads, precision=precision or "fp16")
        except BackendError as exc:  # no GPU, stale engines, no tensorrt: say so, go on
            skipped.append(f"TensorRT: {exc}")
    precision = precision or "fp32"
    if name == "ort-cuda" or (name == "auto" and precision != "int8" and
                              "CUDAExecutionProvider" in ort.available_providers()):
        backend = ort.create(manifest, threads, device="cuda", precision=precision)
    else:
        backend = ort.create(manifest, threads, device="cpu", precision=precision)
    if skipped:
        backend.details["auto_skipped"] = skipped
    return backend

__all__ = ["Backend", "BackendError", "GraphRunner", "create", "BACKEND_NAMES"]
