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

Here: the search over calibration methods and rules. Beside it: ``int8_rules`` (what is
quantized, the nodes kept FP32), ``int8_data`` (calibration and holdout images),
``int8_latency`` (FP32 vs INT8 timing), ``int8_record`` (the graphs' records and the audit).
"""

import io
import logging
import tempfile
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np

from vfinfer.model.audits import MIN_TYPE_AGREEMENT, int8_usable
from vfinfer.model.manifest import (
    GRAPH_ROLES,
    load_manifest,
    remove_precision_graphs,
)
from vfinfer.tools.precision.agreement import (
    agreement_figures,
    calibration_feeds,
    earlier_graphs,
    format_agreement,
    network_outputs,
    restore_on_failure,
)
from vfinfer.tools.precision.int8_data import read_inputs
from vfinfer.tools.precision.int8_latency import (
    LATENCY_BATCH,
    LATENCY_REPEATS,
    LATENCY_THREADS,
    measure_latency,
)
from vfinfer.tools.precision.int8_record import record_int8
from vfinfer.tools.precision.int8_rules import (
    CALIB_BATCH,
    KEPT_RULES,
    OP_TYPES_TO_QUANTIZE,
    PERCENTILE,
    check_int8_graph,
    complete_kept,
)
from vfinfer.tools.precision.onnx_graph import ensure_node_names

METHODS = ("minmax", "percentile", "entropy")  # tried in this order until one passes
MAX_CALIB_IMAGES = 256  # evenly spaced over the calibration images (bounds memory and time)


# --------------------------------------------------------------------------- the usable rule


# --------------------------------------------------------------------------- graph helpers


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
                   reduce_range=False, reader=None):
    """``quantize_static`` (QDQ, per-channel) of a pre-processed graph; ``reduce_range``: 7-bit
    weights, which ONNX Runtime recommends for CPUs without VNNI, where its U8S8 kernels add
    pairs of products in 16 bits (VPMADDUBSW) and can saturate. ``reader``: a calibration
    data reader to use instead of batches of ``feeds``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra = {"CalibStridedMinMax": 1}  # one batch per collect_data call, any method
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with _quiet_quantizer(), redirect_stdout(io.StringIO()):  # the calibrators print progress
        if reader is None:
            reader = _feed_reader(feeds, batch)
        quantize_static(str(pre_path), str(out_path), reader,
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


# --------------------------------------------------------------------------- model directory


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


def mix_ms(timed, roles):
    """Median ms of the three graphs with ``roles`` in INT8 and the rest in FP32."""
    return sum(timed[role]["int8" if role in roles else "fp32"]["median_ms"]
               for role in GRAPH_ROLES)


PARTIAL_ROLES = (("lnet", "heads"), ("lnet",), ("heads",))  # tried in order: most time first


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
    data_in = read_inputs(calib_case_dirs, holdout_case_dirs, max_calib_images)
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
        record_int8(model_dir, data, data_in, found, settings)
    _log_outcome(data["int8_audit"], found, log)
    return data["int8_audit"]


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
    roles, subset_agreement = int8_roles(chosen, per_graph, built, fp32_paths, check,
                                         settings["min_type_agreement"], log)
    latency = None
    if settings["latency_threads"]:
        log("timing FP32 vs INT8 graphs (ONNX Runtime CPU, batch "
            f"{LATENCY_BATCH}, threads {', '.join(map(str, settings['latency_threads']))}) ...")
        latency = measure_latency(fp32_paths, {r: p for r, (p, _) in built.items()}, feeds,
                                  threads=tuple(settings["latency_threads"]),
                                  repeats=settings["latency_repeats"])
    return {"attempts": attempts, "chosen": chosen, "per_graph": per_graph,
            "latency": latency, "fp32_paths": fp32_paths, "int8_roles": roles,
            "subset_agreement": subset_agreement}


def int8_roles(chosen, per_graph, built, fp32_paths, check, min_type_agreement, log):
    """(the graphs to run in INT8, the agreement of that mix or None): all three when the
    chosen attempt meets the rule; else the first of ``PARTIAL_ROLES`` whose graphs each
    pass alone and that passes together (the rest in FP32); else none."""
    if chosen["meets_rule"]:
        return list(GRAPH_ROLES), None
    for roles in PARTIAL_ROLES:
        if any(per_graph[role]["type_argmax_agreement"] < min_type_agreement
               for role in roles):
            continue
        figures = check({r: (built[r][0] if r in roles else fp32_paths[r])
                         for r in GRAPH_ROLES})
        log(f"  INT8 {' + '.join(roles)} only, the rest FP32: "
            + format_agreement(figures, "int8", "holdout images"))
        if int8_usable(figures, min_type_agreement)[0]:
            return list(roles), figures
    return [], None


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
            if 0 < len(found["int8_roles"]) < len(GRAPH_ROLES):
                log(f"    as used (INT8 {' + '.join(found['int8_roles'])}): "
                    f"{mix_ms(latency[key], found['int8_roles']):.1f} ms")
        if latency["busy"]:
            log(f"  note: {latency['note']}")
    for note in audit["warnings"]:
        log(f"warning: {note}")
    log(("INT8 graphs usable: " if audit["usable"] else "INT8 graphs NOT usable: ")
        + audit["reason"])


__all__ = ["METHODS", "quantize_model_dir", "remove_int8_graphs"]
