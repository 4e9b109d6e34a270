"""Reduced-precision graphs and engines: FP16 (``fp16``), INT8 (``quantize``), their agreement
with FP32 (``agreement``), ONNX graph helpers (``onnx_graph``) and TensorRT engines
(``engines``, ``vfinfer build``)."""
