"""An honest verdict per cell: a karyotype, or "not karyotyped" with the reasons.

A classifier given cells unlike its training data (another lab's staining, fluorescence on a
model trained on bright-field, cut-outs at angles it never saw) still names 46 types, and the
counts then read like a karyotype (``46,XXXXXX,+1,+1,-2,...``). Before the karyotype is
reported, three figures of the cell are compared with the same figures of the model's own
in-domain validation cells, stored in its manifest by ``vfinfer domain``
(``vfinfer.tools.evaluation.domain``; the limits and how they were chosen are recorded there):

* ``low_confidence_fraction``: the share of chromosomes whose top type probability is below
  the dispatch threshold (0.9). Limit: the largest share seen on the in-domain cells plus
  ``LOW_CONFIDENCE_MARGIN``.
* ``dark_background_fraction``: the share of cut-outs with a dark background
  (``vfinfer.util.geometry.detect_background``). When at least ``BACKGROUND_PURE`` of
  the in-domain images had one kind of background, a cell whose majority has the other kind
  is unlike the training data, even though the runtime inverts it.
* ``median_abs_tilt``: the median angle of the chromosomes' long axes from vertical, degrees,
  for models without rotate-and-crop. Limit: the largest median seen plus ``TILT_MARGIN``.
* ``median_grain``: the median ``grain`` of the chromosomes (``vfinfer.util.geometry``: the
  mean difference between neighbouring pixels inside a chromosome, gray levels). Limit: the
  largest median seen times ``GRAIN_FACTOR``. A texture of noise is grainier than any banded
  chromosome, and a network may still call it with confidence, so confidence alone cannot
  be relied on to refuse it (``benchmarks/cell_grain.py``: cells' median grains).

None of them depends on how many chromosomes were found or which types they got, so a real
trisomy or loss is never suppressed by the verdict (measured on pki3's abnormal cells: README).

Cut-outs segmented from a metaphase (``vfinfer run IMAGE``, or a case directory written by
``vfinfer segment``: their facts say ``segmented``) are a domain of their own: masked,
turned, touched by neighbours, and at the metaphase's scale. A model whose in-domain figures
were fitted on ready-made cut-outs has never been checked on them (on BioImLab such a model
got 2 of 33 metaphase karyotypes right while its figures looked in-domain: README), so a cell
of mostly segmented cut-outs is refused unless ``vfinfer domain`` was run on segmented cells
(its manifest's ``domain_segmented`` section, or a ``domain`` section fitted on segmented
cells: ``domain["fitted_on"]["segmented"]``); when it was, segmented cells are judged by the
figures of segmented cells (``domain_for``), ready-made cut-outs by the ``domain`` section. A
model without domain figures has not been checked on them either (on held-out metaphases a
plain export reported 16 karyotypes, 15 of them wrong), so it refuses such cells too
(``SEGMENTED_NO_DOMAIN``).

A model without domain figures (a fresh export, before ``vfinfer domain``) cannot be compared
with its own cells, so one model-independent floor stands in: a cell is refused when more than
``NO_DOMAIN_NEAR_CHANCE_LIMIT`` of its calls have a top type probability below ``NEAR_CHANCE``
(``near_chance_fraction``), i.e. the model cannot tell most of its chromosomes apart. Untrained
exports lie above it on every cell measured (61-100 % of the calls), trained models on their
own held-out cells below it (at most 43 %, the weakest; ``benchmarks/near_chance_calls.py``,
README "Images from your lab"). The floor is deliberately loose: it stops nonsense, not a model
that is merely unsure or a cell from another lab, which only domain figures can judge.

A fourth check is about the model rather than the cell: when ``vfinfer domain`` was given the
in-domain cells' labels, it records for each dispatch mode the share of those cells whose
karyotype came out exactly right. Below ``MIN_EXACT_KARYOTYPES`` the model's karyotypes
under that dispatch are not worth reporting (an undertrained model on its own data), and
every cell says so instead of showing a string of gains and losses.
"""

import numpy as np

