"""The model directory's ``manifest.json``: every constant the runtime needs, in one place.

A model directory holds ``gnet.onnx``, ``lnet.onnx``, ``heads.onnx`` and ``manifest.json``.
The manifest records the preset and all preprocessing / crop / dispatch constants, the class
names, each graph's tensor names and shapes and sha256, and the producer versions. The
runtime reads constants from here only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from vfinfer.model.classes import POLARITY_NAMES, TYPE_NAMES
from vfinfer.model.config import ModelConfig
from vfinfer.util.atomic import write_json_atomic

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_ROLES = ("gnet", "lnet", "heads")


class ModelDirError(ValueError):
    """A model directory that cannot be used; the message names the file and the problem."""


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(config, graphs, producer, source, parity=None):
    """The manifest dict for a freshly exported model.

    ``graphs`` maps a role (gnet, lnet, heads) to ``{"file", "sha256", "inputs", "outputs"}``
    where inputs / outputs are lists of ``{"name", "shape", "dtype"}`` in graph order.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "preset": config.preset,
        "config": config.to_dict(),
        "preprocess": {
            "color": "gray",
            "bit_depth": 8,
            "canvas": config.canvas,
            "pad_value": config.pad_value,
            "fit": "shrink images larger than the canvas to fit, keeping aspect",
            "g_input": config.g_input,
            "normalize": "per-image z-score (x - mean) / std (eq. 11)",
        },
        "crop": {
            "t1": config.t1,
            "t2": config.t2,
            "l_input": config.l_input,
            "box": "eq. 5: centre = T1 + u * T2, half side = u_l * T1 / 2 + T1 / 2",
            "interpolation": "bilinear, half-pixel centres, edge clamp",
        },
        "dispatch": {"algorithm": "paper", "threshold": config.dispatch_threshold},
        "classes": {"type": list(TYPE_NAMES), "polarity": list(POLARITY_NAMES)},
        "graphs": graphs,
        "parity": parity or {},
        "producer": producer,
        "source": source,
    }


def remove_precision_graphs(model_dir, precision):
    """Drop a model's ``<role>_<precision>`` graphs, their files and ``<precision>_audit``."""
    model_dir = Path(model_dir)
    data = load_manifest(model_dir).data
    for role in GRAPH_ROLES:
        record = data["graphs"].pop(f"{role}_{precision}", None)
        for name in (record or {}).get("files", []):
            (model_dir / name).unlink(missing_ok=True)
    data.pop(f"{precision}_audit", None)
    write_json_atomic(model_dir / MANIFEST_NAME, data)


def set_tta(model_dir, mode):
    """Set the test-time augmentation (``config.tta``, ``vfinfer.pipeline.tta``) of a model
    directory's manifest; the graphs are untouched. Returns (the previous mode, notes): the
    notes name what the manifest holds that was measured with the previous mode (the
    in-domain figures, the calibrated optimal-dispatch parameters)."""
    manifest = load_manifest(model_dir)
    data = manifest.data
    previous = manifest.config.tta
    try:
        ModelConfig.from_dict({**data["config"], "tta": mode})
    except ValueError as exc:
        raise ModelDirError(f"{manifest.path}: {exc}") from None
    data["config"]["tta"] = mode
    notes = []
    if previous != mode:
        measured = [what for what, there in (
            ("the in-domain figures (vfinfer domain)", data.get("domain")),
            ("the in-domain figures of segmented cells (vfinfer domain)",
             data.get("domain_segmented")),
            ("the calibrated optimal-dispatch parameters (vfinfer calibrate)",
             (data.get("dispatch") or {}).get("optimal"))) if there]
        notes = [f"{what} were measured with tta {previous}: run it again" for what in measured]
    write_json_atomic(manifest.path, data)
    return previous, notes


