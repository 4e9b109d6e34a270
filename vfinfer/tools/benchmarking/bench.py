"""``vfinfer bench``: per-stage and end-to-end latency of whole cases, with a JSON report.

Cases come from ``vfinfer.tools.synthesis.cells`` (no outside data), or with ``cells_dir`` from
the user's own case folders (``given_cases``: what a score that depends on the images, such as
the structural score's second view, costs on real cells). After a time-based warm-up
every case is timed from reading its files to writing its results, one after the other (latency);
the pipeline's own stage clock splits the network part. Then the same cases go through
``vfinfer run``'s overlapped reader / engines / writer (``runner.run_with``) as one batch
(throughput: wall time per case). Figures: median, p90, p99 per stage and end to end, ms per
image, images per second, GMAC/s against this CPU's FP32 peak, and the share of each mode's
time spent outside the networks. With the export extra, the PyTorch eager pipeline
(same weights, same preprocessing, same threads; passed in by the command line) is timed in the
same loop, case by case (``interleave``): case i on the runtime, then case i in PyTorch eager,
the order swapped from one pair to the next. Each pair's ratio compares two runs a few
hundred milliseconds apart, so a machine whose speed drifts over the run (other load, clock
changes) cannot bias the comparison the way timing all of one and then all of the other can;
the report keeps every pair and gives the median of their ratios.
"""

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from vfinfer.io.results import write_case
from vfinfer.io.runner import run_with
from vfinfer.model.config import count_macs
from vfinfer.pipeline import Pipeline
from vfinfer.util import stats
from vfinfer.util.atomic import write_atomic
from vfinfer.util.images import read_case
from vfinfer.util.machine import cpu_info

STAGES = ("read", "preprocess", "gnet", "crop", "lnet", "heads", "dispatch", "structural",
          "write")  # structural: only a model with the structural score has it
BATCH_RUNS = 3  # repetitions of the batch (throughput) run; the median is reported


def cpu_facts():
    """Cores, frequency, vector width and the FP32 peak derived from them (documented)."""
    info = cpu_info()
    flags, vendor, cores = info["flags"], info["vendor"], info["cores"]
    ghz = info["mhz"] / 1000 if info["mhz"] else None
    if "avx512f" in flags and vendor == "Intel":
        lanes, note = 32, "2 x 512-bit FMA pipes (Intel AVX-512 server core)"
    elif "avx512f" in flags or "avx2" in flags or "fma" in flags:
        lanes, note = 16, "2 x 256-bit FMA pipes (AVX2, or AMD Zen 4 AVX-512 on 256-bit units)"
    else:
        lanes, note = 8, "assumed 2 x 128-bit FMA pipes (no AVX2/FMA flags)"
    peak = cores * ghz * lanes if ghz else None  # GMAC/s: one FMA = one multiply-accumulate
    return {"model": info["model"],
            "vendor": vendor, "cores": cores, "ghz": ghz,
            "fp32_macs_per_cycle_per_core": lanes, "fp32_peak_gmacs": peak,
            "peak_rule": f"cores x GHz x FP32 MACs per cycle ({note}); GHz as /proc/cpuinfo "
                         "reports it, so a boosting CPU can exceed this peak"}


def percentiles(values):
    """Median, p90, p99 and the count of a run's timings."""
    return {**stats.percentiles(values, (50, 90, 99)), "n": len(values)}


def make_cases(root, n_cases, n_chromosomes, seed):
    """Synthetic cells of ``n_chromosomes`` each (46 -> 46,XY; else a 46,XY cell cut/extended)."""
    from vfinfer.tools.synthesis.cells import write_cases

    write_cases("46,XY", root, seed, cases=n_cases)
    cases = sorted(p for p in Path(root).iterdir() if p.is_dir())
    if n_chromosomes != 46:
        for case in cases:
            files = sorted(case.glob("*.png"))
            for i in range(n_chromosomes, len(files)):
                files[i].unlink()
            for i in range(len(files), n_chromosomes):
                shutil.copy(files[i % len(files)], case / f"extra_{i:03d}.png")
    return cases


def given_cases(cells_dir, n_cases):
    """The first ``n_cases`` case folders under ``cells_dir`` (sorted by name; every
    sub-folder holding files is a case), or ``cells_dir`` itself when it holds no folder."""
    cells_dir = Path(cells_dir)
    if not cells_dir.is_dir():
        raise ValueError(f"{cells_dir}: not a folder of cells")
    cases = sorted(p for p in cells_dir.iterdir() if p.is_dir() and any(
        f.is_file() for f in p.iterdir())) or [cells_dir]
    return cases[:n_cases]


