"""The offline commands: export, tta, train, eval, calibrate, bench, synth, synth-structural,
fp16, quantize, build.

Each imports its tool (and torch or onnx, where it needs them) only when it runs.
"""

import tempfile
import time
from pathlib import Path

import click

from vfinfer.cli.group import main
from vfinfer.cli.options import (
    BACKEND_CHOICE,
    PRESET_CHOICE,
    device_option,
    dispatch_option,
    fail,
    import_export_side,
    labels_option,
    model_options,
    one_line_errors,
    training_device,
    usage,
)
from vfinfer.model.config import TTA_MODES
from vfinfer.segment.model import SEG_TTA_FLIPS
from vfinfer.tools.evaluation import MIN_ABNORMAL_CELLS


def _log(line):
    click.echo(line, err=True)


# -- export -------------------------------------------------------------------------------------
@main.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory to create (graphs + manifest.json).")
@click.option("--preset", default=None, type=PRESET_CHOICE,
              help="Model preset (default: the checkpoint's, else compact).")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Model config JSON for a bare state_dict checkpoint.")
@click.option("--random-init", is_flag=True, help="Export a He-initialized, untrained model.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-init.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a checkpoint holding a pickled module (runs code from the file).")
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out.")
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="ONNX Runtime threads for the parity check.")
@click.option("--fp16", is_flag=True,
              help="Also write audited mixed-precision FP16 graphs (needed for TensorRT 11).")
@click.option("--calib", "calib_case_dir", type=click.Path(path_type=Path),
              help="Case directory of chromosome images for the FP16 range audit "
                   "(default: synthetic images).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the training data is now, if not where the checkpoint says (the "
                   "validation cells the domain figures and the calibration are fitted on).")
@click.option("--no-fit", is_flag=True,
              help="Skip fitting the domain figures and the optimal-dispatch calibration on "
                   "the trainer's validation slides.")
@click.option("--tta", type=click.Choice(TTA_MODES), default=None,
              help="Test-time augmentation recorded in the model: none, or mirror (each "
                   "image and its left-right mirror, probabilities averaged; 2x the network "
                   "time). Default: the checkpoint's (none).")
@one_line_errors
def export(checkpoint, out_dir, preset, config_path, random_init, seed, trust_pickle,
           overwrite, threads, fp16, calib_case_dir, data_dir, no_fit, tta):
    """Export a trained model to ONNX (gnet, lnet, heads) with parity checks; a checkpoint of
    'vfinfer train' also gets its domain figures and optimal-dispatch calibration, fitted on
    the validation slides the trainer held out (when the training data is reachable)."""
    _check_export_args(checkpoint, random_init, fp16, calib_case_dir, data_dir, no_fit)
    model, source = _model_to_export(checkpoint, preset, config_path, random_init, seed,
                                     trust_pickle)
    if tta is not None:
        from dataclasses import replace

        model.config = replace(model.config, tta=tta)
    started = time.perf_counter()
    if not random_init and not no_fit and not getattr(model, "training_record", None):
        click.echo("no domain figures or dispatch calibration will be fitted: the checkpoint "
                   "records no training data (not written by 'vfinfer train'); fit them with "
                   f"'vfinfer domain CELL_DIR... --model {out_dir} --labels LABELS' and 'vfinfer "
                   f"calibrate DATA_DIR --labels LABELS --model {out_dir}' on labelled "
                   "validation cells")
    export_model = import_export_side()[2]
    export_model(model, out_dir, source, overwrite=overwrite, log=click.echo, threads=threads,
                 fp16=fp16, calib_case_dir=calib_case_dir, fit=not no_fit, data_dir=data_dir)
    click.echo(f"wrote {out_dir} ({model.config.preset} preset) in "
               f"{time.perf_counter() - started:.1f} s")


def _check_export_args(checkpoint, random_init, fp16, calib_case_dir, data_dir, no_fit):
    if checkpoint is None and not random_init:
        usage("give a CHECKPOINT to export, or --random-init for an untrained model")
    if checkpoint is not None and random_init:
        usage("give either a CHECKPOINT or --random-init, not both")
    if calib_case_dir is not None and not fp16:
        usage("--calib only applies with --fp16")
    if data_dir is not None and (random_init or no_fit):
        usage("--data-dir only applies to fitting a trained checkpoint (not with "
              "--random-init or --no-fit)")
    if checkpoint is not None and not checkpoint.is_file():
        fail(f"{checkpoint}: checkpoint file not found")


