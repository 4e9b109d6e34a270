"""TensorRT FP16 engines from a model directory's ONNX graphs (``vfinfer build DIR``).

One engine per graph (``gnet.engine``, ``lnet.engine``, ``heads.engine``), each a plain
serialized plan (``trtexec --loadEngine=gnet.engine`` reads it) with one optimization profile
for the dynamic batch (min 1, opt, max), recorded in ``manifest["engines"][role]`` with what
it was built from and on (vfinfer.model.engine_record).

TensorRT 10 and 11 need different recipes for the same FP16 engine, chosen by the major
version number (never by probing ``BuilderFlag`` attributes: code that guards with
``hasattr(trt.BuilderFlag, "FP16")`` silently builds FP32 engines on TensorRT 11):

* TensorRT 10 (weakly typed): the FP32 graph with ``BuilderFlag.FP16``; the numerically
  sensitive layers (the nodes listed as ``kept_fp32`` for the FP16 graph: softmax, sigmoid
  and the FC layers feeding them, plus whatever the range audit flagged) get FP32 layer
  precision and output types, enforced with ``OBEY_PRECISION_CONSTRAINTS``.
* TensorRT 11 (always strongly typed, no precision flags): the mixed-precision FP16 graph
  written by ``vfinfer.tools.precision.fp16`` (created here if missing), no precision flag,
  ``builder.create_network()`` with flags 0.

Either way the result is verified, not assumed: the plan is deserialized and read with the
engine inspector (profiling verbosity DETAILED), and the build fails unless some compute
layer runs in FP16. The pure parts (version path, profile shapes, layer matching, the
inspector verdict) are separate functions with their own tests.
"""

import json
import re
from pathlib import Path

from vfinfer.model.engine_record import ENGINE_PRECISION, make_engine_record
from vfinfer.model.manifest import (
    GRAPH_ROLES,
    MANIFEST_NAME,
    load_manifest,
    sha256_file,
    write_json_atomic,
)
from vfinfer.util.atomic import write_atomic
from vfinfer.util.machine import cuda_devices

NO_DEVICE = "no CUDA device found: vfinfer build needs an NVIDIA GPU with TensorRT"
TIMING_CACHE_NAME = "timing.cache"
OLDEST_MAJOR = 10
NEWEST_TESTED_MAJOR = 11


class BuildError(RuntimeError):
    """An engine could not be built or failed its checks; the message says which and why."""


# --------------------------------------------------------------------------- pure logic
def tensorrt_major(version):
    """'10.7.0.23' -> 10."""
    return int(str(version).split(".")[0])


def build_recipe(trt_major):
    """How to get an FP16 engine out of this TensorRT major version.

    Returns {"path", "graph_precision", "fp16_flag", "precision_constraints", "note"}.
    """
    if trt_major < OLDEST_MAJOR:
        raise BuildError(f"TensorRT {trt_major}.x is too old: vfinfer builds with TensorRT "
                         f"{OLDEST_MAJOR} or {NEWEST_TESTED_MAJOR} (pip install 'vfinfer[gpu]')")
    if trt_major == 10:
        return {"path": "trt10: FP32 graph + BuilderFlag.FP16, FP32 layer constraints",
                "graph_precision": "fp32", "fp16_flag": True, "precision_constraints": True,
                "note": None}
    note = None
    if trt_major > NEWEST_TESTED_MAJOR:
        note = (f"TensorRT {trt_major} is newer than the versions vfinfer was written for "
                f"({OLDEST_MAJOR}-{NEWEST_TESTED_MAJOR}); building the strongly typed way")
    return {"path": f"trt{trt_major}: FP16 ONNX graph, strongly typed, no precision flag",
            "graph_precision": "fp16", "fp16_flag": False, "precision_constraints": False,
            "note": note}


def _is_dynamic(dim):
    return not isinstance(dim, int) or dim <= 0


