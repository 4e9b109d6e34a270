"""``vfinfer run``: many case directories through one pipeline.

Cases are read one by one and their chromosomes are sent to the engines in shared batches
(several small cases fill one batch). One bad case (unreadable image, empty directory,
existing result) is reported in one line and never stops the others; the caller gets the
number of failed cases.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from .imageio import CaseError, ImageReadError, list_case, read_gray8
from .pipeline import Pipeline
from .results import ResultExistsError, existing_result, write_case


@dataclass
class LoadedCase:
    name: str
    images: list
    files: list
    ignored: list = field(default_factory=list)


def case_name(case_dir):
    return Path(case_dir).resolve().name or "case"


def load_case(case_dir, out_dir, overwrite):
    """A LoadedCase, or (status, line) when the case is skipped or cannot be read."""
    name = case_name(case_dir)
    if existing_result(Path(out_dir) / name) and not overwrite:
        return "skipped", (f"{name}: skipped, {Path(out_dir) / name} already holds results "
                           "(left untouched; pass --overwrite to replace)")
    try:
        paths, ignored = list_case(case_dir)
        images = [read_gray8(p) for p in paths]
    except (CaseError, ImageReadError) as exc:
        return "failed", f"{name}: failed: {exc}"
    return LoadedCase(name, images, [p.name for p in paths], ignored)


def save_result(case, result, out_dir, karyogram, overwrite):
    """Write one result; returns (status, line)."""
    if case.ignored:
        shown = ", ".join(case.ignored[:5]) + (" ..." if len(case.ignored) > 5 else "")
        result["ignored_files"] = case.ignored
        result["warnings"].append(f"ignored {len(case.ignored)} non-image entries: {shown}")
    try:
        target = write_case(out_dir, result, case.images if karyogram else None, overwrite)
    except ResultExistsError as exc:
        return "skipped", f"{case.name}: skipped, {exc}"
    except OSError as exc:
        return "failed", f"{case.name}: failed: cannot write results ({exc})"
    n_warn = len(result["warnings"])
    return "ok", (f"{case.name}: {result['n_chromosomes']} chromosomes, {result['karyotype']}, "
                  f"{n_warn} warning{'s' if n_warn != 1 else ''}, "
                  f"{result['timing_ms']['total']:.0f} ms -> {target}")


def run_cases(case_dirs, model_dir=None, backend="auto", out_dir="vfinfer-results",
              dispatch_mode="paper", karyogram=True, threads=0, batch_size=None,
              overwrite=False, precision=None, echo=click.echo):
    """Run every case; returns the names of the cases that failed."""
    names = [case_name(d) for d in case_dirs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several case directories are named {', '.join(duplicates)}; "
                         "results would collide in OUT/<case>/: rename or run them separately")
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    failed = []

    def report(status, line, name=None):
        counts[status] += 1
        if status == "failed" and name:
            failed.append(name)
        echo(line)

    with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                  dispatch_mode=dispatch_mode, precision=precision) as pipeline:
        echo(f"model {pipeline.manifest.model_dir} ({pipeline.config.preset}), "
             f"backend {pipeline.backend.name}")
        pending = []

        def flush():
            for case, result in infer_cases(pipeline, pending):
                if isinstance(result, Exception):
                    report("failed", f"{case.name}: failed: {_one_line(result)}", case.name)
                else:
                    status, line = save_result(case, result, out_dir, karyogram, overwrite)
                    report(status, line, case.name)
            pending.clear()

        show_bar = len(case_dirs) > 1 and sys.stderr.isatty()
        with click.progressbar(case_dirs, label="cases", file=sys.stderr,
                               hidden=not show_bar) as bar:
            for case_dir in bar:
                loaded = load_case(case_dir, out_dir, overwrite)
                if not isinstance(loaded, LoadedCase):
                    report(*loaded, case_name(case_dir))
                    continue
                pending.append(loaded)
                if sum(len(c.images) for c in pending) >= pipeline.batch_size:
                    flush()
            if pending:
                flush()
    echo(f"{counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return failed


def infer_cases(pipeline, cases):
    """(case, result or exception) per case: shared batches, and when a shared batch fails,
    each case again on its own so that one bad case does not take the others with it."""
    try:
        results = pipeline.run_cases([(c.name, c.images, c.files) for c in cases])
        return list(zip(cases, results))
    except Exception as exc:  # an engine or input error: find which case it belongs to
        if len(cases) == 1:
            return [(cases[0], exc)]
    out = []
    for case in cases:
        try:
            out.append((case, pipeline.run_cases([(case.name, case.images, case.files)])[0]))
        except Exception as exc:  # reported as this case's failure, the others go on
            out.append((case, exc))
    return out


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__
