"""``vfinfer run --ray``: the cells of ``vfinfer run`` on Ray (the ``ray`` extra).

Ray Data ``map_batches`` with an actor pool: one record per cell (its directory path), each
actor builds one ``Pipeline`` in ``__init__`` and, per record, reads the cell, runs it and
writes OUT/<case>/ with the runner's own functions (``load_case``, ``infer_cases``,
``save_result``: atomic files, an existing result skipped unless ``overwrite``). The driver
skips finished cells before anything is shipped, prints one line per cell as results stream
back (in the order they finish) and drives the progress bar.

What travels to the workers: the actor class and its arguments (model directory path, backend,
dispatch, threads, output directory, flags) and one path string per cell; back come two short
strings per cell. Workers read the case directories, the model directory and write OUT
themselves, so on several machines all three must be at the same paths on every node (a
shared file system), with the same vfinfer installed on every node.
"""

import logging
import os
from pathlib import Path

from vfinfer.calls.auto import choose_dispatch
from vfinfer.io.results import existing_result
from vfinfer.io.runner import (
    case_name,
    check_case_names,
    infer_cases,
    load_case,
    no_progress,
    save_result,
)
from vfinfer.model.manifest import demo_model_dir, load_manifest

LOCAL = "local"  # --ray with no address: a Ray instance on this machine


class CellWorker:
    """One Ray actor: a Pipeline built once, one cell per record."""

    def __init__(self, pipeline_options, out_dir, karyogram, overwrite, report=True):
        from vfinfer.pipeline import Pipeline

        self.pipeline = Pipeline(**pipeline_options)
        self.out_dir, self.karyogram, self.overwrite = out_dir, karyogram, overwrite
        self.report = report

    def __call__(self, batch):
        statuses, lines = [], []
        for case_dir in batch["case_dir"]:
            status, line = self.run_one(str(case_dir))
            statuses.append(status)
            lines.append(line)
        return {"case_dir": list(batch["case_dir"]), "status": statuses, "line": lines}

    def run_one(self, case_dir):
        loaded = load_case(case_dir, self.out_dir, self.overwrite, self.pipeline)
        if isinstance(loaded, tuple):  # skipped or unreadable: settled already
            return loaded
        ((case, result),) = infer_cases(self.pipeline, [loaded])
        if isinstance(result, Exception):
            return "failed", f"{case.name}: failed: {' '.join(str(result).split())}"
        return save_result(case, result, self.out_dir, self.karyogram, self.overwrite,
                           self.report)


def start_ray(address, num_cpus=None):
    """``ray.init`` on this machine (``LOCAL``) or joining ``address``; quiet logs."""
    import ray

    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "logging_level": logging.WARNING,
               "log_to_driver": True}
    if address == LOCAL:
        ray.init(num_cpus=num_cpus, **options)
    else:
        ray.init(address=address, **options)
    return True


def actor_plan(actors, threads):
    """(actors, ORT threads per actor, CPUs requested per actor) on the running cluster.

    Each actor asks Ray for as many CPUs as it runs threads, less half a CPU so that Ray
    Data's own small tasks always find room (actors holding every CPU can stall a dataset:
    ray issue #44687)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = actors or max(1, cpus // 2)
    per_actor = threads or max(1, cpus // actors)
    return actors, per_actor, max(0.5, min(per_actor, cpus / actors) - 0.5)


def run_on_ray(case_dirs, address=LOCAL, actors=0, model_dir=None, backend="auto",
               out_dir="vfinfer-results", dispatch_mode="auto", karyogram=True, threads=0,
               batch_size=None, overwrite=False, precision=None, echo=print, progress=None,
               num_cpus=None, background="auto", force_karyotype=False, report=True):
    """``vfinfer.io.runner.run_cases`` on Ray; returns the names of the failed cells."""
    import ray

    check_case_names(case_dirs)
    manifest = load_manifest(model_dir or demo_model_dir())
    echo("dispatch {} ({})".format(*choose_dispatch(dispatch_mode, manifest.data)))
    counts, failed, todo = {"ok": 0, "skipped": 0, "failed": 0}, [], []
    for case_dir in case_dirs:
        name = case_name(case_dir)
        if existing_result(Path(out_dir) / name) and not overwrite:
            counts["skipped"] += 1
            echo(f"{name}: skipped, {Path(out_dir) / name} already holds results (left "
                 "untouched; pass --overwrite to replace)")
        else:
            todo.append(os.path.abspath(case_dir))
    started = start_ray(address, num_cpus) if todo else False
    try:
        if todo:
            _stream(todo, actors, threads, counts, failed, echo, progress,
                    {"model_dir": model_dir, "backend": backend, "threads": threads,
                     "batch_size": batch_size, "dispatch_mode": dispatch_mode,
                     "precision": precision, "background": background,
                     "force_karyotype": force_karyotype},
                    (os.path.abspath(out_dir), karyogram, overwrite, report))
    finally:
        if started:
            ray.shutdown()
    echo(f"{counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return failed


def _stream(todo, actors, threads, counts, failed, echo, progress, pipeline_options, args):
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours instead (one line per cell + click's bar)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    actors, per_actor, cpus = actor_plan(actors, threads)
    pipeline_options = dict(pipeline_options, threads=per_actor)
    echo(f"ray: {actors} actor(s), {per_actor} thread(s) each, {len(todo)} cell(s)")
    dataset = ray.data.from_items([{"case_dir": d} for d in todo],
                                  override_num_blocks=min(len(todo), 200))
    dataset = dataset.map_batches(
        CellWorker, fn_constructor_args=(pipeline_options, *args), batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
        batch_format="numpy")
    with (progress or no_progress)(len(todo)) as bar:
        for row in dataset.iter_rows():
            counts[row["status"]] += 1
            if row["status"] == "failed":
                failed.append(case_name(row["case_dir"]))
            echo(row["line"])
            bar.update(1)
