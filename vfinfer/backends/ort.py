"""ONNX Runtime backend: the CPU execution provider by default, CUDA when present."""

import onnxruntime as ort

from .base import Backend, BackendError, GraphRunner


class OrtRunner(GraphRunner):
    def __init__(self, path, providers, threads):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # three sessions run one after the other: threads that spin after a run would take
        # the cores from the next graph's threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: ONNX Runtime cannot load this graph ({exc})") from None
        self.label = path.name
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


def create(manifest, threads=0, device="cpu", precision="fp32"):
    """An ONNX Runtime backend for ``manifest``'s graphs on ``device`` ('cpu' or 'cuda')."""
    if precision == "int8":
        from ..quantize import int8_refusal  # reads the manifest only; imports no onnx

        problem = int8_refusal(manifest.data)
        if problem:
            raise BackendError(f"{manifest.path}: {problem}")
        if device == "cuda":
            raise BackendError("the INT8 graphs are QDQ graphs calibrated and checked for the "
                               "ONNX Runtime CPU provider; run them with --backend ort")
    if device == "cuda":
        if "CUDAExecutionProvider" not in available_providers():
            raise BackendError("ONNX Runtime here has no CUDA execution provider "
                               "(install onnxruntime-gpu on a machine with an NVIDIA GPU)")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    runners = {role: OrtRunner(manifest.graph_path(role, precision), providers, threads)
               for role in ("gnet", "lnet", "heads")}
    used = runners["gnet"].session.get_providers()[0]
    details = {"provider": used, "threads": threads or "default", "precision": precision,
               "onnxruntime": ort.__version__}
    name = "onnxruntime-cuda" if used == "CUDAExecutionProvider" else "onnxruntime-cpu"
    return Backend(name, details=details, **runners)
