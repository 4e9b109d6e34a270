"""vfinfer: fast, dependable inference for Varifocal-Net chromosome classification.

The runtime needs numpy, opencv and onnxruntime only; it never imports torch.
"""

__version__ = "0.1.0"
