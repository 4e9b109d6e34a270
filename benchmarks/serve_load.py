"""Load on ``vfinfer serve``: cells per second and latency at 1, 4 and 16 concurrent clients,
against the same cells in one process; dynamic batching on and off; server memory after 100
and after 2,000 requests. A benchmark, not a test: it prints and writes JSON.

    python benchmarks/serve_load.py --requests 200 --json benchmarks/results/serve_load.json

The server runs as ``vfinfer serve`` in a subprocess on a free loopback port; the clients are
threads of this process with one httpx connection each, so on a 2-core machine they compete
with the server for the cores (as a vendor application on the same PC would).
"""

import argparse
import itertools
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command, machine, make_cells, save, stats_ms  # noqa: E402

from vfinfer.io.runner import run_with  # noqa: E402
from vfinfer.pipeline import Pipeline  # noqa: E402
from vfinfer.util.images import decode_gray8  # noqa: E402


def start_server(*options):
    proc = subprocess.Popen([sys.executable, "-c", "from vfinfer.cli import main; main()",
                             "serve", "--port", "0", *map(str, options)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the first line names the port
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, f"http://127.0.0.1:{found.group(1)}"
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def stop_server(proc):
    proc.terminate()
    return proc.wait(60)


def rss_mb(pid):
    text = Path(f"/proc/{pid}/status").read_text()
    return round(int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024, 1)


def cell_parts(cells):
    return [[(p.name, p.read_bytes()) for p in sorted(c.glob("*.png"))] for c in cells]


def load(url, payloads, n_requests, concurrency):
    """``n_requests`` POST /v1/cells from ``concurrency`` threads; latencies and wall time."""
    counter, lock, latencies, errors = itertools.count(), threading.Lock(), [], []

    def client():
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    i = next(counter)
                if i >= n_requests:
                    return
                parts = payloads[i % len(payloads)]
                started = time.perf_counter()
                response = http.post("/v1/cells", data={"name": f"c{i}"},
                                     files=[("images", part) for part in parts])
                elapsed = time.perf_counter() - started
                with lock:
                    (latencies if response.status_code == 200 else errors).append(
                        elapsed if response.status_code == 200 else response.status_code)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": n_requests, "errors": len(errors),
            "wall_s": round(wall, 2), "cells_per_s": round(len(latencies) / wall, 2),
            **stats_ms(latencies)}


def batch_counts(url):
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^vfinfer_batch_cells_sum ([\d.e+]+)$", text, re.M).group(1))
    runs = float(re.search(r"^vfinfer_batch_cells_count ([\d.e+]+)$", text, re.M).group(1))
    return total, runs


def in_process(cells, payloads, threads, n):
    """The same cells in one process: decode + run_case one by one (what a request does
    without HTTP), and ``vfinfer run --no-karyogram`` over them (writes JSON and CSV)."""
    with Pipeline(threads=threads) as pipe:
        for parts in payloads[:4]:  # warm-up
            pipe.run_case([decode_gray8(d, f) for f, d in parts])
        seconds = []
        for i in range(n):
            parts = payloads[i % len(payloads)]
            started = time.perf_counter()
            pipe.run_case([decode_gray8(d, f) for f, d in parts], name=f"c{i}",
                          files=[f for f, _ in parts])
            seconds.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            run_with(pipe, cells[:n], out, karyogram=False, echo=lambda line: None)
            run_wall = time.perf_counter() - started
    return {"decode_and_run_case": {**stats_ms(seconds),
                                    "cells_per_s": round(n / sum(seconds), 2)},
            "vfinfer_run_no_karyogram": {"cells": n, "wall_s": round(run_wall, 2),
                                         "ms_per_cell": round(run_wall / n * 1000, 1),
                                         "cells_per_s": round(n / run_wall, 2)}}


def server_levels(payloads, args, *options):
    proc, url = start_server("--threads", args.threads, *options)
    try:
        load(url, payloads, 8, 1)  # warm-up
        levels = []
        for concurrency in args.concurrency:
            before = batch_counts(url)
            level = load(url, payloads, args.requests, concurrency)
            after = batch_counts(url)
            level["mean_cells_per_engine_run"] = round(
                (after[0] - before[0]) / max(1.0, after[1] - before[1]), 2)
            levels.append(level)
            print(json.dumps(level))
    finally:
        stop_server(proc)
    return levels


def memory(payloads, args):
    proc, url = start_server("--threads", args.threads)
    try:
        load(url, payloads, 100, 4)
        after_100 = rss_mb(proc.pid)
        load(url, payloads, args.memory_requests - 100, 4)
        after_all = rss_mb(proc.pid)
    finally:
        stop_server(proc)
    return {"requests": [100, args.memory_requests], "rss_mb": [after_100, after_all],
            "cell_images": args.memory_keep,
            "note": f"cells cut to their first {args.memory_keep} images so that 2,000 "
                    "requests fit in a short run; 4 concurrent clients"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-cells", type=int, default=40)
    parser.add_argument("--memory-requests", type=int, default=2000)
    parser.add_argument("--memory-keep", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cells = make_cells(Path(tmp) / "full", args.baseline_cells)
        payloads = cell_parts(cells[:8])
        small = cell_parts(make_cells(Path(tmp) / "small", 8, keep=args.memory_keep))
        report = {"command": command(), "machine_before": machine(),
                  "cells": "8 synthetic cells of 45-47 chromosomes, requests cycle over them",
                  "in_process": in_process(cells, payloads, args.threads,
                                           args.baseline_cells)}
        print(json.dumps(report["in_process"]))
        report["server_dynamic_batching"] = server_levels(payloads, args)
        report["server_no_batching_max_batch_1"] = server_levels(
            payloads, argparse.Namespace(**{**vars(args), "concurrency": [16]}),
            "--max-batch", 1)
        report["memory"] = memory(small, args)
        print(json.dumps(report["memory"]))
    save(report, args.json)


if __name__ == "__main__":
    main()
