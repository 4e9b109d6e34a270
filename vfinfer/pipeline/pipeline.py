"""The per-case pipeline: preprocess -> G-Net -> eq. 5 box -> crop -> L-Net -> heads -> dispatch.

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
from dataclasses import dataclass

import numpy as np

from vfinfer import backends
from vfinfer.calls.dispatch import argmax_types, dispatch
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.io.images import to_gray8
from vfinfer.model.manifest import demo_model_dir, load_manifest
from vfinfer.pipeline.network import Clock, run_network_batched
from vfinfer.pipeline.preprocess import preprocess_batch

DISPATCH_MODES = ("paper", "none", "optimal")
TOP_HYPOTHESES = 3  # hypotheses listed in result["abnormality"]
DEFAULT_BATCH = 64  # chromosomes per engine call when the engine sets no limit


@dataclass
class PreparedCase:
    """One cell ready for the engines: gray uint8 cut-outs and their G-Net input batch.

    ``Pipeline.prepare`` makes it; it only reads the model's constants, so a reader thread
    may prepare the next cells while the engines run (``vfinfer run`` does).
    """

    name: str
    images: list  # 2-D uint8, white background
    files: list
    g_input: np.ndarray  # (N, 1, g_input, g_input) float32, section III-B
    preprocess_ms: float


class Pipeline:
    """Batched Varifocal-Net inference for whole cases on one backend."""

    def __init__(self, model_dir=None, backend="auto", threads=0, batch_size=None,
                 dispatch_mode="paper", precision=None, optimal_params=None):
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
        boxes (N, 4, eq. 5, G-input pixels). ``timing`` (a dict) collects ms per stage.
        """
        timing = {} if timing is None else timing
        clock = Clock(timing)
        g_input = preprocess_batch(images, self.config)
        clock.lap("preprocess")
        return self.infer_prepared(g_input, timing)

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
        g_input = preprocess_batch(gray, self.config)
        return PreparedCase(name, gray, files, g_input,
                            (time.perf_counter() - started) * 1000)

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
            results.append(self._build_result(case.name, case.files, case.images, part,
                                              case_timing))
        return results

    def _build_result(self, name, files, images, outputs, timing):
        clock = Clock(timing)
        probs = outputs["type_probs"]
        before = argmax_types(probs)
        abnormality = None
        if self.dispatch_mode == "optimal":
            found = self.optimal(probs, top=TOP_HYPOTHESES)
            types, warnings = np.asarray(found["types"], dtype=np.int64), found["warnings"]
            karyotype, karyotype_warnings = found["karyotype"], []
            abnormality = _abnormality(found, self.optimal_note)
        else:
            if self.dispatch_mode == "paper":
                types, warnings = dispatch(probs, self.manifest.threshold)
            else:
                types, warnings = before, []
            karyotype, karyotype_warnings = karyotype_summary(types)
        clock.lap("dispatch")
        timing["total"] += timing["dispatch"]
        names = self.manifest.type_names
        polarity = outputs["polarity_probs"].argmax(1)
        chromosomes = []
        for i, file in enumerate(files):
            row = probs[i]
            top3 = np.argsort(-row, kind="stable")[:3]
            type_prob = float(row[types[i]])
            chromosomes.append({
                "file": str(file),
                "type": names[types[i]],
                "type_prob": round(type_prob, 6),
                "top3": [[names[j], round(float(row[j]), 6)] for j in top3],
                "polarity": self.manifest.polarity_names[polarity[i]],
                "polarity_prob": round(float(outputs["polarity_probs"][i, polarity[i]]), 6),
                "box": [round(float(v), 2) for v in outputs["boxes"][i]],
                "type_before_dispatch": names[before[i]],
                "low_confidence": bool(type_prob < self.manifest.threshold
                                       or types[i] != before[i]),
                "size": list(images[i].shape),
            })
        result = {
            "case": name,
            "model": self.manifest.summary(),
            "backend": self.backend.describe(),
            "dispatch": self.dispatch_mode,
            "n_chromosomes": len(files),
            "karyotype": karyotype,
            "warnings": warnings + karyotype_warnings + _image_warnings(images, files),
            "timing_ms": {k: round(v, 3) for k, v in timing.items()},
            "chromosomes": chromosomes,
        }
        if abnormality is not None:
            result["abnormality"] = abnormality
        return result


def _abnormality(found, params_note):
    """The ``abnormality`` section of a result under optimal dispatch."""
    return {
        "abnormal": found["abnormal"],
        "call": found["call"],
        "margin": round(found["margin"], 4),
        "threshold": found["threshold"],
        "best_normal": found["best_normal"],
        "best_abnormal": found["best_abnormal"],
        "most_likely": found["most_likely"],
        "confidence": found["confidence"],
        "explanation": found["explanation"],
        "counts_karyotype": found["counts_karyotype"],
        "missing": found["missing"],
        "extra": found["extra"],
        "notes": found["notes"],
        "hypotheses": found["hypotheses"],
        "params": params_note,
    }


def _image_warnings(images, files):
    small = [str(f) for img, f in zip(images, files) if min(img.shape) < 4]
    blank = [str(f) for img, f in zip(images, files) if img.min() == img.max()]
    notes = []
    if small:
        notes.append(f"images too small to hold a chromosome: {', '.join(small)}")
    if blank:
        notes.append(f"blank images (one gray level): {', '.join(blank)}")
    return notes
