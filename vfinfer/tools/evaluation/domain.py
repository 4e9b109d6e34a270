"""``vfinfer domain``: the figures of a model's own in-domain cells, stored in its manifest
for the verdict (``vfinfer.calls.verdict``).

Run it on validation cells of the training data that the network did not fit (the trainer's
validation slides): the limits follow from them (``fit_domain``), and the share of those same
cells the verdict would refuse is recorded (0 by construction of the low-confidence limit,
but the background and tilt rules are checked too). Report the rate on held-out cells with
``vfinfer eval``, which counts the verdicts.
"""

import datetime
from pathlib import Path

import numpy as np

from vfinfer.calls.dispatch import argmax_types, dispatch
from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.verdict import (
    BACKGROUND_PURE,
    GRAIN_FACTOR,
    LOW_CONFIDENCE_MARGIN,
    TILT_MARGIN,
    cell_figures,
    reasons_against,
)
from vfinfer.io.runner import case_name
from vfinfer.model.manifest import load_manifest, write_json_atomic
from vfinfer.pipeline import Pipeline
from vfinfer.pipeline.metaphase import mark_segmented
from vfinfer.util.images import read_case

RULES = (f"low-confidence share: the largest on the in-domain cells + {LOW_CONFIDENCE_MARGIN}; "
         f"background: checked when at least {BACKGROUND_PURE:.0%} of the in-domain cut-outs "
         "have one kind, a cell whose majority has the other kind is refused; tilt (models "
         f"without rotate-and-crop): the largest median tilt seen + {TILT_MARGIN} degrees; grain: "
         f"the largest median grain seen x {GRAIN_FACTOR}")


def _quantiles(values):
    values = np.asarray(values, dtype=np.float64)
    return {q: round(float(np.quantile(values, int(q[1:]) / 100)), 4)
            for q in ("p50", "p90", "p99")} | {"max": round(float(values.max()), 4)}


def fit_domain(figures, config, source):
    """The manifest's ``domain`` section from per-cell ``cell_figures`` of in-domain cells."""
    if not figures:
        raise ValueError("no in-domain cells to fit the domain figures on")
    low = [f["low_confidence_fraction"] for f in figures]
    n_images = sum(f["n"] for f in figures)
    dark = sum(f["dark_background_fraction"] * f["n"] for f in figures) / max(n_images, 1)
    tilts = [f["median_abs_tilt"] for f in figures if f["median_abs_tilt"] is not None]
    background = ("dark" if dark >= BACKGROUND_PURE else
                  "light" if dark <= 1 - BACKGROUND_PURE else None)
    use_tilt = config.rotate_crop == "none" and bool(tilts)
    grains = [f["median_grain"] for f in figures if f.get("median_grain") is not None]
    limits = {"low_confidence_fraction": round(min(1.0, max(low) + LOW_CONFIDENCE_MARGIN), 4),
              "background": background,
              "median_abs_tilt": round(max(tilts) + TILT_MARGIN, 2) if use_tilt else None,
              "median_grain": round(max(grains) * GRAIN_FACTOR, 2) if grains else None}
    segmented = sum(f.get("segmented_fraction", 0.0) * f["n"] for f in figures) / \
        max(n_images, 1)
    return {
        "fitted_on": {"cells": len(figures), "images": n_images, "source": source,
                      "segmented": bool(segmented >= BACKGROUND_PURE),
                      "created": datetime.datetime.now(datetime.timezone.utc)
                      .isoformat(timespec="seconds")},
        "seen": {"low_confidence": _quantiles(low), "low_confidence_max": max(low),
                 "dark_background_fraction": round(dark, 4),
                 "median_abs_tilt": _quantiles(tilts) if tilts else None,
                 "median_abs_tilt_max": max(tilts) if tilts else None,
                 "median_grain": _quantiles(grains) if grains else None,
                 "median_grain_max": max(grains) if grains else None},
        "limits": limits,
        "rules": RULES,
    }


def mode_karyotypes(probs, threshold, optimal):
    """{dispatch mode: karyotype} of one cell's type probabilities: plain argmax, Algorithm 1
    of the paper at ``threshold`` and ``optimal`` (an ``OptimalDispatch``)."""
    return {"none": karyotype_summary(argmax_types(probs))[0],
            "paper": karyotype_summary(dispatch(probs, threshold)[0])[0],
            "optimal": optimal(probs, top=0)["karyotype"]}


def cell_pass(pipe, name, images, files, case_dir):
    """One cell through a dispatch-off ``pipe``: (type probabilities, ``cell_figures``); its
    cut-outs count as segmented when ``case_dir`` holds ``vfinfer segment``'s folder."""
    prepared = pipe.prepare(name, images, files)
    mark_segmented(prepared, case_dir)
    probs = pipe.infer_prepared(prepared.g_input)["type_probs"]
    return probs, cell_figures(probs, pipe.manifest.threshold, prepared.facts)