def time_case(pipeline, case_dir, out_dir, karyogram=True):
    """One case from files to written results; returns stage ms and the end-to-end ms."""
    start = time.perf_counter()
    images, paths, _ = read_case(case_dir)
    read_ms = (time.perf_counter() - start) * 1000
    result = pipeline.run_case(images, name=case_dir.name, files=[p.name for p in paths])
    before_write = time.perf_counter()
    write_case(out_dir, result, images if karyogram else None, overwrite=True)
    end = time.perf_counter()
    stages = {"read": read_ms, "write": (end - before_write) * 1000}
    stages.update({k: v for k, v in result["timing_ms"].items() if k != "total"})
    return stages, (end - start) * 1000, len(images)


def time_batch_run(pipeline, cases, out_dir, runs=BATCH_RUNS, karyogram=True):
    """Wall ms per case of ``vfinfer run``'s overlapped path over all ``cases``, per run."""
    per_case = []
    for _ in range(runs):
        start = time.perf_counter()
        counts, _ = run_with(pipeline, cases, out_dir, karyogram=karyogram, overwrite=True,
                             echo=lambda line: None)
        per_case.append((time.perf_counter() - start) * 1000 / len(cases))
        if counts["ok"] != len(cases):
            raise RuntimeError(f"the batch run finished only {counts['ok']} of {len(cases)} "
                               "cases")
    return per_case


INFERENCE_STAGES = ("preprocess", "gnet", "crop", "lnet", "heads")  # what eager runs too


def interleave(n_cases, ours, eager):
    """Time case i on both sides before case i + 1, the order alternating: pair 0 runs
    ``ours(0)`` then ``eager(0)``, pair 1 ``eager(1)`` then ``ours(1)``, and so on (each
    callable takes the case index and returns milliseconds). A drift of the machine's speed
    over the run then lands on both sides of every pair, and whatever the first of two runs
    leaves behind (caches, idle threads) falls on each side in turn. Returns one dict per
    case, in case order: ``case``, ``first`` ("ours" or "eager"), ``ours_ms``, ``eager_ms``
    and ``ratio`` (eager / ours: above 1, the runtime is faster)."""
    pairs = []
    for i in range(n_cases):
        if i % 2 == 0:
            ours_ms = ours(i)
            eager_ms = eager(i)
        else:
            eager_ms = eager(i)
            ours_ms = ours(i)
        pairs.append({"case": i, "first": "ours" if i % 2 == 0 else "eager",
                      "ours_ms": ours_ms, "eager_ms": eager_ms, "ratio": eager_ms / ours_ms})
    return pairs


def eager_report(timer, pairs):
    """The ``pytorch_eager`` section: the timer's facts, its per-case percentiles, every
    pair and the median of the pairs' ratios."""
    return {**timer.describe(),
            "inference_ms_per_case": percentiles([p["eager_ms"] for p in pairs]),
            "comparison": "interleaved case by case, the order alternating (ours, eager), "
                          "(eager, ours), ...; ours = preprocess to heads of the stage clock",
            "pairs": pairs,
            "ratio_median": float(np.median([p["ratio"] for p in pairs]))}


def _warm_up(pipe, cases, out_dir, karyogram, warmup_s):
    """``warmup_s`` seconds of whole cases (at least one); returns how many ran."""
    deadline = time.perf_counter() + warmup_s
    warm = 0
    while time.perf_counter() < deadline or warm == 0:
        time_case(pipe, cases[warm % len(cases)], out_dir, karyogram)
        warm += 1
    return warm


