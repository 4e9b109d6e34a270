"""Offline tools: evaluation, calibration, INT8 quantization, synthetic cells, benchmarks.

Nothing in the runtime (``model``, ``backends``, ``pipeline``, ``calls``, ``io``) imports
from here; a test walks the import graph to keep it so.
"""