def _model_to_export(checkpoint, preset, config_path, random_init, seed, trust_pickle):
    """(the PyTorch model, the manifest's ``source``) from the checkpoint or a random init."""
    from vfinfer.model.config import preset as preset_config
    from vfinfer.model.manifest import sha256_file

    config = preset_config(preset) if preset else None
    load_checkpoint, random_model, _ = import_export_side()
    if random_init:
        return (random_model(config or preset_config("compact"), seed),
                {"kind": "random-init", "seed": seed})
    model = load_checkpoint(checkpoint, config_path or config, trust_pickle=trust_pickle)
    return model, {"kind": "checkpoint", "path": str(checkpoint),
                   "sha256": sha256_file(checkpoint)}


@main.command("tta")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("mode", type=click.Choice(list(dict.fromkeys([*TTA_MODES, *SEG_TTA_FLIPS]))))
@one_line_errors
def tta_(model_dir, mode):
    """Set a model directory's test-time augmentation. A classifier: none or mirror (each
    image and its left-right mirror, probabilities averaged; 2x the network time). A
    segmentation model: none, mirror or flips (the maps of the metaphase and its left-right
    mirror image, or of all four mirror images, flipped back and averaged; 2x or 4x the
    segmentation network's time)."""
    from vfinfer.model.manifest import set_tta
    from vfinfer.segment.model import is_seg_model_dir, set_seg_tta

    if is_seg_model_dir(model_dir):
        click.echo(f"{model_dir}: tta {set_seg_tta(model_dir, mode)} -> {mode}")
        return
    previous, notes = set_tta(model_dir, mode)
    click.echo(f"{model_dir}: tta {previous} -> {mode}")
    for note in notes:
        click.echo(f"note: {note}", err=True)


