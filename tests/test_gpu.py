"""The TensorRT path.

* GPU tests (build, run, parity with the FP32 ONNX graphs, leaks): skipped by a real device
  probe (vfinfer.environment.cuda_devices), not by "tensorrt importable" -- on a machine with
  a GPU but without TensorRT they fail, saying what to install.
* CPU tests: the one-line refusals without a GPU, and the TensorRT runner's own logic
  (buffers, copies, per-thread contexts, error checks, close) against a fake TensorRT engine
  and a fake cuda-python runtime that keep "device" memory in host buffers.
"""

import ctypes
import enum
import importlib.util
import json
import shutil
import sys
import threading
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from vfinfer.backends import trt as trt_backend
from vfinfer.backends.base import BackendError
from vfinfer.environment import cuda_devices
from vfinfer.model.manifest import load_manifest, write_json_atomic

GPU_COUNT, GPU_DESCRIPTION = cuda_devices()
needs_gpu = pytest.mark.skipif(GPU_COUNT == 0, reason=f"no CUDA device: {GPU_DESCRIPTION}")
ROOT = Path(__file__).resolve().parents[1]


# =========================================================================== CPU: refusals
def test_build_without_gpu_raises_one_line(model_dir, monkeypatch):
    from vfinfer_export import trt_build

    monkeypatch.setattr(trt_build, "cuda_devices", lambda: (0, "none"))
    with pytest.raises(RuntimeError) as info:
        trt_build.build_engines(model_dir, log=lambda *a: None)
    assert str(info.value) == ("no CUDA device found: vfinfer build needs an NVIDIA GPU "
                               "with TensorRT")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(GPU_COUNT > 0, reason="this machine has a CUDA device")
def test_build_on_this_cpu_machine_refuses(model_dir):
    from vfinfer_export.trt_build import NO_DEVICE, build_engines

    with pytest.raises(RuntimeError, match=f"^{NO_DEVICE}$"):
        build_engines(model_dir, log=lambda *a: None)
    assert "engines" not in load_manifest(model_dir).data


