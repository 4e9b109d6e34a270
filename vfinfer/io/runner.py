"""``vfinfer run``: many case directories through one pipeline.

Three stages overlap, each on its own thread: a reader reads and preprocesses the next cases
(``READ_AHEAD`` at most), the calling thread runs the engines on shared batches (several
small cases fill one batch) and dispatch, and a writer renders and writes the results of the
cases before (after each engine batch the engines wait until at most ``WRITE_BEHIND`` cases
are still to be written). On a machine with a core to spare this hides the single-threaded
reading, PNG decoding and encoding behind the engines. Lines are printed in
the order of the case directories. One bad case (unreadable image, empty directory,
existing result, a failed write) is reported in one line and never stops the others; the
caller gets the names of the failed cases.
"""

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vfinfer.io.results import ResultExistsError, existing_result, write_case
from vfinfer.model.manifest import GRAPH_ROLES
from vfinfer.pipeline import Pipeline, PreparedCase
from vfinfer.pipeline.metaphase import mark_segmented
from vfinfer.util.images import CaseError, ImageReadError, list_case, read_gray8

READ_AHEAD = 2  # cases read and preprocessed ahead of the engines
WRITE_BEHIND = 4  # finished cases waiting for the writer before the engines wait too


@dataclass
class LoadedCase:
    name: str
    prepared: PreparedCase
    ignored: list = field(default_factory=list)
    segmented: object = None  # a metaphase image's SegmentedImage (None for a case directory)
    segmenter: object = None

    @property
    def images(self):
        """The cut-outs as the karyogram shows them (upright when the model rotates them)."""
        return self.prepared.display or self.prepared.images


def case_name(case_dir):
    """OUT/<name>/: a case directory's name, or a metaphase image's file name without suffix."""
    path = Path(case_dir).resolve()
    return (path.stem if path.is_file() else path.name) or "case"


def is_metaphase(path):
    """A metaphase image (segmented first) rather than a case directory of cut-outs."""
    return Path(path).is_file()


def _load_metaphase(path, name, pipeline, segmenter):
    from vfinfer.io.labelme import read_metaphase_image
    from vfinfer.pipeline.metaphase import prepare_metaphase

    if segmenter is None:
        raise ValueError(f"{path}: a metaphase image, but no segmentation model was given")
    segmented, prepared = prepare_metaphase(pipeline, segmenter, read_metaphase_image(path),
                                            name)
    return LoadedCase(name, prepared, [], segmented, segmenter)


def load_case(case_dir, out_dir, overwrite, pipeline, segmenter=None):
    """A LoadedCase, or (status, line) when the case is skipped or cannot be read.
    ``case_dir`` may be a metaphase image file: it is segmented by ``segmenter`` first."""
    name = case_name(case_dir)
    try:
        if existing_result(Path(out_dir) / name) and not overwrite:
            return "skipped", (f"{name}: skipped, {Path(out_dir) / name} already holds "
                               "results (left untouched; pass --overwrite to replace)")
        if is_metaphase(case_dir):
            return _load_metaphase(case_dir, name, pipeline, segmenter)
        paths, ignored = list_case(case_dir)
        images = [read_gray8(p) for p in paths]
        prepared = mark_segmented(pipeline.prepare(name, images, [p.name for p in paths]),
                                  case_dir)
    except (CaseError, ImageReadError) as exc:
        return "failed", f"{name}: failed: {exc}"
    except Exception as exc:  # anything else about this case's files fails this case only
        return "failed", f"{name}: failed: {_one_line(exc)}"
    return LoadedCase(name, prepared, ignored)


def save_result(case, result, out_dir, karyogram, overwrite, report=True, keep_images=False):
    """Write one result (with report.html unless ``report`` is False, and the images as
    classified with ``keep_images``); returns (status, line). Never raises: a failure is
    that case's."""
    if case.ignored:
        shown = ", ".join(case.ignored[:5]) + (" ..." if len(case.ignored) > 5 else "")
        result["ignored_files"] = case.ignored
        result["warnings"].append(f"ignored {len(case.ignored)} non-image entries: {shown}")
    try:
        extra = _metaphase_extras(case, result)
        if keep_images:
            extra.update(kept_images(case))
        target = write_case(out_dir, result, case.images if karyogram else None, overwrite,
                            extra, report)
    except ResultExistsError as exc:
        return "skipped", f"{case.name}: skipped, {exc}"
    except OSError as exc:
        return "failed", f"{case.name}: failed: cannot write results ({exc})"
    except Exception as exc:  # e.g. the karyogram could not be drawn: this case only
        return "failed", f"{case.name}: failed: cannot write results ({_one_line(exc)})"
    return "ok", f"{case_line(result)} -> {target}"


