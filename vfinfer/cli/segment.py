"""The segmentation commands: segment (runtime), eval-seg, train-seg, export-seg and
synth-metaphase (offline; each imports its tool, torch where needed, only when it runs)."""

import sys
import time
from pathlib import Path

import click

from vfinfer.cli.group import main
from vfinfer.cli.options import (
    EXIT_FAILED,
    device_option,
    fail,
    import_export_side,
    one_line_errors,
    seg_model_option,
    seg_precision_option,
    training_device,
)


def _log(line):
    click.echo(line, err=True)


def _read_names(list_path):
    from vfinfer.io.labelme import read_names

    return None if list_path is None else read_names(list_path)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@seg_model_option
@seg_precision_option
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Classifier whose rotate-and-crop the cut-outs follow (default: the demo).")
@click.option("--out", "out_dir", default="vfinfer-segments", show_default=True,
              type=click.Path(path_type=Path), help="Case directories go to OUT/<image>/.")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="CPU threads.")
@click.option("--background", default="auto", show_default=True,
              type=click.Choice(["auto", "light", "dark"]), help="The images' background.")
@click.option("--overwrite", is_flag=True, help="Replace existing OUT/<image>/ directories.")
@one_line_errors
def segment(images, seg_model, seg_precision, model_dir, out_dir, threads, background,
            overwrite):
    """Cut the chromosomes out of each metaphase IMAGE (an image file, or a labelme JSON
    file's image): OUT/<image>/ is a case directory (cut-outs plus segmentation/ with masks,
    boxes and an overlay) to check, correct and 'vfinfer run'."""
    from vfinfer.io.labelme import read_metaphase_image
    from vfinfer.io.segments import write_segmented
    from vfinfer.model.manifest import demo_model_dir, load_manifest
    from vfinfer.pipeline.metaphase import segment_image
    from vfinfer.segment.segmenter import Segmenter
    from vfinfer.util.images import ImageReadError

    rotate_crop = load_manifest(model_dir or demo_model_dir()).config.rotate_crop
    segmenter = Segmenter(seg_model, threads=threads, precision=seg_precision)
    click.echo(f"segmentation {segmenter.describe().get('dir', 'classical')}; cut-outs turned "
               f"upright ({rotate_crop if rotate_crop != 'none' else 'principal-axis'})")
    failed = 0
    for path in images:
        try:
            segmented = segment_image(segmenter, read_metaphase_image(path), path.stem,
                                      rotate_crop, background)
            target = write_segmented(out_dir, segmented, segmenter, path, overwrite)
        except (ImageReadError, ValueError, OSError, RuntimeError) as exc:
            failed += 1
            click.echo(f"{path.stem}: failed: {' '.join(str(exc).split())}")
            continue
        t = segmented.section(segmenter)["timing_ms"]
        click.echo(f"{path.stem}: {len(segmented.cutouts)} chromosomes -> {target} "
                   f"({sum(t.values()):.0f} ms)" + "".join(f"; {n}" for n in segmented.notes))
    click.echo(f"{len(images) - failed} done, {failed} failed")
    if failed:
        sys.exit(EXIT_FAILED)


@main.command("eval-seg")
@click.argument("data_dir", type=click.Path(path_type=Path))
@seg_model_option
@seg_precision_option
@click.option("--list", "list_path", type=click.Path(path_type=Path),
              help="Text file of the JSON names to evaluate (default: every *.json).")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="CPU threads.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the figures as JSON here.")
@one_line_errors
def eval_seg(data_dir, seg_model, seg_precision, list_path, threads, json_path):
    """Measure a segmentation model (or 'classical') on labelme metaphases: COCO AP50, AP75,
    mAP, precision and recall at IoU 0.5, chromosomes found, time per image."""
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        fail("eval-seg needs pycocotools: pip install -e '.[tools]'")
    from vfinfer.segment.segmenter import Segmenter
    from vfinfer.tools.evaluation.segmentation import (
        evaluate_segmentation,
        format_seg_report,
        save_seg_report,
    )

    segmenter = Segmenter(seg_model, threads=threads, precision=seg_precision)
    report = evaluate_segmentation(data_dir, segmenter, _read_names(list_path), log=_log)
    click.echo(format_seg_report(report))
    if json_path is not None:
        click.echo(f"wrote {save_seg_report(report, json_path)}")


@main.command("train-seg")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory: last.pt, history.json, seg.pt and the exported model/.")
@click.option("--list", "list_path", type=click.Path(path_type=Path),
              help="Text file of the JSON names to train on (default: every *.json).")
@click.option("--epochs", default=36, show_default=True, type=click.IntRange(min=1))
@click.option("--widths", default="16,32,64,96", show_default=True,
              help="Channels per U-Net level.")
@click.option("--crop", default=256, show_default=True, type=click.IntRange(min=32))
@click.option("--crops-per-image", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--scale-jitter", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Scale each training crop by a random factor between 1/(1+S) and 1+S "
                   "(chromosomes of other sizes: other magnifications and cameras); 0: off.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, type=click.IntRange(min=0), help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--describe-data", default=None,
              help="How the data was made, for the manifest (default: DATA_DIR).")
