"""The classifier flow: preprocess -> G-Net -> eq. 5 box + crop -> L-Net -> heads, and the
``Pipeline`` that runs it per cell and hands the outputs to dispatch."""

from vfinfer.pipeline.pipeline import DISPATCH_MODES, Pipeline, PreparedCase

__all__ = ["DISPATCH_MODES", "Pipeline", "PreparedCase"]
