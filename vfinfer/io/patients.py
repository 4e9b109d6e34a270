"""Patients on disk: the sample sheet (CSV ``cell,patient``) in, ``OUT/<patient>/patient.json``
out; the ISCN clone rules themselves are ``vfinfer.calls.patient``'s.

    sheet = read_sample_sheet("samples.csv")                     # {cell: patient}
    patients_from_results(out_dir, cases, sample_sheet=sheet)    # after vfinfer run
"""

import csv
import json
from pathlib import Path

from vfinfer.calls.patient import group_cells, patient_karyotype
from vfinfer.util.atomic import write_json_atomic

PATIENT_FILE = "patient.json"



def read_sample_sheet(path):
    """``{cell: patient}`` from a CSV with a header holding ``cell`` and ``patient`` (other
    columns ignored). Raises ValueError naming the file and line of a bad row, or a cell
    listed for two patients."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: sample sheet not found")
    out, seen = {}, {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lower() for h in next(reader, [])]
            if "cell" not in header or "patient" not in header:
                raise ValueError(f"{path}: line 1: the header must hold the columns cell and "
                                 f"patient (found {','.join(header) or 'nothing'})")
            ci, pi = header.index("cell"), header.index("patient")
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                line = reader.line_num
                cell = row[ci].strip() if ci < len(row) else ""
                patient = row[pi].strip() if pi < len(row) else ""
                if not cell or not patient:
                    raise ValueError(f"{path}: line {line}: empty cell or patient")
                if cell in out and out[cell] != patient:
                    raise ValueError(f"{path}: line {line}: cell {cell} is listed for patient "
                                     f"{patient} and, on line {seen[cell]}, for {out[cell]}")
                out[cell], seen[cell] = patient, line
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: bad CSV ({exc})") from None
    if not out:
        raise ValueError(f"{path}: no rows (only a header)")
    return out


def _safe_component(name):
    text = str(name)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or text != text.strip()):
        raise ValueError(f"patient id {name!r} cannot be used as a directory name")
    return text


def write_patient(out_dir, result, overwrite=False):
    """Write ``result`` (from ``patient_karyotype``, with a patient id) atomically to
    OUT/<patient>/patient.json; returns the path. An existing file is kept (FileExistsError)
    unless ``overwrite``."""
    patient = result.get("patient")
    if patient is None:
        raise ValueError("the patient result has no patient id")
    folder = Path(out_dir) / _safe_component(patient)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PATIENT_FILE
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; left untouched (pass --overwrite)")
    write_json_atomic(path, result)
    return path


def patients_from_results(out_dir, cases, sample_sheet=None, pattern=None, echo=print,
                          failed=(), overwrite=False):
    """Write OUT/<patient>/patient.json for the cases of ``vfinfer run``.

    ``cases``: case names (their results are read back from OUT/<case>/result.json, so cases
    skipped because they already had results count too); ``sample_sheet`` (``{cell:
    patient}``) / ``pattern``: see ``vfinfer.calls.patient.group_cells``. ``failed``: cases
    that failed in this run; an older result.json of theirs is not used. Echoes one line per
    patient and returns the patient results.
    """
    failed = {str(case) for case in failed}
    groups, unmatched = group_cells(cases, sample_sheet, pattern)
    if unmatched:
        shown = ", ".join(map(str, unmatched[:5])) + (" ..." if len(unmatched) > 5 else "")
        echo(f"no patient for {len(unmatched)} case(s), left out of patient.json: {shown}")
    out = []
    for patient, members in groups.items():
        calls, missing, modes = {}, [], set()
        for case in members:
            path = Path(out_dir) / str(case) / "result.json"
            if str(case) in failed:
                missing.append(str(case))
                continue
            try:
                result = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                missing.append(str(case))
                continue
            calls[str(case)] = result
            modes.add(result.get("dispatch"))
        found = patient_karyotype(calls, patient)
        found["dispatch"] = sorted(str(m) for m in modes)
        found["missing_cells"] = missing
        if missing:
            found["notes"].append(f"{len(missing)} cell(s) without a result.json (failed): "
                                  f"{', '.join(missing)}")
        if modes - {"optimal"}:
            found["notes"].append("some cells were not run with --dispatch optimal: their "
                                  "karyotype is the count of their dispatched types, so every "
                                  "misclassification looks like a gain or a loss")
        try:
            target = write_patient(out_dir, found, overwrite)
        except FileExistsError as exc:
            echo(f"patient {patient}: skipped, {exc}")
            continue
        except (OSError, ValueError) as exc:
            echo(f"patient {patient}: failed: cannot write patient.json ({exc})")
            continue
        n, n_nc = found["n_cells"], len(found["non_clonal"])
        extra = f"; {n_nc} non-clonal finding{'s' if n_nc != 1 else ''}" if n_nc else ""
        shown = ", ".join(e["chromosome"] for e in found["structural"]["clones"])
        extra += f"; possible structural clone of chromosome {shown}: review" if shown else ""
        echo(f"patient {patient}: {found['karyotype'] or 'no karyotype'} "
             f"({n} cell{'s' if n != 1 else ''}{extra}) -> {target}")
        out.append(found)
    return out
