"""Accuracy on labelled data: ``vfinfer eval`` (``evaluate``), the paper's metrics
(``metrics``), dispatch figures and simulated abnormal cells, ``vfinfer calibrate`` and
``vfinfer domain``, segmentation AP (``segmentation``) and the plots."""

# optimal-dispatch calibration: fewer abnormal cells than this (real and simulated) fit the
# threshold to noise (on pki3, 3 abnormal validation cells gave parameters that missed all
# test trisomies), so the parameters are then reported but not stored
MIN_ABNORMAL_CELLS = 10
