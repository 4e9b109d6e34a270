"""The segmentation stage: a metaphase image -> one instance per chromosome -> cut-outs.

Runtime code (numpy, OpenCV, the backends): ``channels`` (what the network's output maps
mean), ``instances`` (the instance step from those maps), ``classical`` (the no-training
baseline), ``model`` (the segmentation model directory and its manifest), ``segmenter``
(image -> instances), ``cutouts`` and ``overlay`` (what a user checks and corrects).
"""
