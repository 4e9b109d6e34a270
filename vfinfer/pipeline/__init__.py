"""The classifier flow: preprocess -> G-Net -> eq. 5 box + crop -> L-Net -> heads, and the
``Pipeline`` that runs it per cell and hands the outputs to dispatch (``pipeline``); the
metaphase flow in front of it (``metaphase``).

``Pipeline``, ``PreparedCase`` and ``DISPATCH_MODES`` load on first use, so importing one step
(``vfinfer.pipeline.preprocess``, say) does not pull in the backends and the whole classifier.
"""

_LAZY = ("DISPATCH_MODES", "Pipeline", "PreparedCase")


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'vfinfer.pipeline' has no attribute {name!r}")
    from vfinfer.pipeline import pipeline

    return getattr(pipeline, name)


__all__ = list(_LAZY)
