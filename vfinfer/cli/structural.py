"""The structural-score commands: train-structural, export-structural, eval-structural
(docs/structural.md).

The first two need the export extra (PyTorch), imported only when they run.
"""

import json
from pathlib import Path

import click

from vfinfer.cli.group import main
from vfinfer.cli.options import fail, one_line_errors


def _structural_side(module):
    """``vfinfer_export.<module>`` (PyTorch side), or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(f"vfinfer_export.{module}")
    except ImportError as exc:
        fail(f"this command needs the export extra ({exc.name} is missing): "
             "pip install torch==2.13.0 && pip install -e '.[export]'")


def _canvas(_ctx, _param, value):
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give HEIGHTxWIDTH, e.g. 96x32") from None
    if height < 16 or width < 16:
        raise click.BadParameter(f"{value!r}: at least 16x16")
    return height, width


def _widths(_ctx, _param, value):
    try:
        widths = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give channel counts, e.g. 16,32,48,64") from None
    if not widths or min(widths) < 1:
        raise click.BadParameter(f"{value!r}: give positive channel counts")
    return widths


NETWORK_OPTIONS = (
    click.option("--canvas", default="96x32", show_default=True, callback=_canvas,
                 help="HEIGHTxWIDTH of the canvas each chromosome is fitted into."),
    click.option("--widths", default="16,32,48,64", show_default=True, callback=_widths,
                 help="Channels of the conv blocks (each halves the canvas)."),
    click.option("--homologue/--no-homologue", default=False, show_default=True,
                 help="Show the score each chromosome's homologue too (the other copy of its "
                      "type in the cell) and train on unlike pairs."),
    click.option("--pool", default="rows", show_default=True,
                 type=click.Choice(["global", "rows"]),
                 help="global: average and max over the last feature map; rows: each row's "
                      "average kept in order along the chromosome (the order of its bands)."),
    click.option("--arm/--no-arm", "arm_head", default=True, show_default=True,
                 help="A second output that names where the change lies (p arm, q arm, or "
                      "both), trained on the aberrations' labels; the warnings name the arm."),
    click.option("--position/--no-position", "position_head", default=False, show_default=True,
                 help="Also learn the changed segment's start and end along the chromosome "
                      "(a training target only; nothing more is exported)."),
    click.option("--fit", default="each", show_default=True, type=click.Choice(["each", "cell"]),
                 help="each: every chromosome fitted to the canvas; cell: all of a cell at one "
                      "scale (its median length to 45 % of the canvas height), top-aligned, so "
                      "that a shortened or lengthened chromosome looks so."),
)


def _network_options(command):
    """``NETWORK_OPTIONS`` (the score network and its inputs) on a command."""
    for option in reversed(NETWORK_OPTIONS):
        command = option(command)
    return command


@main.command("train-structural")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--labels", "labels_csv", default=None, type=click.Path(path_type=Path),
              help="Labels CSV of normal cells (default: DATA_DIR/labels.csv); its slides are "
                   "split for validation.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder: last.pt, history.json and structural.pt.")
@click.option("--epochs", default=60, show_default=True, type=click.IntRange(min=1),
              help="Passes, each over new aberrations (about 25 s each for pki3 on 2 cores).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="PyTorch threads and example-making processes (0: PyTorch's default, "
                   "one process).")
@click.option("--normals-per-cell", default=30, show_default=True, type=click.IntRange(min=0),
              help="Normal chromosomes drawn per training cell (0: all).")
@click.option("--aberrant-per-cell", default=20, show_default=True,
              type=click.IntRange(min=1), help="Synthetic aberrations made per cell.")
@click.option("--size-min", default=0.05, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--size-max", default=0.4, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--tta", default="mirror", show_default=True, type=click.Choice(["mirror", "none"]),
              help="mirror: each chromosome scored as the mean over it and its left-right "
                   "mirror image (the threshold chosen so; the runtime does the same); none: "
                   "one view.")
@click.option("--resume", is_flag=True,
              help="Go on from OUT/last.pt (started with the same options).")
@_network_options
@one_line_errors
def train_structural(data_dir, labels_csv, out_dir, epochs, seed, threads, normals_per_cell,
                     aberrant_per_cell, size_min, size_max, tta, resume, canvas, widths,
                     homologue, pool, arm_head, position_head, fit):
    """Train the structural score on labelled normal cells against synthetic aberrations of
    their chromosomes; writes OUT/structural.pt with its threshold (99 % specificity on the
    normal chromosomes of held-out slides)."""
    if size_min > size_max:
        fail(f"--size-min {size_min} is above --size-max {size_max}")
    train = _structural_side("structural_train")
    from vfinfer_export.structural_data import ExampleOptions
    from vfinfer_export.structural_model import StructuralNet

    train.torch.manual_seed(seed)  # the network's initial weights follow --seed too
    net = StructuralNet(widths=widths, height=canvas[0], width=canvas[1], homologue=homologue,
                        pool=pool, arm_head=arm_head, fit=fit, position_head=position_head)
    options = ExampleOptions(net.height, net.width, size_min=size_min, size_max=size_max,
                             normals_per_cell=normals_per_cell,
                             aberrant_per_cell=aberrant_per_cell, homologue=homologue,
                             fit=fit)
    path = train.train_structural(data_dir, out_dir, labels_csv=labels_csv, epochs=epochs,
                                  seed=seed, threads=threads, options=options, net=net,
                                  tta=tta, resume=resume)
    click.echo(f"wrote {path}")


@main.command("export-structural")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Classifier model directory to add structural.onnx and the manifest's "
                   "structural section to.")
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="ONNX Runtime threads for the parity check.")
@one_line_errors
def export_structural(checkpoint, model_dir, threads):
    """Export a structural-score checkpoint to ONNX with a parity check, into a classifier
    model directory (structural.onnx and the manifest's structural section)."""
    if not checkpoint.is_file():
        fail(f"{checkpoint}: checkpoint file not found")
    export = _structural_side("structural_export")
    section = export.export_structural(checkpoint, model_dir, threads=threads, log=click.echo)
    click.echo(f"added {section['file']} to {model_dir} (threshold {section['threshold']:.6f})")


@main.command("eval-structural")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--labels", "labels_csv", default=None, type=click.Path(path_type=Path),
              help="Labels CSV of held-out normal cells (default: DATA_DIR/labels.csv).")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory with a structural score (vfinfer export-structural).")
