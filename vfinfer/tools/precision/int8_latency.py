"""FP32 against INT8 graph latency on ONNX Runtime's CPU provider, with the machine's other load
measured beside it."""

import os
import time

import numpy as np

from vfinfer.backends.ort import make_session
from vfinfer.model.manifest import GRAPH_ROLES
from vfinfer.tools.benchmarking.load import BUSY_SHARE, cpu_counters, other_cpu_share
from vfinfer.util.machine import usable_cores

LATENCY_BATCH = 46  # one normal cell
LATENCY_THREADS = (1, 2)
LATENCY_REPEATS = 10


def session_times(session, inputs, repeats, warmup):
    """ms of each of ``repeats`` timed ``session.run`` calls on ``inputs``, after ``warmup``
    untimed ones."""
    for _ in range(warmup):
        session.run(None, inputs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, inputs)
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_latency(fp32_paths, int8_paths, feeds, threads=LATENCY_THREADS,
                    batch=LATENCY_BATCH, repeats=LATENCY_REPEATS, warmup=2):
    """Median / min ms per graph call, FP32 vs INT8, on ORT CPU at each thread count.

    Also measures how much of the machine other processes used meanwhile (Linux
    ``/proc/stat`` minus this process's CPU time): above ``BUSY_SHARE`` the report says the
    machine was busy and the times are disturbed.
    """
    cores = usable_cores()
    start = cpu_counters()
    results = {}
    for count in threads:
        per_threads = {}
        for role in GRAPH_ROLES:
            size = len(next(iter(feeds[role].values())))
            index = np.arange(batch) % size
            inputs = {name: np.ascontiguousarray(a[index]) for name, a in feeds[role].items()}
            row = {}
            for precision, paths in (("fp32", fp32_paths), ("int8", int8_paths)):
                times = session_times(make_session(paths[role], count), inputs, repeats,
                                      warmup)
                row[precision] = {"median_ms": round(float(np.median(times)), 3),
                                  "min_ms": round(float(np.min(times)), 3)}
            row["speedup_median"] = round(row["fp32"]["median_ms"] / row["int8"]["median_ms"], 3)
            per_threads[role] = row
        total = {p: round(sum(per_threads[r][p]["median_ms"] for r in GRAPH_ROLES), 3)
                 for p in ("fp32", "int8")}
        per_threads["all_graphs"] = {"fp32_median_ms": total["fp32"],
                                     "int8_median_ms": total["int8"],
                                     "speedup": round(total["fp32"] / total["int8"], 3)}
        results[f"threads_{count}"] = per_threads
    share = other_cpu_share(start, cpu_counters(), cores)
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    busy = share is not None and share > BUSY_SHARE
    if share is None:
        note = "could not measure other load on this OS: check for other work before trusting"
    elif busy:
        note = (f"the machine was busy: other processes used {share:.0%} of its {cores} cores "
                "during the timing, so the times are disturbed and the ratios only indicative")
    else:
        note = f"other processes used {share:.0%} of the {cores} cores during the timing"
    return {"batch": batch, "repeats": repeats, "provider": "CPUExecutionProvider",
            "session": "vfinfer.backends.ort.make_session (the backend's settings: "
                       "ORT_ENABLE_ALL, no thread spinning)", "cores": cores,
            "other_processes_cpu_share": None if share is None else round(share, 3),
            "load_average_1m": load, "busy": busy, "note": note, **results}
