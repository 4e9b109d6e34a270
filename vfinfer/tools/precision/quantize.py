"""Static INT8 graphs for ONNX Runtime on the CPU, calibrated and checked on real images.

``quantize_model_dir(model_dir, calib_case_dirs, holdout_case_dirs)`` writes
``gnet_int8.onnx``, ``lnet_int8.onnx`` and ``heads_int8.onnx`` beside the FP32 graphs, records
them in the manifest as ``graphs["<role>_int8"]`` and adds an ``int8_audit`` section. The
ONNX Runtime backend runs precision "int8" only when that audit says ``"usable": true``
(``int8_refusal`` below is the check it applies).

How the graphs are made (ONNX Runtime's own tools: ``onnxruntime.quantization``, which needs
the ``onnx`` package but not torch):

* ``quant_pre_process`` (ONNX shape inference and ORT's basic graph optimizations; symbolic
  shape inference is skipped: it needs sympy and adds nothing for fixed-size CNNs);
* ``quantize_static`` in QDQ format, per-channel INT8 weights (``QInt8``, symmetric), UINT8
  activations (``QUInt8``, asymmetric), calibrated with a ``CalibrationDataReader`` that
  feeds each graph what it sees at run time: G-Net the preprocessed calibration images,
  L-Net the eq. 5 crops the FP32 pipeline cuts from them, the heads the FP32 G/L features;
* ``BatchNormalization`` and ``Add`` are not quantized: the trunk's pre-activation BN has no
  INT8 kernel on the ORT CPU provider (it would run as DequantizeLinear -> float BN ->
  QuantizeLinear, no faster) and INT8 scale / variance lose small variances; requantizing the
  residual sums added feature error on a trained G-Net at no speed gain (the convolutions
  still run as INT8 QLinearConv);
* nodes kept in FP32 (``nodes_to_exclude``), each recorded with its reason: each trunk's stem
  convolution (it reads the z-scored image, whose 8-bit quantization cost the most agreement
  of any single layer on a trained G-Net; under 1 % of the MACs), the localizer's whole FC
  path to the Sigmoid (box coordinates, eq. 5), each Softmax head with the FC that feeds it
  and the activation in front of that FC. When the holdout check fails with every
  calibration method, one more attempt keeps every fully connected layer in FP32.

The agreement check runs the FP32 and the INT8 pipeline (the same NumPy steps as
``vfinfer.pipeline``) on holdout images that were not used for calibration and reports type
and polarity argmax agreement, box IoU (mean, min) and the largest probability difference.
Below ``MIN_TYPE_AGREEMENT`` (99.5 %) type agreement the graphs are kept for inspection but
recorded ``"usable": false`` with the reason.
"""

import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np

from vfinfer.backends.ort import make_session
from vfinfer.model.audits import MIN_TYPE_AGREEMENT, int8_usable
from vfinfer.model.manifest import (
    GRAPH_ROLES,
    load_manifest,
    remove_precision_graphs,
    sha256_file,
)
from vfinfer.tools.precision.agreement import (
    LINEAR_OPS,
    agreement_figures,
    bounded_nodes,
    calibration_feeds,
    earlier_graphs,
    format_agreement,
    graph_io_types,
    io_and_checker_problems,
    network_outputs,
    op_counts,
    restore_on_failure,
    write_manifest,
)
from vfinfer.tools.precision.onnx_graph import consumers as graph_consumers
from vfinfer.tools.precision.onnx_graph import ensure_node_names, io_records, ordered_records
from vfinfer.tools.precision.onnx_graph import producers as graph_producers
from vfinfer.util.images import read_case