def profile_shapes(inputs, max_batch, opt_batch):
    """{input name: [min, opt, max] shapes} for a dynamic batch axis, from manifest records.

    ``inputs``: the graph's manifest inputs, [{"name", "shape", ...}] with the batch axis as a
    name (e.g. "batch") or a non-positive number. Every other axis must be fixed.
    """
    max_batch, opt_batch = int(max_batch), int(opt_batch)
    if max_batch < 1:
        raise BuildError(f"max batch must be at least 1, got {max_batch}")
    if not 1 <= opt_batch <= max_batch:
        raise BuildError(f"opt batch must be between 1 and the max batch {max_batch}, "
                         f"got {opt_batch}")
    shapes = {}
    for record in inputs:
        name, shape = record["name"], list(record["shape"])
        if not shape:
            raise BuildError(f"input {name} is a scalar; expected a batch axis")
        rest = shape[1:]
        if any(_is_dynamic(d) for d in rest):
            raise BuildError(f"input {name} has shape {shape}: only the batch axis may be "
                             "dynamic")
        if _is_dynamic(shape[0]):
            shapes[name] = [[1, *rest], [opt_batch, *rest], [max_batch, *rest]]
        else:
            shapes[name] = [list(shape)] * 3
    return shapes


_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def onnx_nodes_of_layer(name, metadata):
    """The ONNX node names a TensorRT layer came from.

    The ONNX parser writes ``[ONNX Layer: <node>]`` into each layer's metadata (several,
    separated by \\x1f, for fused layers); without metadata the layer name is used.
    """
    nodes = set(_ONNX_LAYER.findall(metadata or ""))
    return nodes or ({name} if name else set())


def kept_layer_indices(layers, kept_nodes):
    """Indices of the network layers made from ``kept_nodes``, and the nodes matched by none.

    ``layers``: [(layer name, layer metadata)] in network order.
    """
    kept = set(kept_nodes)
    indices, matched = [], set()
    for i, (name, metadata) in enumerate(layers):
        hits = onnx_nodes_of_layer(name, metadata) & kept
        if hits:
            indices.append(i)
            matched |= hits
    return indices, sorted(kept - matched)


_HALF = re.compile(r"(?<![A-Za-z])(half|fp16|float16)(?![A-Za-z0-9])", re.IGNORECASE)
_MOVEMENT = re.compile(r"reformat|noop|no_op|shuffle|constant|cast|identity|shape|copy",
                       re.IGNORECASE)


def _tensor_is_half(tensor):
    """Whether one inspector tensor entry is FP16 ("Half", "FP16", "Row major linear FP16
    format"...), whatever the key: "Format/Datatype" (TensorRT 10) or split fields (11)."""
    if isinstance(tensor, str):
        return bool(_HALF.search(tensor))
    if not isinstance(tensor, dict):
        return False
    for key, value in tensor.items():
        lowered = key.lower()
        if ("type" in lowered or "format" in lowered) and isinstance(value, str) \
                and _HALF.search(value):
            return True
    return False


def precision_verdict(info, kept_nodes=()):
    """Read the engine inspector's JSON: which layers run in FP16, and is that enough.

    A layer counts as FP16 when one of its outputs is Half (or its own precision field says
    so); it counts as FP16 *compute* unless it only moves data (reformat, shuffle, cast...).
    ``ok`` is true only when some compute layer is FP16. ``kept_fp32_in_half`` lists layers
    made only of kept-FP32 nodes that nevertheless write Half.
    """
    if isinstance(info, (str, bytes)):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as exc:
            return {"ok": False, "problem": f"engine inspector output is not JSON ({exc})"}
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not isinstance(layers, list) or not layers:
        return {"ok": False, "problem": "engine inspector listed no layers"}
    if any(not isinstance(layer, dict) for layer in layers):
        return {"ok": False, "layers": len(layers),
                "problem": "engine inspector gave layer names only: the engine was not built "
                           "with ProfilingVerbosity.DETAILED, so its precision is unknown"}
    kept = set(kept_nodes)
    half, half_compute, violations = [], [], []
    for layer in layers:
        name = str(layer.get("Name", ""))
        outputs = layer.get("Outputs") or []
        own = [v for k, v in layer.items() if "precision" in k.lower() and isinstance(v, str)]
        is_half = any(_tensor_is_half(t) for t in outputs) or any(_HALF.search(v) for v in own)
        if not is_half:
            continue
        half.append(name)
        kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}"
        if not _MOVEMENT.search(kind) and not name.startswith("Reformatting CopyNode"):
            half_compute.append(name)
        nodes = onnx_nodes_of_layer("", str(layer.get("Metadata", "")))
        if nodes and nodes <= kept:
            violations.append(name)
    verdict = {"layers": len(layers), "half_layers": len(half),
               "half_compute_layers": len(half_compute), "examples": half_compute[:5],
               "kept_fp32_in_half": violations, "ok": bool(half_compute), "problem": None}
    if not half_compute:
        verdict["problem"] = (f"no FP16 compute layer among {len(layers)} layers: TensorRT "
                              "built an FP32 engine")
    return verdict


