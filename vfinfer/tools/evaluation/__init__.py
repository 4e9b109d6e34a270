"""Accuracy on labelled data: ``vfinfer eval`` (``evaluate``), the paper's metrics
(``metrics``), dispatch figures and simulated abnormal cells, ``vfinfer calibrate`` and
``vfinfer domain``, segmentation AP (``segmentation``) and the plots."""
