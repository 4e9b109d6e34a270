"""The TensorRT path on a real GPU: build, run, parity with the FP32 ONNX graphs, leaks.

Skipped by a real device probe (vfinfer.util.machine.cuda_devices), not by "tensorrt
importable": on a machine with a GPU but without TensorRT they fail, saying what to install.
The same logic is covered on the CPU by tests/test_trt_runner_fakes.py (the runner against
fake TensorRT and CUDA modules) and tests/test_trt_build_fakes.py (the build recipe).
"""

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from vfinfer.backends import trt as trt_backend
from vfinfer.backends.base import BackendError
from vfinfer.model.manifest import load_manifest, write_json_atomic
from vfinfer.util.machine import cuda_devices

pytestmark = pytest.mark.slow  # every test builds TensorRT engines from the exported compact model

GPU_COUNT, GPU_DESCRIPTION = cuda_devices()
needs_gpu = pytest.mark.skipif(GPU_COUNT == 0, reason=f"no CUDA device: {GPU_DESCRIPTION}")
ROOT = Path(__file__).resolve().parents[1]



# =========================================================================== GPU
def _trt_pipeline(model_dir, batch_size=None):
    """The pipeline on the TensorRT backend."""
    from vfinfer.pipeline import Pipeline

    return Pipeline(model_dir, backend="trt", batch_size=batch_size)


def _free_gpu_memory():
    from cuda.bindings import runtime as cudart

    free, _total = trt_backend.check(cudart.cudaMemGetInfo(), "cudaMemGetInfo", cudart)
    return free


@pytest.fixture(scope="module")
def built_dir(model_dir, tmp_path_factory):
    from vfinfer.tools.precision.engines import build_engines

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
    from vfinfer.pipeline import Pipeline
    from vfinfer.util.images import read_case

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
    from vfinfer.util.images import read_case

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
    from vfinfer.util.images import read_case

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

