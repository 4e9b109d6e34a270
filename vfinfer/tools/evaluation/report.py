"""The text report of vfinfer eval: Table IV's four metrics (T and P), per class, the verdict,
the most frequent confusions, the abnormality warnings and the optimal-dispatch comparison."""

import numpy as np

from vfinfer.model.classes import TYPE_NAMES
from vfinfer.tools.evaluation.dispatch_figures import simulated_line


def _verdict_line(verdict):
    if "n_cells" not in verdict:  # no verdict section
        return "verdict   not measured"
    abnormal = verdict["abnormal_not_karyotyped"]
    return (f"verdict   not karyotyped: {verdict['not_karyotyped']} of {verdict['n_cells']} "
            f"cells ({100 * verdict['rate']:.1f} %; "
            + (", ".join(f"{k}: {v}" for k, v in verdict["reasons"].items()) or "none")
            + f"); abnormal cells withheld: {len(abnormal)} of {verdict['abnormal_cells']}"
            + ("" if verdict["domain"] else "; " + verdict["note"]))


def _pct(value):
    return "   -  " if value is None else f"{100 * value:6.2f}"


def _describe_model(model):
    source = model.get("source") or {}
    kind = source.get("kind", "unknown source")
    if kind == "random-init":
        origin = f"random-init, seed {source.get('seed')} (untrained)"
    elif kind == "checkpoint":
        origin = f"checkpoint {source.get('path')}"
    else:
        origin = str(kind)
    return f"{model.get('preset')} preset, {origin} ({model.get('dir')})"


def _describe_backend(backend):
    details = ", ".join(f"{k} {v}" for k, v in backend.items() if k != "name")
    return f"{backend.get('name')} ({details})" if details else str(backend.get("name"))


def _class_lines(table, title):
    lines = [f"{title:<12s}{'F1 (%)':>8s}{'Precision (%)':>15s}{'Recall (%)':>12s}"
             f"{'true':>7s}{'predicted':>11s}"]
    for row in table:
        if row["present"]:
            figures = (f"{_pct(row['f1']):>8s}{_pct(row['precision']):>15s}"
                       f"{_pct(row['recall']):>12s}")
        else:
            figures = f"{'-':>8s}{'-':>15s}{'-':>12s}"
        lines.append(f"{row['class']:<12s}{figures}{row['support']:>7d}{row['predicted']:>11d}")
    absent = [row["class"] for row in table if not row["present"]]
    if absent:
        lines.append(f"  not in labels or predictions, left out of the mean F1: "
                     f"{', '.join(absent)}")
    return lines


def _top_confusions(matrix, names, k=10):
    m = np.array(matrix)
    np.fill_diagonal(m, 0)
    order = np.argsort(-m, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, m.shape) for i in order]
    return [f"{names[t]} -> {names[p]}: {m[t, p]}" for t, p in pairs if m[t, p] > 0]


def _dispatch_lines(results):
    chosen = results.get("dispatch")
    return [f"dispatch  {chosen['mode']} ({chosen['reason']}); the verdict uses it"] \
        if chosen else []


