"""Synthetic data made here, never downloaded: single-chromosome cells (``cells``,
``vfinfer synth``), whole metaphases with polygons (``metaphases``), and structural
aberrations cut from normal cut-outs (``structural``; cells of them: ``structural_cases``,
``vfinfer synth-structural``)."""
