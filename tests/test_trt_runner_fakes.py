"""The TensorRT path on a CPU machine: the one-line refusals without a GPU, and the TensorRT
runner's own logic (buffers, copies, per-thread contexts, error checks, close) against a fake
TensorRT engine and a fake cuda-python runtime that keep "device" memory in host buffers."""

import ctypes
import threading

import numpy as np
import pytest

from vfinfer.backends import trt as trt_backend
from vfinfer.backends.base import BackendError
from vfinfer.model.manifest import load_manifest
from vfinfer.util.machine import cuda_devices

from helpers import benchmark_module

GPU_COUNT, GPU_DESCRIPTION = cuda_devices()
needs_gpu = pytest.mark.skipif(GPU_COUNT == 0, reason=f"no CUDA device: {GPU_DESCRIPTION}")



# =========================================================================== CPU: refusals
@pytest.mark.slow
def test_build_without_gpu_raises_one_line(model_dir, monkeypatch):
    from vfinfer.tools.precision import engines as trt_build

    monkeypatch.setattr(trt_build, "cuda_devices", lambda: (0, "none"))
    with pytest.raises(RuntimeError) as info:
        trt_build.build_engines(model_dir, log=lambda *a: None)
    assert str(info.value) == ("no CUDA device found: vfinfer build needs an NVIDIA GPU "
                               "with TensorRT")
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(GPU_COUNT > 0, reason="this machine has a CUDA device")
def test_build_on_this_cpu_machine_refuses(model_dir):
    from vfinfer.tools.precision.engines import NO_DEVICE, build_engines

    with pytest.raises(RuntimeError, match=f"^{NO_DEVICE}$"):
        build_engines(model_dir, log=lambda *a: None)
    assert "engines" not in load_manifest(model_dir).data


@pytest.mark.slow
def test_trt_backend_without_gpu_refuses(model_dir, monkeypatch):
    monkeypatch.setattr(trt_backend, "cuda_devices", lambda: (0, "none (no driver)"))
    with pytest.raises(BackendError, match="no CUDA device found .*use --backend ort"):
        trt_backend.create(load_manifest(model_dir))
    with pytest.raises(BackendError, match="engines are FP16, not fp32"):
        trt_backend.create(load_manifest(model_dir), precision="fp32")


@pytest.mark.slow
def test_benchmark_without_gpu_exits_with_one_line(model_dir, monkeypatch, capsys):
    import vfinfer.util.machine

    monkeypatch.setattr(vfinfer.util.machine, "cuda_devices", lambda: (0, "none"))
    assert benchmark_module("gpu_latency").main(["--model", str(model_dir), "--cases", "2"]) == 2
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