def recipe_options(command):
    """The recipe levers of ``vfinfer train`` (docs/training.md, "Recipe"), each off by
    default: ``--size-norm --augment --balance --keep-best --box-jitter --init``."""
    options = [
        click.option("--size-norm", "size_norm", default=None, metavar="REF_LENGTH",
                     type=click.FloatRange(min=0, min_open=True),
                     help="Scale every cut-out by REF_LENGTH / its cell's median chromosome "
                          "length (pixels, principal-axis extent) before the canvas, in "
                          "training and (recorded in the model) at run time. Default: off."),
        click.option("--augment", default="paper", show_default=True,
                     type=click.Choice(["paper", "real"]),
                     help="paper: flips and rotation (section III-B); real: also scale "
                          "jitter, gamma, blur and noise (docs/training.md, Recipe)."),
        click.option("--balance", is_flag=True,
                     help="Class-balanced sampling: every type drawn equally often per epoch."),
        click.option("--keep-best", is_flag=True,
                     help="End each step on its epoch of best validation type accuracy."),
        click.option("--box-jitter", default=0.0, show_default=True, metavar="SIGMA",
                     type=click.FloatRange(min=0, max=0.2),
                     help="Noise (standard deviation, in the localizer's 0-1 units of eq. 5) "
                          "on the boxes the L-Net and the heads train on, so that a box a "
                          "little off does not flip the call (docs/training.md, Recipe)."),
        click.option("--init", "init", type=click.Path(path_type=Path), default=None,
                     metavar="MODEL_OR_CHECKPOINT",
                     help="Start from these weights (a .pt checkpoint, or a model directory "
                          "exported from one) instead of He initialization; the same "
                          "preset/trunk."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


corrections_option = click.option(
    "--add-corrections", "corrections", multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="A directory of reviewed cases (vfinfer serve --cases, or vfinfer run --keep-images "
         "then reviewed) whose corrected calls join the training data (repeatable).")


# -- train --------------------------------------------------------------------------------------
@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Labels CSV (default: DATA_DIR/labels.csv).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory: last.pt (resumable), model.pt, history.json.")
@click.option("--preset", default="compact", show_default=True, type=PRESET_CHOICE)
@click.option("--epochs-gnet", type=click.IntRange(min=0),
              help="Step 2 epochs (G-Net trunk + classification).")
@click.option("--epochs-loc", type=click.IntRange(min=0),
              help="Step 3 epochs (localizer pre-training).")
@click.option("--epochs-local", type=click.IntRange(min=0),
              help="Step 4 rounds (L-Net / localizer alternation).")
@click.option("--epochs-heads", type=click.IntRange(min=0), help="Stage 2 epochs (MLP heads).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--lr-schedule", default="cosine", show_default=True,
              type=click.Choice(["cosine", "paper", "constant"]))
@click.option("--val-fraction", default=0.15, show_default=True,
              help="Fraction of slides held out for validation (split by slide).")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Train on a seeded subset of N images.")
@click.option("--rotate-crop", default="none", show_default=True,
              type=click.Choice(["none", "principal-axis", "hough"]),
              help="Turn every cut-out upright and crop it before the canvas, in training and "
                   "(recorded in the model) at run time: for cut-outs at any angle.")
@corrections_option
@recipe_options
@device_option
@one_line_errors
def train(data_dir, labels, out_dir, preset, epochs_gnet, epochs_loc, epochs_local,
          epochs_heads, batch_size, lr, lr_schedule, val_fraction, seed, resume, threads, limit,
          rotate_crop, corrections, size_norm, augment, balance, keep_best, box_jitter, init,
          device):
    """Train a model with the paper's four-step strategy (section II-C); a step given 0
    epochs is skipped (with --init its weights stay the init model's)."""
    import_export_side()
    device = training_device(device)
    from dataclasses import replace

    from vfinfer.model.config import preset as preset_config
    from vfinfer_export.train import train as run_training

    epochs = dict(gnet=epochs_gnet, loc=epochs_loc, local=epochs_local, heads=epochs_heads)
    epochs = {step: n for step, n in epochs.items() if n is not None}
    started = time.perf_counter()
    config = replace(preset_config(preset), rotate_crop=rotate_crop,
                     size_norm=size_norm or 0.0)
    model_path = run_training(data_dir, labels, out_dir, preset=config, epochs=epochs or None,
                              batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                              val_fraction=val_fraction, seed=seed, resume=resume,
                              threads=threads, limit=limit, augment=augment, balance=balance,
                              keep_best=keep_best, init=init, device=device,
                              corrections=corrections, box_jitter=box_jitter)
    click.echo(f"wrote {model_path} in {(time.perf_counter() - started) / 60:.1f} min; export "
               f"it with: vfinfer export {model_path} --out engines/{preset}")


# -- eval ---------------------------------------------------------------------------------------
@main.command("eval")
@click.argument("data_dir", type=click.Path(path_type=Path))
@labels_option("Labels CSV (cell,file,type,polarity); a relative path is looked up in "
               "DATA_DIR first, then in the current directory.")
@model_options()
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the results as JSON here, and the type confusion heat map "
                   "next to it as <stem>_confusion.png.")
@click.option("--flip-half", is_flag=True,
              help="Flip a seeded half of the images vertically and label them q-arm up, so "
                   "that polarity is measured on both classes.")
@click.option("--seed", default=0, show_default=True, help="Seed for --flip-half.")
@click.option("--patient-from", "patient_from", default=None, metavar="REGEX",
              help="Patient of a cell: the first group of REGEX in its name (default: the "
                   "labels' slide column, if any).")
@click.option("--sample-sheet", type=click.Path(path_type=Path), default=None,
              help="CSV with the columns cell,patient for the patient-level figures.")
@click.option("--simulate", "simulate_per_cell", default=3, show_default=True,
              type=click.IntRange(min=0),
              help="Abnormal cells simulated per normal cell for separate sensitivity "
                   "figures (gain, loss, sex variant in turn); 0: none.")
@dispatch_option(" The figures cover all three modes; this one's verdict is counted.")
@click.option("--reviewed", is_flag=True,
              help="DATA_DIR holds reviewed cases (vfinfer serve --cases): score the model "
                   "against their corrected calls instead of a labels CSV.")
@one_line_errors
def eval_(data_dir, labels_csv, model_dir, backend, precision, threads, batch_size, json_path,
          flip_half, seed, patient_from, sample_sheet, simulate_per_cell, dispatch_mode,
          reviewed):
    """Measure a model on labelled cells: Acc., F1, Acc. per Case (-D) as in the paper, and
    argmax / Algorithm 1 / optimal dispatch per cell and per patient."""
    from vfinfer.tools.evaluation.evaluate import evaluate
    from vfinfer.tools.evaluation.records import roc_paths, save_eval
    from vfinfer.tools.evaluation.report import format_report

    given = click.get_current_context().get_parameter_source("labels_csv")
    if reviewed and given == click.core.ParameterSource.COMMANDLINE:
        usage("give either --reviewed or --labels, not both")
    labels = None
    if reviewed:
        from vfinfer.io.review import reviewed_labels

        labels = reviewed_labels(data_dir)
    results = evaluate(data_dir, None if reviewed else labels_csv, labels=labels,
                       model_dir=model_dir,
                       backend=backend,
                       threads=threads, batch_size=batch_size, precision=precision,
                       flip_half=flip_half, seed=seed, log=_log, patient_from=patient_from,
                       sample_sheet=sample_sheet, simulate=simulate_per_cell,
                       dispatch_mode=dispatch_mode)
    click.echo(format_report(results))
    if json_path is not None:
        written, picture = save_eval(results, json_path)
        roc_json, roc_picture = roc_paths(written)
        click.echo(f"wrote {written}, {picture}, {roc_json} and {roc_picture}")


# -- calibrate ----------------------------------------------------------------------------------
@main.command("calibrate")
@click.argument("data_dir", type=click.Path(path_type=Path))
@labels_option("Labels CSV of the TRAINING cells (e.g. the train.csv of "
               "benchmarks/split_by_slide.py); never the slides you report results on.")
@model_options(model_required=True,
               model_help="Model directory; its manifest.json receives dispatch.optimal.")
@click.option("--slides-from", type=click.Path(path_type=Path), default=None,
              help="Use only the cells of these slides: a text file with one slide id per "
                   "line, or a JSON list (or {\"train\": [...]}).")
@click.option("--exclude", multiple=True, metavar="ID|@FILE",
              help="Leave out a slide or cell (repeatable); @FILE reads ids from a file.")
@click.option("--patient-from", "patient_from", default=None, metavar="REGEX",
              help="Slide of a cell from its name when the labels have no slide column.")
@click.option("--min-sensitivity", default=1.0, show_default=True,
              type=click.FloatRange(0, 1),
              help="Share of the abnormal training cells the threshold must flag.")
@click.option("--threshold-position", default=0.0, show_default=True,
              type=click.FloatRange(0, 1),
              help="Where in the interval of equally good thresholds: 0 the smallest, 0.5 "
                   "the middle, 1 the largest.")
@click.option("--dry-run", is_flag=True, help="Report only; leave manifest.json alone.")
@click.option("--simulate", "simulate_per_cell", default=3, show_default=True,
              type=click.IntRange(min=0),
              help="Abnormal cells simulated per normal calibration cell (a real chromosome's "
                   "output added or removed: gain, loss, sex variant in turn) so that the "
                   "threshold does not rest on a few real abnormal cells; 0: real cells only.")
@click.option("--allow-few-abnormal", is_flag=True,
              help=f"Store the parameters even with fewer than {MIN_ABNORMAL_CELLS} abnormal "
                   "cells, real and simulated (they are then fitted to very few examples).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the calibration report here.")
@one_line_errors
def calibrate_(data_dir, labels_csv, model_dir, backend, precision, threads, batch_size,
               slides_from, exclude, patient_from, min_sensitivity, threshold_position,
               dry_run, simulate_per_cell, allow_few_abnormal, json_path):
    """Fit optimal-dispatch parameters on labelled training cells; store them in the model."""
    from vfinfer.tools.evaluation.calibration_data import calibrate_on_data, select_cells
    from vfinfer.tools.evaluation.calibration_report import format_calibration
    from vfinfer.util.atomic import write_json_atomic

    selection = select_cells(data_dir, labels_csv, slides_from, exclude, patient_from)
    params, report = calibrate_on_data(
        data_dir, labels_csv, selection, log=_log, echo=click.echo,
        pipeline_options={"model_dir": model_dir, "backend": backend, "threads": threads,
                          "batch_size": batch_size, "precision": precision},
        simulate_per_cell=simulate_per_cell, min_sensitivity=min_sensitivity,
        threshold_position=threshold_position)
    click.echo(format_calibration(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, report)
        click.echo(f"wrote {json_path}")
    if dry_run:
        click.echo("dry run: manifest.json left unchanged")
    else:
        _store_calibration(model_dir, params, report, allow_few_abnormal)


def _store_calibration(model_dir, params, report, allow_few_abnormal):
    """Write the fitted parameters into the manifest, unless too few abnormal cells back
    them."""
    from vfinfer.tools.evaluation.calibration_report import store_params

    if report["n_abnormal"] < MIN_ABNORMAL_CELLS and not allow_few_abnormal:
        fail(f"only {report['n_abnormal']} abnormal cells among the calibration cells (at least "
             f"{MIN_ABNORMAL_CELLS} wanted, real and simulated): parameters fitted to so few "
             "examples over-fit, so manifest.json was left unchanged (the defaults stay); "
             "pass --simulate N or --allow-few-abnormal to store them anyway")
    click.echo(f"wrote dispatch.optimal and dispatch.calibration to "
               f"{store_params(model_dir, params, report)}")


# -- domain -------------------------------------------------------------------------------------
@main.command()
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory; its manifest.json receives the domain section.")
@click.option("--backend", default="auto", show_default=True, type=BACKEND_CHOICE)
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="CPU threads (0: ONNX Runtime's default).")
@click.option("--labels", "labels_csv", type=click.Path(path_type=Path), default=None,
              help="Labels of these cells (a labels.csv whose file column is relative to its "
                   "folder): also record how often each dispatch gets their karyotype right; "
                   "below 50 % the verdict withholds that dispatch's karyotypes.")
@click.option("--dry-run", is_flag=True, help="Report only; leave manifest.json alone.")
@one_line_errors
def domain(case_dirs, model_dir, backend, threads, labels_csv, dry_run):
    """Store the figures of in-domain cells (CASE_DIRs: validation cells of the training data)
    that the verdict compares each cell with. Folders of 'vfinfer segment' (cells segmented
    from metaphases) fill the manifest's domain_segmented section, by which segmented cells
    are judged; ready-made cut-outs the domain section."""
    from vfinfer.tools.evaluation.domain import domain_key, domain_lines, store_domain

    section = store_domain(model_dir, list(case_dirs), backend=backend, threads=threads,
                           log=_log, dry_run=dry_run, labels_csv=labels_csv)
    for line in domain_lines(section):
        click.echo(line)
    click.echo("dry run: manifest.json left unchanged" if dry_run
               else f"wrote the {domain_key(section)} section to {model_dir / 'manifest.json'}")


# -- bench --------------------------------------------------------------------------------------
@main.command()
@model_options()
@click.option("--preset", default=None, type=PRESET_CHOICE,
              help="Time an untrained model of this preset instead (needs the export extra).")
@click.option("--cases", "n_cases", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--chromosomes", default=46, show_default=True, type=click.IntRange(min=1),
              help="Chromosomes per case.")
@click.option("--warmup", default=3.0, show_default=True, type=click.FloatRange(min=0),
              help="Warm-up seconds.")
@click.option("--no-reference", is_flag=True, help="Skip the PyTorch eager comparison.")
@click.option("--no-karyogram", is_flag=True, help="Write results without karyogram.png.")
@click.option("--cells", "cells_dir", type=click.Path(path_type=Path),
              help="Time your own cells: the first --cases case folders under this folder, "
                   "instead of synthetic ones (--chromosomes does not apply).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report.")
@one_line_errors
def bench(model_dir, backend, precision, threads, batch_size, preset, n_cases, chromosomes,
          warmup, no_reference, no_karyogram, cells_dir, json_path):
    """Time whole cases stage by stage; compare with PyTorch eager."""
    from vfinfer.tools.benchmarking.bench import format_report, run_bench, save_report

    if model_dir and preset:
        usage("give --model or --preset, not both")
    with tempfile.TemporaryDirectory(prefix="vfinfer-bench-model-") as tmp:
        if preset:
            model_dir = _untrained_model(preset, Path(tmp))
        reference, why_not = (None, "not requested") if no_reference else _eager_reference()
        report = run_bench(model_dir, backend=backend, n_cases=n_cases,
                           n_chromosomes=chromosomes, batch_size=batch_size, threads=threads,
                           warmup_s=warmup, reference=reference, no_reference=why_not,
                           precision=precision, karyogram=not no_karyogram,
                           cells_dir=cells_dir)
    click.echo(format_report(report))
    if json_path:
        save_report(report, json_path)
        click.echo(f"wrote {json_path}")


def _eager_reference():
    """(the PyTorch eager timer's class, None), or (None, why) when the torch side is not
    installed."""
    try:
        from vfinfer_export.reference import EagerTimer
    except ImportError as exc:
        return None, f"torch side not installed ({exc.name})"
    return EagerTimer, None


def _untrained_model(preset, tmp):
    from vfinfer.model.config import preset as preset_config

    _, random_model, export_model = import_export_side()
    model_dir = tmp / preset
    click.echo(f"exporting an untrained {preset} model to time it ...")
    export_model(random_model(preset_config(preset)), model_dir,
                 {"kind": "random-init", "seed": 0}, log=lambda *a: None, batches=(2,))
    return model_dir


# -- synth --------------------------------------------------------------------------------------
@main.command()
@click.option("--karyotype", default="46,XY", show_default=True,
              help='Numerical karyotype, e.g. "47,XY,+21", "45,X", "46,XX".')
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True)
@click.option("--cases", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--flip-polarity", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction of images flipped vertically (labelled q-arm up).")
@one_line_errors
def synth(karyotype, out_dir, seed, cases, flip_polarity):
    """Write synthetic G-banded cases with known labels (DIR/labels.csv, DIR/<case>/)."""
    from vfinfer.tools.synthesis.cells import write_cases

    out_dir.mkdir(parents=True, exist_ok=True)
    names = write_cases(karyotype, out_dir, seed, cases=cases, flip_polarity=flip_polarity)
    click.echo(f"wrote {len(names)} case(s) of {karyotype} to {out_dir}: {', '.join(names)}")


