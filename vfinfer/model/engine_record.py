"""The record written beside every TensorRT engine, and the check made before loading one.

A TensorRT plan is tied to the TensorRT version and to the GPU's compute capability it was
built with (unless built version/hardware compatible, which vfinfer does not do); a stale or
foreign plan otherwise fails deep inside the runtime with a cryptic message. ``vfinfer build``
therefore writes, for each engine, into ``manifest["engines"][role]``::

    {"file": "gnet.engine", "precision": "fp16", "tensorrt": "10.7.0",
     "cuda": "12.6", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
     "profile": {"image": [[1, 1, 128, 128], [46, 1, 128, 128], [64, 1, 128, 128]]},
     "source_graph": "gnet.onnx", "source_sha256": "...", "plan_sha256": "...",
     "built": "2026-11-22T10:00:00+00:00", ...}

and the TensorRT backend calls ``check_engine_record`` before it deserializes anything. The
engine file itself stays a plain serialized plan (``trtexec --loadEngine`` reads it): nothing
is prepended to it. Pure functions only; this module never imports tensorrt.
"""

import datetime
from pathlib import Path

from vfinfer.model.manifest import sha256_file

RECORD_FIELDS = ("file", "precision", "tensorrt", "cuda", "gpu", "compute_capability",
                 "profile", "source_graph", "source_sha256", "plan_sha256", "built")
ENGINE_PRECISION = "fp16"


def version_tuple(version, parts=2):
    """'10.7.0.23' -> (10, 7) (the first ``parts`` numeric components)."""
    numbers = []
    for piece in str(version).split(".")[:parts]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            raise ValueError(f"not a version number: {version!r}")
        numbers.append(int(digits))
    return tuple(numbers)


def format_compute_capability(major, minor):
    return f"{int(major)}.{int(minor)}"


def make_engine_record(file, machine, profile, source_graph, source_sha256, plan_sha256,
                       precision=ENGINE_PRECISION, built=None, **extra):
    """The record of one engine. ``machine``: {"tensorrt", "cuda", "gpu", "compute_capability"}.

    ``profile`` maps each input name to [min shape, opt shape, max shape] (lists of ints).
    ``extra`` fields (build path, precision check, ...) are kept after the standard ones.
    """
    record = {
        "file": str(file),
        "precision": precision,
        "tensorrt": str(machine["tensorrt"]),
        "cuda": str(machine.get("cuda", "unknown")),
        "gpu": str(machine["gpu"]),
        "compute_capability": str(machine["compute_capability"]),
        "profile": {name: [list(map(int, shape)) for shape in shapes]
                    for name, shapes in profile.items()},
        "source_graph": str(source_graph),
        "source_sha256": source_sha256,
        "plan_sha256": plan_sha256,
        "built": built or datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }
    record.update(extra)
    return record


def _rebuild(model_dir):
    return f"rebuild the engines on this machine: vfinfer build {model_dir or 'DIR'}"


def check_engine_record(record, machine, graph_sha256, plan_path=None, model_dir=None):
    """Reasons not to load an engine here, each a sentence that says how to fix it.

    ``record``: the engine's manifest record. ``machine``: {"tensorrt", "compute_capability",
    "gpu"} of this machine. ``graph_sha256``: the sha256 the manifest now lists for the
    engine's source graph (None when that graph is no longer listed). ``plan_path``: the
    engine file, whose sha256 must match the record. Returns [] when the engine may be loaded.
    """
    fix = _rebuild(model_dir)
    name = (record or {}).get("file", "engine")
    if not isinstance(record, dict):
        return [f"{name}: no engine record in the manifest; {fix}"]
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        return [f"{name}: engine record lacks {', '.join(missing)} (written by an older or "
                f"foreign tool); {fix}"]
    problems = []
    try:
        built_with = version_tuple(record["tensorrt"])
        have = version_tuple(machine["tensorrt"])
    except ValueError as exc:
        built_with = have = None
        problems.append(f"{name}: cannot compare TensorRT versions ({exc}); {fix}")
    if built_with is not None and built_with != have:
        problems.append(
            f"{name}: built with TensorRT {record['tensorrt']}, this machine has TensorRT "
            f"{machine['tensorrt']} (plans only load on the TensorRT version that built them); "
            f"{fix}")
    if str(record["compute_capability"]) != str(machine["compute_capability"]):
        problems.append(
            f"{name}: built for compute capability {record['compute_capability']} "
            f"({record['gpu']}), this GPU is {machine['compute_capability']} "
            f"({machine.get('gpu', 'unknown')}); {fix}")
    if graph_sha256 is None:
        problems.append(f"{name}: its source graph {record['source_graph']} is no longer "
                        f"listed in the manifest; {fix}")
    elif record["source_sha256"] != graph_sha256:
        problems.append(f"{name}: built from a different {record['source_graph']} (sha256 "
                        f"{str(record['source_sha256'])[:12]}..., the manifest now lists "
                        f"{graph_sha256[:12]}...): the graph was re-exported or re-converted;"
                        f" {fix}")
    if record["precision"] != ENGINE_PRECISION:
        problems.append(f"{name}: precision is {record['precision']!r}, not "
                        f"{ENGINE_PRECISION!r} (vfinfer only runs verified FP16 engines); {fix}")
    if plan_path is not None:
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            problems.append(f"{plan_path}: engine file listed in the manifest is missing; {fix}")
        elif sha256_file(plan_path) != record["plan_sha256"]:
            problems.append(f"{plan_path}: sha256 differs from the engine record (the file was "
                            f"replaced or damaged); {fix}")
    return problems


def engine_record_notes(record, machine):
    """Advice that does not block loading (same compute capability, other GPU model)."""
    notes = []
    if record.get("gpu") and machine.get("gpu") and record["gpu"] != machine["gpu"]:
        notes.append(f"{record.get('file', 'engine')}: built on {record['gpu']}, running on "
                     f"{machine['gpu']} (same compute capability); TensorRT tuned its kernels "
                     "for the other model, so rebuild for best speed")
    return notes
