"""benchmarks/gpu_check.sh and benchmarks/gpu_check_runner.py on the CPU: the dry run's summary,
the summary's bookkeeping, the TensorRT runner checks against a fake cuda runtime (the real one
on the GPU), the PyTorch FP16 figures with bfloat16 standing in, and the training check."""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_trt_runner_fakes import FakeCudart

from helpers import benchmark_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["install", "env", "trt_runner", "torch_fp16", "train_cuda", "train_seg_cuda"]


gc = benchmark_module("gpu_check_runner")


# ============================================================== the script's dry run
def _script(*args, out):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_dry_run_writes_the_summary_with_every_step(tmp_path):
    done = _script("--dry-run", out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["dry_run"] is True and summary["out"] == str(tmp_path)
    assert list(summary["steps"]) == STEPS
    statuses = {name: step["status"] for name, step in summary["steps"].items()}
    assert statuses == {"install": "skipped", "env": "passed", "trt_runner": "skipped",
                        "torch_fp16": "skipped", "train_cuda": "skipped",
                        "train_seg_cuda": "skipped"}
    assert summary["counts"] == {"passed": 1, "failed": 0, "skipped": 5}
    for name in STEPS[2:]:
        assert summary["steps"][name]["reason"] == "dry run: needs a CUDA GPU"
        assert summary["steps"][name]["seconds"] == 0
    env = summary["steps"]["env"]
    assert env["seconds"] > 0 and "reason" not in env
    assert env["details"]["passed"] is True and "torch" in env["details"]
    assert "nvidia_smi" in env["details"] and "packages" in env["details"]
    assert (tmp_path / env["log"]).is_file()
    assert "summary: " in done.stdout


def test_the_script_refuses_an_unknown_argument(tmp_path):
    done = _script("--fast", out=tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_summary_counts_failures_and_keeps_each_steps_details(tmp_path):
    (tmp_path / "details").mkdir()
    (tmp_path / "steps.tsv").write_text("install\tpassed\t12.5\t\n"
                                        "trt_runner\tfailed\t3.0\texit status 1: see logs\n"
                                        "torch_fp16\tskipped\t0\tdry run: needs a CUDA GPU\n")
    (tmp_path / "details" / "trt_runner.json").write_text(json.dumps({"passed": False}))
    assert gc.main(["summary", "--out", str(tmp_path)]) == 1
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert summary["dry_run"] is False
    runner = summary["steps"]["trt_runner"]
    assert runner == {"status": "failed", "seconds": 3.0, "log": "logs/trt_runner.log",
                      "reason": "exit status 1: see logs", "details": {"passed": False}}
    assert "details" not in summary["steps"]["install"]


# ============================================================== the runner, fake cuda runtime
class DeviceCudart(FakeCudart):
    """The fake runtime of test_trt_runner_fakes plus what the GPU check asks of it: free
    memory (a 1 GiB device less what is allocated), pointer types, a failing huge cudaMalloc."""

    TOTAL = 1 << 30

    class cudaMemoryType:  # noqa: N801 - the real name
        cudaMemoryTypeUnregistered = 0
        cudaMemoryTypeHost = 1
        cudaMemoryTypeDevice = 2
        cudaMemoryTypeManaged = 3

    def cudaMalloc(self, nbytes):  # noqa: N802
        return (2, None) if nbytes > self.TOTAL else super().cudaMalloc(nbytes)

    def cudaMemGetInfo(self):  # noqa: N802
        with self.lock:
            used = sum(len(b) for b in self.device.values())
        return (0, self.TOTAL - used, self.TOTAL)

    def cudaPointerGetAttributes(self, pointer):  # noqa: N802
        kind = 1 if pointer in self.host else 2 if pointer in self.device else 0
        return (0, SimpleNamespace(type=kind))


class HostKernel:
    """The stand-in engine's work on the fake "device" (host memory): y = 2 x + 1, h = x."""

    def __init__(self, compute=None):
        self.compute = compute or gc.expected_outputs

    def __call__(self, addresses, shape, stream):
        size = int(np.prod(shape))
        raw = (ctypes.c_float * size).from_address(addresses[gc.INPUT])
        x = np.frombuffer(raw, np.float32).reshape(shape)
        for name, value in self.compute(x).items():
            ctypes.memmove(addresses[name], value.ctypes.data, value.nbytes)


def test_runner_checks_pass_against_the_fake_runtime():
    cudart = DeviceCudart()
    found = gc.check_trt_runner(cudart, HostKernel(), runs=30, log=lambda line: None)
    checks = found["checks"]
    assert list(checks) == ["error_report", "buffers", "results", "profile", "leak", "threads",
                            "close"]
    assert found["passed"], json.dumps(checks, indent=1)
    assert "cudaErrorMemoryAllocation (2): out of memory" in checks["error_report"]["message"]
    buffers = checks["buffers"]
    assert buffers["bytes_at_profile_max"] == {"image": 64 * 128 * 128 * 4,
                                               "scaled": 64 * 128 * 128 * 4,
                                               "half": 64 * 128 * 128 * 2}
    assert set(buffers["memory_types"].values()) == {"host", "device"}
    assert buffers["free_memory_drop_bytes"] == sum(buffers["bytes_at_profile_max"].values())
    assert checks["leak"]["runs"] == 30 and checks["leak"]["growth_bytes"] == 0
    assert checks["threads"]["thread_states"] == 3 and checks["threads"]["streams"] == 3
    assert checks["close"]["freed_bytes"] == checks["close"]["device_bytes_held"]
    assert "exceeds the maximum 64" in checks["profile"]["message"]
    # both runners gave back every buffer and stream
    assert cudart.device == {} and cudart.host == {} and cudart.streams == set()


class LeakingKernel(HostKernel):
    """Allocates a device buffer on every run and never frees it."""

    def __init__(self, cudart):
        super().__init__()
        self.cudart = cudart

    def __call__(self, addresses, shape, stream):
        super().__call__(addresses, shape, stream)
        self.cudart.cudaMalloc(1 << 20)


def test_a_device_memory_leak_fails_the_leak_check():
    cudart = DeviceCudart()
    found = gc.check_trt_runner(cudart, LeakingKernel(cudart), runs=20, log=lambda line: None)
    leak = found["checks"]["leak"]
    assert not leak["passed"] and not found["passed"]
    assert leak["growth_bytes"] == 20 << 20 and leak["wrong_results"] == 0
    assert found["checks"]["results"]["passed"]


def test_wrong_results_and_errors_are_recorded_and_later_checks_still_run():
    def wrong(x):
        return {"scaled": (2 * x).astype(np.float32), "half": x.astype(np.float16)}

    found = gc.check_trt_runner(DeviceCudart(), HostKernel(wrong), runs=10,
                                log=lambda line: None)
    checks = found["checks"]
    assert not checks["results"]["passed"] and checks["leak"]["wrong_results"] == 1
    assert checks["results"]["batches"]["7"]["scaled_max_abs"] > 0
    assert checks["threads"]["errors"]  # every thread saw wrong results

    def broken(x):
        raise RuntimeError("kernel launch failed")

    found = gc.check_trt_runner(DeviceCudart(), HostKernel(broken), runs=10,
                                log=lambda line: None)
    checks = found["checks"]
    assert list(checks)[-1] == "close" and not found["passed"]
    assert checks["buffers"]["error"] == "RuntimeError: kernel launch failed"
    assert checks["error_report"]["passed"] and checks["profile"]["passed"]
    assert not checks["threads"]["passed"]
    assert checks["threads"]["errors"][0].endswith("RuntimeError: kernel launch failed")


def test_memory_type_names():
    cudart = DeviceCudart()
    _, host = cudart.cudaMallocHost(16)
    _, device = cudart.cudaMalloc(16)
    assert gc.memory_type(cudart, host) == "host"
    assert gc.memory_type(cudart, device) == "device"
    assert gc.memory_type(cudart, 12345) == "unregistered"


def test_the_stand_in_context_keeps_to_the_profile():
    engine = gc.StandInEngine(HostKernel())
    context = engine.create_execution_context()
    assert not context.set_input_shape("image", (65, 1, 128, 128))
    assert not context.set_input_shape("image", (2, 1, 64, 64))
    assert not context.execute_async_v3(0)  # nothing bound yet
    assert context.set_input_shape("image", (2, 1, 128, 128))
    assert context.get_tensor_shape("half") == (2, 1, 128, 128)


# ============================================================== PyTorch figures, training
@pytest.mark.slow
def test_torch_figures_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    from tiny import TINY

    found = gc.torch_fp16(device="cpu", configs=[TINY], batches=(1, 3), repeats=2, warmup=1,
                          seg_shape=(1, 1, 64, 96), log=lambda line: None)
    assert found["what"] == "PyTorch on GPU, not TensorRT"
    assert found["weights"].startswith("random init") and found["passed"] is True
    tiny = found["classifier"]["tiny"]
    assert set(tiny["batches"]) == {"1", "3"}
    for figures in tiny["batches"].values():
        for precision in ("fp32", "fp16"):
            assert figures[precision]["n"] == 2
            assert 0 < figures[precision]["median_ms"] <= figures[precision]["p90_ms"]
    agreement = tiny["agreement"]
    assert agreement["images"] == 3 and 0 <= agreement["type_argmax_agreement"] <= 1
    assert agreement["max_abs_type_prob_diff"] >= 0 and agreement["fp16_outputs_finite"]
    seg = found["segmentation"]
    assert seg["input"] == [1, 1, 64, 96] and seg["fp16"]["n"] == 2
    assert 0 <= seg["agreement"]["pixels_same_side_of_0.5"] <= 1


@pytest.mark.slow
def test_train_check_wants_every_epoch_on_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    from tiny import TINY

    from vfinfer.tools.synthesis.cells import write_cases
    from vfinfer_export.train import train

    for seed, karyotype in ((1, "46,XY"), (2, "46,XX")):
        write_cases(karyotype, tmp_path / "data", seed=seed)
    run = tmp_path / "run"
    train(tmp_path / "data", None, run, preset=TINY, batch_size=32, val_fraction=0.5,
          epochs={"gnet": 1, "loc": 1, "local": 1, "heads": 1}, limit=40, threads=1,
          log=lambda line: None)
    found = gc.train_check(run, None, 0)
    assert found["epoch_devices"] == ["cpu"] * 5 and found["training_record_device"] == "cpu"
    assert found["stored_tensor_devices"] == ["cpu"] and found["passed"] is False
    history = json.loads((run / "history.json").read_text())
    (run / "history.json").write_text(json.dumps([{**h, "device": "cuda (GPU)"}
                                                  for h in history]))
    assert gc.train_check(run, None, 0)["passed"] is True
    assert gc.train_check(run, None, 1)["passed"] is False  # the command failed
    assert torch.load(run / "model.pt", weights_only=True)["extra"]["training_record"]
