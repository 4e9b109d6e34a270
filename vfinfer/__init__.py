"""vfinfer: fast, dependable inference for Varifocal-Net chromosome classification.

The runtime needs numpy, opencv and onnxruntime only; it never imports torch or onnx.
``vfinfer.Pipeline``, ``vfinfer.read_case`` and ``vfinfer.dispatch`` are loaded on first use,
so ``import vfinfer`` stays cheap.
"""

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": ("vfinfer.pipeline", "Pipeline"),
    "read_case": ("vfinfer.util.images", "read_case"),
    "dispatch": ("vfinfer.calls.dispatch", "dispatch"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'vfinfer' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)


__all__ = ["Pipeline", "__version__", "dispatch", "read_case"]
