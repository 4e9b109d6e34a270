"""The result dict of one cell (README, "Outputs"): per-chromosome calls, the karyotype or the
verdict that withholds it, warnings, timing."""

import numpy as np

from vfinfer.calls.dispatch import argmax_types

POLARITY_NOT_CALLED = "not called"
ARM_CLEAR = 0.6  # the arm output's probability under which a warning names no arm
ARM_WORDS = {"p": "p arm", "q": "q arm", "pq": "both arms (across the centromere)"}
NOT_SCREENED = ("structural abnormalities not screened: the model has no structural score "
                "(vfinfer export-structural)")


def assemble_result(manifest, backend, dispatch_mode, case, outputs, calls, verdict, timing,
                    auto_reason=None, structural=None):
    """``calls``: (types, karyotype, warnings, abnormality or None) of the dispatch;
    ``verdict``: ``vfinfer.calls.verdict.judge``'s section; ``auto_reason``: why
    ``--dispatch auto`` chose ``dispatch_mode`` (the result's ``dispatch_auto_reason``);
    ``structural``: the structural score of each chromosome (None: not screened)."""
    types, karyotype, warnings, abnormality = calls
    warnings = list(warnings)
    if not verdict["karyotyped"]:
        verdict = {**verdict, "withheld_karyotype": karyotype}
        karyotype, warnings, abnormality = None, [verdict["text"]], None
    elif verdict["limits"] is None or verdict["forced"]:
        warnings.append(verdict["text"])
    warnings += _input_warnings(case, manifest)
    rows = chromosome_rows(manifest, case, outputs, types)
    section, flagged = structural_section(manifest, rows, structural)
    warnings += flagged
    result = {
        "case": case.name,
        "model": manifest.summary(),
        "backend": backend,
        "dispatch": dispatch_mode,
        **({"dispatch_auto_reason": auto_reason} if auto_reason else {}),
        "n_chromosomes": len(case.files),
        "karyotype": karyotype,
        "verdict": verdict,
        "warnings": warnings,
        "timing_ms": {k: round(v, 3) for k, v in timing.items()},
        "chromosomes": rows,
        "structural": section,
    }
    if abnormality is not None:
        result["abnormality"] = abnormality
    return result


def chromosome_rows(manifest, case, outputs, types):
    """One dict per chromosome: type, probabilities, polarity, box, input facts."""
    probs, names = outputs["type_probs"], manifest.type_names
    before = argmax_types(probs)
    polarity = outputs["polarity_probs"].argmax(1)
    called = manifest.polarity_trained
    rows = []
    for i, file in enumerate(case.files):
        row = probs[i]
        top3 = np.argsort(-row, kind="stable")[:3]
        type_prob = float(row[types[i]])
        facts = case.facts[i] if case.facts else {}
        rows.append({
            "file": str(file),
            "type": names[types[i]],
            "type_prob": round(type_prob, 6),
            "top3": [[names[j], round(float(row[j]), 6)] for j in top3],
            "polarity": manifest.polarity_names[polarity[i]] if called else POLARITY_NOT_CALLED,
            "polarity_prob": (round(float(outputs["polarity_probs"][i, polarity[i]]), 6)
                              if called else None),
            "box": [round(float(v), 2) for v in outputs["boxes"][i]],
            "type_before_dispatch": names[before[i]],
            "low_confidence": bool(type_prob < manifest.threshold or types[i] != before[i]),
            "size": list(case.images[i].shape),
            **facts,
        })
    return rows


def structural_section(manifest, rows, structural):
    """Adds ``structural`` ({score, flagged}; for a flagged one with the arm output also
    {arm, arm_prob}) to each chromosome row; returns the result's ``structural`` section and
    one warning per flagged chromosome (its called type, the arm, the file; never an ISCN
    notation). ``structural``: (scores, arm probabilities or None); None: the section says
    the cell was not screened."""
    if structural is None:
        return {"screened": False, "note": NOT_SCREENED}, []
    scores, arm_probs = structural
    record = manifest.structural
    threshold, arms = float(record["threshold"]), record.get("arms")
    warnings = []
    for i, (row, score) in enumerate(zip(rows, scores)):
        flagged = bool(score >= threshold)
        row["structural"] = {"score": round(float(score), 6), "flagged": flagged}
        if not flagged:
            continue
        where = ""
        if arm_probs is not None:  # trained on aberrant examples: read on flagged ones only
            best = int(np.argmax(arm_probs[i]))
            row["structural"].update(arm=arms[best],
                                     arm_prob=round(float(arm_probs[i][best]), 6))
            where = ", " + arm_text(arms[best], float(arm_probs[i][best]))
        warnings.append(f"possible structural abnormality of chromosome {row['type']}{where} "
                        f"({row['file']}, structural score {float(score):.3f}): review")
    return {"screened": True, "threshold": threshold,
            "flagged": sum(r["structural"]["flagged"] for r in rows),
            "target_specificity": record.get("target_specificity"),
            "arm_named": arm_probs is not None}, warnings


def arm_text(arm, probability):
    """Where a flagged change lies, in words: the arm the arm output names, or that it is not
    clear when its probability is under ``ARM_CLEAR``."""
    if probability < ARM_CLEAR:
        return "arm not clear"
    return ARM_WORDS.get(arm, f"{arm} arm")


def abnormality_section(found, params_note):
    """The ``abnormality`` section of a result under optimal dispatch."""
    keys = ("abnormal", "call", "threshold", "best_normal", "best_abnormal", "most_likely",
            "confidence", "explanation", "counts_karyotype", "missing", "extra", "notes",
            "hypotheses")
    section = {key: found[key] for key in keys}
    section["margin"] = round(found["margin"], 4)
    section["params"] = params_note
    return section


def _input_warnings(case, manifest):
    images, files = case.images, case.files
    small = [str(f) for img, f in zip(images, files) if min(img.shape) < 4]
    blank = [str(f) for img, f in zip(images, files) if img.min() == img.max()]
    notes = []
    if small:
        notes.append(f"images too small to hold a chromosome: {', '.join(small)}")
    if blank:
        notes.append(f"blank images (one gray level): {', '.join(blank)}")
    kinds = [f.get("background") for f in case.facts]
    if "light" in kinds and "dark" in kinds:
        dark = [str(f) for f, k in zip(files, kinds) if k == "dark"]
        light = [str(f) for f, k in zip(files, kinds) if k == "light"]
        few, kind = (dark, "dark") if len(dark) <= len(light) else (light, "light")
        notes.append(f"the cell mixes backgrounds: {len(few)} of {len(files)} cut-outs have a "
                     f"{kind} background ({', '.join(few[:5])}{' ...' if len(few) > 5 else ''});"
                     " check that they come from the same camera and staining")
    notes += _size_norm_warnings(case, manifest.config)
    if not manifest.polarity_trained:
        notes.append("this model was trained without polarity labels: polarity is not called "
                     "(the karyogram shows each chromosome as turned upright, either end up)")
    return notes


def _size_norm_warnings(case, config):
    """A note when size normalization is on but the cell has too few measured chromosomes for
    a median (a single cut-out, say): its cut-outs kept their own scale."""
    if not config.size_norm:
        return []
    measured = sum(f.get("length") is not None for f in case.facts)
    if measured >= config.size_norm_min_count:
        return []
    return [f"size normalization not applied: {measured} measured chromosome(s), fewer than the "
            f"{config.size_norm_min_count} a cell's median length needs; the cut-outs keep "
            "their own scale (factor 1)"]
