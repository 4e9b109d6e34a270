"""The Python side of ``benchmarks/gpu_check.sh``: each subcommand checks one thing, prints
what it does, writes its findings as JSON (``--json``) and exits 1 when a check failed.

    env          nvidia-smi, torch and CUDA versions, the device and its compute capability
    trt-runner   the TensorRT runner's CUDA side (vfinfer.backends.trt.TrtRunner) against the
                 real driver through cuda-bindings, the engine stood in by a CuPy kernel
    torch-fp16   the networks' FP16 speed and FP32/FP16 agreement in PyTorch on the GPU
    train-check  what ``vfinfer train --device cuda`` / ``train-seg --device cuda`` wrote
    summary      OUT/gpu_check.json from the steps' records (OUT/steps.tsv, OUT/details/)

The TensorRT runner check replaces only TensorRT: ``StandInEngine`` has the interface the
runner uses (tensor names, modes, dtypes, the optimization profile, execution contexts) and
its ``execute_async_v3`` launches ``CupyKernel`` on the runner's own stream over the device
addresses the runner bound (y = 2 x + 1 in float32, h = x in float16). Everything else is the
real thing: cuda-bindings (``vfinfer.backends.trt._cudart``), the driver, pinned host memory,
streams, copies, error codes, and the device memory that ``cudaMemGetInfo`` reports. The same
checks run on the CPU against a fake cuda runtime in tests/test_gpu_check.py.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

INPUT, OUTPUTS = "image", ("scaled", "half")
PROFILE = ((1, 1, 128, 128), (46, 1, 128, 128), (64, 1, 128, 128))  # min, opt, max: G input
MIB = 1 << 20
LEAK_TOLERANCE = 8 * MIB  # as tests/test_gpu.py: the driver's own bookkeeping stays below
HUGE = 1 << 60  # bytes no device has: cudaMalloc must fail with cudaErrorMemoryAllocation
TORCH_LABEL = "PyTorch on GPU, not TensorRT"
RANDOM_WEIGHTS = ("random init (seed 0): speed does not depend on the weights; the agreement "
                  "is that of an untrained network, not of a trained model")


def _print(line):
    print(line, flush=True)


# ============================================================== the engine, stood in
class StandInTrt:
    """What ``TrtRunner`` asks of the ``tensorrt`` module."""

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    @staticmethod
    def nptype(dtype):
        return np.dtype(dtype)


class StandInEngine:
    """A TensorRT engine's I/O interface: input ``image`` (N, 1, 128, 128) float32 within
    ``PROFILE``; outputs ``scaled`` (float32) and ``half`` (float16) of the same shape,
    computed by ``kernel(addresses, shape, stream)`` on the device."""

    num_io_tensors = 3
    names = (INPUT, *OUTPUTS)

    def __init__(self, kernel):
        self.kernel = kernel
        self.executions = 0
        self.lock = threading.Lock()

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        modes = StandInTrt.TensorIOMode
        return modes.INPUT if name == INPUT else modes.OUTPUT

    def get_tensor_dtype(self, name):
        return np.dtype(np.float16 if name == "half" else np.float32)

    def get_tensor_profile_shape(self, name, index):
        assert name == INPUT and index == 0
        return PROFILE

    def get_tensor_shape(self, name):
        return (-1, 1, 128, 128)

    def create_execution_context(self):
        return StandInContext(self)


class StandInContext:
    """An execution context: the input shape set, the addresses bound, one launch a run."""

    def __init__(self, engine):
        self.engine, self.shape, self.addresses = engine, None, {}

    def set_input_shape(self, name, shape):
        low, _opt, high = PROFILE
        if name != INPUT or len(shape) != 4 or not all(
                lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            return False
        self.shape = tuple(int(s) for s in shape)
        return True

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = int(pointer)
        return True

    def get_tensor_shape(self, name):
        return self.shape

    def execute_async_v3(self, stream):
        if self.shape is None or set(self.addresses) != set(StandInEngine.names):
            return False
        self.engine.kernel(self.addresses, self.shape, stream)
        with self.engine.lock:
            self.engine.executions += 1
        return True


class CupyKernel:
    """The stand-in engine's work: one CuPy elementwise kernel on the runner's stream, over
    CuPy arrays that wrap (do not own) the device buffers the runner allocated."""

    def __init__(self, device=0):
        import cupy

        self.cupy, self.device = cupy, device
        self.kernel = cupy.ElementwiseKernel("float32 x", "float32 y, float16 h",
                                             "y = 2.0f * x + 1.0f; h = x",
                                             "vfinfer_gpu_check_stand_in")

    def _array(self, pointer, shape, dtype):
        cupy = self.cupy
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        memory = cupy.cuda.UnownedMemory(int(pointer), nbytes, self, self.device)
        return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(memory, 0))

    def __call__(self, addresses, shape, stream):
        x = self._array(addresses[INPUT], shape, np.float32)
        y = self._array(addresses["scaled"], shape, np.float32)
        h = self._array(addresses["half"], shape, np.float16)
        with self.cupy.cuda.Device(self.device), self.cupy.cuda.ExternalStream(int(stream)):
            self.kernel(x, y, h)


def expected_outputs(x):
    """What the stand-in engine computes, in NumPy (float16 rounded to nearest even)."""
    return {"scaled": (2 * x + 1).astype(np.float32), "half": x.astype(np.float16)}


def sample(n, seed=0):
    """A batch of ``n`` inputs (float32, spread over several binades)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *PROFILE[2][1:])) * 4).astype(np.float32)


