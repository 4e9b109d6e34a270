"""ONNX export of the structural score into a classifier model directory
(``vfinfer export-structural``).

Writes ``structural.onnx`` (inputs ``image`` (N, C, H, W) and ``cond`` (N, 25 or 27), output
``score`` (N, 1), and ``arm`` (N, 3) with the arm head, N dynamic;
``vfinfer.pipeline.structural``) beside the classifier's graphs
and a ``structural`` section into its ``manifest.json``: the graph's file, sha256 and tensors,
the input layout, the threshold with the validation figures it was chosen on, the views scored
(``tta``: one, or the mean with the mirror image), how the network
was trained, and the parity of ONNX Runtime against PyTorch on random inputs of
``PARITY_BATCHES`` (max abs error of the score and the arm probabilities, tolerance
``PROBABILITY_TOLERANCE``, the share of chromosomes flagged alike at the threshold, and with
the arm head the share naming the same arm). Nothing in the directory changes unless
every check passes; an existing section and graph are replaced.
"""

import os
from pathlib import Path

import numpy as np
import onnx
import torch

from vfinfer.backends.ort import make_session
from vfinfer.model.classes import N_TYPES
from vfinfer.model.manifest import load_manifest, sha256_file, write_json_atomic
from vfinfer.pipeline.structural import ARMS, CELL_MEDIAN_SHARE, TTA_GATE
from vfinfer.tools.precision.onnx_graph import io_records

from .onnx_export import (
    PROBABILITY_TOLERANCE,
    ExportError,
    _export_graph,
    producer_versions,
    require_parity,
)
from .structural_model import StructuralExport
from .structural_train import load_structural

GRAPH_FILE = "structural.onnx"
HOMOLOGUE_NOTE = ("; with the homologue: 1 when the called type has another copy in the cell, "
                  "then log(its mask height / the median); image channel 1: that copy's "
                  "canvas (of several, the one differing least; white when none)")
PARITY_BATCHES = (1, 7, 46)
FIT_TEXT = {"each": "fitted into height x width keeping aspect, centred on white",
            "cell": f"scaled by the cell's factor (its median length to "
                    f"{CELL_MEDIAN_SHARE:.0%} of the height; shrunk to fit when too big), top "
                    f"row at the top, centred across, on white"}


def random_inputs(net, batch, seed=0):
    """Random (image, cond) of ``batch`` chromosomes: darkness in 0..1, a one-hot type and a
    log relative length."""
    rng = np.random.default_rng([seed, batch])
    image = rng.random((batch, net.channels, net.height, net.width)).astype(np.float32)
    cond = np.zeros((batch, net.cond_size), np.float32)
    cond[np.arange(batch), rng.integers(0, N_TYPES, batch)] = 1.0
    cond[:, N_TYPES:] = rng.normal(0.0, 0.4, (batch, net.cond_size - N_TYPES))
    return image, cond


def output_names(net):
    """The graph's outputs: ``score``, and ``arm`` with the arm head."""
    return ["score", "arm"] if net.arm_head else ["score"]


def check_parity(net, path, threshold, batches=PARITY_BATCHES, threads=0):
    """ONNX Runtime against PyTorch on ``random_inputs`` of each batch size: max abs error of
    every output, the share of chromosomes on the same side of ``threshold`` and, with the arm
    head, the share naming the same arm."""
    session = make_session(path, threads)
    export = StructuralExport(net).eval()
    report = {}
    for batch in batches:
        image, cond = random_inputs(net, batch)
        with torch.no_grad():
            ref = export(torch.from_numpy(image), torch.from_numpy(cond))
        ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
        got = session.run(output_names(net), {"image": image, "cond": cond})
        record = {"max_abs": max(float(np.abs(g - r).max()) for g, r in zip(got, ref)),
                  "agreement": float(np.mean((got[0] >= threshold) == (ref[0] >= threshold)))}
        if net.arm_head:
            record["arm_agreement"] = float(np.mean(got[1].argmax(1) == ref[1].argmax(1)))
        report[f"batch_{batch}"] = record
    return report


def structural_section(net, payload, path, checkpoint, parity):
    """The manifest's ``structural`` section (module doc)."""
    inputs, outputs = io_records(onnx.load(str(path)))
    training = dict(payload.get("training") or {})
    return {
        "file": GRAPH_FILE, "sha256": sha256_file(path), "inputs": inputs, "outputs": outputs,
        "input": {"height": net.height, "width": net.width, "homologue": net.homologue,
                  "fit": net.fit,
                  "image": "light-background cut-out turned q-arm down by the called polarity, "
                           "white outside its mask, cropped to the mask, " + FIT_TEXT[net.fit]
                           + "; (255 - x) / 255",
                  "cond": "24-way one-hot of the called type, then log(mask height / the "
                          "cell's median mask height)" + (HOMOLOGUE_NOTE if net.homologue
                                                          else "")},
        "threshold": float(payload["threshold"]),
        "flag": "score >= threshold",
        "tta": payload.get("tta", "none"),
        **({"tta_note": "score: the mean over the canvas and its left-right mirror (the "
                        "threshold chosen so); the mirror scored where the first view reaches "
                        f"min({TTA_GATE}, 2 x threshold - 1)"} if payload.get("tta") == "mirror"
           else {}),
        **({"arms": list(ARMS), "arm": "arm: probabilities of the change lying on the p arm, "
                                       "the q arm, or both (meaningful on flagged ones)"}
           if net.arm_head else {}),
        "target_specificity": payload.get("target_specificity"),
        "validation": payload.get("validation"),
        "training": training,
        "network": {**net.spec(), "parameters": int(sum(p.numel() for p in net.parameters()))},
        "parity": {"batches": parity, "tolerance_abs": PROBABILITY_TOLERANCE},
        "producer": producer_versions(),
        "source": {"kind": "checkpoint", "path": str(checkpoint),
                   "sha256": sha256_file(checkpoint)},
    }


def export_structural(checkpoint, model_dir, threads=0, log=print):
    """Add ``checkpoint``'s network to ``model_dir`` (module doc); returns the section."""
    manifest = load_manifest(model_dir)
    net, payload = load_structural(checkpoint)
    if "threshold" not in payload:
        raise ExportError(f"{checkpoint}: no threshold (an unfinished run's last.pt?); export "
                          "the structural.pt that 'vfinfer train-structural' writes at the end")
    model_dir = Path(model_dir)
    tmp = model_dir / f".{GRAPH_FILE}.tmp"
    try:
        image, cond = random_inputs(net, 2)
        _export_graph(StructuralExport(net).eval(),
                      (torch.from_numpy(image), torch.from_numpy(cond)),
                      (["image", "cond"], output_names(net)), tmp)
        parity = check_parity(net, tmp, float(payload["threshold"]), threads=threads)
        require_parity(parity, log, agreement=".2%")
        if net.arm_head:
            log("arm output: same arm named on " + ", ".join(
                f"{k}: {v['arm_agreement']:.2%}" for k, v in parity.items()))
        section = structural_section(net, payload, tmp, checkpoint, parity)
        os.replace(tmp, model_dir / GRAPH_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    data = manifest.data
    data["structural"] = section
    write_json_atomic(manifest.path, data)
    return section