def _metaphase_extras(case, result):
    """For a metaphase image: its segmentation in ``result`` and {"overlay.png": bytes}."""
    if case.segmented is None:
        return {}
    from vfinfer.pipeline.metaphase import attach_segmentation, result_overlay

    attach_segmentation(result, case.segmented, case.segmenter)
    return {"overlay.png": result_overlay(result, case.segmented)}


def kept_images(case):
    """{"images/<name>": PNG} of the images as classified, and a metaphase's own image."""
    from vfinfer.io.review import image_files

    segmented = case.segmented
    return image_files(case.prepared.files, case.images,
                       None if segmented is None else segmented.gray)


def case_line(result):
    """``case: 46 chromosomes, 46,XY, 0 warnings, 108 ms``, or the verdict's reasons."""
    n_warn = len(result["warnings"])
    summary = result["karyotype"]
    if summary is None:
        summary = result["verdict"]["text"]
        n_warn -= 1  # the verdict is the first warning
    return (f"{result['case']}: {result['n_chromosomes']} chromosomes, {summary}, "
            f"{n_warn} warning{'s' if n_warn != 1 else ''}, "
            f"{result['timing_ms']['total']:.0f} ms")


def backend_line(details):
    """The backend as the first line of ``vfinfer run`` names it: its name, and the precision
    where it is not FP32 (with the graphs that run in INT8 when only some do)."""
    precision = details.get("precision", "fp32")
    if precision == "fp32":
        return details["name"]
    graphs = details.get("int8_graphs")
    return f"{details['name']}, precision {precision}" + (
        f" ({', '.join(graphs)}; the others fp32)"
        if graphs and len(graphs) < len(GRAPH_ROLES) else "")