@click.option("--copies", default=3, show_default=True, type=click.IntRange(min=1),
              help="Aberrant copies made of each cell.")
@click.option("--per-cell", default=3, show_default=True, type=click.IntRange(min=1),
              help="Aberrations per copy.")
@click.option("--size-min", default=0.05, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--size-max", default=0.4, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--seed", default=2024, show_default=True, type=click.IntRange(min=0))
@click.option("--threads", default=0, type=click.IntRange(min=0), help="CPU threads.")
@click.option("--json", "json_path", required=True, type=click.Path(path_type=Path),
              help="Write the figures here, the ROC and PR curves next to it as "
                   "<stem>_roc.png and <stem>_pr.png.")
@one_line_errors
def eval_structural(data_dir, labels_csv, model_dir, copies, per_cell, size_min, size_max, seed,
                    threads, json_path):
    """Measure a model's structural score on held-out normal cells and synthetic aberrations
    of them: AUC, specificity and sensitivity at the manifest's threshold, per kind and size,
    normal cells with a flag."""
    if size_min > size_max:
        fail(f"--size-min {size_min} is above --size-max {size_max}")
    from vfinfer.pipeline import Pipeline
    from vfinfer.tools.evaluation.structural_screen import ScreenOptions, evaluate_structural
    from vfinfer.util.atomic import write_atomic

    options = ScreenOptions(copies, per_cell, size_min, size_max, seed)
    with Pipeline(model_dir, backend="ort", threads=threads) as pipe:
        if pipe.structural is None:
            fail(f"{model_dir}: the model has no structural score (vfinfer export-structural)")
        report, plots = evaluate_structural(pipe, data_dir, labels_csv, options)
    report["model"] = str(model_dir)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(json_path, (json.dumps(report, indent=1) + "\n").encode())
    for name, picture in plots.items():
        write_atomic(json_path.with_name(f"{json_path.stem}_{name}.png"), picture)
    for line in structural_lines(report):
        click.echo(line)
    click.echo(f"wrote {json_path} and its _roc.png, _pr.png")


def structural_lines(report):
    """The report's summary lines."""
    chrom, copies, cells = report["chromosomes"], report["aberrant_copies"], \
        report["normal_cells"]
    point = report["at_test_specificity"]
    sizes = ", ".join(f"{name} {v['sensitivity']} (AUC {v['auc_vs_normals']})"
                      for name, v in chrom["by_size"].items())
    kinds = ", ".join(f"{kind} {v['sensitivity']}" for kind, v in chrom["by_kind"].items())
    groups = ", ".join(f"{group} {v['sensitivity']}" for group, v in chrom["by_group"].items())
    return [f"{chrom['n_normal']} normal and {chrom['n_aberrant']} aberrant chromosomes: AUC "
            f"{chrom['auc']}, at threshold {chrom['threshold']:.4f} specificity "
            f"{chrom['specificity']}, sensitivity {chrom['sensitivity']}",
            f"sensitivity by size: {sizes}", f"sensitivity by kind: {kinds}",
            f"sensitivity by group: {groups}",
            f"normal cells with a flag: {cells['share_any_flagged']} of {cells['n']}; in the "
            f"aberrant copies, partners flagged "
            f"{copies['partners_flagged']}, other unchanged chromosomes flagged "
            f"{copies['unchanged_flagged']}",
            f"at a threshold flagging 1 in 20 of these normal cells "
            f"({cells['threshold_for_cell_specificity']:.4f}): sensitivity "
            f"{cells['sensitivity_there']}, >= 10 % {cells['sensitivity_ge_10pct_there']}",
            f"at the threshold giving 99 % specificity on these normal chromosomes "
            f"({point['threshold']:.4f}): sensitivity {point['sensitivity_there']}, >= 10 % "
            f"{point['sensitivity_ge_10pct_there']}",
            *_arm_lines(report.get("arm"))]


def _arm_lines(arm):
    """The arm output's line (none without it)."""
    if not arm:
        return []
    return [f"arm named right on {arm['right_of_flagged']} of the {arm['n_flagged']} flagged "
            f"aberrant chromosomes; their warnings name an arm on {arm['flagged_named']}, "
            f"right on {arm['right_of_named']}"]