# ============================================================== the runner's checks
def _free_memory(cudart):
    from vfinfer.backends.trt import check

    free, _total = check(cudart.cudaMemGetInfo(), "cudaMemGetInfo", cudart)
    return int(free)


def memory_type(cudart, pointer):
    """"host" (pinned), "device", "managed" or "unregistered", from cudaPointerGetAttributes."""
    from vfinfer.backends.trt import check

    attributes = check(cudart.cudaPointerGetAttributes(pointer), "cudaPointerGetAttributes",
                       cudart)
    value = int(attributes.type)
    for label in ("host", "device", "managed", "unregistered"):
        member = getattr(cudart.cudaMemoryType, f"cudaMemoryType{label.capitalize()}", None)
        if member is not None and value == int(member):
            return label
    return f"type {value}"


def check_error_report(cudart):
    """A real CUDA error (cudaMalloc of 1 EiB) comes back named, as BackendError."""
    from vfinfer.backends.base import BackendError
    from vfinfer.backends.trt import check

    try:
        check(cudart.cudaMalloc(HUGE), "cudaMalloc(1 EiB)", cudart)
    except BackendError as exc:
        return {"passed": "cudaErrorMemoryAllocation" in str(exc), "message": str(exc)}
    return {"passed": False, "message": "cudaMalloc of 1 EiB reported success"}


def check_buffers(runner, cudart, free_before):
    """After a first run: every buffer at the profile maximum, host buffers pinned, device
    buffers on the device, and the device's free memory down by at least their size."""
    runner.infer({INPUT: sample(1)})
    state = runner._states[0]
    wanted = {n: int(np.prod(PROFILE[2])) * runner.dtypes[n].itemsize
              for n in StandInEngine.names}
    pinned = {name: int(view.nbytes) for name, (_ptr, view) in state.host.items()}
    kinds = {f"host {name}": memory_type(cudart, ptr) for name, (ptr, _v) in state.host.items()}
    kinds.update({f"device {name}": memory_type(cudart, ptr)
                  for name, ptr in state.device.items()})
    drop = free_before - _free_memory(cudart)
    passed = (pinned == wanted and set(state.device) == set(wanted) and drop >= sum(
        wanted.values()) and all(kind == name.split()[0] for name, kind in kinds.items()))
    return {"passed": passed, "bytes_at_profile_max": wanted, "pinned_host_bytes": pinned,
            "memory_types": kinds, "free_memory_drop_bytes": drop}


def check_results(runner, sizes=(1, 7, 46, 64)):
    """Outputs of several batch sizes against NumPy: float32 exact, float16 within one ulp."""
    found, passed = {}, True
    for n in sizes:
        x = sample(n, seed=n)
        got, want = runner.infer({INPUT: x}), expected_outputs(x)
        half = np.abs(got["half"] - want["half"].astype(np.float32))
        ok = (got["scaled"].shape == x.shape and got["half"].shape == x.shape
              and np.array_equal(got["scaled"], want["scaled"])
              and bool(np.all(half <= np.abs(x) * 2.0 ** -10 + 1e-7)))
        found[str(n)] = {"scaled_max_abs": float(np.max(np.abs(got["scaled"] - want["scaled"]))),
                         "half_max_abs": float(half.max()), "ok": bool(ok)}
        passed = passed and ok
    return {"passed": passed, "batches": found}


