"""``--dispatch auto``: the dispatch mode that a model's own in-domain figures found best.

Three ways of turning per-chromosome probabilities into a karyotype exist: the plain argmax
(``none``), Algorithm 1 of the paper (``paper``, ``vfinfer.calls.dispatch``) and the optimal
assignment (``optimal``, ``vfinfer.calls.optimal``). Which one serves a model best is a fact
about that model, measured on its own labelled validation cells, so the choice is read from
its manifest:

1. ``domain["karyotype_exact"]`` (written by ``vfinfer domain --labels``, and by ``vfinfer
   export`` of a trained checkpoint): the share of the validation cells whose karyotype each
   mode got exactly right. The mode with the highest share wins; ties go to optimal, then
   paper (the order of ``TIE_ORDER``).
2. Without those figures: optimal when the manifest holds optimal-dispatch parameters whose
   threshold was calibrated (``dispatch.optimal`` and ``dispatch.calibration`` of ``vfinfer
   calibrate``), else Algorithm 1 (``paper``), the paper's own choice.

``resolve_dispatch`` is a pure function of the manifest's data; ``Pipeline`` calls it once
when built with ``dispatch_mode="auto"`` and reports the mode it used (``result["dispatch"]``)
and why (``result["dispatch_auto_reason"]``).
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

AUTO = "auto"
MODES = ("none", "paper", "optimal")
TIE_ORDER = ("optimal", "paper", "none")  # the first of equally good modes wins


class AutoDispatch(NamedTuple):
    """What ``resolve_dispatch`` returns: the mode to use and one line saying why."""

    mode: str
    reason: str


def exact_shares(data: Mapping[str, Any]) -> dict[str, float]:
    """{mode: share of exactly right karyotypes} from ``domain["karyotype_exact"]``; only
    the modes with a number (empty without figures)."""
    domain = data.get("domain") or {}
    exact = domain.get("karyotype_exact") if isinstance(domain, Mapping) else None
    if not isinstance(exact, Mapping):
        return {}
    return {mode: float(exact[mode]) for mode in MODES
            if isinstance(exact.get(mode), (int, float)) and not isinstance(exact[mode], bool)}


def calibrated_optimal(data: Mapping[str, Any]) -> bool:
    """Whether the manifest holds optimal-dispatch parameters whose threshold ``vfinfer
    calibrate`` fitted (``vfinfer.calls.optimal_params.load_params``' ``calibrated``)."""
    section = data.get("dispatch") or {}
    if not isinstance(section, Mapping) or section.get("optimal") is None:
        return False
    calibration = section.get("calibration") or {}
    return isinstance(calibration, Mapping) and bool(calibration.get("threshold_calibrated"))


def resolve_dispatch(data: Mapping[str, Any]) -> AutoDispatch:
    """The dispatch mode ``auto`` stands for with the manifest ``data`` (its dict), and why.

    Rule (module docstring): the highest exact-karyotype share of ``domain["karyotype_exact"]``
    (ties: optimal, then paper, then none); without it, optimal when the optimal-dispatch
    parameters are calibrated, else ``paper`` (Algorithm 1 of Qin et al. 2019).
    """
    shares = exact_shares(data)
    calibrated = calibrated_optimal(data)
    if shares:
        best = max(shares.values())
        mode = next(m for m in TIE_ORDER if shares.get(m) == best)
        cells = (data.get("domain") or {}).get("karyotype_exact", {}).get("cells")
        figures = " / ".join(f"{m} {shares[m]:.2f}" for m in MODES if m in shares)
        where = f"on its {cells} validation cells" if cells else "on its validation cells"
        params = ""
        if mode == "optimal":
            params = ("calibrated parameters, " if calibrated
                      else "uncalibrated default parameters, ")
        return AutoDispatch(mode, f"auto: {params}exact karyotypes {figures} {where}")
    if calibrated:
        return AutoDispatch("optimal", "auto: calibrated optimal-dispatch parameters; no "
                            "exact-karyotype figures per mode ('vfinfer domain --labels')")
    return AutoDispatch("paper", "auto: neither exact-karyotype figures per mode ('vfinfer "
                        "domain --labels') nor calibrated optimal-dispatch parameters "
                        "('vfinfer calibrate'): Algorithm 1")


def choose_dispatch(requested: str, data: Mapping[str, Any]) -> AutoDispatch:
    """``requested`` as given (the reason says so, and what ``auto`` would choose), or, for
    ``"auto"``, ``resolve_dispatch``."""
    resolved = resolve_dispatch(data)
    if requested == AUTO:
        return resolved
    return AutoDispatch(requested, f"--dispatch {requested}; auto would choose {resolved.mode}")
