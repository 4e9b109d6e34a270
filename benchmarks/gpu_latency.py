"""End-to-end latency of the TensorRT backend, per case (one cell, ~46 chromosomes).

    python benchmarks/gpu_latency.py --model engines/compact --cases 50 --json out/gpu.json

Each case is a synthetic 46,XY cell (vfinfer.tools.synthesis.cells, a fixed seed per case)
classified with ``Pipeline.run_case`` on the TensorRT engines built by ``vfinfer build``:
preprocessing, the three engines, the NumPy crop between them, dispatch and the karyotype, i.e. what
a user waits for. After ``--warmup`` untimed cases, every case is timed with perf_counter; the
report gives median / p90 / p99 / mean ms per case, ms per image, images per second, the
per-stage medians from the pipeline's own timing, the machine and the engine records.
Exits with status 2 and one line when there is no CUDA device.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from vfinfer.util.stats import percentiles

KARYOTYPE_46XY = [t for t in range(22) for _ in range(2)] + [22, 23]


def synthetic_case(seed):
    from vfinfer.tools.synthesis.cells import render_chromosome

    rng = np.random.default_rng(seed)
    return [render_chromosome(t, rng) for t in KARYOTYPE_46XY]


def trt_pipeline(model_dir, batch_size):
    """A Pipeline on the TensorRT backend (the factory's, or the backend put in directly)."""
    from vfinfer.backends import BackendError
    from vfinfer.backends import trt as trt_backend
    from vfinfer.pipeline import Pipeline

    try:
        return Pipeline(model_dir, backend="trt", batch_size=batch_size)
    except BackendError as exc:
        if "not part of" not in str(exc):  # a real problem with the engines: report it
            raise
    pipe = Pipeline(model_dir, backend="ort", batch_size=batch_size)  # factory not wired yet
    pipe.backend.close()
    pipe.backend = trt_backend.create(pipe.manifest)
    limit = pipe.backend.max_batch
    pipe.batch_size = min(batch_size or limit, limit)
    return pipe


def run(model_dir, cases, batch_size, warmup, seed):
    inputs = [synthetic_case(seed + i) for i in range(cases)]
    per_case, stages = [], {}
    with trt_pipeline(model_dir, batch_size) as pipe:
        for i in range(warmup):
            pipe.run_case(inputs[i % len(inputs)], name=f"warmup_{i}")
        for i, images in enumerate(inputs):
            started = time.perf_counter()
            result = pipe.run_case(images, name=f"case_{i}")
            per_case.append((time.perf_counter() - started) * 1000)
            for stage, ms in result["timing_ms"].items():
                stages.setdefault(stage, []).append(ms)
        backend = pipe.backend.describe()
        engines = pipe.manifest.data.get("engines", {})
        batch = pipe.batch_size
    n_images = len(KARYOTYPE_46XY)
    spread = percentiles(per_case, (50, 90, 99))
    median = spread["median"]
    return {
        "benchmark": "gpu_latency",
        "model": str(model_dir),
        "backend": backend,
        "engines": engines,
        "batch_size": batch,
        "cases": cases,
        "images_per_case": n_images,
        "warmup_cases": warmup,
        "ms_per_case": {**spread, "mean": float(np.mean(per_case)),
                        "min": float(np.min(per_case)), "max": float(np.max(per_case))},
        "ms_per_image_median": median / n_images,
        "images_per_second": n_images * 1000 / median,
        "stage_ms_median": {stage: percentiles(v, (50,))["median"]
                            for stage, v in stages.items()},
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path,
                        help="model directory with engines from 'vfinfer build'")
    parser.add_argument("--cases", type=int, default=30, help="timed cases (default 30)")
    parser.add_argument("--batch", type=int, default=None,
                        help="chromosomes per engine call (default: the engines' max batch)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed cases first (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")

    from vfinfer.util.machine import cuda_devices

    count, description = cuda_devices()
    if count == 0:
        print(f"error: no CUDA device found ({description}): this benchmark times the "
              "TensorRT backend and needs an NVIDIA GPU", file=sys.stderr)
        return 2
    try:
        report = run(args.model, args.cases, args.batch, args.warmup, args.seed)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    report["cuda_devices"] = description
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    per = report["ms_per_case"]
    print(f"TensorRT {report['backend'].get('tensorrt')} on {report['backend'].get('gpu')}: "
          f"{report['cases']} cases x {report['images_per_case']} images, batch "
          f"{report['batch_size']}: median {per['median']:.2f} ms/case (p90 {per['p90']:.2f}, "
          f"p99 {per['p99']:.2f}), {report['ms_per_image_median']:.3f} ms/image, "
          f"{report['images_per_second']:.0f} images/s")
    if not args.json:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
