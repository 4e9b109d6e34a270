"""ONNX Runtime backend: the CPU execution provider by default, CUDA when present.

``make_session`` is the one place ONNX Runtime sessions are configured; the backend, the FP16
and INT8 tools and the benchmarks all build their sessions with it, so what they measure is
what ``vfinfer run`` runs.
"""

from pathlib import Path

import onnxruntime as ort

from vfinfer.backends.base import Backend, BackendError, GraphRunner
from vfinfer.model.manifest import GRAPH_ROLES

CPU = ("CPUExecutionProvider",)
CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")


def make_session(source, threads=0, providers=CPU, optimize=True):
    """An ``InferenceSession`` for a graph file (path) or serialized graph (bytes).

    ``threads``: intra-op threads (0: ONNX Runtime's default). Thread spinning is off: the
    three graphs run one after the other, and threads spinning after one run would hold the
    cores the next graph's threads need. ``optimize=False`` disables graph optimizations (the
    FP16 range audit reads the graph's own tensors).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(data, options, providers=list(providers))


class OrtRunner(GraphRunner):
    def __init__(self, path, providers=CPU, threads=0):
        try:
            self.session = make_session(path, threads, providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: ONNX Runtime cannot load this graph ({exc})") from None
        self.label = Path(path).name
        self.inputs = {i.name: i.shape for i in self.session.get_inputs()}
        self.outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self._output_names = list(self.outputs)

    def infer(self, feeds):
        self.check_feeds(feeds, self.label)
        values = self.session.run(self._output_names, feeds)  # InferenceSession.run is thread-safe
        return dict(zip(self._output_names, values))

    def close(self):
        self.session = None


def available_providers():
    return ort.get_available_providers()


def backend_from_paths(paths, threads=0, providers=CPU, name="onnxruntime-cpu", details=None):
    """A backend from explicit graph files ``{"gnet": path, "lnet": path, "heads": path}``."""
    runners = {role: OrtRunner(paths[role], providers, threads) for role in GRAPH_ROLES}
    return Backend(name, details=details, **runners)


def create(manifest, threads=0, device="cpu", precision="fp32"):
    """An ONNX Runtime backend for ``manifest``'s graphs on ``device`` ('cpu' or 'cuda')."""
    if precision == "int8":
        from vfinfer.model.audits import int8_refusal

        problem = int8_refusal(manifest.data)
        if problem:
            raise BackendError(f"{manifest.path}: {problem}")
        if device == "cuda":
            raise BackendError("the INT8 graphs are QDQ graphs calibrated and checked for the "
                               "ONNX Runtime CPU provider; run them with --backend ort")
    providers = CPU
    if device == "cuda":
        if "CUDAExecutionProvider" not in available_providers():
            raise BackendError("ONNX Runtime here has no CUDA execution provider "
                               "(install onnxruntime-gpu on a machine with an NVIDIA GPU)")
        providers = CUDA
    reduced = int8_roles(manifest.data) if precision == "int8" else GRAPH_ROLES
    paths = {role: manifest.graph_path(role, precision if role in reduced else "fp32")
             for role in GRAPH_ROLES}
    backend = backend_from_paths(paths, threads, providers)
    used = backend.gnet.session.get_providers()[0]
    backend.name = "onnxruntime-cuda" if used == "CUDAExecutionProvider" else "onnxruntime-cpu"
    backend.details = {"provider": used, "threads": threads or "default",
                       "precision": precision, "onnxruntime": ort.__version__}
    if precision == "int8":
        backend.details["int8_graphs"] = list(reduced)
    return backend


def int8_roles(manifest_data):
    """The graphs the INT8 audit lets run in INT8 (all three for an audit from before partial
    INT8 existed); the others run FP32."""
    return tuple(manifest_data["int8_audit"].get("int8_roles", GRAPH_ROLES))