def describe_parser_errors(parser):
    """One line per ONNX parser error: node index, name, operator and description."""
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        node = error.node()
        extra = []
        for attr in ("node_name", "node_operator"):
            method = getattr(error, attr, None)  # present from TensorRT 10 on
            value = method() if callable(method) else None
            if value:
                extra.append(str(value))
        where = f"node {node}" if node >= 0 else "graph"
        if extra:
            where += f" ({', '.join(extra)})"
        lines.append(f"{where}: {error.desc()}")
    return lines


# --------------------------------------------------------------------------- TensorRT side
def _make_logger(trt, log):
    class CapturingLogger(trt.ILogger):
        """Passes warnings and errors to ``log`` and keeps the errors for the exceptions."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            errors = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
            if severity in errors:
                self.errors.append(msg)
            if severity in errors or severity == trt.ILogger.Severity.WARNING:
                log(f"[TensorRT] {severity.name}: {msg}")

    return CapturingLogger()


def _timing_cache(config, path, log):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        if data:
            log(f"timing cache {path} does not fit this TensorRT/GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)


def _apply_fp32_constraints(trt, network, kept_nodes):
    """TensorRT 10: FP32 precision and output types on the layers of the kept nodes."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    indices, unmatched = kept_layer_indices(
        [(layer.name, getattr(layer, "metadata", "")) for layer in layers], kept_nodes)
    constrained = []
    for i in indices:
        layer = layers[i]
        if layer.type == trt.LayerType.CONSTANT:
            continue  # weights: their consumers' precision decides
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(t.dtype in (trt.float32, trt.float16) for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        constrained.append(layer.name)
    return {"layers": constrained, "unmatched_nodes": unmatched}


def build_one(trt, logger, graph_path, profile, recipe, kept_nodes, workspace_mb,
              cache_path, log):
    """Build and verify one engine; returns (plan bytes, precision verdict, constraints)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch; strongly typed on TensorRT 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph_path)):
        raise BuildError(f"{graph_path.name}: TensorRT's ONNX parser failed: "
                         + "; ".join(describe_parser_errors(parser) or logger.errors))
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profile):
        raise BuildError(f"{graph_path.name}: network inputs {sorted(names)} differ from the "
                         f"manifest's {sorted(profile)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector needs it
    constraints = None
    if recipe["fp16_flag"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if recipe["precision_constraints"]:
        constraints = _apply_fp32_constraints(trt, network, kept_nodes)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        if constraints["unmatched_nodes"]:
            log(f"warning: kept-FP32 nodes without a TensorRT layer (folded by the parser?): "
                f"{', '.join(constraints['unmatched_nodes'])}")
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        optimization_profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
    config.add_optimization_profile(optimization_profile)
    _timing_cache(config, cache_path, log)
    logger.errors.clear()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{graph_path.name}: TensorRT could not build an engine: "
                         + ("; ".join(logger.errors) or "no reason given (see the log above)"))
    plan = bytes(plan)
    if cache_path is not None:
        write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise BuildError(f"{graph_path.name}: the engine just built does not deserialize: "
                         + "; ".join(logger.errors))
    inspector = engine.create_engine_inspector()
    verdict = precision_verdict(
        inspector.get_engine_information(trt.LayerInformationFormat.JSON), kept_nodes)
    del inspector, engine
    return plan, verdict, constraints


def _kept_nodes(manifest, role, fp32_path):
    """Names of the nodes to keep in FP32: the FP16 graph's record, else the fixed rules."""
    record = manifest.data["graphs"].get(f"{role}_fp16")
    if record and "kept_fp32" in record:
        return [entry["node"] for entry in record["kept_fp32"]]
    import onnx

    from vfinfer.tools.precision.fp16 import sensitive_nodes

    return [entry["node"] for entry in sensitive_nodes(onnx.load(str(fp32_path)))]


def build_engines(model_dir, max_batch=64, opt_batch=46, workspace_mb=2048, timing_cache=None,
                  log=print):
    """Build, verify and record FP16 engines for the three graphs of ``model_dir``.

    ``timing_cache``: a file to load and update (default: ``timing.cache`` in the model
    directory). Returns {role: engine record}. Raises RuntimeError (BuildError) with one
    clear line when there is no GPU, the parser or builder fails, or an engine has no FP16
    layer.
    """
    count, _description = cuda_devices()
    if count == 0:
        raise RuntimeError(NO_DEVICE)
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BuildError(f"TensorRT is not installed ({exc}): pip install 'vfinfer[gpu]'") \
            from None
    from vfinfer.backends.trt import machine_facts

    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    recipe = build_recipe(tensorrt_major(trt.__version__))
    if recipe["note"]:
        log(f"note: {recipe['note']}")
    if recipe["graph_precision"] == "fp16" and any(
            f"{role}_fp16" not in manifest.data["graphs"] for role in GRAPH_ROLES):
        from vfinfer.tools.precision.fp16 import add_fp16_graphs

        log("no FP16 graphs in the model directory yet: converting them first")
        add_fp16_graphs(model_dir, log=log)
        manifest = load_manifest(model_dir)
    machine = machine_facts()
    cache_path = Path(timing_cache) if timing_cache else model_dir / TIMING_CACHE_NAME
    logger = _make_logger(trt, log)
    log(f"TensorRT {trt.__version__} on {machine['gpu']} (sm {machine['compute_capability']}):"
        f" {recipe['path']}")
    settings = {"max_batch": int(max_batch), "opt_batch": int(opt_batch),
                "workspace_mb": int(workspace_mb), "cache_path": cache_path}
    return {role: _build_role(trt, logger, model_dir, manifest, role, recipe, machine,
                              settings, log)
            for role in GRAPH_ROLES}


def _build_role(trt, logger, model_dir, manifest, role, recipe, machine, settings, log):
    """Build, verify, write and record one graph's engine; its manifest record."""
    max_batch, opt_batch = settings["max_batch"], settings["opt_batch"]
    fp32_path = manifest.graph_path(role)
    source_key = role if recipe["graph_precision"] == "fp32" else f"{role}_fp16"
    graph_path = manifest.graph_path(role, recipe["graph_precision"])
    graph_record = manifest.data["graphs"][source_key]
    profile = profile_shapes(graph_record["inputs"], max_batch, opt_batch)
    kept = _kept_nodes(manifest, role, fp32_path)
    log(f"building {role}.engine from {graph_path.name} (batch 1/{opt_batch}/{max_batch})")
    plan, verdict, constraints = build_one(trt, logger, graph_path, profile, recipe, kept,
                                           settings["workspace_mb"], settings["cache_path"],
                                           log)
    if not verdict["ok"]:
        raise BuildError(f"{role}.engine: {verdict['problem']} ({recipe['path']}); "
                         "refusing to record it as an FP16 engine")
    if verdict.get("kept_fp32_in_half"):
        log(f"warning: {role}: layers of kept-FP32 nodes write FP16: "
            + ", ".join(verdict["kept_fp32_in_half"]))
    engine_path = model_dir / f"{role}.engine"
    write_atomic(engine_path, plan)
    record = make_engine_record(
        engine_path.name, machine, profile, source_graph=graph_path.name,
        source_sha256=graph_record["sha256"], plan_sha256=sha256_file(engine_path),
        precision=ENGINE_PRECISION, build_path=recipe["path"], max_batch=max_batch,
        opt_batch=opt_batch, workspace_mb=settings["workspace_mb"], kept_fp32=kept,
        fp32_constraints=constraints,
        precision_check={k: verdict[k] for k in ("layers", "half_layers",
                                                 "half_compute_layers", "examples")})
    data = load_manifest(model_dir).data
    data.setdefault("engines", {})[role] = record
    write_json_atomic(model_dir / MANIFEST_NAME, data)
    log(f"  {engine_path.name}: {len(plan) / 2**20:.1f} MiB, {verdict['half_compute_layers']}"
        f" of {verdict['layers']} layers in FP16")
    return record
