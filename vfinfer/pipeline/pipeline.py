"""The per-case pipeline: normalize (background, rotate-and-crop, size normalization over the
case) -> preprocess -> G-Net -> eq. 5 box -> crop -> L-Net -> heads (each test-time view,
``vfinfer.pipeline.tta``) -> dispatch -> verdict (``vfinfer.calls.verdict``).

``Pipeline`` is created once from a model directory (or the bundled demo model) and is safe to
share between threads: ``run_case`` keeps all per-call state local, the numerical steps are
pure functions and ONNX Runtime sessions accept concurrent ``run`` calls.

    with Pipeline("engines/compact") as pipe:
        result = pipe.run_case(images, name="cell_07")
        print(result["karyotype"], result["warnings"])

Dispatch modes: "paper" (Algorithm 1, ``vfinfer.calls.dispatch``), "none" (plain argmax),
"optimal" (the most likely karyotype by global assignment, ``vfinfer.calls.optimal``, with the
parameters calibrated into manifest.json by ``vfinfer calibrate``, or the defaults) and, the
default, "auto": the one of them that the model's own validation figures found best
(``vfinfer.calls.auto``), chosen once when the pipeline is built.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, Union

import numpy as np

from vfinfer import backends
from vfinfer.calls.auto import AUTO, choose_dispatch
from vfinfer.calls.dispatch import argmax_types, dispatch
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.verdict import judge
from vfinfer.model.classes import Q_ARM_DOWN
from vfinfer.model.manifest import demo_model_dir, load_manifest
from vfinfer.pipeline.network import Clock, run_network_batched
from vfinfer.pipeline.preprocess import (
    batch_of,
    normalize_batch,
    normalize_each,
    size_normalize,
)
from vfinfer.pipeline.result import abnormality_section, assemble_result
from vfinfer.pipeline.structural import StructuralScorer
from vfinfer.pipeline.tta import add_views, merge_views
from vfinfer.util.geometry import to_convention
from vfinfer.util.images import to_gray8

if TYPE_CHECKING:
    from vfinfer.backends.base import Backend
    from vfinfer.calls.optimal import OptimalDispatch, OptimalParams
    from vfinfer.model.config import ModelConfig
    from vfinfer.model.manifest import Manifest

# one cell as ``run_cases`` takes it: (name, images, file names or None), or prepared
CaseInput = Union["PreparedCase", Tuple[str, Sequence[np.ndarray], Optional[Sequence[str]]]]

DISPATCH_MODES = ("auto", "paper", "none", "optimal")
BACKGROUND_CHOICES = ("auto", "light", "dark")
TOP_HYPOTHESES = 3  # hypotheses listed in result["abnormality"]
DEFAULT_BATCH = 64  # chromosomes per engine call when the engine sets no limit


@dataclass
class PreparedCase:
    """One cell ready for the engines: gray uint8 cut-outs and their G-Net input batch.

    ``Pipeline.prepare`` makes it; it only reads the model's constants, so a reader thread
    may prepare the next cells while the engines run (``vfinfer run`` does).
    """

    name: str
    images: list[np.ndarray]  # 2-D uint8 as given (converted to gray)
    files: list[str]
    g_input: np.ndarray  # (N, 1, g_input, g_input) float32, section III-B
    preprocess_ms: float
    facts: list[dict[str, Any]] = field(default_factory=list)  # per image: background, tilt
    display: list[np.ndarray] = field(default_factory=list)  # normalized, light background
    # light background, turned by rotate-and-crop, not size-normalized: the structural
    # score's input, as its training saw the cut-outs; made only for a size-normalizing model
    # with a structural score (otherwise ``display`` is that input)
    upright: list[np.ndarray] = field(default_factory=list)
    # the result gets ``type_probabilities``: (N, 24) probabilities in class order, unrounded
    with_probabilities: bool = False


class Pipeline:
    """Batched Varifocal-Net inference for whole cases on one backend.

    Open once, share between threads, close when done (or use it as a context manager).

    Parameters
    ----------
    model_dir : str or os.PathLike, optional
        A model directory made by ``vfinfer export`` (``manifest.json`` and the graphs);
        None: the demo model bundled with the package.
    backend : str
        ``"auto"`` (TensorRT engines that pass their checks, else ONNX Runtime CUDA, else
        CPU), ``"ort"``, ``"ort-cuda"``, ``"trt"`` or ``"openvino"``
        (``vfinfer.backends.BACKEND_NAMES``).
    threads : int
        Intra-op threads of the CPU backends; 0 lets the backend choose.
    batch_size : int, optional
        Chromosomes per engine call; None: the engine's limit, or 64 when it sets none. A
        value over the engine's limit is lowered to it.
    dispatch_mode : str
        ``"auto"`` (the mode the model's validation figures found best,
        ``vfinfer.calls.auto``), ``"paper"`` (Algorithm 1, ``vfinfer.calls.dispatch``),
        ``"none"`` (plain argmax) or ``"optimal"`` (``vfinfer.calls.optimal``).
    precision : str, optional
        The graphs to run: ``"fp32"``, ``"fp16"``, ``"int8"`` or ``"bf16"``; None: the
        backend's own (fp32 for ONNX Runtime and OpenVINO, fp16 for TensorRT).
    optimal_params : OptimalParams, optional
        Parameters of optimal dispatch; None: those calibrated into the manifest, or the
        defaults. Only used when the dispatch is optimal.
    background : str
        ``"auto"`` (detected per image), ``"light"`` or ``"dark"``: the cut-outs' background.
    force_karyotype : bool
        Report the karyotype even when the verdict would withhold it.

    Raises
    ------
    ValueError
        A bad option; ``vfinfer.model.manifest.ModelDirError`` (a ValueError) for a model
        directory that cannot be used.
    vfinfer.backends.BackendError
        An unknown or unavailable backend.

    Attributes
    ----------
    manifest : Manifest
        The model directory's manifest; ``config`` (``ModelConfig``) is its configuration.
    backend : Backend or None
        The runners of the three graphs; None once closed.
    batch_size : int
        Chromosomes per engine call.
    dispatch_mode : str
        The mode used: ``"auto"`` resolved to ``"paper"``, ``"none"`` or ``"optimal"``.
    dispatch_reason : str
        Why: the rule's line for ``"auto"`` (also in each result's ``dispatch_auto_reason``),
        else that the mode was given.
    """

    manifest: Manifest
    config: ModelConfig
    backend: Optional[Backend]
    optimal: Optional[OptimalDispatch]

    def __init__(self, model_dir: Union[str, os.PathLike, None] = None, backend: str = "auto",
                 threads: int = 0, batch_size: Optional[int] = None,
                 dispatch_mode: str = AUTO, precision: Optional[str] = None,
                 optimal_params: Optional[OptimalParams] = None, background: str = "auto",
                 force_karyotype: bool = False) -> None:
        if background not in BACKGROUND_CHOICES:
            raise ValueError(f"background must be one of {', '.join(BACKGROUND_CHOICES)}, "
                             f"not {background!r}")
        self.background = background
        self.force_karyotype = bool(force_karyotype)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if dispatch_mode not in DISPATCH_MODES:
            raise ValueError(f"unknown dispatch mode {dispatch_mode!r}: choose one of "
                             f"{', '.join(DISPATCH_MODES)}")
        self.manifest = load_manifest(model_dir or demo_model_dir())
        self.config = self.manifest.config
        requested = dispatch_mode
        dispatch_mode, self.dispatch_reason = choose_dispatch(requested, self.manifest.data)
        self.dispatch_mode = dispatch_mode
        self.auto_reason = self.dispatch_reason if requested == AUTO else None
        self.optimal = self.optimal_note = None
        if dispatch_mode == "optimal":
            from vfinfer.calls.optimal import OptimalDispatch
            from vfinfer.calls.optimal_params import load_params  # scipy: only for this mode

            if optimal_params is None:
                optimal_params, _, self.optimal_note = load_params(self.manifest)
            else:
                self.optimal_note = "optimal-dispatch parameters given by the caller"
            self.optimal = OptimalDispatch(optimal_params)
        self.backend = backends.create(backend, self.manifest, threads=threads,
                                       precision=precision)
        limit = self.backend.max_batch
        self.batch_size = min(batch_size or limit or DEFAULT_BATCH, limit or 1 << 30)
        self.structural = self._structural_scorer(threads)

    def _structural_scorer(self, threads):
        """The structural score's runner when the manifest has a ``structural`` section
        (``vfinfer.pipeline.structural``; always ONNX Runtime on the CPU: it is small), else
        None."""
        section = self.manifest.structural
        if section is None:
            return None
        from vfinfer.backends.ort import OrtRunner

        path = self.manifest.structural_path()
        return StructuralScorer(section, lambda _: OrtRunner(path, threads=threads),
                                self.manifest.path)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend's sessions (or engines); a second call does nothing. Using the
        pipeline afterwards raises RuntimeError."""
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
        structural, self.structural = self.structural, None
        if structural is not None:
            structural.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference ---------------------------------------------------------------------------
    def infer(self, images: Sequence[np.ndarray],
              timing: Optional[dict[str, float]] = None,
              cells: Optional[Sequence[Any]] = None) -> dict[str, Any]:
        """Network outputs for a list of gray uint8 cut-outs, in chunks of ``batch_size``.

        No dispatch and no result dict: the raw outputs of the network pass (averaged over
        the model's test-time views, ``vfinfer.pipeline.tta``).

        Parameters
        ----------
        images : sequence of np.ndarray
            N cut-outs, each a 2-D (H, W) uint8 gray image (any size).
        timing : dict, optional
            Filled with milliseconds per stage (preprocess, gnet, crop, lnet, heads).
        cells : sequence, optional
            The cell of each image, for a model with size normalization (the median length
            is taken per cell); None: the images are one cell.

        Returns
        -------
        dict
            Float arrays ``type_probs`` (N, 24), ``polarity_probs`` (N, 2), ``loc`` (N, 3,
            the localizer's u) and ``boxes`` (N, 4: x0, y0, x1, y1 of eq. 5 in G-input
            pixels), and ``facts``: a list of N dicts (the background found, the tilt of the
            chromosome's axis, the turn applied; ``vfinfer.util.geometry``).
        """
        timing = {} if timing is None else timing
        clock = Clock(timing)
        normalized, facts = normalize_batch(images, self.config, self.background, cells)
        g_input = batch_of(normalized, self.config)
        clock.lap("preprocess")
        return {**self.infer_prepared(g_input, timing), "facts": facts}

    def infer_prepared(self, g_input: np.ndarray,
                       timing: Optional[dict[str, float]] = None) -> dict[str, np.ndarray]:
        """``infer`` from an already preprocessed (N, 1, g_input, g_input) float32 batch
        (without ``facts``): every test-time view of the model's ``tta`` through the network,
        the probabilities averaged (``vfinfer.pipeline.tta``)."""
        if self.backend is None:
            raise RuntimeError("this Pipeline was closed")
        views = add_views(g_input, self.config.tta)
        outputs = run_network_batched(self.backend, views, self.config, self.batch_size,
                                      timing)
        return merge_views(outputs, self.config.tta, len(g_input))

    def prepare(self, name: str, images: Sequence[np.ndarray],
                files: Optional[Sequence[str]] = None) -> PreparedCase:
        """Check and convert one cell's images and preprocess them (a ``PreparedCase``).

        Thread-safe and independent of the backend: it may run while the engines work on
        other cells. ``images`` and ``files`` as in ``run_case``; ValueError when there are
        no images or the counts differ.
        """
        started = time.perf_counter()
        if len(images) == 0:
            raise ValueError(f"{name}: no chromosome images")
        files = [f"image_{i}" for i in range(len(images))] if files is None else list(files)
        if len(files) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(files)} file names")
        gray = [to_gray8(np.asarray(img), f) for img, f in zip(images, files)]
        upright, facts = normalize_each(gray, self.config, self.background)
        normalized = size_normalize(upright, facts, self.config)
        g_input = batch_of(normalized, self.config)
        display = [to_convention(img, self.config.background, "light") for img in normalized]
        upright = [to_convention(img, self.config.background, "light") for img in upright] \
            if self.structural is not None and self.config.size_norm else []
        return PreparedCase(name, gray, files, g_input, (time.perf_counter() - started) * 1000,
                            facts, display, upright=upright)

    def run_case(self, images: Sequence[np.ndarray], name: str = "case",
                 files: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """Classify the chromosomes of one cell.

        Parameters
        ----------
        images : sequence of np.ndarray
            One cut-out per chromosome: (H, W) gray uint8 (16-bit, float, (H, W, 3) colour and
            (H, W, 4) alpha images are converted as when reading files).
        name : str
            The case name reported as ``case``.
        files : sequence of str, optional
            One name per image reported per chromosome; None: ``image_0``, ``image_1``, ...

        Returns
        -------
        dict
            The result (README, "Outputs"; what ``vfinfer run`` writes as result.json):
            ``case``, ``model``, ``backend``, ``dispatch``, ``n_chromosomes``,
            ``karyotype``, ``verdict``, ``warnings``, ``timing_ms`` and ``chromosomes`` (one
            row per image, in the order given: ``file``, ``type``, ``type_prob``,
            ``top3``, ``polarity``, ``box`` ...), plus ``abnormality`` under optimal dispatch
            when the karyotype is reported.

        Raises
        ------
        ValueError
            No images, a number of file names other than the number of images, or an image
            that cannot be converted to gray (``vfinfer.util.images.ImageReadError``).
        RuntimeError
            The pipeline was closed.
        """
        return self.run_cases([(name, images, files)])[0]

    def run_cases(self, cases: Sequence[CaseInput]) -> list[dict[str, Any]]:
        """Several cells at once: ``cases`` is a list of (name, images, files or None)
        tuples or of ``PreparedCase`` objects.

        The chromosomes of all cases share engine batches (small cases fill a batch
        together); dispatch and the karyotype stay per case. Each case's timing has its own
        preprocessing; the engine stages are shared out by chromosome count.
        """
        if not cases:
            return []
        prepared = [case if isinstance(case, PreparedCase) else self.prepare(*case)
                    for case in cases]
        started = time.perf_counter()
        g_input = (prepared[0].g_input if len(prepared) == 1
                   else np.concatenate([case.g_input for case in prepared]))
        timing: dict[str, float] = {}
        outputs = self.infer_prepared(g_input, timing)
        elapsed = (time.perf_counter() - started) * 1000
        results, offset = [], 0
        for case in prepared:
            n = len(case.images)
            share = n / len(g_input)
            part = {key: value[offset:offset + n] for key, value in outputs.items()}
            offset += n
            case_timing = {"preprocess": case.preprocess_ms}
            case_timing.update({stage: ms * share for stage, ms in timing.items()})
            case_timing["total"] = case.preprocess_ms + elapsed * share
            results.append(self._build_result(case, part, case_timing))
        return results

    def _build_result(self, case, outputs, timing):
        clock = Clock(timing)
        probs = outputs["type_probs"]
        calls = self._dispatch(probs)
        clock.lap("dispatch")
        structural = self._structural_scores(case, outputs, calls[0])
        if structural is not None:
            clock.lap("structural")
        timing["total"] += timing["dispatch"] + timing.get("structural", 0.0)
        verdict = judge(probs, self.manifest.threshold, case.facts, self.manifest.domain,
                        self.force_karyotype, self.dispatch_mode, self.manifest.segmented_domain)
        result = assemble_result(self.manifest, self.backend.describe(), self.dispatch_mode,
                                 case, outputs, calls, verdict, timing, self.auto_reason,
                                 structural)
        if case.with_probabilities:
            result["type_probabilities"] = np.asarray(probs, np.float32).tolist()
        return result

    def _structural_scores(self, case, outputs, types):
        """(The structural score of each chromosome of ``case`` conditioned on its called
        ``types`` (after dispatch), turned q-arm down by the called polarity when the model
        calls polarity; the arm probabilities or None: ``StructuralScorer.assess``); None
        without a structural score."""
        if self.structural is None:
            return None
        images = case.upright or case.display or [
            to_convention(img, self.config.background, "light") for img in case.images]
        flip = None
        if self.manifest.polarity_trained:
            flip = outputs["polarity_probs"].argmax(1) != Q_ARM_DOWN
        return self.structural.assess(images, types, flip)

    def _dispatch(self, probs):
        """(types after dispatch, karyotype, warnings, abnormality section or None)."""
        if self.dispatch_mode == "optimal":
            found = self.optimal(probs, top=TOP_HYPOTHESES)
            types = np.asarray(found["types"], dtype=np.int64)
            return types, found["karyotype"], found["warnings"], \
                abnormality_section(found, self.optimal_note)
        if self.dispatch_mode == "paper":
            types, warnings = dispatch(probs, self.manifest.threshold)
        else:
            types, warnings = argmax_types(probs), []
        karyotype, karyotype_warnings = karyotype_summary(types)
        return types, karyotype, warnings + karyotype_warnings, None
