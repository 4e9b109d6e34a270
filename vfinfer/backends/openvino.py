"""OpenVINO backend (optional, CPU): the same FP32 ONNX graphs, run in f32 or bf16.

``pip install openvino`` (the ``openvino`` extra). On CPUs with AVX-512 BF16 or AMX,
``precision="bf16"`` lets OpenVINO compute in bfloat16 (its inference precision hint); the
graphs and their FP32 inputs and outputs stay as exported. ``fp32`` pins f32 for parity.
OpenVINO quietly compiles f32 where the CPU has no bfloat16 support; the backend reads the
precision back from each compiled graph and refuses bf16 there instead of reporting a
precision it does not run.

An OpenVINO infer request is not thread-safe: each thread gets its own request per graph
(``threading.local``); the compiled model is shared. Outputs are copied out of the request's
buffers, which the next call would overwrite.
"""

import threading

import numpy as np

from vfinfer.backends.base import Backend, BackendError, GraphRunner

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class OvRunner(GraphRunner):
    def __init__(self, core, path, threads, precision):
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"{path}: OpenVINO cannot compile this graph ({exc})") from None
        compiled_as = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if precision == "bf16" and "bf16" not in compiled_as:
            capabilities = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            raise BackendError(f"{path}: this CPU has no bfloat16 support (OpenVINO CPU "
                               f"capabilities: {capabilities}), so OpenVINO would run it in "
                               f"{compiled_as}; use --precision fp32")
        self.label = path.name
        self.inputs = {port.get_any_name(): _shape(port) for port in self.compiled.inputs}
        self.outputs = {port.get_any_name(): _shape(port) for port in self.compiled.outputs}
        self._local = threading.local()

    def infer(self, feeds):
        self.check_feeds(feeds, self.label)
        if self.compiled is None:
            raise BackendError(f"{self.label}: the OpenVINO backend was closed")
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feeds)
        return {name: np.array(result[self.compiled.output(name)], copy=True)
                for name in self.outputs}

    def close(self):
        self.compiled = None


def _shape(port):
    shape = port.get_partial_shape()
    return [dim.get_length() if dim.is_static else None for dim in shape]


def create(manifest, threads=0, precision="fp32"):
    if precision not in PRECISIONS:
        raise BackendError(f"the OpenVINO backend runs fp32 or bf16, not {precision}")
    try:
        import openvino as ov
    except ImportError:
        raise BackendError("the OpenVINO backend needs openvino: pip install 'vfinfer[openvino]'"
                           ) from None
    core = ov.Core()
    runners = {role: OvRunner(core, manifest.graph_path(role), threads, precision)
               for role in ("gnet", "lnet", "heads")}
    details = {"precision": precision, "threads": threads or "default",
               "openvino": ov.__version__}
    return Backend("openvino-cpu", details=details, **runners)