LOW_CONFIDENCE_MARGIN = 0.15
BACKGROUND_PURE = 0.95
TILT_MARGIN = 15.0
GRAIN_FACTOR = 1.5
MIN_EXACT_KARYOTYPES = 0.5
NEAR_CHANCE = 0.5
NO_DOMAIN_NEAR_CHANCE_LIMIT = 0.5
SEGMENTED_NOT_FITTED = ("chromosomes segmented from a metaphase, but this model's in-domain "
                        "figures come from ready-made cut-outs: its calls on segmented "
                        "chromosomes are not validated ('vfinfer domain' on segmented cells of "
                        "your lab validates them)")
SEGMENTED_NO_DOMAIN = ("chromosomes segmented from a metaphase, but this model has no domain "
                       "figures: its calls on segmented chromosomes are not validated ('vfinfer "
                       "domain' on segmented cells of your lab validates them)")
NO_DOMAIN = ("this model's manifest has no domain figures ('vfinfer domain'): cells unlike "
             "its training data are not detected, so check that the images are like them")


def cell_figures(type_probs, threshold, facts):
    """The figures of one cell from its type probabilities (N x 24, before dispatch)
    and the per-image facts of ``vfinfer.util.geometry.normalize_cutout``."""
    top = np.asarray(type_probs).max(axis=1) if len(type_probs) else np.zeros(0)
    tilts = [abs(f["tilt"]) for f in facts if f.get("tilt") is not None]
    grains = [f["grain"] for f in facts if f.get("grain") is not None]
    return {
        "n": int(len(top)),
        "low_confidence_fraction": round(float(np.mean(top < threshold)) if len(top) else 1.0,
                                         4),
        "dark_background_fraction": round(float(np.mean(
            [f.get("background") == "dark" for f in facts])) if facts else 0.0, 4),
        "median_abs_tilt": round(float(np.median(tilts)), 2) if tilts else None,
        "median_grain": round(float(np.median(grains)), 2) if grains else None,
        "segmented_fraction": round(float(np.mean(
            [bool(f.get("segmented")) for f in facts])) if facts else 0.0, 4),
        "near_chance_fraction": round(float(np.mean(top < NEAR_CHANCE)) if len(top) else 1.0,
                                      4),
    }


def reasons_against(figures, domain, threshold, dispatch_mode=None):
    """The reasons a cell is unlike the model's in-domain cells, or the model cannot
    karyotype them with ``dispatch_mode`` (empty when neither holds)."""
    return [text for _, text in kinded_reasons(figures, domain, threshold, dispatch_mode)]


def kinded_reasons(figures, domain, threshold, dispatch_mode=None):
    """``reasons_against`` as (kind, text) pairs; kinds: model, segmentation, low
    confidence, background, tilt, grain; without a domain only segmentation and the floor (near
    chance)."""
    segmented = figures.get("segmented_fraction", 0.0) > 0.5
    if not domain:
        return ([("segmentation", SEGMENTED_NO_DOMAIN)] if segmented else []) \
            + _near_chance_reasons(figures)
    limits = domain["limits"]
    reasons = [("model", text) for text in _model_reasons(domain, dispatch_mode)]
    if segmented and not domain.get("fitted_on", {}).get("segmented"):
        reasons.append(("segmentation", SEGMENTED_NOT_FITTED))
    low = figures["low_confidence_fraction"]
    if low > limits["low_confidence_fraction"]:
        count = int(round(low * figures["n"]))
        reasons.append(("low confidence",
                        f"{count} of {figures['n']} calls below confidence {threshold:g} "
                        f"(in-domain cells: at most {domain['seen']['low_confidence_max']:.0%}, "
                        f"limit {limits['low_confidence_fraction']:.0%})"))
    convention = limits.get("background")
    dark = figures["dark_background_fraction"]
    if convention == "light" and dark > 0.5 or convention == "dark" and dark < 0.5:
        other = "dark" if convention == "light" else "light"
        share = dark if other == "dark" else 1 - dark
        reasons.append(("background",
                        f"images unlike the model's training data ({other} background: "
                        f"{share:.0%} of the cut-outs; training data: {convention})"))
    tilt, tilt_limit = figures["median_abs_tilt"], limits.get("median_abs_tilt")
    if tilt is not None and tilt_limit is not None and tilt > tilt_limit:
        reasons.append(("tilt", f"images unlike the model's training data (chromosomes lie "
                        f"{tilt:.0f} degrees from vertical, median; in-domain cells at most "
                        f"{domain['seen']['median_abs_tilt_max']:.0f}, limit {tilt_limit:.0f})"))
    return reasons + _grain_reasons(figures, domain)