class Manifest:
    """A loaded, validated manifest of one model directory (``load_manifest`` makes it).

    Parameters
    ----------
    model_dir : str or os.PathLike
        The model directory.
    data : dict
        The parsed ``manifest.json``.

    Raises
    ------
    ModelDirError
        A bad ``config`` or ``classes`` section.

    Attributes
    ----------
    model_dir : pathlib.Path
        The model directory.
    data : dict
        The whole manifest, as read.
    config : ModelConfig
        Every size and constant of the model.
    threshold : float
        The dispatch threshold of Algorithm 1 (``dispatch.threshold``, 0.9 when absent).
    type_names, polarity_names : list of str
        The 24 type names (1..22, X, Y) and the 2 polarity names, in output order.
    """

    def __init__(self, model_dir: Union[str, os.PathLike], data: dict[str, Any]) -> None:
        self.model_dir = Path(model_dir)
        self.data = data
        try:
            self.config = ModelConfig.from_dict(data["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{self.path}: bad or missing 'config': {exc}") from None
        self.threshold = float(data.get("dispatch", {}).get("threshold", 0.9))
        classes = data.get("classes", {})
        if classes.get("type") != TYPE_NAMES or classes.get("polarity") != POLARITY_NAMES:
            raise ModelDirError(f"{self.path}: 'classes' must list the types {TYPE_NAMES[0]}.."
                                f"{TYPE_NAMES[-1]} and the polarities {POLARITY_NAMES} in order")
        self.type_names = list(classes["type"])
        self.polarity_names = list(classes["polarity"])

    @property
    def polarity_trained(self) -> bool:
        """False when the model was trained without polarity labels (its polarity head is
        untrained, so the runtime does not call polarity); True for older manifests."""
        training = self.data.get("training") or {}
        return training.get("polarity_labelled_images", 1) != 0

    @property
    def domain(self) -> Optional[dict[str, Any]]:
        """The in-domain figures of ``vfinfer domain`` (``vfinfer.calls.verdict``), or None."""
        return self.data.get("domain")

    @property
    def segmented_domain(self) -> Optional[dict[str, Any]]:
        """The in-domain figures of cells segmented from metaphases (``vfinfer domain`` on
        ``vfinfer segment``'s case folders), or None: ``domain_segmented``, or ``domain``
        where that was fitted on segmented cells."""
        domain = self.data.get("domain") or {}
        fitted = domain.get("fitted_on", {}).get("segmented")
        return self.data.get("domain_segmented") or (domain if fitted else None)

    @property
    def structural(self) -> Optional[dict[str, Any]]:
        """The structural score's section (``vfinfer export-structural``), or None."""
        return self.data.get("structural")

    def structural_path(self) -> Path:
        """The structural score's graph file, its sha256 checked against the section's;
        ModelDirError when the section, the file or its sha256 do not fit."""
        section = self.structural
        if not section or not section.get("file") or "threshold" not in section:
            raise ModelDirError(f"{self.path}: no usable 'structural' section")
        path = self.model_dir / section["file"]
        if not path.is_file():
            raise ModelDirError(f"{path}: structural graph listed in the manifest is missing")
        if section.get("sha256") and sha256_file(path) != section["sha256"]:
            raise ModelDirError(f"{path}: sha256 differs from the manifest's structural "
                                "section; export it again (vfinfer export-structural)")
        return path

    @property
    def path(self) -> Path:
        """The ``manifest.json`` file."""
        return self.model_dir / MANIFEST_NAME

    def graph(self, role: str, precision: str = "fp32") -> dict[str, Any]:
        """The record of one graph: file, sha256, inputs, outputs.

        Parameters
        ----------
        role : str
            ``"gnet"``, ``"lnet"`` or ``"heads"``.
        precision : str
            ``"fp32"`` (the exported graphs) or a reduced precision whose graphs the manifest
            lists as ``<role>_<precision>`` (``"fp16"``, ``"int8"``).

        Raises
        ------
        ModelDirError
            The manifest lists no such graph (the message names those it lists).
        """
        key = role if precision == "fp32" else f"{role}_{precision}"
        try:
            return self.data["graphs"][key]
        except KeyError:
            have = ", ".join(sorted(self.data.get("graphs", {}))) or "none"
            raise ModelDirError(
                f"{self.path}: no {precision} graph for {role} (graphs listed: {have})"
            ) from None

    def graph_path(self, role: str, precision: str = "fp32", verify: bool = True) -> Path:
        """The file of one graph (``graph``'s record); ModelDirError when it is missing or,
        with ``verify``, when its sha256 differs from the manifest's."""
        record = self.graph(role, precision)
        path = self.model_dir / record["file"]
        if not path.is_file():
            raise ModelDirError(f"{path}: graph file listed in the manifest is missing")
        if verify and record.get("sha256") and sha256_file(path) != record["sha256"]:
            raise ModelDirError(
                f"{path}: sha256 differs from the manifest; the graph was changed after "
                "export. Re-export the model (vfinfer export) instead of editing graphs."
            )
        return path

    def summary(self) -> dict[str, Any]:
        """The short model description that goes into each result."""
        return {
            "dir": str(self.model_dir),
            "preset": self.data.get("preset"),
            "source": self.data.get("source", {}),
            "gnet_sha256": self.data["graphs"].get("gnet", {}).get("sha256"),
            "training": self.training_summary(),
        }

    def training_summary(self) -> Optional[dict[str, Any]]:
        """What the model was trained on, as its manifest records it (None when it records
        nothing): the data directory by name (no file system path, so a server may show it),
        the training and validation slides, whether polarity was trained, and how many
        in-domain cells the verdict's figures were fitted on."""
        training = self.data.get("training") or {}
        fitted = (self.domain or {}).get("fitted_on") or {}
        if not training and not fitted:
            return None
        data_dir = training.get("data_dir")
        return {
            "data": Path(data_dir).name if data_dir else None,
            "train_slides": training.get("train_slides"),
            "val_slides": training.get("val_slides"),
            "polarity": training.get("polarity"),
            "domain_cells": fitted.get("cells"),
        }


def load_manifest(model_dir: Union[str, os.PathLike]) -> Manifest:
    """Read and check a model directory's ``manifest.json``.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A model directory made by ``vfinfer export`` (``demo_model_dir()`` for the bundled
        demo).

    Returns
    -------
    Manifest
        The validated manifest; the graph files are checked when they are opened
        (``Manifest.graph_path``).

    Raises
    ------
    ModelDirError
        A missing directory or manifest, invalid JSON, another ``schema_version``, or a
        missing or bad ``config``, ``classes`` or ``graphs`` section; the message names the
        file and the problem.
    """
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found")
    if not path.is_file():
        raise ModelDirError(
            f"{path}: not found; a model directory is made by 'vfinfer export'"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{path}: not valid JSON ({exc})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ModelDirError(
            f"{path}: schema_version {version!r} is not {SCHEMA_VERSION}; "
            "re-export the model with this version of vfinfer"
        )
    for key in ("config", "classes", "graphs"):
        if key not in data:
            raise ModelDirError(f"{path}: missing '{key}'")
    return Manifest(model_dir, data)


def demo_model_dir() -> Path:
    """The compact demo model shipped inside the package (trained on synthetic cells only)."""
    return Path(__file__).parent.parent / "demo_model"