def check_profile(runner):
    """A batch over the profile maximum is refused before anything runs."""
    from vfinfer.backends.base import BackendError

    before = runner.engine.executions
    try:
        runner.infer({INPUT: sample(PROFILE[2][0] + 1)})
    except BackendError as exc:
        return {"passed": runner.engine.executions == before, "message": str(exc)}
    return {"passed": False, "message": "a batch over the profile maximum ran"}


def check_leak(runner, free, runs=1000, every=100):
    """``runs`` runs over every batch size in turn without device-memory growth (free memory
    from ``free()`` before and after, after 10 warm-up runs); every ``every``-th result is
    compared with NumPy."""
    batch = sample(PROFILE[2][0], seed=99)
    for i in range(10):
        runner.infer({INPUT: batch[:1 + i]})
    before, wrong = free(), 0
    for i in range(runs):
        n = 1 + (i * 37) % PROFILE[2][0]  # 37 is prime to 64: every size in turn
        out = runner.infer({INPUT: batch[:n]})
        if i % every == 0 and not np.array_equal(out["scaled"], 2 * batch[:n] + 1):
            wrong += 1
    after = free()
    return {"passed": before - after < LEAK_TOLERANCE and wrong == 0, "runs": runs,
            "free_before_bytes": before, "free_after_bytes": after,
            "growth_bytes": before - after, "tolerance_bytes": LEAK_TOLERANCE,
            "wrong_results": wrong}


