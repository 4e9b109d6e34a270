"""``vfinfer run``, ``vfinfer report`` and ``vfinfer env``: the runtime's commands."""

import sys
from pathlib import Path

import click

from vfinfer.cli.group import main
from vfinfer.cli.options import (
    EXIT_FAILED,
    dispatch_option,
    fail,
    model_options,
    one_line_errors,
    progress_bar,
    seg_model_option,
    seg_precision_option,
    usage,
    verdict_options,
)


@main.command()
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options()
@click.option("--out", "out_dir", default="vfinfer-results", show_default=True,
              type=click.Path(path_type=Path), help="Results go to OUT/<case>/.")
@dispatch_option()
@click.option("--no-karyogram", is_flag=True, help="Skip karyogram.png.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write OUT/<case>/report.html, the case report to read or print on A4.")
@click.option("--keep-images", is_flag=True,
              help="Also write the images as classified to OUT/<case>/images/ (a metaphase's "
                   "cut-outs and the image itself): what the review page (vfinfer serve "
                   "--cases OUT) and training on reviewed cases need.")
@click.option("--overwrite", is_flag=True, help="Replace existing results.")
@click.option("--patient-from", "patient_from", default=None, metavar="REGEX",
              help="Group cases by patient: the first group of REGEX in the case name (else "
                   "the whole match), e.g. '^([^.]+)\\.' for 97002023.12 -> 97002023; writes "
                   "OUT/<patient>/patient.json (ISCN clones). Best with optimal dispatch.")
@click.option("--sample-sheet", type=click.Path(path_type=Path), default=None,
              help="CSV with the columns cell,patient: group cases by patient (instead of "
                   "--patient-from).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Run the cells on Ray (the ray extra): alone, a Ray instance on this "
                   "machine; with an address (e.g. auto, ray://head:10001), that cluster. "
                   "Put it after the case directories or give an address.")
@click.option("--ray-actors", default=0, type=click.IntRange(min=0),
              help="Pipelines (Ray actors) with --ray (0: one per 2 CPUs of the cluster).")
@verdict_options
@seg_model_option
@seg_precision_option
@one_line_errors
def run(case_dirs, model_dir, backend, precision, threads, batch_size, out_dir, dispatch_mode,
        no_karyogram, report, keep_images, overwrite, patient_from, sample_sheet, ray_address,
        ray_actors, background, force_karyotype, seg_model, seg_precision):
    """Classify the chromosomes of each CASE_DIR (one cell per directory of cut-outs). A
    metaphase image file in place of a directory is segmented first (--seg-model) and
    also gets OUT/<image>/overlay.png."""
    from vfinfer.io.runner import case_name, run_cases

    _check_ray_options(case_dirs, ray_address, ray_actors, keep_images)
    names = [case_name(d) for d in case_dirs]
    grouping = patient_from is not None or sample_sheet is not None
    sheet = _patient_grouping(names, sample_sheet, patient_from, dispatch_mode, model_dir) \
        if grouping else None
    options = dict(model_dir=model_dir, backend=backend, out_dir=out_dir,
                   dispatch_mode=dispatch_mode, karyogram=not no_karyogram, threads=threads,
                   batch_size=batch_size, overwrite=overwrite, precision=precision,
                   echo=click.echo, progress=progress_bar, background=background,
                   force_karyotype=force_karyotype, report=report)
    if ray_address is not None:
        failed = _import_ray_run()(case_dirs, address=ray_address, actors=ray_actors,
                                   **options)
    else:
        failed = run_cases(case_dirs, seg_model=seg_model, seg_precision=seg_precision,
                           keep_images=keep_images, **options)
    if grouping:
        _write_patients(out_dir, names, sheet, patient_from, failed, overwrite)
    if failed:
        sys.exit(EXIT_FAILED)


def _check_ray_options(case_dirs, ray_address, ray_actors, keep_images):
    """Usage errors for --ray and --ray-actors that cannot be run as given."""
    from vfinfer.io.runner import is_metaphase

    if keep_images and ray_address is not None:
        usage("--keep-images is not available with --ray (run those cases without it)")
    if ray_address is not None and Path(ray_address).is_dir():
        usage(f"--ray {ray_address}: that is a directory; put --ray after the case "
              "directories, or give the cluster's address")
    if ray_actors and ray_address is None:
        usage("--ray-actors needs --ray")
    if ray_address is not None and any(is_metaphase(d) for d in case_dirs):
        usage("--ray runs case directories; segment metaphase images first with "
              "'vfinfer segment' (or run them without --ray)")


def _patient_grouping(names, sample_sheet, patient_from, dispatch_mode, model_dir):
    """The sample sheet as ``{cell: patient}`` (None with --patient-from), checked against
    the cases before any of them runs."""
    from vfinfer.calls.auto import choose_dispatch
    from vfinfer.calls.patient import group_cells
    from vfinfer.io.patients import read_sample_sheet
    from vfinfer.model.manifest import demo_model_dir, load_manifest

    sheet = None if sample_sheet is None else read_sample_sheet(sample_sheet)
    group_cells(names, sample_sheet=sheet, pattern=patient_from)
    dispatch_mode = choose_dispatch(dispatch_mode,
                                    load_manifest(model_dir or demo_model_dir()).data).mode
    if dispatch_mode != "optimal":
        click.echo(f"note: patient karyotypes from --dispatch {dispatch_mode} count every "
                   "misclassification as a gain or loss; --dispatch optimal is meant for "
                   "this", err=True)
    return sheet


def _import_ray_run():
    try:
        import ray.data  # noqa: F401

        from vfinfer.cluster.ray_run import run_on_ray
    except ImportError as exc:
        fail(f"--ray needs the ray extra ({exc.name} is missing): pip install -e '.[ray]'")
    return run_on_ray


def _write_patients(out_dir, names, sheet, patient_from, failed, overwrite):
    from vfinfer.io.patients import patients_from_results

    patients = patients_from_results(out_dir, names, sample_sheet=sheet,
                                     pattern=patient_from, echo=click.echo, failed=failed,
                                     overwrite=overwrite)
    n_clone = sum(p["abnormal"] for p in patients)
    n_non_clonal = sum(bool(p["non_clonal"]) for p in patients)
    click.echo(f"{len(patients)} patient(s): {n_clone} with an abnormal clone, "
               f"{n_non_clonal} with non-clonal findings only or besides; "
               "patient.json in OUT/<patient>/")


@main.command("report")
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing report.html.")
@one_line_errors
def report_command(case_dirs, overwrite):
    """Write OUT/<case>/report.html again for each case directory that 'vfinfer run'
    wrote, from its files (result.json, karyogram.png, overlay.png, and audit.jsonl of a
    review). One line per case; a case that fails does not stop the others."""
    from vfinfer.io.report import write_report

    counts = {"written": 0, "skipped": 0, "failed": 0}
    for case_dir in case_dirs:
        try:
            target = write_report(case_dir, overwrite)
        except FileExistsError as exc:
            counts["skipped"] += 1
            click.echo(f"{case_dir}: skipped, {exc}")
        except Exception as exc:  # this case's files only; the others go on
            counts["failed"] += 1
            text = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(f"{case_dir}: failed: {text}")
        else:
            counts["written"] += 1
            click.echo(f"{case_dir}: report -> {target}")
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()))
    if counts["failed"]:
        sys.exit(EXIT_FAILED)


@main.command()
@one_line_errors
def env():
    """Print versions, ONNX Runtime providers and GPU facts (or why they are absent)."""
    from vfinfer.util.machine import describe_environment

    for key, value in describe_environment().items():
        click.echo(f"{key:22s} {value}")

