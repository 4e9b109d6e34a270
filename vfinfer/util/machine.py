"""Facts about this machine for ``vfinfer env`` and benchmark reports: the one reader of
``/proc/cpuinfo`` (``cpu_info``) and the real CUDA device probe (``cuda_devices``)."""

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # the INT8 dot products ORT's kernels use


def usable_cores():
    """The cores this process may run on (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_info(path="/proc/cpuinfo"):
    """``{"model", "vendor", "mhz", "flags", "cores"}`` of the first CPU listed in
    ``/proc/cpuinfo`` (model from ``platform`` and empty flags where there is none, as on
    Windows and macOS); ``mhz`` is the clock the kernel reports, None when absent."""
    return parse_cpuinfo(Path(path).read_text() if Path(path).exists() else "")


def parse_cpuinfo(info):
    """``cpu_info``'s dict from the text of a ``/proc/cpuinfo`` (the first CPU listed)."""
    model = re.search(r"model name\s*:\s*(.*)", info)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    flags = re.search(r"flags\s*:\s*(.*)", info)
    vendor = "AMD" if "AMD" in info else ("Intel" if "Intel" in info else "unknown")
    return {"model": model.group(1).strip() if model else (platform.processor()
                                                            or platform.machine()),
            "vendor": vendor, "mhz": float(mhz.group(1)) if mhz else None,
            "flags": frozenset(flags.group(1).split()) if flags else frozenset(),
            "cores": usable_cores()}


def int8_facts(info=None):
    """CPU model and the INT8 dot-product instructions ORT's kernels can use (VNNI)."""
    info = info or cpu_info()
    return {"model": info["model"], "int8_flags": [f for f in INT8_FLAGS if f in info["flags"]],
            "vnni": any(f in info["flags"] for f in VNNI_FLAGS)}


def vnni_text(info=None):
    """``vfinfer env``'s VNNI line: "yes (avx512_vnni)", "yes (avx_vnni)" or "no"."""
    flags = [f for f in VNNI_FLAGS if f in (info or cpu_info())["flags"]]
    return f"yes ({', '.join(flags)})" if flags else "no"


def package_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cuda_devices():
    """(count, description) from a real device probe, never from 'package importable'."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            return 0, f"none (cudaGetDeviceCount: {err})"
        names = []
        for i in range(count):
            err, props = cudart.cudaGetDeviceProperties(i)
            if int(err) == 0:
                name = props.name.decode() if isinstance(props.name, bytes) else props.name
                names.append(f"{name} (sm_{props.major}{props.minor})")
        return count, ", ".join(names) or "none"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=10).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as exc:
            return 0, f"none (nvidia-smi failed: {exc})"
        return len(out), "; ".join(out) or "none"
    return 0, "none (no cuda-python and no nvidia-smi: no NVIDIA driver found)"


def describe_environment():
    import cv2
    import numpy as np
    import onnxruntime as ort

    from vfinfer import __version__

    count, devices = cuda_devices()
    info = cpu_info()
    return {
        "vfinfer": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": info["model"],
        "cpu cores": os.cpu_count(),
        "cpu int8": ", ".join(int8_facts(info)["int8_flags"]) or "no AVX2 / AVX-512 / VNNI",
        "cpu vnni": vnni_text(info),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "ort providers": ", ".join(ort.get_available_providers()),
        "torch": package_version("torch"),
        "tensorrt": package_version("tensorrt"),
        "cuda-python": package_version("cuda-python"),
        "cuda devices": f"{count}: {devices}",
    }