def domain_figures(model_dir, case_dirs, backend="auto", threads=0, log=print):
    """(name, ``cell_figures``, {dispatch mode: karyotype}) of every case directory."""
    from vfinfer.calls.optimal import OptimalDispatch
    from vfinfer.calls.optimal_params import load_params

    out = []
    with Pipeline(model_dir, backend=backend, threads=threads, dispatch_mode="none") as pipe:
        optimal = OptimalDispatch(load_params(pipe.manifest).params)
        for i, case_dir in enumerate(case_dirs):
            images, paths, _ = read_case(case_dir)
            name = case_name(case_dir)
            probs, figures = cell_pass(pipe, name, images, [p.name for p in paths], case_dir)
            out.append((name, figures, mode_karyotypes(probs, pipe.manifest.threshold,
                                                       optimal)))
            if (i + 1) % 20 == 0:
                log(f"  {i + 1}/{len(case_dirs)} cells")
    return out


def true_karyotypes(labels_csv):
    """{cell: true karyotype} of a labels CSV (``file`` relative to its folder)."""
    from vfinfer.io.labels import by_cell, read_labels

    cells = by_cell(read_labels(Path(labels_csv).parent, labels_csv))
    return {cell: karyotype_summary(np.array([r.type for r in rows]))[0]
            for cell, rows in cells.items()}


def exact_karyotypes(named, truth, where="the labels"):
    """Per dispatch mode, the share of the labelled cells whose karyotype is exactly right:
    ``named`` as ``domain_figures`` gives, ``truth`` {cell: karyotype} (or a labels CSV)."""
    if not isinstance(truth, dict):
        truth, where = true_karyotypes(truth), truth
    known = [(truth[name], calls) for name, _, calls in named if name in truth]
    if not known:
        raise ValueError(f"{where}: labels none of the given cells")
    shares = {mode: round(sum(calls[mode] == true for true, calls in known) / len(known), 4)
              for mode in ("none", "paper", "optimal")}
    return {**shares, "cells": len(known)}


def domain_section(named, manifest, source, truth=None):
    """The ``domain`` section from ``domain_figures``-style ``named`` cells: the limits, the
    exact-karyotype shares per mode when ``truth`` (labels) is given, and the fit cells the
    verdict itself would refuse."""
    domain = fit_domain([f for _, f, _ in named], manifest.config, source)
    if truth is not None:
        domain["karyotype_exact"] = exact_karyotypes(named, truth)
    refused = {name: reasons_against(f, domain, manifest.threshold) for name, f, _ in named}
    domain["refused_fit_cells"] = {name: r for name, r in refused.items() if r}
    return domain


def domain_lines(section):
    """What ``vfinfer domain`` (and ``vfinfer export``'s fit) print about a ``domain``
    section: the figures and limits, the exact-karyotype shares, the fit cells refused."""
    seen, limits = section["seen"], section["limits"]
    lines = [f"{section['fitted_on']['cells']} cells, {section['fitted_on']['images']} images: "
             f"low-confidence share up to {seen['low_confidence_max']:.0%} (limit "
             f"{limits['low_confidence_fraction']:.0%}), dark backgrounds "
             f"{seen['dark_background_fraction']:.0%} (checked: {limits['background']}), "
             f"tilt limit {limits['median_abs_tilt']}, grain limit "
             f"{limits.get('median_grain')}"]
    exact = section.get("karyotype_exact")
    if exact:
        lines.append(f"karyotype exactly right on {exact['cells']} labelled cells: "
                     + ", ".join(f"{m} {exact[m]:.0%}" for m in ("none", "paper", "optimal")))
    lines += [f"  would refuse {name}: {'; '.join(reasons)}"
              for name, reasons in section["refused_fit_cells"].items()]
    return lines


def domain_key(domain):
    """The manifest key a ``domain`` section goes to: ``domain_segmented`` when it was fitted
    on cells segmented from metaphases, else ``domain`` (ready-made cut-outs)."""
    return "domain_segmented" if domain["fitted_on"].get("segmented") else "domain"


def write_domain(manifest, domain):
    """Put ``domain`` into the model's manifest.json under ``domain_key`` (re-read first;
    atomic); the other section stays as it is."""
    data = load_manifest(manifest.model_dir).data
    data[domain_key(domain)] = domain
    write_json_atomic(manifest.path, data)


def store_domain(model_dir, case_dirs, backend="auto", threads=0, log=print, dry_run=False,
                 labels_csv=None):
    """Fit the domain on ``case_dirs`` and (unless ``dry_run``) write it into the manifest;
    returns the section, with the verdicts the fit cells themselves would get. With
    ``labels_csv`` (labels of those cells, ``file`` relative to the CSV's folder) it also
    records how often each dispatch mode gets their karyotype exactly right."""
    manifest = load_manifest(model_dir)
    named = domain_figures(model_dir, case_dirs, backend, threads, log)
    source = f"{len(case_dirs)} case directories, e.g. {case_dirs[0]}"
    domain = domain_section(named, manifest, source, labels_csv)
    if not dry_run:
        write_domain(manifest, domain)
    return domain