def _kind_list(_ctx, _param, value):
    from vfinfer.tools.synthesis.structural import KINDS

    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    if not kinds or any(k not in KINDS for k in kinds):
        raise click.BadParameter(f"{value!r}: give kinds among {','.join(KINDS)}")
    return kinds


@main.command("synth-structural")
@click.argument("source_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="New folder for the cells, labels.csv and structural.csv (refused if it "
                   "exists and is not empty).")
@click.option("--labels", "labels_csv", default=None, type=click.Path(path_type=Path),
              help="Labels CSV of SOURCE_DIR's cells (default: SOURCE_DIR/labels.csv).")
@click.option("--kinds", default="del,dup,inv,t,i", show_default=True, callback=_kind_list,
              help="Aberrations to draw from: del (terminal or interstitial deletion), dup "
                   "(tandem duplication), inv (paracentric or pericentric inversion), t "
                   "(reciprocal translocation), i (isochromosome).")
@click.option("--size-min", default=0.1, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Smallest changed segment, as a fraction of the chromosome's length.")
@click.option("--size-max", default=0.3, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Largest changed segment, as a fraction of the chromosome's length.")
@click.option("--cells", default=None, type=click.IntRange(min=1),
              help="Cells to write (default: one copy of each source cell).")
@click.option("--per-cell", default=1, show_default=True, type=click.IntRange(min=1),
              help="Aberrations per cell (a translocation changes two chromosomes).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@one_line_errors
def synth_structural(source_dir, out_dir, labels_csv, kinds, size_min, size_max, cells,
                     per_cell, seed):
    """Copy labelled normal cells (pki3 layout, or 'vfinfer synth' cells) with chromosomes
    replaced by synthetic structural aberrations (OUT/structural.csv says which)."""
    from vfinfer.tools.synthesis.structural_cases import write_structural_cases

    if size_min > size_max:
        usage(f"--size-min {size_min} is above --size-max {size_max}")
    names, truth = write_structural_cases(source_dir, out_dir, seed=seed, labels_csv=labels_csv,
                                          kinds=kinds, size_min=size_min, size_max=size_max,
                                          cells=cells, per_cell=per_cell)
    counts = {k: sum(row["kind"] == k for row in truth) for k in kinds}
    made = ", ".join(f"{k} {n}" for k, n in counts.items())
    click.echo(f"wrote {len(names)} cell(s) with {len(truth)} aberrant chromosome(s) ({made}) "
               f"to {out_dir}")


# -- fp16 / quantize / build --------------------------------------------------------------------
@main.command("fp16")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--calib", "calib_case_dir", type=click.Path(path_type=Path),
              help="Case directory of chromosome images for the range audit "
                   "(default: synthetic images).")
@one_line_errors
def fp16_(model_dir, calib_case_dir):
    """Add audited FP16 graphs to an exported model directory (replaces earlier ones)."""
    try:
        from vfinfer.tools.precision.fp16 import add_fp16_graphs
    except ImportError as exc:
        fail(f"this command needs the tools extra ({exc.name} is missing): "
             "pip install -e '.[tools]'")
    add_fp16_graphs(model_dir, calib_case_dir=calib_case_dir, log=click.echo)


def _thread_counts(_ctx, _param, value):
    try:
        counts = tuple(int(t) for t in value.split(",") if t.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give thread counts such as 1,2") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{value!r}: give thread counts of at least 1")
    return counts


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--calib", "calib_case_dirs", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="Case directory of real chromosome images to calibrate on (repeat the "
                   "option). Without --holdout the first half calibrates, the rest is checked.")
@click.option("--holdout", "holdout_case_dirs", multiple=True, type=click.Path(path_type=Path),
              help="Case directory for the INT8 vs FP32 agreement check, never used to "
                   "calibrate (repeat the option; 200+ images make the 99.5% rule meaningful).")
@click.option("--method", "methods", multiple=True,
              type=click.Choice(["minmax", "percentile", "entropy"]),
              help="Calibration method(s) to try, in order (default: minmax, percentile, "
                   "entropy; the first that meets the agreement rule is kept).")
@click.option("--max-calib-images", default=256, show_default=True, type=click.IntRange(min=1),
              help="Calibrate on at most this many images, evenly spaced.")
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="ONNX Runtime threads for calibration and checks.")
@click.option("--no-latency", is_flag=True, help="Skip the FP32 vs INT8 timing.")
@click.option("--latency-threads", default="1,2", show_default=True, callback=_thread_counts,
              help="Thread counts of the FP32 vs INT8 timing, comma-separated.")
@click.option("--latency-repeats", default=10, show_default=True, type=click.IntRange(min=1),
              help="Timed runs per precision and thread count (median reported).")
@click.option("--reduce-range", is_flag=True,
              help="7-bit weights: ONNX Runtime's advice for CPUs without VNNI, whose INT8 "
                   "kernels can saturate (the audit records the CPU's INT8 instructions).")
@one_line_errors
def quantize(model_dir, calib_case_dirs, holdout_case_dirs, methods, max_calib_images, threads,
             no_latency, latency_threads, latency_repeats, reduce_range):
    """Add static INT8 graphs (ONNX Runtime CPU) to DIR, checked on held-out images."""
    try:
        from vfinfer.tools.precision.quantize import METHODS, quantize_model_dir
    except ImportError as exc:
        fail(f"this command needs the tools extra ({exc.name} is missing): "
             "pip install -e '.[tools]'")
    audit = quantize_model_dir(model_dir, calib_case_dirs, holdout_case_dirs or None,
                               log=click.echo, methods=methods or METHODS,
                               max_calib_images=max_calib_images, threads=threads,
                               latency_threads=() if no_latency else latency_threads,
                               latency_repeats=latency_repeats, reduce_range=reduce_range)
    if not audit["usable"]:
        fail(f"INT8 graphs written to {model_dir} but marked unusable: {audit['reason']}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Largest batch the engines accept (profile max).")
@click.option("--opt-batch", default=46, show_default=True, type=click.IntRange(min=1),
              help="Batch TensorRT tunes for (profile opt; 46 = one normal cell).")
@click.option("--workspace-mb", default=2048, show_default=True, type=click.IntRange(min=1),
              help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache file to load and update (default: DIR/timing.cache).")
@one_line_errors
def build(model_dir, max_batch, opt_batch, workspace_mb, timing_cache):
    """Build verified FP16 TensorRT engines from DIR's ONNX graphs (NVIDIA GPU only)."""
    try:
        from vfinfer.tools.precision.engines import build_engines
    except ImportError as exc:
        fail(f"this command needs the tools and gpu extras ({exc.name} is missing): "
             "pip install -e '.[tools,gpu]'")
    started = time.perf_counter()
    records = build_engines(model_dir, max_batch=max_batch, opt_batch=opt_batch,
                            workspace_mb=workspace_mb, timing_cache=timing_cache,
                            log=click.echo)
    click.echo(f"wrote {', '.join(r['file'] for r in records.values())} in {model_dir} "
               f"({time.perf_counter() - started:.1f} s)")
