"""Test-time augmentation (``ModelConfig.tta``, a property of the model's manifest).

* ``none``: one view, the G-Net input as preprocessed.
* ``mirror``: two views, the G-Net input and its left-right mirror (the preprocessed input
  flipped along its width; the z-score of eq. 11 does not change under a mirror). Each view
  runs the whole network pass on its own: its own localizer output, eq. 5 box, crop, L-Net
  and heads. What is averaged: the type probabilities (N x 24) and the polarity
  probabilities (N x 2), the mean of the views' softmax outputs. A left-right mirror keeps
  the polarity (the q-arm stays down), so both views' polarity probabilities mean the same
  classes; an up-down mirror would swap them and is not a view. ``loc`` and ``boxes`` are
  the first view's: the box drawn in the result is where the localizer looked on the image
  as given.

``add_views`` and ``merge_views`` are pure functions; the runtime ``Pipeline`` and the
PyTorch reference (``vfinfer_export.reference``) both call them around their network pass.
"""

import numpy as np

AVERAGED = ("type_probs", "polarity_probs")  # the outputs averaged over the views


def n_views(mode):
    """How many network passes per chromosome ``mode`` takes."""
    return {"none": 1, "mirror": 2}[mode]


def add_views(g_input, mode):
    """(N, 1, g, g) G inputs -> (V*N, 1, g, g): the views of ``mode``, view by view (view 0
    is the input itself; ``none`` returns ``g_input`` unchanged)."""
    if n_views(mode) == 1:
        return g_input
    return np.concatenate([g_input, np.ascontiguousarray(g_input[..., ::-1])])


def merge_views(outputs, mode, n):
    """Network outputs of ``add_views``'s V*N inputs -> outputs for the N chromosomes: the
    ``AVERAGED`` probabilities averaged over the views, every other output of view 0."""
    views = n_views(mode)
    if views == 1:
        return outputs
    merged = {}
    for key, value in outputs.items():
        if key in AVERAGED:
            stacked = value.reshape(views, n, *value.shape[1:])
            merged[key] = stacked.mean(axis=0, dtype=np.float64).astype(value.dtype)
        else:
            merged[key] = value[:n]
    return merged
