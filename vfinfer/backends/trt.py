"""TensorRT backend: the FP16 engines written by ``vfinfer build DIR``.

``create(manifest)`` checks every engine's record against this machine (TensorRT version,
compute capability, source graph sha256, plan sha256, precision; vfinfer.model.engine_record)
before deserializing anything, and refuses a stale or foreign engine with the reasons and
"run vfinfer build DIR". Tensor names, dtypes and the batch profile come from the engines
themselves; every call is checked against the profile before it runs.

Threads: the engines are shared; each thread that calls ``infer`` gets its own execution
context, CUDA stream, pinned host buffers (cudaMallocHost) and device buffers (cudaMalloc),
allocated once at the profile's maximum shapes (an execution context is not thread-safe).
Every CUDA call's error code is checked (``check``). ``close()`` frees the buffers and
streams of every thread and reports, rather than swallows, any error.

What is and is not done on the device: each engine call copies its inputs host -> device,
runs, and copies its outputs device -> host. G-Net's features and localization therefore
return to the host, the eq. 5 crop runs in NumPy (vfinfer.pipeline.crop, as on every backend), and
the heads take the G/L features from their own pinned buffers back to the device. Keeping
the features on the device between engines would need a device-side crop-and-resize (a
CUDA kernel or a TensorRT graph with GridSample); that is not implemented.

No torch, no pycuda: CUDA memory comes from cuda-python (``cuda.bindings.runtime``).
"""

import ctypes
import threading
from pathlib import Path

import numpy as np

from vfinfer.backends.base import Backend, BackendError, GraphRunner
from vfinfer.model.engine_record import (
    check_engine_record,
    engine_record_notes,
    format_compute_capability,
)
from vfinfer.util.machine import cuda_devices

ROLES = ("gnet", "lnet", "heads")
INSTALL_HINT = "pip install 'vfinfer[gpu]' (tensorrt and cuda-python)"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendError(f"the TensorRT backend needs cuda-python ({exc}): "
                           f"{INSTALL_HINT}") from None
    return cudart


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"the TensorRT backend needs TensorRT ({exc}): {INSTALL_HINT}") \
            from None
    return trt


def _error_text(err, runtime):
    """'cudaErrorMemoryAllocation (2): out of memory' for a cudaError_t."""
    name = text = None
    try:
        code, raw = runtime.cudaGetErrorName(err)
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        code, raw = runtime.cudaGetErrorString(err)
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
    except Exception:  # noqa: BLE001 - describing an error must not raise another one
        pass
    return f"{name or 'CUDA error'} ({int(err)}): {text or 'no description'}"


def check(result, what="CUDA call", runtime=None):
    """Raise BackendError unless a cuda-python result tuple reports success.

    cuda-python returns ``(err, *values)`` from every call; returns None, the one value or
    the tuple of values.
    """
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:  # cudaSuccess
        raise BackendError(f"{what} failed: {_error_text(err, runtime or _cudart())}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def machine_facts(device=0):
    """{"tensorrt", "cuda", "cuda_driver", "gpu", "compute_capability"} of this machine."""
    trt, cudart = _tensorrt(), _cudart()
    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties", cudart)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    runtime_version = check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion", cudart)
    driver_version = check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion", cudart)
    return {
        "tensorrt": trt.__version__,
        "cuda": f"{runtime_version // 1000}.{runtime_version % 1000 // 10}",
        "cuda_driver": f"{driver_version // 1000}.{driver_version % 1000 // 10}",
        "gpu": name.rstrip("\x00").strip(),
        "compute_capability": format_compute_capability(props.major, props.minor),
    }


def check_profile(shapes, profile, label):
    """Raise BackendError unless each input shape lies within the engine's profile.

    ``shapes``: {name: shape}; ``profile``: {name: (min, opt, max)}.
    """
    for name, shape in shapes.items():
        low, _opt, high = profile[name]
        if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in
                                         zip(shape, low, high)):
            raise BackendError(f"{label}: input {name} has shape {tuple(shape)}, outside the "
                               f"engine's profile {tuple(low)} .. {tuple(high)}; rebuild with "
                               "a larger --max-batch or feed smaller batches")


class _ThreadState:
    """One thread's execution context, stream and buffers."""

    def __init__(self):
        self.context = None
        self.stream = None
        self.host = {}  # name -> (pointer, numpy view over the whole buffer)
        self.device = {}  # name -> pointer


