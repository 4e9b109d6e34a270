"""Facts about this machine for ``vfinfer env`` and benchmark reports."""

import os
import platform
import shutil
import subprocess
from importlib import metadata


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
    return {
        "vfinfer": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu cores": os.cpu_count(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "ort providers": ", ".join(ort.get_available_providers()),
        "torch": package_version("torch"),
        "tensorrt": package_version("tensorrt"),
        "cuda-python": package_version("cuda-python"),
        "cuda devices": f"{count}: {devices}",
    }