def format_report(results):
    """The evaluation as text: Table IV's four metrics (T and P), then per class, then cells."""
    t, p, ab = results["type"], results["polarity"], results["abnormality"]
    label = str(results["model"].get("preset") or "model")
    lines = [
        f"Varifocal-Net evaluation: {results['n_cells']} cells, {results['n_images']} images "
        f"({results['labels']})",
        f"model     {_describe_model(results['model'])}",
        f"backend   {_describe_backend(results['backend'])}",
        f"time      {results['seconds']:.1f} s in all, {results['ms_per_image']:.2f} ms per "
        f"image in the networks; dispatch threshold {results['threshold']:g}",
    ]
    if results["flip_half"]:
        lines.append(f"polarity  {results['n_flipped']} of {results['n_images']} images "
                     f"flipped vertically and labelled q-arm up (--flip-half, seed "
                     f"{results['seed']})")
    width = max(len(label), 13)
    lines += [
        "",
        f"{'':<{width}s}  {'F1 (%)':<16s}{'Acc. (%)':<16s}{'Acc. per Case (%)':<20s}"
        "Acc. per Case-D (%)",
        f"{'':<{width}s}  {'T':>6s}  {'P':>6s}  {'T':>6s}  {'P':>6s}  {'T':>6s}  {'P':>6s}"
        f"      {'T':>6s}",
        f"{label:<{width}s}  {_pct(t['macro_f1'])}  {_pct(p['macro_f1'])}  "
        f"{_pct(t['accuracy'])}  {_pct(p['accuracy'])}  {_pct(t['acc_per_case'])}  "
        f"{_pct(p['acc_per_case'])}      {_pct(t['acc_per_case_dispatch'])}",
        "",
        f"type with dispatch over all images: Acc. {_pct(t['accuracy_dispatch']).strip()} %, "
        f"F1 {_pct(t['macro_f1_dispatch']).strip()} %",
        "",
    ]
    lines += _class_lines(t["per_class"], "Type")
    lines.append("")
    if p.get("note") == "not labelled":
        lines.append("Polarity: not labelled (the labels' polarity column is empty)")
    else:
        lines += _class_lines(p["per_class"], "Polarity")
    lines += ["", *_dispatch_lines(results), _verdict_line(results.get("verdict") or {})]
    confusions = _top_confusions(t["confusion"], TYPE_NAMES)
    lines += ["", "most frequent type confusions (true -> predicted, no dispatch):"
              + ("" if confusions else " none")]
    lines += ["  " + "; ".join(confusions[k:k + 5]) for k in range(0, len(confusions), 5)]

    def rate(value):
        return "" if value is None else f" ({100 * value:.1f} %)"

    lines += [
        "",
        "numerical abnormality warnings (Algorithm 1 line 17, after dispatch):",
        f"  abnormal cells (true counts: an autosome != 2 or X+Y != 2): {ab['n_abnormal']}; "
        f"warned (caught): {ab['caught']}{rate(ab['caught_rate'])}; missed: {ab['missed']}",
        f"  normal cells: {ab['n_normal']}; warned (false warnings): "
        f"{ab['false_warnings']}{rate(ab['false_warning_rate'])}",
        f"  cells whose dispatched counts equal the true counts: {ab['counts_exact']} of "
        f"{results['n_cells']} (abnormal: {ab['counts_exact_abnormal']} of "
        f"{ab['n_abnormal']})",
    ]
    if results.get("optimal"):
        lines += [""] + _optimal_lines(results["optimal"], results["n_cells"])
    return "\n".join(lines)


def _optimal_lines(opt, n_cells):
    """The dispatch comparison of ``results["optimal"]`` as text."""
    acc, fl = opt["acc_per_case"], opt["flags"]

    def share(stats, key, total):
        count = stats[key]
        return f"{count} of {total}" + ("" if not total else f" ({100 * count / total:.1f} %)")

    auc = opt["optimal"]["roc"]["auc"]
    lines = [
        f"optimal dispatch (margin threshold {opt['operating_threshold']:g}; "
        f"{'calibrated' if opt['calibrated'] else 'UNCALIBRATED defaults'}):",
        f"  Acc. per Case T (%): argmax {_pct(acc['none']).strip()}, Algorithm 1 "
        f"{_pct(acc['paper']).strip()}, optimal {_pct(acc['optimal']).strip()}",
        f"  abnormal cells flagged: Algorithm 1 "
        f"{share(fl['paper'], 'caught', fl['paper']['n_abnormal'])}, optimal "
        f"{share(fl['optimal'], 'caught', fl['optimal']['n_abnormal'])}",
        f"  normal cells falsely flagged: Algorithm 1 "
        f"{share(fl['paper'], 'false_warnings', fl['paper']['n_normal'])}, optimal "
        f"{share(fl['optimal'], 'false_warnings', fl['optimal']['n_normal'])}",
        f"  called karyotype = true karyotype: {opt['optimal']['exact_calls']} of {n_cells} "
        f"cells; ROC AUC of the margin: {'-' if auc is None else f'{auc:.3f}'}",
    ]
    pt = opt.get("patients")
    if pt is None:
        lines.append(f"  patients: not grouped ({opt['patient_grouping']})")
    else:
        lines += [
            f"  patients ({pt['n_patients']}, grouped by {opt['patient_grouping']}; ISCN "
            f"clones: a gain in >= 2 cells, a loss in >= 3):",
            f"    with a true abnormal clone: {pt['n_abnormal']}; found: {pt['caught']}, "
            f"missed: {pt['missed']}; normal patients with a false clone: "
            f"{pt['false_alarms']} of {pt['n_normal']}; notation exact: {pt['exact']} of "
            f"{pt['n_patients']}",
        ]
    if opt.get("simulated"):
        lines.append(f"  {simulated_line(opt['simulated'])} (vfinfer.tools.evaluation.simulate: "
                     "a real chromosome's output added to or removed from a normal cell)")
    lines.append(f"  parameters: {opt['params_note']}")
    return lines