class TrtRunner(GraphRunner):
    """One engine; ``infer`` is safe from several threads (one context per thread)."""

    def __init__(self, engine, label, trt, cudart, device=0):
        self.engine = engine
        self.label = label
        self._trt = trt
        self._cudart = cudart
        self.device = device
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        input_mode = trt.TensorIOMode.INPUT
        self._input_names = [n for n in names if engine.get_tensor_mode(n) == input_mode]
        self._output_names = [n for n in names if engine.get_tensor_mode(n) != input_mode]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.profile = {}
        for name in self._input_names:
            low, opt, high = engine.get_tensor_profile_shape(name, 0)
            self.profile[name] = (tuple(low), tuple(opt), tuple(high))
        self.inputs = {n: self._shape(engine.get_tensor_shape(n)) for n in self._input_names}
        self.outputs = {n: self._shape(engine.get_tensor_shape(n)) for n in self._output_names}
        self.max_batch = min(p[2][0] for p in self.profile.values())
        self._local = threading.local()
        self._states = []  # every thread's state, so close() can free them all
        self._lock = threading.Lock()
        self._closed = False

    @staticmethod
    def _shape(dims):
        return [d if d >= 0 else ("batch" if i == 0 else None) for i, d in enumerate(dims)]

    def _check(self, result, what):
        return check(result, f"{self.label}: {what}", self._cudart)

    # -- per-thread resources -------------------------------------------------------------
    def _state(self):
        state = getattr(self._local, "state", None)
        if state is not None:
            return state
        with self._lock:
            if self._closed:
                raise BackendError(f"{self.label}: this TensorRT runner was closed")
            state = _ThreadState()
            self._states.append(state)
        try:
            self._allocate(state)
        except BaseException as exc:
            with self._lock:
                if state in self._states:
                    self._states.remove(state)
            errors = self._free(state)  # what was allocated before the failure
            if errors:
                raise BackendError(f"{exc}; freeing the partial allocation also failed: "
                                   + "; ".join(errors)) from exc
            raise
        self._local.state = state
        return state

    def _allocate(self, state):
        cudart = self._cudart
        self._check(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        state.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        state.context = self.engine.create_execution_context()
        if state.context is None:
            raise BackendError(f"{self.label}: TensorRT could not create an execution context "
                               "(out of GPU memory?)")
        for name in self._input_names:
            if not state.context.set_input_shape(name, self.profile[name][2]):
                raise BackendError(f"{self.label}: set_input_shape({name}) at the profile "
                                   "maximum was refused")
        shapes = {n: self.profile[n][2] for n in self._input_names}
        shapes.update({n: tuple(state.context.get_tensor_shape(n)) for n in self._output_names})
        for name, shape in shapes.items():
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.label}: output {name} has no static shape at the "
                                   f"profile maximum ({shape})")
            dtype = self.dtypes[name]
            nbytes = max(int(np.prod(shape)), 1) * dtype.itemsize
            host = self._check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({name})")
            state.host[name] = (host, None)  # registered before anything else can fail
            raw = ctypes.cast(host, ctypes.POINTER(ctypes.c_uint8))  # FP16 has no ctypes type
            state.host[name] = (host, np.ctypeslib.as_array(raw, (nbytes,)).view(dtype))
            state.device[name] = self._check(cudart.cudaMalloc(nbytes), f"cudaMalloc({name})")
            if not state.context.set_tensor_address(name, int(state.device[name])):
                raise BackendError(f"{self.label}: set_tensor_address({name}) was refused")

    # -- inference --------------------------------------------------------------------------
    def infer(self, feeds):
        if self._closed:
            raise BackendError(f"{self.label}: this TensorRT runner was closed")
        self.check_feeds(feeds, self.label)
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
                  for n in self._input_names}
        check_profile({n: a.shape for n, a in arrays.items()}, self.profile, self.label)
        cudart, state = self._cudart, self._state()
        context, stream = state.context, state.stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in arrays.items():
            pointer, view = state.host[name]
            view[:array.size] = array.reshape(-1)
            if not context.set_input_shape(name, array.shape):
                raise BackendError(f"{self.label}: TensorRT refused input shape {array.shape} "
                                   f"for {name}")
            self._check(cudart.cudaMemcpyAsync(state.device[name], pointer, array.nbytes, h2d,
                                               stream), f"cudaMemcpyAsync({name}, H2D)")
        if not context.execute_async_v3(int(stream)):
            raise BackendError(f"{self.label}: TensorRT execute_async_v3 failed")
        shapes = {}
        for name in self._output_names:
            shape = tuple(context.get_tensor_shape(name))
            shapes[name] = shape
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self._check(cudart.cudaMemcpyAsync(state.host[name][0], state.device[name], nbytes,
                                               d2h, stream), f"cudaMemcpyAsync({name}, D2H)")
        self._check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        results = {}
        for name, shape in shapes.items():
            view = state.host[name][1][:int(np.prod(shape))].reshape(shape)
            results[name] = view.astype(np.float32) if view.dtype == np.float16 else view.copy()
        return results

    # -- lifecycle --------------------------------------------------------------------------
    def _free(self, state):
        """Free one thread's resources; every step is attempted, failures are returned."""
        errors = []
        cudart = self._cudart

        def attempt(result, what):
            try:
                check(result, f"{self.label}: {what}", cudart)
            except BackendError as exc:
                errors.append(str(exc))

        if state.stream is not None:
            attempt(cudart.cudaStreamSynchronize(state.stream), "cudaStreamSynchronize")
        state.context = None  # the context before the memory it points at
        for name, pointer in state.device.items():
            attempt(cudart.cudaFree(pointer), f"cudaFree({name})")
        for name, (pointer, _view) in state.host.items():
            attempt(cudart.cudaFreeHost(pointer), f"cudaFreeHost({name})")
        if state.stream is not None:
            attempt(cudart.cudaStreamDestroy(state.stream), "cudaStreamDestroy")
        state.device, state.host, state.stream = {}, {}, None
        return errors

    def close(self):
        """Free every thread's buffers, streams and contexts; raise if any step failed."""
        with self._lock:
            states, self._states = self._states, []
            self._closed = True
        errors = []
        for state in states:
            errors += self._free(state)
        self.engine = None  # after the contexts; TensorRT frees the engine with it
        if errors:
            raise BackendError("; ".join(errors))