METHODS = ("minmax", "percentile", "entropy")  # tried in this order until one passes
PERCENTILE = 99.999
MAX_CALIB_IMAGES = 256  # evenly spaced over the calibration images (bounds memory and time)
CALIB_BATCH = 16
LATENCY_BATCH = 46  # one normal cell
LATENCY_THREADS = (1, 2)
LATENCY_REPEATS = 10
BOX_IOU_WARN_MEAN = 0.95  # box agreement below these is reported as a warning
BOX_IOU_WARN_MIN = 0.8
SMALL_HOLDOUT = 200  # below this one disagreement is more than 0.5 %: the rule cannot resolve
BUSY_SHARE = 0.10  # other processes using more than this share of the cores: timings flagged
NOT_QUANTIZED_OPS = {
    "BatchNormalization": "pre-activation BN: no INT8 kernel on the ORT CPU provider (would "
                          "run as dequantize -> float BN -> quantize) and INT8 scale/variance "
                          "lose small variances",
    "Add": "residual additions: requantizing the residual stream after every unit added "
           "feature error on a trained G-Net, and the float BN after each addition needs "
           "float input anyway (the convolutions still run in INT8)",
}
OP_TYPES_TO_QUANTIZE = ("Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Reshape", "Flatten",
                        "Concat")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
LOCALIZER_PATH_OPS = ("Gemm", "MatMul", "Relu", "Reshape", "Flatten")
BOUNDED_OPS = {
    "Softmax": "softmax output: probabilities feed argmax and the 0.9 dispatch threshold",
    "Sigmoid": "sigmoid output: the localization u of eq. 5 (box = T1 + u * T2)",
}
FEEDS_REASON = {
    "Softmax": "classifier logits FC feeding the softmax (decides the argmax)",
    "Sigmoid": "localization output FC feeding the sigmoid (box coordinates, eq. 5)",
}
LOCALIZER_REASON = ("localizer FC path to the sigmoid (box coordinates, eq. 5; "
                    "a few % of G-Net's MACs)")
INPUT_REASON = ("input layer: reads the z-scored image, whose 8-bit quantization loses band "
                "contrast (the white background stretches the range); under 1 % of the MACs")
ACTIVATION_REASON = "activation in front of an FP32 FC (keeps that FC's input unquantized)"
EXTENDED_REASON = ("every fully connected layer kept FP32: the holdout check failed with "
                   "convolutions and FCs quantized")
ALL_KEPT_REASON = ("every node with weights in this graph is kept FP32, so the rest stays "
                   "FP32 too (quantizing data movement alone adds rounding, no speed)")
SETTINGS = {
    "format": "QDQ", "per_channel": True, "activation_type": "QUInt8 (asymmetric)",
    "weight_type": "QInt8 (symmetric)", "op_types_to_quantize": list(OP_TYPES_TO_QUANTIZE),
    "pre_process": "quant_pre_process(skip_symbolic_shape=True)",
}


class Int8Error(RuntimeError):
    """The INT8 conversion or one of its checks failed; nothing was recorded."""


# --------------------------------------------------------------------------- the usable rule




# --------------------------------------------------------------------------- graph helpers
def sensitive_nodes(model):
    """Nodes kept FP32 by rule, as ``[{"node", "op", "reason"}]`` in graph order.

    Each layer with weights that reads a graph input directly (the trunk's stem convolution
    on the normalized image); each Softmax with the FC feeding it and the activation in front
    of that FC; each Sigmoid with the localizer path behind it (FCs, activations and the
    flatten, back to the pooling).
    """
    producers = graph_producers(model)
    graph_inputs = {v.name for v in model.graph.input}
    kept = {node.name: (node.op_type, INPUT_REASON) for node in model.graph.node
            if node.op_type in WEIGHTED_OPS and node.input[0] in graph_inputs}
    for name, entry in bounded_nodes(model, BOUNDED_OPS, FEEDS_REASON).items():
        kept.setdefault(name, entry)
    for node in model.graph.node:
        source = producers.get(node.input[0]) if node.op_type in BOUNDED_OPS else None
        if source is None or source.op_type not in LINEAR_OPS:
            continue
        current = producers.get(source.input[0])
        if node.op_type == "Softmax":
            if current is not None and current.op_type == "Relu":
                kept.setdefault(current.name, (current.op_type, ACTIVATION_REASON))
            continue
        while current is not None and current.op_type in LOCALIZER_PATH_OPS:
            reason = ACTIVATION_REASON if current.op_type == "Relu" else LOCALIZER_REASON
            kept.setdefault(current.name, (current.op_type, reason))
            current = producers.get(current.input[0])
    return ordered_records(model, kept)


