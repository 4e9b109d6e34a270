"""ONNX export of a Varifocal-Net model with checks against PyTorch.

Writes ``gnet.onnx``, ``lnet.onnx``, ``heads.onnx`` and ``manifest.json`` into a fresh
directory: each graph has a dynamic batch axis, is fully checked with ``onnx.checker`` and is
run on ONNX Runtime against PyTorch at several batch sizes. The directory only appears when
every check passed (it is built under a temporary name and renamed at the end). The TensorRT
op audit (``op_audit.py``) of each graph goes into the manifest's ``op_audit``; a graph that
TensorRT could not parse is a warning in the log, not a failure.

Graph outputs are the tensors the runtime needs:
  gnet  image (N,1,G,G)               -> g_features (N,C,p,p), loc (N,3), g_type_logits,
                                         g_polarity_logits
  lnet  crop (N,1,L,L)                -> l_features (N,C,p,p)
  heads g_features, l_features        -> type_probs (N,24), polarity_probs (N,2)
"""

import contextlib
import io
import logging
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import vfinfer
from vfinfer.backends.ort import make_session
from vfinfer.model.manifest import (
    build_manifest,
    load_manifest,
    sha256_file,
    write_json_atomic,
)
from vfinfer.tools.precision.onnx_graph import io_records

from .op_audit import format_audit, op_audit

OPSET = 18  # opset 18 keeps every op in TensorRT 10/11's ONNX parser (see op_audit.py)
PROTOBUF_LIMIT = 2 ** 31 - 1
PARITY_BATCHES = (1, 7, 46)
PROBABILITY_TOLERANCE = 1e-4  # abs, on probabilities and the sigmoid localization output


class ExportError(RuntimeError):
    """Export or its checks failed; nothing was written at the destination."""


def require_parity(parity, log, agreement=".4%"):
    """Log one graph's parity ({shape or batch: {max_abs, agreement}}) and raise
    ``ExportError`` when its worst max abs error is above ``PROBABILITY_TOLERANCE``."""
    log("parity (ONNX Runtime vs PyTorch): " + ", ".join(
        f"{k}: max abs {v['max_abs']:.1e}, agreement {v['agreement']:{agreement}}"
        for k, v in parity.items()))
    worst = max(v["max_abs"] for v in parity.values())
    if worst > PROBABILITY_TOLERANCE:
        raise ExportError(f"parity check failed: max abs error {worst:.2e} > "
                          f"{PROBABILITY_TOLERANCE:.0e}")


class _GExport(nn.Module):
    def __init__(self, gnet):
        super().__init__()
        self.gnet = gnet

    def forward(self, image):
        return self.gnet(image)


class _LExport(nn.Module):
    def __init__(self, lnet):
        super().__init__()
        self.lnet = lnet

    def forward(self, crop):
        return self.lnet(crop)[0]


class _HeadsExport(nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, g_features, l_features):
        return self.heads.probabilities(g_features, l_features)


GRAPHS = {
    "gnet": (["image"], ["g_features", "loc", "g_type_logits", "g_polarity_logits"]),
    "lnet": (["crop"], ["l_features"]),
    "heads": (["g_features", "l_features"], ["type_probs", "polarity_probs"]),
}
BOUNDED_OUTPUTS = {"loc", "type_probs", "polarity_probs"}


def _wrappers(model):
    return {"gnet": _GExport(model.gnet), "lnet": _LExport(model.lnet),
            "heads": _HeadsExport(model.heads)}


def example_inputs(model, batch, seed=0):
    """Inputs for each graph at ``batch``: z-scored noise images and the features they give."""
    config = model.config
    gen = torch.Generator().manual_seed(seed + batch)
    image = torch.randn(batch, 1, config.g_input, config.g_input, generator=gen)
    crop = torch.randn(batch, 1, config.l_input, config.l_input, generator=gen)
    with torch.no_grad():
        g_features = model.gnet(image)[0]
        l_features = model.lnet(crop)[0]
    return {"gnet": (image,), "lnet": (crop,), "heads": (g_features, l_features)}


def _export_graph(module, inputs, names, path):
    input_names, output_names = names
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch_logger = logging.getLogger("torch.onnx")
    level = torch_logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch_logger.setLevel(logging.ERROR)  # progress and optional-op notes, not problems
        torch.onnx.export(
            module, inputs, str(path),
            input_names=input_names, output_names=output_names,
            dynamic_shapes=tuple({0: batch} for _ in inputs),
            opset_version=OPSET,
            external_data=n_bytes > 0.9 * PROTOBUF_LIMIT,  # one file unless too big
        )
    torch_logger.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)


def _files_of(path):
    """The graph file and its external-data files, if any."""
    return sorted(p.name for p in path.parent.iterdir()
                  if p.name == path.name or p.name.startswith(path.name + "."))


