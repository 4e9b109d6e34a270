"""What ``vfinfer calibrate`` leaves: the report as text, and the fitted parameters with the
report's summary in the model's manifest (``dispatch.optimal``, ``dispatch.calibration``)."""

from vfinfer.calls.optimal import (
    OptimalParams,
)
from vfinfer.model.manifest import load_manifest, write_json_atomic
from vfinfer.tools.evaluation.dispatch_figures import (
    jsonable,
    simulated_line,
)


def format_calibration(report):
    """A few lines of text for the command line."""
    tr, chosen = report["training"], report["chosen"]
    fl = tr["flags"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    simulated = report.get("n_simulated")
    lines = [
        f"calibrated on {report['n_cells']} cells ({report['n_abnormal']} abnormal"
        + (f", {simulated} of them simulated" if simulated else "")
        + f", {report['n_normal']} normal, {report['n_images']} images)",
        f"chosen: priors gain {chosen['prior_gain']:g} loss {chosen['prior_loss']:g} sex "
        f"{chosen['prior_sex']:g} (normal {chosen['prior_normal']:g}), extra penalty "
        f"{chosen['extra_penalty']:g}, missing penalty {chosen['missing_penalty']:g}, "
        f"threshold {chosen['threshold']:g}",
        f"on the real calibration cells: acc. per case argmax "
        f"{pct(tr['acc_per_case']['none'])}, "
        f"Algorithm 1 {pct(tr['acc_per_case']['paper'])}, optimal "
        f"{pct(tr['acc_per_case']['optimal'])}",
        f"abnormal cells flagged: Algorithm 1 {pct(fl['paper']['caught_rate'])}, optimal "
        f"{pct(fl['optimal']['caught_rate'])}; normal cells falsely flagged: Algorithm 1 "
        f"{pct(fl['paper']['false_warning_rate'])}, optimal "
        f"{pct(fl['optimal']['false_warning_rate'])}",
    ]
    if report.get("simulated"):
        lines.append(simulated_line(report["simulated"]) + " (cells the fit used)")
    return "\n".join(lines + report["warnings"])


def store_params(model_dir, params, report=None):
    """Write ``params`` (and the calibration ``report``) into MODEL_DIR/manifest.json under
    ``"dispatch": {"optimal": {...}, "calibration": {...}}``, atomically: the manifest is
    re-read just before, only these two keys change, and it is replaced in one rename.
    Returns the manifest path."""
    if not isinstance(params, OptimalParams):
        raise TypeError(f"params must be OptimalParams, got {type(params).__name__}")
    manifest = load_manifest(model_dir)
    data = manifest.data
    section = data.setdefault("dispatch", {})
    if not isinstance(section, dict):
        raise ValueError(f"{manifest.path}: 'dispatch' is not a JSON object")
    section["optimal"] = params.to_dict()
    if report is not None:
        section["calibration"] = jsonable(report)
    else:
        section.pop("calibration", None)
    write_json_atomic(manifest.path, data)
    return manifest.path
