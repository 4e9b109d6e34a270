"""The optimal-dispatch parameters of a model, read from its manifest (written there by
``vfinfer calibrate``), or the documented defaults with a note saying so."""

from collections.abc import Mapping
from typing import NamedTuple

from vfinfer.calls.optimal import OptimalParams
from vfinfer.model.manifest import MANIFEST_NAME, Manifest, load_manifest


class LoadedParams(NamedTuple):
    """What ``load_params`` returns: the parameters, whether they come from a calibration
    that set the threshold, and one line saying where they come from."""

    params: OptimalParams
    calibrated: bool
    note: str


def load_params(manifest):
    """Optimal-dispatch parameters of a model: ``LoadedParams(params, calibrated, note)``.

    ``manifest``: a ``vfinfer.model.manifest.Manifest``, its ``data`` dict, or a model directory.
    Without ``dispatch.optimal`` in the manifest the defaults are returned with
    ``calibrated=False`` and a note saying so; bad stored values raise ValueError.
    """
    if not isinstance(manifest, (Manifest, Mapping)):
        manifest = load_manifest(manifest)
    if isinstance(manifest, Manifest):  # named without the machine's path: notes go in results
        data, where = manifest.data, f"{manifest.model_dir.name}/{MANIFEST_NAME}"
    else:
        data, where = manifest, MANIFEST_NAME
    section = data.get("dispatch") or {}
    stored = section.get("optimal") if isinstance(section, Mapping) else None
    if stored is None:
        return LoadedParams(OptimalParams(), False,
                            f"{where} holds no calibrated optimal-dispatch parameters: using "
                            "the uncalibrated defaults (run 'vfinfer calibrate' on training "
                            "slides)")
    try:
        params = OptimalParams.from_dict(dict(stored))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad dispatch.optimal: {exc}") from None
    calibration = section.get("calibration") or {}
    if calibration:
        simulated = calibration.get("n_simulated")
        note = (f"optimal-dispatch parameters calibrated on {calibration.get('n_cells')} "
                f"cells ({calibration.get('n_abnormal')} abnormal"
                + (f", {simulated} of them simulated" if simulated else "")
                + f") on {calibration.get('created', 'an unknown date')}")
        if not calibration.get("threshold_calibrated", True):
            note += "; the threshold was NOT calibrated (no abnormal cells)"
    else:
        note = f"optimal-dispatch parameters from {where} (no calibration report)"
    return LoadedParams(params, bool(calibration.get("threshold_calibrated", False)), note)