def extended_nodes(model):
    """``sensitive_nodes`` plus every FC and the activations right after FCs."""
    kept = {e["node"]: (e["op"], e["reason"]) for e in sensitive_nodes(model)}
    producers = graph_producers(model)
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS:
            kept.setdefault(node.name, (node.op_type, EXTENDED_REASON))
        elif node.op_type == "Relu":
            source = producers.get(node.input[0])
            if source is not None and source.op_type in LINEAR_OPS:
                kept.setdefault(node.name, (node.op_type, EXTENDED_REASON))
    return ordered_records(model, kept)


KEPT_RULES = {"sensitive": sensitive_nodes, "all-fc": extended_nodes}


def complete_kept(model, kept):
    """Keep the whole graph FP32 when every node with weights is kept already: quantizing
    the reshapes and concatenations alone would only add rounding, no speed."""
    names = {e["node"] for e in kept}
    if any(n.op_type in WEIGHTED_OPS and n.name not in names for n in model.graph.node):
        return kept
    rest = {n.name: (n.op_type, ALL_KEPT_REASON) for n in model.graph.node
            if n.name not in names}
    return ordered_records(model, {**{e["node"]: (e["op"], e["reason"]) for e in kept}, **rest})


def check_int8_graph(fp32_model, int8_model, kept):
    """Raise Int8Error unless the INT8 graph keeps the contract; return the count of
    quantized weight tensors.

    Graph inputs and outputs keep their names and float32 type; every kept node is present,
    reads its weights as FP32 initializers and feeds no QuantizeLinear; a kept FC, Sigmoid or
    Softmax reads no DequantizeLinear output; something is quantized; onnx.checker passes.
    """
    import onnx

    problems = io_and_checker_problems(fp32_model, int8_model)
    if any(t != onnx.TensorProto.FLOAT for t in graph_io_types(int8_model).values()):
        problems.append("a graph input or output is not float32")
    producers, consumers = graph_producers(int8_model), graph_consumers(int8_model)
    inits = {i.name for i in int8_model.graph.initializer}
    nodes = {n.name: n for n in int8_model.graph.node}
    for entry in kept:
        node = nodes.get(entry["node"])
        if node is None:
            problems.append(f"kept node {entry['node']} is missing from the INT8 graph")
            continue
        feeds_bounded = any(c.op_type in BOUNDED_OPS for o in node.output
                            for c in consumers.get(o, []))
        for i, name in enumerate(node.input):
            source = producers.get(name)
            from_dq = source is not None and source.op_type == "DequantizeLinear"
            if from_dq and source.input[0] in inits:
                problems.append(f"kept node {node.name} reads quantized weights {name}")
            elif from_dq and i == 0 and (node.op_type in BOUNDED_OPS or feeds_bounded):
                problems.append(f"kept node {node.name} ({node.op_type}) reads the "
                                f"DequantizeLinear output {name}")
        for name in node.output:
            if any(c.op_type == "QuantizeLinear" for c in consumers.get(name, [])):
                problems.append(f"kept node {node.name} ({node.op_type}) feeds a QuantizeLinear")
    quantized_weights = sum(
        1 for n in int8_model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    kept_names = {e["node"] for e in kept}
    if not quantized_weights and any(n.op_type in WEIGHTED_OPS and n.name not in kept_names
                                     for n in int8_model.graph.node):
        problems.append("no weight was quantized")
    if problems:
        raise Int8Error("; ".join(problems))
    return quantized_weights


@contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization logs warnings on the root logger; hold them back here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------- images
def split_case_dirs(case_dirs):
    """No holdout given: calibrate on the first half (rounded up), check on the rest."""
    case_dirs = list(case_dirs)
    if len(case_dirs) < 2:
        raise ValueError("need at least two calibration case directories to hold some out for "
                         "the agreement check, or give holdout case directories")
    cut = (len(case_dirs) + 1) // 2
    return case_dirs[:cut], case_dirs[cut:]


def _image_key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()
                        + str(image.shape).encode()).hexdigest()