def _time_cases(pipe, cases, out_dir, karyogram, warmup_s, eager=None):
    """After the warm-up, each case once, one after the other, interleaved with ``eager``
    (``vfinfer_export.reference.EagerTimer``) when given: ``(ms per stage per case,
    end-to-end ms per case, chromosomes per case, warm-up cases, pairs or None)``."""
    warm = _warm_up(pipe, cases, out_dir, karyogram, warmup_s)
    per_stage = {s: [] for s in STAGES}
    end_to_end, counts = [], []

    def ours(i):
        stages, total, n = time_case(pipe, cases[i], out_dir, karyogram)
        for s in STAGES:
            per_stage[s].append(stages.get(s, 0.0))
        end_to_end.append(total)
        counts.append(n)
        return sum(stages.get(s, 0.0) for s in INFERENCE_STAGES)

    if eager is None:
        for i in range(len(cases)):
            ours(i)
        return per_stage, end_to_end, counts, warm, None
    loaded = [read_case(c)[0] for c in cases]
    eager.warm_up(loaded[0], warmup_s)
    pairs = interleave(len(cases), ours, lambda i: eager(loaded[i]))
    for pair, case in zip(pairs, cases):
        pair["case"] = case.name
    return per_stage, end_to_end, counts, warm, pairs


def _summed(per_stage, stages):
    """The percentiles of each case's ms summed over ``stages``."""
    return percentiles([sum(ms) for ms in zip(*(per_stage[s] for s in stages))])


def run_bench(model_dir=None, backend="auto", n_cases=20, n_chromosomes=46, batch_size=None,
              threads=0, warmup_s=3.0, seed=0, reference=None, precision=None, log=print,
              karyogram=True, no_reference="not requested", cells_dir=None):
    """Time synthetic cases (or ``given_cases`` of ``cells_dir``: ``n_chromosomes`` is then
    their mean count, rounded); ``reference`` adds the PyTorch eager figures, else the report
    says ``no_reference`` in their place. ``reference(manifest, threads, batch_size)`` makes
    the eager timer (``vfinfer_export.reference.EagerTimer``, which the command line passes
    in: this layer never imports the torch side)."""
    with tempfile.TemporaryDirectory(prefix="vfinfer-bench-") as tmp:
        cases = make_cases(Path(tmp) / "cases", n_cases, n_chromosomes, seed) \
            if cells_dir is None else given_cases(cells_dir, n_cases)
        out_dir = Path(tmp) / "out"
        with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                      precision=precision) as pipe:
            manifest = pipe.manifest
            eager = reference(manifest, threads, pipe.batch_size) if reference else None
            per_stage, end_to_end, counts, warm, pairs = _time_cases(
                pipe, cases, out_dir, karyogram, warmup_s, eager)
            batch_run = time_batch_run(pipe, cases, Path(tmp) / "batch-out",
                                       karyogram=karyogram)
            backend_info = pipe.backend.describe()
            used_batch = pipe.batch_size
        ref = eager_report(eager, pairs) if eager else {"skipped": no_reference}
    structural = per_stage.pop("structural")
    n_chromosomes = n_chromosomes if cells_dir is None else round(float(np.mean(counts)))

    gmac = count_macs(manifest.config) / 1e9
    e2e = percentiles(end_to_end)
    network = _summed(per_stage, ("gnet", "lnet", "heads"))
    inference = _summed(per_stage, INFERENCE_STAGES)
    cpu = cpu_facts()
    achieved = gmac * n_chromosomes / (network["median"] / 1000)
    report = {
        "machine": {"cpu": cpu, "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {"model_dir": str(manifest.model_dir), "preset": manifest.config.preset,
                     "backend": backend_info, "cases": len(cases),
                     "cells": str(cells_dir) if cells_dir else "synthetic (vfinfer synth)",
                     "chromosomes": n_chromosomes,
                     "batch": used_batch, "threads": threads or "default",
                     "warmup_s": warmup_s, "warmup_cases": warm, "karyogram": karyogram},
        "gmac_per_chromosome": gmac,
        "stages_ms_per_case": {s: percentiles(v) for s, v in per_stage.items()},
        "end_to_end_ms_per_case": e2e,
        "ms_per_image": e2e["median"] / n_chromosomes,
        "images_per_second": n_chromosomes / (e2e["median"] / 1000),
        "network_ms_per_case": network,
        "inference_ms_per_case": inference,
        "outside_networks_fraction": 1 - network["median"] / e2e["median"],
        # vfinfer run over all cases, reading and writing overlapped with the engines; its
        # outside share is against the networks' time of the one-by-one runs above
        "batch_run_ms_per_case": percentiles(batch_run),
        "batch_run_ms_per_image": float(np.median(batch_run)) / n_chromosomes,
        "batch_run_outside_networks_fraction": 1 - network["median"] / np.median(batch_run),
        "achieved_gmacs": achieved,
        "fraction_of_fp32_peak": _fp32_fraction(achieved, cpu, backend_info),
        "pytorch_eager": ref,
    }
    return _with_extras(report, ref, structural, end_to_end)