def check_parity(model, graph_paths, batches=PARITY_BATCHES, threads=0):
    """Run every graph on ONNX Runtime and PyTorch; max abs / relative error per output."""
    sessions = {role: make_session(p, threads) for role, p in graph_paths.items()}
    wrappers = _wrappers(model)
    report = {}
    for batch in batches:
        inputs = example_inputs(model, batch)
        for role, session in sessions.items():
            input_names, output_names = GRAPHS[role]
            with torch.no_grad():
                expected = wrappers[role](*inputs[role])
            expected = expected if isinstance(expected, tuple) else (expected,)
            feeds = {n: t.numpy() for n, t in zip(input_names, inputs[role])}
            got = session.run(output_names, feeds)
            for name, ref, out in zip(output_names, expected, got):
                ref = ref.numpy()
                max_abs = float(np.max(np.abs(out - ref)))
                scale = float(np.max(np.abs(ref)))
                entry = {"max_abs": max_abs, "max_ref": scale,
                         "relative": max_abs / scale if scale else max_abs}
                if name != "loc" and ref.ndim == 2:
                    entry["argmax_agreement"] = float(np.mean(out.argmax(1) == ref.argmax(1)))
                report.setdefault(role, {}).setdefault(name, {})[str(batch)] = entry
    return report


def parity_failures(report):
    """Outputs whose error breaks the export's tolerance, as readable strings."""
    failures = []
    for role, outputs in report.items():
        for name, per_batch in outputs.items():
            for batch, entry in per_batch.items():
                if name in BOUNDED_OUTPUTS and entry["max_abs"] > PROBABILITY_TOLERANCE:
                    failures.append(f"{role}.{name} at batch {batch}: max abs error "
                                    f"{entry['max_abs']:.2e} > {PROBABILITY_TOLERANCE:.0e}")
    return failures


def format_parity(report):
    lines = [f"{'graph.output':28s} {'batch':>5s} {'max abs err':>12s} {'rel to max':>11s} "
             f"{'argmax':>7s}"]
    for role, outputs in report.items():
        for name, per_batch in outputs.items():
            for batch, e in per_batch.items():
                agree = f"{e['argmax_agreement']:.1%}" if "argmax_agreement" in e else "-"
                lines.append(f"{role + '.' + name:28s} {batch:>5s} {e['max_abs']:12.3e} "
                             f"{e['relative']:11.3e} {agree:>7s}")
    return "\n".join(lines)


def _prepare_destination(out_dir, overwrite):
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir}: exists and is not empty; pass --overwrite to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
        tmp.chmod(0o755)
        return tmp
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot write there ({exc.strerror})") from None


def _publish(tmp_dir, out_dir):
    """Swap the finished temporary directory into place."""
    out_dir = Path(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def producer_versions():
    return {"vfinfer": vfinfer.__version__, "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__, "opset": OPSET,
            "python": platform.python_version()}


def export_model(model, out_dir, source, overwrite=False, batches=PARITY_BATCHES,
                 log=print, threads=0, fp16=False, calib_case_dir=None, fit=True,
                 data_dir=None):
    """Export ``model`` into ``out_dir`` and return the manifest written there.

    ``fp16``: also write the audited mixed-precision FP16 graphs (vfinfer.tools.precision.fp16),
    calibrated on ``calib_case_dir`` (a case directory) or on synthetic images. ``fit``: for
    a model from ``vfinfer train`` (its ``training_record``), fit the domain figures and the
    optimal-dispatch calibration on the trainer's validation slides
    (``vfinfer.tools.evaluation.validation_fit``), read from ``data_dir`` or the recorded
    data directory; when that cannot be read, the log says so and how to fit them later.
    """
    model = model.eval()
    tmp_dir = _prepare_destination(out_dir, overwrite)
    try:
        graphs, paths, audits = {}, {}, {}
        examples = example_inputs(model, 2)
        for role, module in _wrappers(model).items():
            path = tmp_dir / f"{role}.onnx"
            log(f"exporting {role} -> {path.name}")
            _export_graph(module, examples[role], GRAPHS[role], path)
            structure = onnx.load(str(path), load_external_data=False)
            inputs, outputs = io_records(structure)
            graphs[role] = {"file": path.name, "files": _files_of(path),
                            "sha256": sha256_file(path), "inputs": inputs, "outputs": outputs}
            paths[role], audits[role] = path, op_audit(structure)
        log(format_audit(audits))
        log(f"checking ONNX Runtime against PyTorch at batch sizes {', '.join(map(str, batches))}")
        report = check_parity(model, paths, batches, threads)
        log(format_parity(report))
        failures = parity_failures(report)
        if failures:
            raise ExportError("parity check failed: " + "; ".join(failures))
        manifest = build_manifest(model.config, graphs, producer_versions(), source,
                                  parity={"batches": list(batches), "outputs": report,
                                          "tolerance_abs_probabilities": PROBABILITY_TOLERANCE})
        manifest["op_audit"] = audits
        if getattr(model, "training_record", None):
            manifest["training"] = model.training_record
        write_json_atomic(tmp_dir / "manifest.json", manifest)
        # before publishing: the directory appears only when every step passed
        if fit and manifest.get("training"):
            from vfinfer.tools.evaluation.validation_fit import complete_model

            complete_model(tmp_dir, manifest["training"], data_dir, threads, log, out_dir,
                           source.get("path"))
        if fp16:
            from vfinfer.tools.precision.fp16 import add_fp16_graphs

            add_fp16_graphs(tmp_dir, calib_case_dir=calib_case_dir, log=log)
        manifest = load_manifest(tmp_dir).data
        _publish(tmp_dir, out_dir)
        return manifest
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
