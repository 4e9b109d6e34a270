"""What the commands share: one-line errors, usage errors through click (exit 2), and the
option group ``--model --backend --precision --threads --batch-size``."""

import functools
import os
import sys
from pathlib import Path

import click

from vfinfer.backends import BACKEND_NAMES
from vfinfer.model.config import PRESETS

EXIT_FAILED = 1
BACKEND_CHOICE = click.Choice(BACKEND_NAMES)
PRECISION_CHOICE = click.Choice(["fp32", "fp16", "int8", "bf16"])
PRESET_CHOICE = click.Choice(sorted(PRESETS))


def fail(message):
    """A failure of the work itself (a file, a model, a check): one line, exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_FAILED)


def usage(message):
    """A command line that cannot be run as given: click's usage error, exit 2."""
    raise click.UsageError(message)


def one_line_errors(command):
    """Turn any exception into one readable line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("VFINFER_DEBUG"):
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            known = isinstance(exc, (ValueError, OSError, RuntimeError))
            fail(text if known else f"unexpected {type(exc).__name__}: {text}")

    return wrapper


def model_options(model_required=False, model_help=None):
    """``--model --backend --precision --threads --batch-size`` as one decorator."""
    options = [
        click.option("--model", "model_dir", required=model_required,
                     type=click.Path(path_type=Path),
                     help=model_help or "Model directory (default: the bundled demo model)."),
        click.option("--backend", default="auto", show_default=True, type=BACKEND_CHOICE),
        click.option("--precision", default=None, type=PRECISION_CHOICE,
                     help="Graphs to run (default: fp32 on ONNX Runtime, fp16 engines on "
                          "TensorRT); bf16 with --backend openvino."),
        click.option("--threads", default=0, type=click.IntRange(min=0),
                     help="CPU threads (0: ONNX Runtime's default)."),
        click.option("--batch-size", default=None, type=click.IntRange(min=1),
                     help="Chromosomes per engine call."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


seg_model_option = click.option(
    "--seg-model", "seg_model", default=None, metavar="DIR|classical",
    help="Segmentation model directory for metaphase images, or 'classical' (threshold + "
         "watershed, no training); default: the bundled demo segmentation model, trained on "
         "synthetic metaphases only.")


seg_precision_option = click.option(
    "--seg-precision", default="fp32", show_default=True, type=click.Choice(["fp32", "int8"]),
    help="The segmentation graph to run: int8 once 'vfinfer quantize-seg' found it keeps the "
         "mask AP (ONNX Runtime CPU).")


def dispatch_option(more_help=""):
    return click.option(
        "--dispatch", "dispatch_mode", default="auto", show_default=True,
        type=click.Choice(["auto", "paper", "none", "optimal"]),
        help="auto: the mode the model's own validation figures found best (the highest "
             "share of exactly right karyotypes, else optimal with calibrated parameters, "
             "else paper); paper: Algorithm 1 of the paper; none: plain argmax; optimal: the "
             "most likely karyotype by global assignment (parameters from 'vfinfer "
             "calibrate', else uncalibrated defaults)." + more_help)


def labels_option(help_text):
    return click.option("--labels", "labels_csv", default="labels.csv", show_default=True,
                        type=click.Path(path_type=Path), help=help_text)


def import_export_side():
    """The export package (PyTorch side), or one line saying how to install it."""
    try:
        from vfinfer_export.checkpoint import load_checkpoint
        from vfinfer_export.models import random_model
        from vfinfer_export.onnx_export import export_model
    except ImportError as exc:
        fail(f"this command needs the export extra ({exc.name} is missing): "
             "pip install torch==2.13.0 && pip install -e '.[export]'")
    return load_checkpoint, random_model, export_model


device_option = click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where to train: auto takes the GPU when PyTorch sees one, else the CPU; on the GPU "
         "with float16 mixed precision (autocast and a gradient scaler), on the CPU in FP32.")


def training_device(name):
    """``--device`` resolved to "cpu" or "cuda"; a usage error of one line when CUDA is asked
    for and PyTorch sees none."""
    from vfinfer_export.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        usage(str(exc))


def progress_bar(total):
    """click's progress bar on stderr, shown only for several cases on a terminal."""
    return click.progressbar(length=total, label="cases", file=sys.stderr,
                             hidden=not (total > 1 and sys.stderr.isatty()))


def verdict_options(command):
    """``--background auto|light|dark`` and ``--force-karyotype`` (run and serve)."""
    command = click.option(
        "--force-karyotype", is_flag=True,
        help="Report the karyotype even when the cell looks unlike the model's in-domain "
             "cells (the verdict still says why it would be withheld).")(command)
    return click.option(
        "--background", default="auto", show_default=True,
        type=click.Choice(["auto", "light", "dark"]),
        help="Background of the cut-outs: detected per image (auto), or light (dark "
             "chromosomes, bright-field) or dark (fluorescence) for all.")(command)