def check_threads(runner, threads=2, each=20):
    """Threads running at once get their own context and stream and right results."""
    errors = []

    def work(seed):
        for k in range(each):
            x = sample(1 + (seed * 7 + k) % PROFILE[2][0], seed=seed * 100 + k)
            try:
                right = np.array_equal(runner.infer({INPUT: x})["scaled"], 2 * x + 1)
            except Exception as exc:  # noqa: BLE001 - reported with the check
                errors.append(f"thread {seed} run {k}: {type(exc).__name__}: {exc}")
                return
            if not right:
                errors.append(f"thread {seed} run {k}: wrong result")

    workers = [threading.Thread(target=work, args=(s,)) for s in range(1, threads + 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    streams = {int(s.stream) for s in runner._states}
    contexts = {id(s.context) for s in runner._states}
    return {"passed": not errors and len(streams) == len(contexts) == len(runner._states),
            "thread_states": len(runner._states), "streams": len(streams), "errors": errors}


def check_close(runner, make_runner, free):
    """``close()`` gives back what the runner's threads held (the free memory rises by at
    least 90 % of their device buffers), refuses later calls, and a second runner's create /
    run / close cycle leaves the free memory where it found it."""
    from vfinfer.backends.base import BackendError

    held = sum(runner.dtypes[n].itemsize * int(np.prod(PROFILE[2])) for n in StandInEngine.names)
    held *= len(runner._states)
    before = free()
    runner.close()
    after = free()
    try:
        runner.infer({INPUT: sample(1)})
        refused = False
    except BackendError:
        refused = True
    second = make_runner()
    try:
        second.infer({INPUT: sample(3)})
    finally:
        second.close()
    cycle = after - free()
    return {"passed": after - before >= 0.9 * held and refused and cycle < LEAK_TOLERANCE,
            "device_bytes_held": held, "freed_bytes": after - before,
            "refused_after_close": refused, "second_cycle_growth_bytes": cycle}


def check_trt_runner(cudart, kernel, runs=1000, device=0, log=_print):
    """Every check above in turn on one ``TrtRunner`` over ``StandInEngine(kernel)``;
    ``{"checks": {name: {"passed", "seconds", ...}}, "passed"}``. A check that raises is
    recorded as failed with the error, and the next one still runs."""
    from vfinfer.backends.trt import TrtRunner

    def make_runner():
        return TrtRunner(StandInEngine(kernel), "gpu-check.engine", StandInTrt, cudart, device)

    checks = {}

    def attempt(name, call):
        started = time.perf_counter()
        try:
            found = call()
        except Exception as exc:  # noqa: BLE001 - recorded, and the next check runs
            found = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
        found["seconds"] = round(time.perf_counter() - started, 3)
        checks[name] = found
        log(f"{name}: {'passed' if found['passed'] else 'FAILED'} {json.dumps(found)}")

    attempt("error_report", lambda: check_error_report(cudart))
    free_at_start = _free_memory(cudart)
    runner = make_runner()
    attempt("buffers", lambda: check_buffers(runner, cudart, free_at_start))
    attempt("results", lambda: check_results(runner))
    attempt("profile", lambda: check_profile(runner))
    attempt("leak", lambda: check_leak(runner, lambda: _free_memory(cudart), runs))
    attempt("threads", lambda: check_threads(runner))
    attempt("close", lambda: check_close(runner, make_runner, lambda: _free_memory(cudart)))
    if not runner._closed:
        runner.close()
    return {"engine": "stand-in (CuPy elementwise kernel, no TensorRT)",
            "profile": [list(p) for p in PROFILE], "checks": checks,
            "passed": all(c["passed"] for c in checks.values())}


# ============================================================== PyTorch on the GPU
def _times_ms(torch, call, device, repeats, warmup):
    """Milliseconds of ``call`` ``repeats`` times after ``warmup`` calls: torch.cuda.Event
    pairs on CUDA, perf_counter on the CPU (for the tests)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
    return times


def _stats(times, images):
    median, p90 = (float(v) for v in np.percentile(times, (50, 90)))
    return {"median_ms": round(median, 4), "p90_ms": round(p90, 4), "n": len(times),
            "median_ms_per_image": round(median / images, 5)}


def g_inputs(config, n, root):
    """``n`` preprocessed synthetic chromosomes (N, 1, G, G) float32 (cells written to
    ``root``, repeated up to ``n``)."""
    from vfinfer.pipeline.preprocess import preprocess_batch
    from vfinfer.tools.synthesis.cells import write_cases
    from vfinfer.util.images import read_case

    images = []
    for seed, karyotype in enumerate(("47,XY,+21", "46,XX"), start=7):
        for case in write_cases(karyotype, root, seed=seed):
            images += read_case(Path(root) / case)[0]
    images = (images * (n // len(images) + 1))[:n]
    return preprocess_batch(images, config)


def agreement(torch, fp32, half):
    """FP16 against FP32 outputs of ``network_pass``: argmax agreement and max differences."""
    def same(key):
        return float((fp32[key].argmax(1) == half[key].argmax(1)).float().mean())

    def diff(key):
        return float((fp32[key].float() - half[key].float()).abs().max())

    finite = all(bool(torch.isfinite(half[k].float()).all()) for k in half)
    return {"images": int(fp32["type_probs"].shape[0]), "type_argmax_agreement": same(
        "type_probs"), "polarity_argmax_agreement": same("polarity_probs"),
        "max_abs_type_prob_diff": diff("type_probs"),
        "max_abs_polarity_prob_diff": diff("polarity_probs"),
        "max_abs_box_diff_px": diff("boxes"), "fp16_outputs_finite": finite}


def classifier_figures(torch, config, inputs, device, batches, repeats, warmup, half_dtype):
    """Per batch size: FP32 and FP16 (autocast) times of the whole network pass; and the
    FP16/FP32 agreement on all of ``inputs``."""
    from vfinfer.model.config import count_macs
    from vfinfer_export.models import random_model
    from vfinfer_export.reference import network_pass

    model = random_model(config, seed=0).to(device)
    images = torch.from_numpy(inputs).to(device)
    figures = {"preset": config.preset, "gmac_per_image": count_macs(config) / 1e9,
               "batches": {}}
    def fp32(x):
        return network_pass(model, x)

    def fp16(x):
        with torch.autocast(device_type=device, dtype=half_dtype):
            return network_pass(model, x)

    with torch.no_grad():
        for size in batches:
            figures["batches"][str(size)] = {
                name: _stats(_times_ms(torch, lambda run=run, x=images[:size]: run(x), device,
                                       repeats, warmup), size)
                for name, run in (("fp32", fp32), ("fp16", fp16))}
        figures["agreement"] = agreement(torch, fp32(images), fp16(images))
    return figures


def segmentation_figures(torch, device, shape, repeats, warmup, half_dtype):
    """The segmentation U-Net (default widths, random init) on one metaphase of ``shape``:
    FP32 and FP16 times and how far the FP16 probabilities are from FP32."""
    from vfinfer.segment.model import SegInput, normalized
    from vfinfer.tools.synthesis.metaphases import render_metaphase
    from vfinfer.util.geometry import detect_background
    from vfinfer_export.seg_model import SegNet

    torch.manual_seed(0)
    net = SegNet().eval().to(device)
    gray, _masks = render_metaphase(1, size=tuple(shape[2:]))
    x = torch.from_numpy(normalized(gray, detect_background(gray), SegInput())[None, None])
    x = x.to(device)
    with torch.no_grad():
        def fp16():
            with torch.autocast(device_type=device, dtype=half_dtype):
                return net.probabilities(x)

        fp32_ms = _times_ms(torch, lambda: net.probabilities(x), device, repeats, warmup)
        fp16_ms = _times_ms(torch, fp16, device, repeats, warmup)
        ref, half = net.probabilities(x), fp16().float()
    return {"input": list(shape), "widths": list(net.widths), "fp32": _stats(fp32_ms, 1),
            "fp16": _stats(fp16_ms, 1),
            "agreement": {"max_abs_prob_diff": float((ref - half).abs().max()),
                          "pixels_same_side_of_0.5": float(((ref > 0.5) == (half > 0.5))
                                                           .float().mean()),
                          "fp16_outputs_finite": bool(torch.isfinite(half).all())}}


def torch_fp16(presets=("compact", "paper"), device="cuda", batches=(1, 46, 64), repeats=None,
               warmup=None, seg_shape=(1, 1, 576, 768), configs=None, log=_print):
    """The networks' FP16 speed and FP32/FP16 agreement through the PyTorch reference
    (``vfinfer_export.reference.network_pass``, random init) and the segmentation U-Net.
    FP32 is strict (TF32 off); FP16 is ``torch.autocast(float16)`` on CUDA (on the CPU, for
    the tests, bfloat16 autocast stands in). ``configs`` (ModelConfigs) replace ``presets``.
    ``repeats`` / ``warmup`` default to 50 / 10 calls per batch size (10 / 3 for the paper
    preset's sizes)."""
    import tempfile

    import torch

    from vfinfer.model.config import preset

    half_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {"what": TORCH_LABEL, "weights": RANDOM_WEIGHTS, "device": _device_name(torch, device),
              "torch": torch.__version__, "fp32": "strict FP32 (TF32 off for convolutions and "
              "matmuls)", "fp16": f"torch.autocast({half_dtype}) over the whole pass",
              "timing": "torch.cuda.Event pairs around each call after warm-up calls; median "
                        "and p90 of the calls", "classifier": {}}
    configs = configs or [preset(name) for name in presets]
    with tempfile.TemporaryDirectory(prefix="vfinfer-gpu-check-") as tmp:
        for config in configs:
            paper = config.preset.startswith("paper")
            inputs = g_inputs(config, max(batches), tmp + f"/{config.preset}")
            log(f"classifier {config.preset}: batches {batches}")
            result["classifier"][config.preset] = classifier_figures(
                torch, config, inputs, device, batches, repeats or (10 if paper else 50),
                warmup or (3 if paper else 10), half_dtype)
    log(f"segmentation U-Net on {seg_shape}")
    result["segmentation"] = segmentation_figures(torch, device, seg_shape, repeats or 50,
                                                  warmup or 10, half_dtype)
    finite = [f["agreement"]["fp16_outputs_finite"] for f in result["classifier"].values()]
    result["passed"] = all(finite) and result["segmentation"]["agreement"][
        "fp16_outputs_finite"]
    return result


def _device_name(torch, device):
    if device != "cuda":
        return device
    return torch.cuda.get_device_name(torch.cuda.current_device())


# ============================================================== environment, training
def _command_output(command):
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"not run: {exc}"
    return (done.stdout + done.stderr).strip()


def environment(dry_run=False):
    """Facts about this machine; passed when PyTorch sees a CUDA device (always in a dry run,
    where they are recorded as found)."""
    from importlib import metadata

    from vfinfer.util.machine import cuda_devices

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    facts = {"python": sys.version.split()[0], "nvidia_smi": _command_output(["nvidia-smi"]),
             "packages": {n: version(n) for n in ("torch", "cupy", "cupy-cuda12x",
                                                  "cupy-cuda13x", "cuda-bindings",
                                                  "cuda-python", "numpy", "onnx",
                                                  "onnxruntime", "tensorrt")},
             "cuda_devices_probe": "%d: %s" % cuda_devices()}
    try:
        import torch
    except ImportError as exc:
        return {**facts, "torch": f"not importable: {exc}", "passed": dry_run}
    facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                 cuda_available=torch.cuda.is_available())
    if facts["cuda_available"]:
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        facts.update(device=props.name, compute_capability=f"{props.major}.{props.minor}",
                     memory_gib=round(props.total_memory / 2**30, 1),
                     device_count=torch.cuda.device_count(),
                     cudnn=torch.backends.cudnn.version())
    return {**facts, "passed": bool(dry_run or facts["cuda_available"])}


def train_check(run_dir, seg_dir, return_code):
    """After ``vfinfer train --device cuda`` (``run_dir``) or ``train-seg`` (``seg_dir``): every
    epoch on CUDA, the checkpoint's tensors stored on the CPU, and it loads on the CPU."""
    import torch

    found = {"command_exit_status": return_code}
    if run_dir:
        from vfinfer_export.checkpoint import load_checkpoint

        history = json.loads((Path(run_dir) / "history.json").read_text())
        path = Path(run_dir) / "model.pt"
        record = load_checkpoint(path).training_record
        found.update(training_record_device=record.get("device"),
                     mixed_precision=record.get("mixed_precision"))
    else:
        from vfinfer_export.seg_train import load_seg_checkpoint

        path = Path(seg_dir) / "seg.pt"
        training = load_seg_checkpoint(path)[1]["training"]
        history = training["history"]
        found.update(training_record_device=training.get("device"),
                     mixed_precision=training.get("mixed_precision"))
        found["exported_model"] = (Path(seg_dir) / "model" / "manifest.json").is_file()
    stored = torch.load(path, weights_only=True)  # no map_location: as it was saved
    devices = {str(t.device) for t in stored["state_dict"].values()}
    found.update(epochs=len(history), epoch_devices=[e.get("device") for e in history],
                 stored_tensor_devices=sorted(devices))
    found["passed"] = (return_code == 0 and bool(history) and devices == {"cpu"}
                       and all(str(e.get("device", "")).startswith("cuda") for e in history))
    return found


# ============================================================== summary
def write_summary(out, dry_run=False):
    """OUT/gpu_check.json from OUT/steps.tsv (name, status, seconds, reason a line, written by
    gpu_check.sh) and each step's OUT/details/NAME.json; returns the summary."""
    out = Path(out)
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, seconds, reason = (line.split("\t") + [""] * 4)[:4]
        step = {"status": status, "seconds": float(seconds or 0), "log": f"logs/{name}.log"}
        if reason:
            step["reason"] = reason
        details = out / "details" / f"{name}.json"
        if details.is_file():
            step["details"] = json.loads(details.read_text())
        steps[name] = step
    counts = {s: sum(step["status"] == s for step in steps.values())
              for s in ("passed", "failed", "skipped")}
    summary = {"check": "vfinfer GPU check (benchmarks/gpu_check.sh)", "dry_run": dry_run,
               "out": str(out), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "counts": counts, "steps": steps}
    tmp = out / ".gpu_check.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "gpu_check.json")
    return summary


# ============================================================== command line
def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["env", "trt-runner", "torch-fp16", "train-check",
                                            "summary"])
    parser.add_argument("--json", type=Path, help="Where to write the findings.")
    parser.add_argument("--out", type=Path, help="summary: the check's OUT directory.")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--runs", type=int, default=1000, help="trt-runner: leak-check runs.")
    parser.add_argument("--presets", default="compact,paper", help="torch-fp16: presets.")
    parser.add_argument("--run", help="train-check: the vfinfer train run directory.")
    parser.add_argument("--seg-run", help="train-check: the vfinfer train-seg run directory.")
    parser.add_argument("--exit-status", type=int, default=0,
                        help="train-check: the training command's exit status.")
    return parser.parse_args(argv)


def _findings(args):
    if args.command == "env":
        return environment(args.dry_run)
    if args.command == "trt-runner":
        from vfinfer.backends.trt import _cudart

        return check_trt_runner(_cudart(), CupyKernel(), runs=args.runs)
    if args.command == "torch-fp16":
        return torch_fp16(presets=args.presets.split(","))
    return train_check(args.run, args.seg_run, args.exit_status)


def main(argv=None):
    args = _arguments(argv)
    if args.command == "summary":
        summary = write_summary(args.out, args.dry_run)
        _print(json.dumps(summary["counts"]))
        return 1 if summary["counts"]["failed"] else 0
    try:
        found = _findings(args)
    except Exception as exc:  # noqa: BLE001 - recorded for the summary, then exit 1
        found = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=2) + "\n")
    _print(json.dumps(found, indent=2))
    return 0 if found.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