def read_case_dirs(case_dirs):
    """All images of ``case_dirs`` (gray uint8) and their paths, in the given order."""
    images, paths = [], []
    for case_dir in case_dirs:
        case_images, case_paths, _ignored = read_case(case_dir)
        images += case_images
        paths += [str(Path(p).resolve()) for p in case_paths]
    return images, paths


def check_disjoint(calib_dirs, holdout_dirs, calib, holdout):
    """Raise ValueError if calibration and holdout share a directory, a file or an image.

    ``calib`` / ``holdout`` are ``(images, paths)``. Returns the audit entry.
    """
    shared_dirs = {str(Path(d).resolve()) for d in calib_dirs} & \
        {str(Path(d).resolve()) for d in holdout_dirs}
    if shared_dirs:
        raise ValueError(f"holdout case directories are also calibration directories: "
                         f"{', '.join(sorted(shared_dirs))}")
    shared_files = set(calib[1]) & set(holdout[1])
    if shared_files:
        raise ValueError(f"{len(shared_files)} holdout images are also calibration images, "
                         f"e.g. {sorted(shared_files)[0]}")
    calib_keys = {_image_key(img) for img in calib[0]}
    same = sum(1 for img in holdout[0] if _image_key(img) in calib_keys)
    if same:
        raise ValueError(f"{same} holdout images have the same pixels as calibration images "
                         "(copied cases?); the agreement check needs unseen images")
    return {"disjoint": True, "checked": "case directories, file paths and pixel content"}


def even_subset(items, limit):
    """At most ``limit`` items, evenly spaced (all of them when they fit)."""
    if limit is None or len(items) <= limit:
        return list(items)
    index = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in index]


def agreement_warnings(figures, min_agreement=MIN_TYPE_AGREEMENT):
    """What the type rule does not cover but a user should know (not gating)."""
    notes = []
    if figures["fp32_distinct_types"] <= 2 < figures["images"]:
        notes.append(f"the FP32 model predicts only {figures['fp32_distinct_types']} type(s) "
                     f"on {figures['images']} holdout images (untrained model?): type agreement "
                     "says little here")
    if figures["polarity_argmax_agreement"] < min_agreement:
        notes.append(f"polarity argmax agreement is {figures['polarity_argmax_agreement']:.2%}")
    if figures["box_iou_mean"] < BOX_IOU_WARN_MEAN or figures["box_iou_min"] < BOX_IOU_WARN_MIN:
        notes.append(f"INT8 moves the eq. 5 boxes: IoU with FP32 mean "
                     f"{figures['box_iou_mean']:.3f}, min {figures['box_iou_min']:.3f} (up to "
                     f"{figures['box_max_abs_diff_px']:.1f} G-input px)")
    return notes


# --------------------------------------------------------------------------- quantization
def _feed_reader(feeds, batch):
    """A CalibrationDataReader over ``feeds`` in batches, with the ``__len__`` / ``set_range``
    that ``CalibStridedMinMax`` uses to collect one batch at a time (bounded memory)."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(feeds.values())))
            self.batches = [(start, min(start + batch, n)) for start in range(0, n, batch)]
            self.set_range(0, len(self.batches))

        def __len__(self):
            return len(self.batches)

        def set_range(self, start_index, end_index):
            self._pending = iter(self.batches[start_index:end_index])

        def get_next(self):
            span = next(self._pending, None)
            if span is None:
                return None
            return {name: np.ascontiguousarray(array[span[0]:span[1]])
                    for name, array in feeds.items()}

    return FeedReader()


def _method(name):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}
    if name not in table:
        raise ValueError(f"unknown calibration method {name!r}: choose from {', '.join(table)}")
    return table[name]


def preprocess_graph(source, out_path):
    """``quant_pre_process`` of one FP32 graph; returns the loaded, named model."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_quantizer():
        quant_pre_process(str(source), str(out_path), skip_symbolic_shape=True)
    model = onnx.load(str(out_path))
    ensure_node_names(model)
    onnx.save(model, str(out_path))
    return model