def _grain_reasons(figures, domain):
    grain, limit = figures.get("median_grain"), domain["limits"].get("median_grain")
    if grain is None or limit is None or grain <= limit:
        return []
    return [("grain", f"images unlike the model's training data (chromosomes grainier than "
             f"any banded one it knows: {grain:.0f} gray levels between neighbouring pixels, "
             f"median; in-domain cells at most {domain['seen']['median_grain_max']:.0f}, "
             f"limit {limit:.0f})")]


def _near_chance_reasons(figures):
    share = figures["near_chance_fraction"]
    if share <= NO_DOMAIN_NEAR_CHANCE_LIMIT:
        return []
    count = int(round(share * figures["n"]))
    return [("near chance", f"{count} of {figures['n']} calls below probability "
             f"{NEAR_CHANCE:g}: the model cannot tell these chromosomes apart (without domain "
             f"figures, a cell is refused when more than {NO_DOMAIN_NEAR_CHANCE_LIMIT:.0%} of "
             "its calls are)")]


def _model_reasons(domain, dispatch_mode):
    exact = (domain.get("karyotype_exact") or {}) if dispatch_mode else {}
    share = exact.get(dispatch_mode)
    if share is None or share >= MIN_EXACT_KARYOTYPES:
        return []
    better = [(value, mode) for mode, value in exact.items()
              if mode not in (dispatch_mode, "cells") and value is not None
              and value >= MIN_EXACT_KARYOTYPES]
    advice = (f"--dispatch {max(better)[1]} got {max(better)[0]:.0%} right" if better
              else "the model needs more training or data")
    cells = ("labelled in-domain segmented cells" if domain.get("fitted_on", {}).get("segmented")
             else "labelled in-domain cells")
    return [f"this model's karyotypes with --dispatch {dispatch_mode} are not reliable: only "
            f"{share:.0%} of its {exact.get('cells')} {cells} came out exactly right; {advice}"]


def verdict_limits(domain):
    """The limits a cell is judged by: the domain's, else the no-domain floor's."""
    return domain["limits"] if domain else {"near_chance_fraction": NO_DOMAIN_NEAR_CHANCE_LIMIT}


def domain_for(figures, domain, segmented_domain=None):
    """The domain section a cell is judged by: ``segmented_domain`` (figures of segmented
    cells) for a cell of mostly segmented cut-outs when there is one, else ``domain``."""
    if segmented_domain and figures.get("segmented_fraction", 0.0) > 0.5:
        return segmented_domain
    return domain


def judge(type_probs, threshold, facts, domain, force=False, dispatch_mode=None,
          segmented_domain=None):
    """The ``verdict`` section of a result: ``karyotyped`` (bool), ``text``, ``reasons``,
    ``figures`` and the ``limits`` used. ``force`` reports the karyotype in any case (the
    reasons stay in the verdict). ``segmented_domain``: ``domain_for``."""
    figures = cell_figures(type_probs, threshold, facts)
    domain = domain_for(figures, domain, segmented_domain)
    reasons = reasons_against(figures, domain, threshold, dispatch_mode)
    karyotyped = force or not reasons
    if not reasons:
        kind = "segmented " if domain and domain["fitted_on"].get("segmented") else ""
        text = (f"karyotyped: the cell is like the model's in-domain {kind}cells" if domain
                else "karyotyped; " + NO_DOMAIN)
    elif force:
        text = "karyotyped because forced (--force-karyotype), although " + "; ".join(reasons)
    else:
        text = "not karyotyped: " + "; ".join(reasons)
    return {"karyotyped": karyotyped, "text": text, "reasons": reasons, "figures": figures,
            "limits": verdict_limits(domain), "forced": bool(force and reasons)}