def _fp32_fraction(achieved, cpu, backend_info):
    """Achieved GMAC/s over the FP32 peak; None for INT8 / FP16 / BF16 graphs, which the FP32
    peak does not bound, and where the peak is unknown."""
    if not cpu["fp32_peak_gmacs"] or backend_info.get("precision", "fp32") != "fp32":
        return None
    return achieved / cpu["fp32_peak_gmacs"]


def _peak_text(peak, cpu, precision):
    """`` = N % of FP32 peak ...`` for FP32 graphs; what the figure is not for the others."""
    if peak:
        return (f" = {peak:.0%} of FP32 peak {cpu['fp32_peak_gmacs']:.0f} GMAC/s "
                f"({cpu['peak_rule']})")
    if precision != "fp32":
        return f" ({precision.upper()} graphs: the FP32 peak does not bound them)"
    return ""


def _with_extras(report, ref, structural, end_to_end):
    """The report with the eager speedup and the structural score's cost where they apply."""
    if "ratio_median" in ref:
        report["speedup_vs_pytorch"] = ref["ratio_median"]  # the median of the pairs' ratios
    if any(structural):
        report.update(structural_cost(structural, end_to_end))
    return report


def structural_cost(structural, end_to_end):
    """The structural score's stage per case and what it adds to a case: the median over
    cases of its ms / (the case's end-to-end ms without it)."""
    added = [s / (total - s) for s, total in zip(structural, end_to_end)]
    return {"structural_ms_per_case": percentiles(structural),
            "structural_added_fraction": float(np.median(added))}


def format_report(report):
    lines = [f"{'stage':12s} {'median ms':>10s} {'p90 ms':>9s} {'p99 ms':>9s}"]
    for stage, p in report["stages_ms_per_case"].items():
        lines.append(f"{stage:12s} {p['median']:10.2f} {p['p90']:9.2f} {p['p99']:9.2f}")
    e = report["end_to_end_ms_per_case"]
    lines.append(f"{'end to end':12s} {e['median']:10.2f} {e['p90']:9.2f} {e['p99']:9.2f}")
    s = report["settings"]
    lines.append(f"{s['chromosomes']} chromosomes per case, {s['cases']} cases, batch "
                 f"{s['batch']}, threads {s['threads']}, backend {s['backend']['name']}")
    lines.append(f"ms per image {report['ms_per_image']:.2f}   images/s "
                 f"{report['images_per_second']:.0f}   outside the networks "
                 f"{report['outside_networks_fraction']:.1%}")
    b = report["batch_run_ms_per_case"]
    lines.append(f"batch run (vfinfer run, reading and writing overlapped): {b['median']:.2f} "
                 f"ms per case, {report['batch_run_ms_per_image']:.2f} ms per image, outside "
                 f"the networks {report['batch_run_outside_networks_fraction']:.1%} "
                 f"(median of {b['n']} runs over {s['cases']} cases)")
    cpu = report["machine"]["cpu"]
    peak = report["fraction_of_fp32_peak"]
    lines.append(f"{report['gmac_per_chromosome']:.3f} GMAC/chromosome, "
                 f"{report['achieved_gmacs']:.1f} GMAC/s in the networks"
                 + _peak_text(peak, cpu, s["backend"].get("precision", "fp32")))
    if "structural_ms_per_case" in report:
        lines.append(f"structural score {report['structural_ms_per_case']['median']:.2f} ms per "
                     f"case: adds {report['structural_added_fraction']:.1%} to a case")
    ref = report["pytorch_eager"]
    if "ratio_median" in ref:
        lines.append(f"PyTorch eager, preprocess to heads, same threads, interleaved case by "
                     f"case: {ref['inference_ms_per_case']['median']:.1f} ms per case vs "
                     f"{report['inference_ms_per_case']['median']:.1f} ms here; median of "
                     f"the {len(ref['pairs'])} pairs' ratios {report['speedup_vs_pytorch']:.2f}x")
    else:
        lines.append(f"PyTorch eager comparison: {ref.get('skipped')}")
    return "\n".join(lines)


def save_report(report, path):
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))


def print_and_save(report, path=None):
    """A benchmark script's ending: the report as JSON on stdout, and in ``path`` if given."""
    print(json.dumps(report, indent=2))
    if path:
        save_report(report, path)
