"""Summaries of repeated measurements (timings, angles): the one percentile helper."""

import numpy as np


def percentiles(values, quantiles=(50, 90), digits=None):
    """``{"median": ..., "p90": ...}`` of ``values``: 50 is named ``median``, any other q
    ``p<q>``; rounded to ``digits`` when given."""
    values = np.asarray(values, dtype=np.float64)
    out = {}
    for q in quantiles:
        value = float(np.percentile(values, q))
        out["median" if q == 50 else f"p{q}"] = value if digits is None else round(value, digits)
    return out
