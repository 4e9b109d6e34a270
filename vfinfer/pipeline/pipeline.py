"""The per-case pipeline: normalize (background, rotate-and-crop) -> preprocess -> G-Net ->
eq. 5 box -> crop -> L-Net -> heads -> dispatch -> verdict (``vfinfer.calls.verdict``).

``Pipeline`` is created once from a model directory (or the bundled demo model) and is safe to
share between threads: ``run_case`` keeps all per-call state local, the numerical steps are
pure functions and ONNX Runtime sessions accept concurrent ``run`` calls.

    with Pipeline("engines/compact") as pipe:
        result = pipe.run_case(images, name="cell_07")
        print(result["karyotype"], result["warnings"])

Dispatch modes: "paper" (Algorithm 1, ``vfinfer.calls.dispatch``), "none" (plain argmax) and
"optimal" (the most likely karyotype by global assignment, ``vfinfer.calls.optimal``, with the
parameters calibrated into manifest.json by ``vfinfer calibrate``, or the defaults).
"""

import time
from dataclasses import dataclass, field

import numpy as np

from vfinfer import backends
from vfinfer.calls.dispatch import argmax_types, dispatch
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.verdict import judge
from vfinfer.model.manifest import demo_model_dir, load_manifest
from vfinfer.pipeline.network import Clock, run_network_batched
from vfinfer.pipeline.preprocess import batch_of, normalize_batch
from vfinfer.pipeline.result import abnormality_section, assemble_result
from vfinfer.util.geometry import to_convention
from vfinfer.util.images import to_gray8

DISPATCH_MODES = ("paper", "none", "optimal")
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
    images: list  # 2-D uint8 as given (converted to gray)
    files: list
    g_input: np.ndarray  # (N, 1, g_input, g_input) float32, section III-B
    preprocess_ms: float
    facts: list = field(default_factory=list)  # per image: background, tilt, rotated
    display: list = field(default_factory=list)  # the normalized cut-outs, light background


class Pipeline:
    """Batched Varifocal-Net inference for whole cases on one backend."""

    def __init__(self, model_dir=None, backend="auto", threads=0, batch_size=None,
                 dispatch_mode="paper", precision=None, optimal_params=None,
                 background="auto", force_karyotype=False):
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
        self.dispatch_mode = dispatch_mode
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

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self):
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- inference ---------------------------------------------------------------------------
    def infer(self, images, timing=None):
        """Network outputs for a list of gray uint8 cut-outs, in chunks of ``batch_size``.

        Returns a dict of arrays: type_probs (N, 24), polarity_probs (N, 2), loc (N, 3) and
        boxes (N, 4, eq. 5, G-input pixels), and ``facts`` (per image: the background found,
        the tilt of the chromosome's axis, the turn applied; ``vfinfer.util.geometry``).
        ``timing`` (a dict) collects ms per stage.
        """
        timing = {} if timing is None else timing
        clock = Clock(timing)
        normalized, facts = normalize_batch(images, self.config, self.background)
        g_input = batch_of(normalized, self.config)
        clock.lap("preprocess")
        return {**self.infer_prepared(g_input, timing), "facts": facts}

    def infer_prepared(self, g_input, timing=None):
        """``infer`` from an already preprocessed (N, 1, g_input, g_input) float32 batch."""
        if self.backend is None:
            raise RuntimeError("this Pipeline was closed")
        return run_network_batched(self.backend, g_input, self.config, self.batch_size,
                                   timing)

    def prepare(self, name, images, files=None):
        """Check and convert one cell's images and preprocess them (a ``PreparedCase``).

        Thread-safe and independent of the backend: it may run while the engines work on
        other cells.
        """
        started = time.perf_counter()
        if len(images) == 0:
            raise ValueError(f"{name}: no chromosome images")
        files = [f"image_{i}" for i in range(len(images))] if files is None else list(files)
        if len(files) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(files)} file names")
        gray = [to_gray8(np.asarray(img), f) for img, f in zip(images, files)]
        normalized, facts = normalize_batch(gray, self.config, self.background)
        g_input = batch_of(normalized, self.config)
        display = [to_convention(img, self.config.background, "light") for img in normalized]
        return PreparedCase(name, gray, files, g_input, (time.perf_counter() - started) * 1000,
                            facts, display)

    def run_case(self, images, name="case", files=None):
        """Classify the chromosomes of one cell; returns the result dict (README, "Outputs").

        ``images``: list of 2-D arrays (gray uint8; 16-bit, float, colour and alpha are
        converted as when reading files). ``files``: names reported per chromosome.
        """
        return self.run_cases([(name, images, files)])[0]

    def run_cases(self, cases):
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
        timing = {}
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
        timing["total"] += timing["dispatch"]
        verdict = judge(probs, self.manifest.threshold, case.facts, self.manifest.domain,
                        self.force_karyotype, self.dispatch_mode)
        return assemble_result(self.manifest, self.backend.describe(), self.dispatch_mode,
                               case, outputs, calls, verdict, timing)

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
