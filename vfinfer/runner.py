"""``vfinfer run``: many case directories through one pipeline, each case on its own.

One bad case (unreadable image, empty directory, existing result) is reported in one line and
never stops the others; the caller gets the number of failed cases.
"""

import sys
from pathlib import Path

import click

from .imageio import CaseError, ImageReadError, list_case, read_gray8
from .pipeline import Pipeline
from .results import ResultExistsError, existing_result, write_case


def case_name(case_dir):
    return Path(case_dir).resolve().name or "case"


def run_one(pipeline, case_dir, out_dir, karyogram, overwrite):
    """Run one case directory; returns (status, line) with status ok / skipped / failed."""
    name = case_name(case_dir)
    if existing_result(Path(out_dir) / name) and not overwrite:
        return "skipped", (f"{name}: skipped, {Path(out_dir) / name} already holds results "
                           "(left untouched; pass --overwrite to replace)")
    try:
        paths, ignored = list_case(case_dir)
        images = [read_gray8(p) for p in paths]
        result = pipeline.run_case(images, name=name, files=[p.name for p in paths])
    except (CaseError, ImageReadError) as exc:
        return "failed", f"{name}: failed: {exc}"
    if ignored:
        result["ignored_files"] = ignored
        result["warnings"].append(f"ignored {len(ignored)} non-image entries: "
                                  f"{', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}")
    try:
        target = write_case(out_dir, result, images if karyogram else None, overwrite)
    except ResultExistsError as exc:
        return "skipped", f"{name}: skipped, {exc}"
    except OSError as exc:
        return "failed", f"{name}: failed: cannot write results ({exc})"
    n_warn = len(result["warnings"])
    return "ok", (f"{name}: {result['n_chromosomes']} chromosomes, {result['karyotype']}, "
                  f"{n_warn} warning{'s' if n_warn != 1 else ''}, "
                  f"{result['timing_ms']['total']:.0f} ms -> {target}")


def run_cases(case_dirs, model_dir=None, backend="auto", out_dir="vfinfer-results",
              dispatch_mode="paper", karyogram=True, threads=0, batch_size=None,
              overwrite=False, echo=print):
    """Run every case; returns the number of cases that failed."""
    names = [case_name(d) for d in case_dirs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"several case directories are named {', '.join(sorted(duplicates))}; "
                         "results would collide in OUT/<case>/: rename or run them separately")
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    with Pipeline(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                  dispatch_mode=dispatch_mode) as pipeline:
        echo(f"model {pipeline.manifest.model_dir} ({pipeline.config.preset}), "
             f"backend {pipeline.backend.name}")
        show_bar = len(case_dirs) > 1 and sys.stderr.isatty()
        with click.progressbar(case_dirs, label="cases", file=sys.stderr,
                               hidden=not show_bar) as bar:
            for case_dir in bar:
                status, line = run_one(pipeline, case_dir, out_dir, karyogram, overwrite)
                counts[status] += 1
                echo(line, err=status == "failed") if echo is click.echo else echo(line)
    echo(f"{counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return counts["failed"]