def test_trt_backend_without_gpu_refuses(model_dir, monkeypatch):
    monkeypatch.setattr(trt_backend, "cuda_devices", lambda: (0, "none (no driver)"))
    with pytest.raises(BackendError, match="no CUDA device found .*use --backend ort"):
        trt_backend.create(load_manifest(model_dir))
    with pytest.raises(BackendError, match="engines are FP16, not fp32"):
        trt_backend.create(load_manifest(model_dir), precision="fp32")


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("gpu_latency",
                                                  ROOT / "benchmarks" / "gpu_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_without_gpu_exits_with_one_line(model_dir, monkeypatch, capsys):
    import vfinfer.environment

    monkeypatch.setattr(vfinfer.environment, "cuda_devices", lambda: (0, "none"))
    assert _benchmark_module().main(["--model", str(model_dir), "--cases", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no CUDA device found") and "\n" not in err


# ============================================================ CPU: fake TensorRT and CUDA
ERRORS = {2: (b"cudaErrorMemoryAllocation", b"out of memory"),
          700: (b"cudaErrorIllegalAddress", b"an illegal memory access was encountered")}


class FakeStream:
    def __init__(self, handle):
        self.handle = handle

    def __int__(self):
        return self.handle


class FakeCudart:
    """cuda.bindings.runtime's calling convention: (err, *values); device memory on the host."""

    class cudaMemcpyKind:  # noqa: N801 - the real name
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self):
        self.host, self.device, self.streams = {}, {}, set()
        self.fail = {}
        self.lock = threading.Lock()
        self.next_stream = 1

    def _code(self, name):
        return self.fail.get(name, 0)

    def _alloc(self, table, name, nbytes):
        if self._code(name):
            return (self._code(name), None)
        buffer = ctypes.create_string_buffer(nbytes)
        with self.lock:
            table[ctypes.addressof(buffer)] = buffer
        return (0, ctypes.addressof(buffer))

    def cudaSetDevice(self, device):  # noqa: N802
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        with self.lock:
            handle, self.next_stream = self.next_stream, self.next_stream + 1
            self.streams.add(handle)
        return (0, FakeStream(handle))

    def cudaMallocHost(self, nbytes):  # noqa: N802
        return self._alloc(self.host, "cudaMallocHost", nbytes)

    def cudaMalloc(self, nbytes):  # noqa: N802
        return self._alloc(self.device, "cudaMalloc", nbytes)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        if self._code("cudaMemcpyAsync"):
            return (self._code("cudaMemcpyAsync"),)
        assert int(stream) in self.streams
        to, frm = (self.device, self.host) if kind == 1 else (self.host, self.device)
        assert int(dst) in to and int(src) in frm, "copy between the wrong kinds of memory"
        assert nbytes <= min(len(to[int(dst)]), len(frm[int(src)]))
        ctypes.memmove(int(dst), int(src), nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (self._code("cudaStreamSynchronize"),)

    def cudaFree(self, pointer):  # noqa: N802
        if self._code("cudaFree"):
            return (self._code("cudaFree"),)
        del self.device[pointer]
        return (0,)

    def cudaFreeHost(self, pointer):  # noqa: N802
        del self.host[pointer]
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams.remove(int(stream))
        return (0,)

    def cudaGetErrorName(self, err):  # noqa: N802
        return (0, ERRORS.get(int(err), (b"cudaErrorUnknown", b""))[0])

    def cudaGetErrorString(self, err):  # noqa: N802
        return (0, ERRORS.get(int(err), (b"", b"unknown error"))[1])


class FakeTrt:
    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    @staticmethod
    def nptype(dtype):
        return dtype


def _read(pointer, shape, dtype):
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * nbytes).from_address(pointer)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        low, _opt, high = self.engine.profile[name]
        if not all(lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.profile:
            return self.shapes[name]
        return (self.shapes["x"][0], *self.engine.outputs[name][0][1:])

    def execute_async_v3(self, stream):
        x = _read(self.addresses["x"], self.shapes["x"], np.float32)
        for name, value in self.engine.compute(x).items():
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        with self.engine.lock:
            self.engine.executions += 1
        return True


class FakeEngine:
    """x (N, 2, 3) float32 -> y = x.sum(1) (N, 3) float32, h = x.mean(2) (N, 2) float16."""

    profile = {"x": ((1, 2, 3), (4, 2, 3), (8, 2, 3))}
    outputs = {"y": ((-1, 3), np.dtype(np.float32)), "h": ((-1, 2), np.dtype(np.float16))}

    def __init__(self):
        self.executions = 0
        self.lock = threading.Lock()
        self.names = ["x", "y", "h"]

    @staticmethod
    def compute(x):
        return {"y": x.sum(1).astype(np.float32), "h": x.mean(2).astype(np.float16)}

    num_io_tensors = 3

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if name == "x" else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return np.dtype(np.float32) if name == "x" else self.outputs[name][1]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return self.profile[name]

    def get_tensor_shape(self, name):
        return (-1, 2, 3) if name == "x" else self.outputs[name][0]

    def create_execution_context(self):
        return FakeContext(self)


@pytest.fixture()
def fake():
    cudart = FakeCudart()
    runner = trt_backend.TrtRunner(FakeEngine(), "fake.engine", FakeTrt, cudart)
    yield runner, cudart
    if not runner._closed:
        runner.close()


def _batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 2, 3)).astype(np.float32)


def test_runner_discovers_io_and_profile(fake):
    runner, _ = fake
    assert runner.inputs == {"x": ["batch", 2, 3]}
    assert runner.outputs == {"y": ["batch", 3], "h": ["batch", 2]}
    assert runner.max_batch == 8
    assert runner.profile["x"] == ((1, 2, 3), (4, 2, 3), (8, 2, 3))


def test_runner_results_match_numpy(fake):
    runner, cudart = fake
    for n in (1, 5, 8, 3):
        x = _batch(n, seed=n)
        out = runner.infer({"x": x})
        assert out["y"].shape == (n, 3) and out["y"].dtype == np.float32
        np.testing.assert_array_equal(out["y"], x.sum(1))
        assert out["h"].dtype == np.float32  # FP16 outputs come back as float32
        np.testing.assert_allclose(out["h"], x.mean(2), atol=2e-3)
    # buffers were allocated once, at the profile maximum
    assert len(cudart.host) == 3 and len(cudart.device) == 3 and len(cudart.streams) == 1
    assert max(len(b) for b in cudart.host.values()) == 8 * 2 * 3 * 4


def test_results_do_not_alias_the_pinned_buffers(fake):
    runner, _ = fake
    first = runner.infer({"x": _batch(4, seed=1)})
    kept = first["y"].copy()
    runner.infer({"x": _batch(4, seed=2)})
    np.testing.assert_array_equal(first["y"], kept)


def test_runner_checks_shapes_before_running(fake):
    runner, _ = fake
    with pytest.raises(BackendError, match="exceeds the maximum 8"):
        runner.infer({"x": _batch(9)})
    with pytest.raises(BackendError, match="graph expects"):
        runner.infer({"x": np.zeros((2, 3, 3), np.float32)})
    with pytest.raises(BackendError, match="do not match"):
        runner.infer({"image": _batch(2)})
    with pytest.raises(BackendError, match="outside the engine's profile"):
        trt_backend.check_profile({"x": (0, 2, 3)}, runner.profile, "fake.engine")
    assert runner.engine.executions == 0


def test_one_context_and_stream_per_thread(fake):
    runner, cudart = fake
    errors = []

    def work(seed):
        try:
            for i in range(25):
                x = _batch(1 + (seed + i) % 8, seed=seed * 100 + i)
                np.testing.assert_array_equal(runner.infer({"x": x})["y"], x.sum(1))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(runner._states) == 4 and len(cudart.streams) == 4
    assert len({id(s.context) for s in runner._states}) == 4
    assert runner.engine.executions == 100


def test_close_frees_every_thread_buffer_and_stream(fake):
    runner, cudart = fake
    threads = [threading.Thread(target=runner.infer, args=({"x": _batch(2)},))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cudart.streams) == 3 and len(cudart.device) == 9
    runner.close()
    assert cudart.host == {} and cudart.device == {} and cudart.streams == set()
    with pytest.raises(BackendError, match="closed"):
        runner.infer({"x": _batch(1)})
    runner.close()  # twice is fine


def test_cuda_errors_are_checked_and_named(fake):
    runner, cudart = fake
    runner.infer({"x": _batch(2)})
    cudart.fail["cudaMemcpyAsync"] = 700
    with pytest.raises(BackendError) as info:
        runner.infer({"x": _batch(2)})
    message = str(info.value)
    assert message.startswith("fake.engine: cudaMemcpyAsync(x, H2D) failed")
    assert "cudaErrorIllegalAddress (700): an illegal memory access was encountered" in message


def test_allocation_failure_is_reported_and_the_partial_allocation_freed(fake):
    runner, cudart = fake
    cudart.fail["cudaMalloc"] = 2
    with pytest.raises(BackendError, match="cudaMalloc.*cudaErrorMemoryAllocation.*out of "):
        runner.infer({"x": _batch(2)})
    # the stream and pinned buffer made before the failure are already given back
    assert cudart.host == {} and cudart.device == {} and cudart.streams == set()
    assert runner._states == []
    del cudart.fail["cudaMalloc"]
    np.testing.assert_array_equal(runner.infer({"x": _batch(2)})["y"], _batch(2).sum(1))


def test_close_reports_errors_and_still_frees_the_rest(fake):
    runner, cudart = fake
    runner.infer({"x": _batch(2)})
    cudart.fail["cudaFree"] = 700
    with pytest.raises(BackendError, match="cudaFree\\(x\\) failed"):
        runner.close()
    assert cudart.host == {} and cudart.streams == set()  # pinned memory and streams freed


def test_check_helper():
    cudart = FakeCudart()
    assert trt_backend.check((0, 5), runtime=cudart) == 5
    assert trt_backend.check((0,), runtime=cudart) is None
    assert trt_backend.check((0, 1, 2), runtime=cudart) == (1, 2)
    with pytest.raises(BackendError, match="^cudaMalloc failed: cudaErrorMemoryAllocation "
                                           "\\(2\\): out of memory$"):
        trt_backend.check((2, None), "cudaMalloc", runtime=cudart)


# =========================================================================== GPU
def _trt_pipeline(model_dir, batch_size=None):
    """The pipeline on the TensorRT backend (via the factory once it lists 'trt')."""
    from vfinfer.pipeline import Pipeline

    try:
        return Pipeline(model_dir, backend="trt", batch_size=batch_size)
    except BackendError as exc:
        if "not part of" not in str(exc):
            raise
    pipe = Pipeline(model_dir, backend="ort", batch_size=batch_size)
    pipe.backend.close()
    pipe.backend = trt_backend.create(pipe.manifest)
    pipe.batch_size = min(batch_size or pipe.backend.max_batch, pipe.backend.max_batch)
    return pipe


def _free_gpu_memory():
    from cuda.bindings import runtime as cudart

    free, _total = trt_backend.check(cudart.cudaMemGetInfo(), "cudaMemGetInfo", cudart)
    return free


@pytest.fixture(scope="module")
def built_dir(model_dir, tmp_path_factory):
    from vfinfer_export.trt_build import build_engines

    out = tmp_path_factory.mktemp("trt") / "compact"
    shutil.copytree(model_dir, out)
    lines = []
    records = build_engines(out, max_batch=64, opt_batch=46, workspace_mb=1024,
                            log=lines.append)
    return out, records, lines


@needs_gpu
def test_engines_built_verified_and_recorded(built_dir):
    import tensorrt as trt

    out, records, _lines = built_dir
    data = load_manifest(out).data
    machine = trt_backend.machine_facts()
    for role in ("gnet", "lnet", "heads"):
        record = data["engines"][role]
        assert record == records[role]
        assert record["precision"] == "fp16" and record["file"] == f"{role}.engine"
        assert record["precision_check"]["half_compute_layers"] > 0
        assert record["tensorrt"] == trt.__version__
        assert trt_backend.engine_problems(load_manifest(out), machine, role) == []
        expected_source = f"{role}.onnx" if trt.__version__.startswith("10.") \
            else f"{role}_fp16.onnx"
        assert record["source_graph"] == expected_source
        first = next(iter(record["profile"].values()))
        assert [shape[0] for shape in first] == [1, 46, 64]
        # a plain plan: the TensorRT runtime (and so trtexec) loads the file as it is
        logger = trt.Logger(trt.Logger.ERROR)
        engine = trt.Runtime(logger).deserialize_cuda_engine((out / record["file"]).read_bytes())
        assert engine is not None
    assert (out / "timing.cache").stat().st_size > 0


@needs_gpu
def test_fp16_engines_agree_with_fp32_onnx(built_dir, case_dirs):
    from vfinfer.io.images import read_case
    from vfinfer.pipeline import Pipeline

    out, _records, _lines = built_dir
    images, _paths, _ = read_case(case_dirs[1])
    with Pipeline(out, backend="ort") as reference, _trt_pipeline(out) as gpu:
        ref = reference.infer(images)
        got = gpu.infer(images)
        assert gpu.backend.describe()["precision"] == "fp16"
    type_agreement = np.mean(ref["type_probs"].argmax(1) == got["type_probs"].argmax(1))
    polarity_agreement = np.mean(ref["polarity_probs"].argmax(1)
                                 == got["polarity_probs"].argmax(1))
    assert type_agreement >= 0.95 and polarity_agreement >= 0.95
    assert np.max(np.abs(ref["type_probs"] - got["type_probs"])) < 2e-2
    assert np.max(np.abs(ref["polarity_probs"] - got["polarity_probs"])) < 2e-2
    assert np.max(np.abs(ref["boxes"] - got["boxes"])) < 0.5  # G-input pixels
    np.testing.assert_allclose(got["type_probs"].sum(1), 1.0, atol=1e-4)


@needs_gpu
def test_profile_is_enforced_before_running(built_dir):
    out, _records, _lines = built_dir
    backend = trt_backend.create(load_manifest(out))
    try:
        assert backend.max_batch == 64
        image = np.zeros((65, 1, 128, 128), np.float32)
        with pytest.raises(BackendError, match="exceeds the maximum 64"):
            backend.gnet.infer({"image": image})
    finally:
        backend.close()


@needs_gpu
def test_stale_engine_is_refused(built_dir, tmp_path):
    out, _records, _lines = built_dir
    stale = tmp_path / "stale"
    shutil.copytree(out, stale)
    data = json.loads((stale / "manifest.json").read_text())
    data["engines"]["lnet"]["tensorrt"] = "9.9.0"
    write_json_atomic(stale / "manifest.json", data)
    with pytest.raises(BackendError, match=f"built with TensorRT 9.9.0.*vfinfer build {stale}"):
        trt_backend.create(load_manifest(stale))


@needs_gpu
def test_no_device_memory_leak_over_1000_runs(built_dir, case_dirs):
    from vfinfer.io.images import read_case

    out, _records, _lines = built_dir
    images, _paths, _ = read_case(case_dirs[0])
    with _trt_pipeline(out) as pipe:
        for _ in range(10):  # contexts, buffers and lazy CUDA state settle here
            pipe.infer(images)
        before = _free_gpu_memory()
        for _ in range(1000):
            pipe.infer(images)
        after = _free_gpu_memory()
    assert before - after < 8 << 20, f"{(before - after) / 2**20:.1f} MiB lost in 1000 runs"
    settled = _free_gpu_memory()
    for _ in range(3):  # create / close cycles give their memory back
        backend = trt_backend.create(load_manifest(out))
        backend.gnet.infer({"image": np.zeros((46, 1, 128, 128), np.float32)})
        backend.close()
    assert settled - _free_gpu_memory() < 8 << 20


@needs_gpu
def test_threads_share_engines(built_dir, case_dirs):
    from vfinfer.io.images import read_case

    out, _records, _lines = built_dir
    images, _paths, _ = read_case(case_dirs[0])
    with _trt_pipeline(out) as pipe:
        expected = pipe.infer(images)["type_probs"]
        results, errors = [], []

        def work():
            try:
                for _ in range(20):
                    results.append(pipe.infer(images)["type_probs"])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(results) == 80
    for got in results:
        np.testing.assert_array_equal(got, expected)


# ============================================== CPU: build_engines against a fake TensorRT
class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def _fake_tensorrt(version, half_engine=True, parse_ok=True):
    """A tensorrt module with just what trt_build uses; TRT 11 lacks the precision flags."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16 = "float32", "float16"

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="json")
    trt.LayerType = types.SimpleNamespace(CONSTANT="constant", OTHER="other")
    flags = {"FP16": "fp16"}
    if version.startswith("10."):
        flags["OBEY_PRECISION_CONSTRAINTS"] = "obey"
        trt.BuilderFlag = types.SimpleNamespace(**flags)
    else:
        trt.BuilderFlag = types.SimpleNamespace(DIRECT_IO_REMOVED="x")  # no FP16 in 11

    class Tensor:
        def __init__(self, name, dtype="float32"):
            self.name, self.dtype = name, dtype

    class Layer:
        def __init__(self, name, node, kind, half_graph):
            self.name, self.metadata, self.type = name, f"[ONNX Layer: {node}]", kind
            self.precision, self.output_types, self.half_graph = None, {}, half_graph
            self._outputs = [Tensor(name + ":0")]
            self.num_outputs = 1

        def get_output(self, i):
            return self._outputs[i]

        def set_output_type(self, i, dtype):
            self.output_types[i] = dtype

    class Network:
        def __init__(self, flags):
            assert flags == 0
            self.layers, self.inputs = [], []

        num_layers = property(lambda self: len(self.layers))
        num_inputs = property(lambda self: len(self.inputs))

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def node(self):
            return 3

        def desc(self):
            return "unsupported attribute"

        def node_name(self):
            return "node_x"

        def node_operator(self):
            return "GridSample"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            if not parse_ok:
                self.num_errors = 1
                return False
            model = onnx.shape_inference.infer_shapes(onnx.load(path))
            types_ = {v.name: v.type.tensor_type.elem_type
                      for v in list(model.graph.value_info) + list(model.graph.output)}
            inits = {i.name for i in model.graph.initializer}
            self.network.inputs = [Tensor(v.name) for v in model.graph.input
                                   if v.name not in inits]
            for node in model.graph.node:
                half = types_.get(node.output[0]) == onnx.TensorProto.FLOAT16
                if node.op_type == "Gemm":
                    self.network.layers.append(
                        Layer(node.name + " weights", node.name, "constant", half))
                self.network.layers.append(Layer(node.name, node.name, "other", half))
            return True

        def get_error(self, i):
            return ParserError()

    class Cache:
        def serialize(self):
            return b"timing cache"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.profiling_verbosity = set(), [], None

        def set_memory_pool_limit(self, pool, size):
            assert pool == "workspace" and size > 0

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return Cache()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (low, opt, high)

    class Builder:
        built = []

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            assert config.profiling_verbosity == "detailed" and len(config.profiles) == 1
            Builder.built.append((network, config))
            weak_fp16 = "fp16" in config.flags
            layers = []
            for layer in network.layers:
                half = layer.half_graph or (weak_fp16 and layer.precision != "float32")
                layers.append({"Name": layer.name, "LayerType": "CaskConvolution",
                               "Metadata": layer.metadata,
                               "Outputs": [{"Format/Datatype": "Half" if half and half_engine
                                            else "Float"}]})
            return json.dumps({"Layers": layers}).encode()

    class Engine:
        def __init__(self, plan):
            self.info = plan.decode()

        def create_engine_inspector(self):
            return types.SimpleNamespace(get_engine_information=lambda fmt: self.info)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(plan)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


FAKE_MACHINE = {"tensorrt": None, "cuda": "12.6", "cuda_driver": "12.8",
                "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _with_fake_tensorrt(monkeypatch, trt):
    from vfinfer_export import trt_build

    monkeypatch.setattr(trt_build, "cuda_devices", lambda: (1, "fake GPU"))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "machine_facts",
                        lambda device=0: {**FAKE_MACHINE, "tensorrt": trt.__version__})
    return trt_build


def test_build_with_fake_trt10_uses_flag_and_fp32_constraints(model_dir, tmp_path,
                                                              monkeypatch):
    trt = _fake_tensorrt("10.7.0.23")
    trt_build = _with_fake_tensorrt(monkeypatch, trt)
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    records = trt_build.build_engines(out, max_batch=32, opt_batch=16, log=lambda *a: None)
    manifest = load_manifest(out)
    machine = {**FAKE_MACHINE, "tensorrt": "10.7.0.23"}
    for role in ("gnet", "lnet", "heads"):
        record = manifest.data["engines"][role]
        assert record == records[role] and record["source_graph"] == f"{role}.onnx"
        assert record["build_path"].startswith("trt10")
        assert trt_backend.engine_problems(manifest, machine, role) == []
    network, config = {n: (net, cfg) for n, (net, cfg) in zip(
        ("gnet", "lnet", "heads"), trt.Builder.built)}["heads"]
    assert config.flags == {"fp16", "obey"}
    constrained = {layer.name for layer in network.layers if layer.precision == "float32"}
    kept = set(records["heads"]["kept_fp32"])
    assert {"node_softmax", "node_softmax_1"} <= kept and constrained == kept  # no weights
    assert all(layer.output_types == {0: "float32"} for layer in network.layers
               if layer.name in constrained)
    assert records["heads"]["fp32_constraints"]["unmatched_nodes"] == []
    assert records["gnet"]["profile"]["image"] == [[1, 1, 128, 128], [16, 1, 128, 128],
                                                   [32, 1, 128, 128]]
    assert (out / "gnet.engine").read_bytes().startswith(b'{"Layers"')
    assert (out / "timing.cache").read_bytes() == b"timing cache"


def test_build_with_fake_trt11_uses_the_fp16_graphs_without_flags(model_dir, tmp_path,
                                                                  monkeypatch):
    trt = _fake_tensorrt("11.4.0")
    trt_build = _with_fake_tensorrt(monkeypatch, trt)
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    records = trt_build.build_engines(out, log=lambda *a: None)  # converts to FP16 first
    manifest = load_manifest(out)
    assert "gnet_fp16" in manifest.data["graphs"] and "fp16_audit" in manifest.data
    for role, (network, config) in zip(("gnet", "lnet", "heads"), trt.Builder.built):
        assert config.flags == set()
        assert records[role]["source_graph"] == f"{role}_fp16.onnx"
        assert records[role]["source_sha256"] == manifest.graph(role, "fp16")["sha256"]
        assert records[role]["precision_check"]["half_compute_layers"] > 0
        assert records[role]["fp32_constraints"] is None
        assert not any(layer.precision for layer in network.layers)


def test_build_refuses_an_engine_without_fp16_layers(model_dir, tmp_path, monkeypatch):
    trt_build = _with_fake_tensorrt(monkeypatch, _fake_tensorrt("10.7.0", half_engine=False))
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    with pytest.raises(trt_build.BuildError, match="gnet.engine: no FP16 compute layer.*"
                                                   "refusing to record it"):
        trt_build.build_engines(out, log=lambda *a: None)
    assert "engines" not in load_manifest(out).data and not (out / "gnet.engine").exists()


def test_build_reports_parser_errors_per_node(model_dir, tmp_path, monkeypatch):
    trt_build = _with_fake_tensorrt(monkeypatch, _fake_tensorrt("10.7.0", parse_ok=False))
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    with pytest.raises(trt_build.BuildError,
                       match=r"gnet.onnx: TensorRT's ONNX parser failed: node 3 \(node_x, "
                             r"GridSample\): unsupported attribute"):
        trt_build.build_engines(out, log=lambda *a: None)