# ------------------------------------------------------------------------------- factory
def engine_problems(manifest, machine, role):
    """Reasons (strings) not to load ``role``'s engine on ``machine``; [] when fine."""
    engines = manifest.data.get("engines") or {}
    record = engines.get(role)
    if record is None:
        return [f"no TensorRT engine for {role} in {manifest.model_dir}: run vfinfer build "
                f"{manifest.model_dir}"]
    graphs = manifest.data.get("graphs", {})
    source = next((g for g in graphs.values() if g.get("file") == record.get("source_graph")),
                  None)
    return check_engine_record(record, machine, source.get("sha256") if source else None,
                               plan_path=manifest.model_dir / str(record.get("file", "")),
                               model_dir=manifest.model_dir)


def create(manifest, threads=0, precision="fp16", device=0):
    """A TensorRT backend for ``manifest``'s engines (FP16, built by ``vfinfer build``).

    ``threads`` is accepted for the common factory signature (TensorRT uses no CPU thread
    pool). ``precision`` must be "fp16", what the engines are: an FP32 request is refused
    rather than run in FP16 (use the ONNX Runtime backend for FP32).
    """
    del threads
    if precision != "fp16":
        raise BackendError(f"the TensorRT engines are FP16, not {precision}: use --backend ort "
                           "for FP32")
    count, description = cuda_devices()
    if count == 0:
        raise BackendError(f"no CUDA device found ({description}): the TensorRT backend needs "
                           "an NVIDIA GPU; use --backend ort")
    trt, cudart = _tensorrt(), _cudart()
    machine = machine_facts(device)
    problems = [p for role in ROLES for p in engine_problems(manifest, machine, role)]
    if problems:
        raise BackendError("cannot use the TensorRT engines here: " + "; ".join(problems))
    check(cudart.cudaSetDevice(device), "cudaSetDevice", cudart)  # engines load onto it
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    runners, notes = {}, []
    try:
        for role in ROLES:
            record = manifest.data["engines"][role]
            path = Path(manifest.model_dir) / record["file"]
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise BackendError(
                    f"{path}: TensorRT {machine['tensorrt']} could not load this engine (built "
                    f"with TensorRT {record['tensorrt']} on {record['gpu']}); run vfinfer build "
                    f"{manifest.model_dir}")
            runners[role] = TrtRunner(engine, path.name, trt, cudart, device)
            notes += engine_record_notes(record, machine)
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    details = {"tensorrt": machine["tensorrt"], "gpu": machine["gpu"],
               "compute_capability": machine["compute_capability"], "cuda": machine["cuda"],
               "precision": "fp16",
               "engines": {role: manifest.data["engines"][role]["file"] for role in ROLES},
               "data_path": "features return to the host between engines (NumPy crop)"}
    if notes:
        details["notes"] = notes
    return Backend("tensorrt", details=details, **runners)