def quantize_graph(pre_path, out_path, feeds, method, kept, batch=CALIB_BATCH,
                   reduce_range=False):
    """``quantize_static`` (QDQ, per-channel) of a pre-processed graph; ``reduce_range``: 7-bit
    weights, which ONNX Runtime recommends for CPUs without VNNI, where its U8S8 kernels add
    pairs of products in 16 bits (VPMADDUBSW) and can saturate."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra = {"CalibStridedMinMax": 1}  # one batch per collect_data call, any method
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with _quiet_quantizer(), redirect_stdout(io.StringIO()):  # the calibrators print progress
        quantize_static(str(pre_path), str(out_path), _feed_reader(feeds, batch),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(OP_TYPES_TO_QUANTIZE),
                        nodes_to_exclude=[k["node"] for k in kept],
                        calibrate_method=_method(method), extra_options=extra,
                        reduce_range=reduce_range)


def _build_attempt(work, pre_models, pre_paths, feeds, method, rule, reduce_range=False):
    """Quantize all three graphs into ``work``; return ``{role: (path, kept)}``."""
    import onnx

    work.mkdir(parents=True, exist_ok=True)
    built = {}
    for role in GRAPH_ROLES:
        kept = complete_kept(pre_models[role], KEPT_RULES[rule](pre_models[role]))
        path = work / f"{role}_int8.onnx"
        quantize_graph(pre_paths[role], path, feeds[role], method, kept,
                       reduce_range=reduce_range)
        check_int8_graph(pre_models[role], onnx.load(str(path)), kept)
        built[role] = (path, kept)
    return built


# --------------------------------------------------------------------------- latency
def _cpu_counters():
    """(CPU seconds all processes spent busy, this process's CPU seconds, wall clock) on
    Linux, else None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user..steal (guest time is already inside user)
    return busy / hz, time.process_time(), time.perf_counter()


def _other_cpu_share(before, after, cores):
    """Share of all cores that other processes kept busy between two ``_cpu_counters``."""
    if before is None or after is None:
        return None
    wall = after[2] - before[2]
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / (wall * cores)) if wall > 0 else None


def measure_latency(fp32_paths, int8_paths, feeds, threads=LATENCY_THREADS,
                    batch=LATENCY_BATCH, repeats=LATENCY_REPEATS, warmup=2):
    """Median / min ms per graph call, FP32 vs INT8, on ORT CPU at each thread count.

    Also measures how much of the machine other processes used meanwhile (Linux
    ``/proc/stat`` minus this process's CPU time): above ``BUSY_SHARE`` the report says the
    machine was busy and the times are disturbed.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    start = _cpu_counters()
    results = {}
    for count in threads:
        per_threads = {}
        for role in GRAPH_ROLES:
            size = len(next(iter(feeds[role].values())))
            index = np.arange(batch) % size
            inputs = {name: np.ascontiguousarray(a[index]) for name, a in feeds[role].items()}
            row = {}
            for precision, paths in (("fp32", fp32_paths), ("int8", int8_paths)):
                session = make_session(paths[role], count)
                for _ in range(warmup):
                    session.run(None, inputs)
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    session.run(None, inputs)
                    times.append((time.perf_counter() - started) * 1000)
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
    share = _other_cpu_share(start, _cpu_counters(), cores)
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


def cpu_int8_facts():
    """CPU model and the INT8 dot-product instructions ORT's kernels can use."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set((re.search(r"flags\s*:\s*(.*)", info) or [None, ""])[1].split())
    relevant = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
                if f in flags]
    return {"model": model.group(1).strip() if model else None, "int8_flags": relevant,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags)}


# --------------------------------------------------------------------------- model directory
def _save_final(src, dst):
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return [dst.name]


