"""Synthetic data made here, never downloaded: single-chromosome cells (``cells``,
``vfinfer synth``) and whole metaphases with polygons (``metaphases``)."""