def run_cases(case_dirs, model_dir=None, backend="auto", out_dir="vfinfer-results",
              dispatch_mode="auto", karyogram=True, threads=0, batch_size=None,
              overwrite=False, precision=None, echo=print, progress=None, background="auto",
              force_karyotype=False, seg_model=None, report=True, keep_images=False,
              seg_precision="fp32"):
    """Run every case; returns the names of the cases that failed (``run_with`` says what
    ``echo`` and ``progress`` are). Metaphase image files among ``case_dirs`` are segmented
    by ``seg_model`` (a segmentation model directory, "classical", or None: the demo);
    ``report``: write each case's report.html too; ``keep_images``: also write the images
    as classified to OUT/<case>/images/ (what the review page needs, ``vfinfer.io.review``);
    ``seg_precision``: the segmentation graph (fp32, or int8 once checked)."""
    check_case_names(case_dirs)
    segmenter = None
    with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                  dispatch_mode=dispatch_mode, precision=precision, background=background,
                  force_karyotype=force_karyotype) as pipeline:
        echo(f"model {pipeline.manifest.model_dir} ({pipeline.config.preset}), "
             f"backend {backend_line(pipeline.backend.describe())}")
        echo(f"dispatch {pipeline.dispatch_mode} ({pipeline.dispatch_reason})")
        if any(is_metaphase(d) for d in case_dirs):
            from vfinfer.segment.segmenter import Segmenter

            segmenter = Segmenter(seg_model, threads=threads, precision=seg_precision)
            echo(f"segmentation {segmenter.describe().get('dir', 'classical')}"
                 + (f" ({seg_precision})" if seg_precision != "fp32" else ""))
        try:
            counts, failed = run_with(pipeline, case_dirs, out_dir, karyogram, overwrite,
                                      echo, progress, segmenter, report, keep_images)
        finally:
            if segmenter is not None:
                segmenter.close()
    echo(f"{counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return failed


def check_case_names(case_dirs):
    names = [case_name(d) for d in case_dirs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several case directories are named {', '.join(duplicates)}; "
                         "results would collide in OUT/<case>/: rename or run them separately")


def run_with(pipeline, case_dirs, out_dir, karyogram=True, overwrite=False, echo=print,
             progress=None, segmenter=None, report=True, keep_images=False):
    """The cases through an open pipeline, reading, inference and writing overlapped.

    ``echo`` prints one line per case, in case order; ``progress(total)`` (optional) returns
    a context manager whose ``update(1)`` is called per case read (the CLI's progress bar).
    ``report``: write each case's report.html with its other files.
    Returns ({"ok": n, "skipped": n, "failed": n}, names of the failed cases).
    """
    run = _BatchRun(pipeline, out_dir, karyogram, overwrite, echo, report)
    run.keep_images = keep_images
    with ThreadPoolExecutor(1, "vfinfer-read") as reader, \
            ThreadPoolExecutor(1, "vfinfer-write") as writer:
        run.writer = writer
        loads, todo = deque(), iter(case_dirs)

        def read_ahead():
            for case_dir in todo:
                loads.append((case_name(case_dir), reader.submit(
                    load_case, case_dir, out_dir, overwrite, pipeline, segmenter)))
                if len(loads) >= READ_AHEAD:
                    break

        try:
            with (progress or no_progress)(len(case_dirs)) as bar:
                read_ahead()
                while loads:
                    name, future = loads.popleft()
                    read_ahead()
                    run.add(name, future.result())
                    bar.update(1)
                run.flush()
        except BaseException:  # Ctrl-C: read nothing more; what was sent to the writer lands
            for _, future in loads:
                future.cancel()
            raise
        run.report_done(wait_for=0)
    return run.counts, run.failed


class _BatchRun:
    """The state of one ``run_with``: cases waiting for the engines and reports waiting to
    be printed in case order."""

    def __init__(self, pipeline, out_dir, karyogram, overwrite, echo, report=True):
        self.pipeline, self.out_dir, self.echo = pipeline, out_dir, echo
        self.karyogram, self.overwrite, self.report = karyogram, overwrite, report
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.failed = []
        self.pending = []  # (LoadedCase, report slot) waiting for an engine batch
        self.reports = deque()  # [name, Future of (status, line)]; None until inferred
        self.writer = None
        self.keep_images = False

    def add(self, name, loaded):
        """A case read by the reader: a LoadedCase, or a (status, line) already settled."""
        if not isinstance(loaded, LoadedCase):
            self.reports.append([name, _settled(*loaded)])
            self.report_done()
            return
        slot = [name, None]
        self.reports.append(slot)
        self.pending.append((loaded, slot))
        if sum(len(c.images) for c, _ in self.pending) >= self.pipeline.batch_size:
            self.flush()

    def flush(self):
        """Run the pending cases as one engine batch and hand their results to the writer."""
        if not self.pending:
            return
        cases = [case for case, _ in self.pending]
        for (case, slot), (_, result) in zip(self.pending, infer_cases(self.pipeline, cases)):
            if isinstance(result, Exception):
                slot[1] = _settled("failed", f"{case.name}: failed: {_one_line(result)}")
            else:
                slot[1] = self.writer.submit(save_result, case, result, self.out_dir,
                                             self.karyogram, self.overwrite, self.report,
                                             self.keep_images)
        self.pending.clear()
        self.report_done(wait_for=WRITE_BEHIND)

    def report_done(self, wait_for=None):
        """Print the finished reports at the front; with ``wait_for``, first wait for the
        writer until at most that many reports remain."""
        reports = self.reports
        while reports and reports[0][1] is not None:
            if not reports[0][1].done() and (wait_for is None or len(reports) <= wait_for):
                break
            name, future = reports.popleft()
            status, line = future.result()
            self.counts[status] += 1
            if status == "failed":
                self.failed.append(name)
            self.echo(line)


def _settled(status, line):
    future = Future()
    future.set_result((status, line))
    return future


class _NoBar:
    def update(self, _n):
        pass


def no_progress(_total):
    """No progress bar: a context manager whose ``update`` does nothing."""
    return contextlib.nullcontext(_NoBar())


def infer_cases(pipeline, cases):
    """(case, result or exception) per case: shared batches, and when a shared batch fails,
    each case again on its own so that one bad case does not take the others with it."""
    try:
        results = pipeline.run_cases([c.prepared for c in cases])
        return list(zip(cases, results))
    except Exception as exc:  # an engine or input error: find which case it belongs to
        if len(cases) == 1:
            return [(cases[0], exc)]
    out = []
    for case in cases:
        try:
            out.append((case, pipeline.run_cases([case.prepared])[0]))
        except Exception as exc:  # reported as this case's failure, the others go on
            out.append((case, exc))
    return out


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__