def _search(tmp, pre_models, pre_paths, feeds, methods, check, min_type_agreement, log,
            reduce_range=False):
    """Try each calibration method (rule "sensitive"), then the best one with every FC kept
    FP32, until an attempt meets the rule. Returns ``(attempts, chosen)``: the first passing
    attempt, else the best (type agreement, then box IoU)."""
    plan = [(method, "sensitive") for method in methods]
    attempts = []
    for step, (method, rule) in enumerate(plan):  # plan may grow by one while iterating
        built = _build_attempt(tmp / f"attempt{step}", pre_models, pre_paths, feeds, method,
                               rule, reduce_range)
        figures = check({r: p for r, (p, _) in built.items()})
        meets, _reason = int8_usable(figures, min_type_agreement)
        attempts.append({"method": method, "kept_fp32_rule": rule, "agreement": figures,
                         "meets_rule": meets, "_built": built})
        line = format_agreement(figures, "int8", "holdout images")
        log(f"  {method}, kept FP32 rule '{rule}': {line}")
        if meets:
            return attempts, attempts[-1]
        if step == len(plan) - 1 and rule == "sensitive":
            best = max(attempts, key=lambda a: a["agreement"]["type_argmax_agreement"])
            plan.append((best["method"], "all-fc"))
    best = max(attempts, key=lambda a: (a["agreement"]["type_argmax_agreement"],
                                        a["agreement"]["box_iou_mean"]))
    return attempts, best


def _graph_record(built_path, final, kept):
    """Copy a built INT8 graph to its final name; its manifest record (without provenance)."""
    import onnx

    files = _save_final(built_path, final)
    model = onnx.load(str(final))
    inputs, outputs = io_records(model)
    present = {n.op_type for n in model.graph.node}
    return {
        "file": final.name, "files": files, "sha256": sha256_file(final),
        "inputs": inputs, "outputs": outputs, "precision": "int8",
        "kept_fp32": kept,
        "not_quantized_ops": {op: why for op, why in NOT_QUANTIZED_OPS.items() if op in present},
        "ops": op_counts(model),
        "quantizer": "onnxruntime.quantization quant_pre_process + quantize_static (QDQ, "
                     "per_channel=True, activations QUInt8, weights QInt8, "
                     "nodes_to_exclude=kept_fp32)",
    }


def remove_int8_graphs(model_dir):
    """Drop the INT8 graphs, their manifest entries and the audit."""
    remove_precision_graphs(model_dir, "int8")


def quantize_model_dir(model_dir, calib_case_dirs, holdout_case_dirs=None, log=print,
                       methods=METHODS, max_calib_images=MAX_CALIB_IMAGES, threads=0,
                       latency_threads=LATENCY_THREADS, latency_repeats=LATENCY_REPEATS,
                       min_type_agreement=MIN_TYPE_AGREEMENT, reduce_range=False):
    """Quantize, check and record INT8 graphs for a model directory; return the audit.

    ``calib_case_dirs``: case directories whose images calibrate the graphs (at most
    ``max_calib_images``, evenly spaced). ``holdout_case_dirs``: case directories for the
    agreement check; when None, the calibration directories are split (first half calibrates,
    the rest is checked). Calibration methods are tried in ``methods`` order until one meets
    the type agreement rule; if none does, one more attempt keeps every FC layer in FP32.
    The first passing attempt is kept, else the best one, recorded ``"usable": false``.
    ``latency_threads=()`` skips the latency measurement. ``reduce_range``: 7-bit weights
    (see ``quantize_graph``). Earlier INT8 graphs are replaced;
    on an error the manifest is left as it was and no INT8 file remains.
    """
    model_dir = Path(model_dir)
    methods = tuple(methods)
    if not methods:
        raise ValueError("no calibration method given")
    for name in methods:
        _method(name)  # an unknown name fails before any work
    data_in = _read_inputs(calib_case_dirs, holdout_case_dirs, max_calib_images)
    if earlier_graphs(model_dir, "int8"):
        log("replacing the INT8 graphs of an earlier quantization")
        remove_int8_graphs(model_dir)
    log(f"INT8 quantization of {model_dir}: {len(data_in['calib_images'])} calibration images "
        f"(of {len(data_in['calib'][0])}) from {len(data_in['calib_dirs'])} case directories, "
        f"{len(data_in['holdout'][0])} holdout images from {len(data_in['holdout_dirs'])}")
    settings = {"methods": methods, "threads": threads, "latency_threads": latency_threads,
                "latency_repeats": latency_repeats, "min_type_agreement": min_type_agreement,
                "reduce_range": reduce_range}
    with restore_on_failure(model_dir, "int8") as data, \
            tempfile.TemporaryDirectory(prefix="vfinfer-int8-") as tmp:
        found = _quantize_and_check(model_dir, Path(tmp), data_in, settings, log)
        _record(model_dir, data, data_in, found, settings)
    _log_outcome(data["int8_audit"], found, log)
    return data["int8_audit"]