@device_option
@one_line_errors
def train_seg(data_dir, out_dir, list_path, epochs, widths, crop, crops_per_image, scale_jitter,
              batch_size, lr, seed, threads, resume, describe_data, device):
    """Train the segmentation network on annotated metaphases (DATA_DIR of labelme .json
    files, or one COCO JSON file) and export it to OUT/model."""
    import_export_side()
    from vfinfer_export.seg_export import export_seg
    from vfinfer_export.seg_train import load_seg_checkpoint
    from vfinfer_export.seg_train import train_seg as run_training

    device = training_device(device)
    started = time.perf_counter()
    path = run_training(data_dir, out_dir, files=_read_names(list_path),
                        widths=tuple(int(w) for w in widths.split(",")), epochs=epochs,
                        crop=crop, crops_per_image=crops_per_image, batch_size=batch_size,
                        lr=lr, seed=seed, threads=threads, resume=resume,
                        data_description=describe_data, log=_log, device=device,
                        scale_jitter=scale_jitter)
    net, extra = load_seg_checkpoint(path)
    export_seg(net, Path(out_dir) / "model", {"kind": "checkpoint", "path": str(path)},
               training=extra.get("training"), overwrite=True, log=_log)
    click.echo(f"wrote {path} and {Path(out_dir) / 'model'} in "
               f"{(time.perf_counter() - started) / 60:.1f} min")


@main.command("export-seg")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out.")
@click.option("--tune", "tune_dir", type=click.Path(path_type=Path),
              help="Directory of labelme files to choose the instance step's thresholds on "
                   "(not the test images).")
@click.option("--tune-list", type=click.Path(path_type=Path),
              help="Text file of the JSON names in --tune to use (default: all).")
@one_line_errors
def export_seg_command(checkpoint, out_dir, overwrite, tune_dir, tune_list):
    """Export a segmentation checkpoint (train-seg's seg.pt) with its checks."""
    import_export_side()
    from vfinfer.io.labelme import list_labelme
    from vfinfer.model.manifest import sha256_file
    from vfinfer_export.seg_export import export_seg
    from vfinfer_export.seg_train import load_seg_checkpoint

    net, extra = load_seg_checkpoint(checkpoint)
    tune_on = None
    if tune_dir is not None:
        names = _read_names(tune_list)
        tune_on = list_labelme(tune_dir) if names is None else [tune_dir / n for n in names]
    export_seg(net, out_dir, {"kind": "checkpoint", "path": str(checkpoint),
                              "sha256": sha256_file(checkpoint)},
               training=extra.get("training"), overwrite=overwrite, tune_on=tune_on,
               log=_log)
    click.echo(f"wrote {out_dir}")


@main.command("synth-metaphase")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--karyotype", "karyotypes", multiple=True,
              help="Karyotype(s) to cycle through (default: a normal and abnormal mix).")
@click.option("--background", default="mixed", show_default=True,
              type=click.Choice(["light", "dark", "mixed"]))
@one_line_errors
def synth_metaphase(out_dir, count, seed, karyotypes, background):
    """Write synthetic metaphases (labelme JSON with the image embedded, plus a PNG each)."""
    from vfinfer.tools.synthesis.metaphases import DEMO_KARYOTYPES, write_metaphases

    paths = write_metaphases(out_dir, seed, count, tuple(karyotypes) or DEMO_KARYOTYPES,
                             background)
    click.echo(f"wrote {len(paths)} metaphases to {out_dir}")


@main.command("quantize-seg")
@click.argument("seg_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--calib", "calib_paths", multiple=True, required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A metaphase (image or labelme JSON) to calibrate on (repeat the option).")
@click.option("--holdout", "holdout_dir", required=True,
              type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Labelled metaphases (labelme JSON) not used to calibrate: FP32 and INT8 "
                   "mask AP are measured on them.")
@click.option("--method", default="entropy", show_default=True,
              type=click.Choice(["minmax", "percentile", "entropy"]))
@click.option("--max-ap-drop", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Points of AP50 and of mAP the INT8 graph may lose.")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="CPU threads.")
@one_line_errors
def quantize_seg(seg_dir, calib_paths, holdout_dir, method, max_ap_drop, threads):
    """Add a static INT8 graph to a segmentation model directory, checked by mask AP on
    held-out labelled metaphases against FP32 (run it with --seg-precision int8)."""
    try:
        import onnx  # noqa: F401
        import pycocotools  # noqa: F401
    except ImportError:
        fail("quantize-seg needs onnx and pycocotools: pip install -e '.[tools]'")
    from vfinfer.tools.precision.quantize_seg import quantize_seg_model_dir

    audit = quantize_seg_model_dir(seg_dir, calib_paths, holdout_dir, method=method,
                                   threads=threads, max_ap_drop=max_ap_drop, log=_log)
    if not audit["usable"]:
        sys.exit(EXIT_FAILED)