def _read_inputs(calib_case_dirs, holdout_case_dirs, max_calib_images):
    """Calibration and holdout images (checked disjoint) and how they were split."""
    calib_dirs = [Path(d) for d in calib_case_dirs]
    if holdout_case_dirs:
        holdout_dirs = [Path(d) for d in holdout_case_dirs]
        split = "given"
    else:
        calib_dirs, holdout_dirs = split_case_dirs(calib_dirs)
        split = (f"automatic: the first {len(calib_dirs)} of "
                 f"{len(calib_dirs) + len(holdout_dirs)} case directories calibrate, "
                 "the rest are held out")
    if not calib_dirs:
        raise ValueError("no calibration case directories given")
    calib, holdout = read_case_dirs(calib_dirs), read_case_dirs(holdout_dirs)
    disjoint = check_disjoint(calib_dirs, holdout_dirs, calib, holdout)
    return {"calib_dirs": calib_dirs, "holdout_dirs": holdout_dirs, "split": split,
            "calib": calib, "holdout": holdout, "disjoint": disjoint,
            "calib_images": even_subset(calib[0], max_calib_images)}


def _quantize_and_check(model_dir, tmp, data_in, settings, log):
    """Search the calibration methods, then measure per-graph agreement and latency."""
    manifest = load_manifest(model_dir)
    config, threads, holdout = manifest.config, settings["threads"], data_in["holdout"][0]
    fp32_paths = {role: manifest.graph_path(role) for role in GRAPH_ROLES}
    feeds = calibration_feeds(model_dir, data_in["calib_images"], threads)
    pre_paths, pre_models = {}, {}
    for role in GRAPH_ROLES:
        pre_paths[role] = tmp / f"{role}_pre.onnx"
        pre_models[role] = preprocess_graph(fp32_paths[role], pre_paths[role])
    reference = network_outputs(fp32_paths, holdout, config, threads)

    def check(paths):
        got = network_outputs(paths, holdout, config, threads)
        return agreement_figures(reference, got, manifest.threshold)

    attempts, chosen = _search(tmp, pre_models, pre_paths, feeds, settings["methods"], check,
                               settings["min_type_agreement"], log, settings["reduce_range"])
    built = chosen["_built"]
    per_graph = {}
    for role in GRAPH_ROLES:  # one graph INT8, the others FP32: where the error comes from
        figures = check({r: (built[r][0] if r == role else fp32_paths[r]) for r in GRAPH_ROLES})
        per_graph[role] = {k: figures[k] for k in (
            "type_argmax_agreement", "polarity_argmax_agreement", "box_iou_mean",
            "box_iou_min", "prob_max_abs_diff")}
    latency = None
    if settings["latency_threads"]:
        log("timing FP32 vs INT8 graphs (ONNX Runtime CPU, batch "
            f"{LATENCY_BATCH}, threads {', '.join(map(str, settings['latency_threads']))}) ...")
        latency = measure_latency(fp32_paths, {r: p for r, (p, _) in built.items()}, feeds,
                                  threads=tuple(settings["latency_threads"]),
                                  repeats=settings["latency_repeats"])
    return {"attempts": attempts, "chosen": chosen, "per_graph": per_graph,
            "latency": latency, "fp32_paths": fp32_paths}


def _record(model_dir, data, data_in, found, settings):
    """Copy the chosen graphs into place and write their records and the audit."""
    chosen, min_agreement = found["chosen"], settings["min_type_agreement"]
    n_holdout = len(data_in["holdout"][0])
    usable, reason = int8_usable(chosen["agreement"], min_agreement)
    warnings = agreement_warnings(chosen["agreement"], min_agreement)
    if n_holdout < SMALL_HOLDOUT:
        warnings.append(f"only {n_holdout} holdout images: one disagreement is "
                        f"{1 / max(n_holdout, 1):.2%}, too coarse for the "
                        f"{min_agreement:.1%} rule; hold out at least {SMALL_HOLDOUT}")
    calibration = {"case_dirs": [str(d) for d in data_in["calib_dirs"]],
                   "images": len(data_in["calib_images"]),
                   "images_available": len(data_in["calib"][0]), "method": chosen["method"]}
    for role in GRAPH_ROLES:
        path, kept = chosen["_built"][role]
        record = _graph_record(path, model_dir / f"{role}_int8.onnx", kept)
        record["calibration"] = {**calibration, "feeds": _FEEDS[role]}
        record["source_graph"] = found["fp32_paths"][role].name
        record["source_sha256"] = data["graphs"][role]["sha256"]
        data["graphs"][f"{role}_int8"] = record
    data["int8_audit"] = _audit(data_in, found, calibration, usable, reason, warnings,
                                settings)
    write_manifest(model_dir, data)


def _audit(data_in, found, calibration, usable, reason, warnings, settings):
    """The ``int8_audit`` section of the manifest."""
    import onnx
    import onnxruntime as ort

    chosen = found["chosen"]
    selection = "the first attempt meeting the rule, in the order tried"
    if not usable:
        selection = ("the first attempt meeting the rule, in the order tried (methods in "
                     "order, then all FCs in FP32); none did: the best is kept and marked "
                     "unusable")
    n_used, n_available = calibration["images"], calibration["images_available"]
    return {
        "usable": usable,
        "reason": reason,
        "rule": {"min_type_argmax_agreement": settings["min_type_agreement"],
                 "measured_on": "holdout images (not used for calibration)"},
        "calibration": {**calibration, "batch": CALIB_BATCH,
                        "selection": "all" if n_used == n_available
                        else f"{n_used} evenly spaced",
                        "percentile": PERCENTILE if chosen["method"] == "percentile" else None},
        "holdout": {"case_dirs": [str(d) for d in data_in["holdout_dirs"]],
                    "images": len(data_in["holdout"][0]), "split": data_in["split"],
                    **data_in["disjoint"]},
        "agreement": chosen["agreement"],
        "warnings": warnings,
        "kept_fp32_rule": chosen["kept_fp32_rule"],
        "per_graph_agreement": found["per_graph"],
        "attempts": [{k: v for k, v in a.items() if k != "_built"} for a in found["attempts"]],
        "selection": selection,
        "settings": {**SETTINGS, "reduce_range": bool(settings["reduce_range"])},
        "latency": found["latency"],
        "built_on": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                     "cpu": cpu_int8_facts()},
    }


def _log_outcome(audit, found, log):
    chosen, latency = found["chosen"], found["latency"]
    log(format_agreement(chosen["agreement"], "int8", "holdout images")
        + f" [{chosen['method']}]")
    if latency:
        for key in (k for k in latency if k.startswith("threads_")):
            total = latency[key]["all_graphs"]
            log(f"  {key.replace('_', ' ')}: FP32 {total['fp32_median_ms']:.1f} ms, INT8 "
                f"{total['int8_median_ms']:.1f} ms per {LATENCY_BATCH} chromosomes "
                f"(x{total['speedup']:.2f})")
        if latency["busy"]:
            log(f"  note: {latency['note']}")
    for note in audit["warnings"]:
        log(f"warning: {note}")
    log(("INT8 graphs usable: " if audit["usable"] else "INT8 graphs NOT usable: ")
        + audit["reason"])


_FEEDS = {
    "gnet": "preprocessed G inputs of the calibration images",
    "lnet": "eq. 5 crops cut by the FP32 G-Net's localization from those G inputs",
    "heads": "FP32 G-Net and L-Net features of those images",
}


__all__ = ["Int8Error", "check_disjoint", "check_int8_graph", "extended_nodes",
           "measure_latency", "quantize_model_dir", "remove_int8_graphs", "sensitive_nodes",
           "split_case_dirs"]
