"""A person's review of one case: corrections applied to a result, saved beside it.

A reviewable case directory is what ``vfinfer run --keep-images`` (or the review page's
upload) writes: ``result.json`` and its pictures, plus the chromosome images as they were
classified in ``images/`` (a metaphase's own image as ``images/metaphase.png``). A review
never touches those files; each save writes ``review/``::

    OUT/<case>/review/result.json   the corrected result (karyotype recomputed by
                                    ``vfinfer.calls.karyotype``), with a ``review`` section
    OUT/<case>/review/result.csv, karyogram.png, report.html
    OUT/<case>/review/audit.jsonl   one line per save: who, when, with which token, and each
                                    change from what to what

Corrections are stated against the original result (the whole set each save), so a save is
idempotent and the audit line is the difference from the previous save. Every file is written
under a temporary name and renamed into place, ``result.json`` last: its ``review.revision``
says which save is complete, and a save names the revision it was made on, so of two saves
made on the same revision one wins and the other is refused (``ReviewConflict``).
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.io.report import AUDIT_NAME, ReportError, read_audit, report_html
from vfinfer.io.results import IMAGES_DIR, REVIEW_DIR, karyogram_png, result_csv
from vfinfer.model.classes import POLARITY_NAMES, TYPE_NAMES, type_index
from vfinfer.segment.cutouts import joined_cutout
from vfinfer.util.atomic import write_atomic
from vfinfer.util.images import ImageReadError, encode_png, read_gray8

AUDIT_FILE = AUDIT_NAME  # the report reads the trail from the same file
METAPHASE_IMAGE = "metaphase.png"
FIELDS = ("type", "polarity", "deleted", "joined_into", "structural")
MAX_STRUCTURAL_CHARS = 60


class ReviewError(ValueError):
    """A correction or a case that cannot be reviewed; the message names which."""


class UnknownCase(ReviewError):
    """No case of that name (or a name that cannot be a case's)."""


class ReviewConflict(ReviewError):
    """The case was saved by someone else since the revision the save was made on."""


@dataclass(frozen=True)
class Correction:
    """What a person says about chromosome ``index`` (0-based, the result's order); None
    leaves the call as it is. ``joined_into``: this object is part of chromosome
    ``joined_into`` (it disappears; that one stands for both). ``structural``: an ISCN
    description such as ``del(5)(q31)`` ("" clears one given earlier)."""

    index: int
    type: str | None = None
    polarity: str | None = None
    deleted: bool = False
    joined_into: int | None = None
    structural: str | None = None


def image_name(file):
    """The name under ``images/`` of the chromosome image called ``file`` (always PNG)."""
    name = Path(str(file)).name
    return name if name.lower().endswith(".png") else f"{name}.png"


def image_files(files, images, metaphase=None):
    """{"images/<name>": PNG bytes} of a case's chromosome images (and of its metaphase
    image): what a reviewable case directory keeps."""
    kept = {f"{IMAGES_DIR}/{image_name(file)}": encode_png(image)
            for file, image in zip(files, images)}
    if metaphase is not None:
        kept[f"{IMAGES_DIR}/{METAPHASE_IMAGE}"] = encode_png(metaphase)
    return kept


def check_corrections(result, corrections):
    """ReviewError naming the chromosome for any correction that cannot apply to ``result``."""
    n = len(result["chromosomes"])
    seen = set()
    for fix in corrections:
        where = f"correction of chromosome {fix.index}"
        if not 0 <= fix.index < n:
            raise ReviewError(f"{where}: the case has chromosomes 0-{n - 1}")
        if fix.index in seen:
            raise ReviewError(f"{where}: given twice (one correction per chromosome)")
        seen.add(fix.index)
        if fix.type is not None and fix.type not in TYPE_NAMES:
            raise ReviewError(f"{where}: type {fix.type!r} is not one of 1-22, X, Y")
        if fix.polarity is not None and fix.polarity not in POLARITY_NAMES:
            raise ReviewError(f"{where}: polarity {fix.polarity!r} is not one of "
                              f"{', '.join(POLARITY_NAMES)}")
        if fix.joined_into is not None and (fix.joined_into == fix.index
                                            or not 0 <= fix.joined_into < n):
            raise ReviewError(f"{where}: cannot join it into chromosome {fix.joined_into}")
        if fix.structural is not None and len(fix.structural) > MAX_STRUCTURAL_CHARS:
            raise ReviewError(f"{where}: the structural description is over "
                              f"{MAX_STRUCTURAL_CHARS} characters")
    targets = {fix.joined_into for fix in corrections if fix.joined_into is not None}
    removed = {fix.index for fix in corrections if fix.deleted or fix.joined_into is not None}
    if targets & removed:
        raise ReviewError(f"chromosome {min(targets & removed)} is joined into, so it cannot "
                          "be deleted or joined itself")


def corrected_rows(result, corrections):
    """The chromosome rows with ``corrections`` applied: each changed field in place and
    ``reviewed[field]`` = ``{"from", "to"}``; removed objects keep their row, marked."""
    rows = copy.deepcopy(result["chromosomes"])
    for fix in corrections:
        row, changed = rows[fix.index], {}
        for field, value in (("type", fix.type), ("polarity", fix.polarity)):
            if value is not None and value != row[field]:
                changed[field] = {"from": row[field], "to": value}
                row[field] = value
        if fix.deleted:
            row["deleted"], changed["deleted"] = True, {"from": False, "to": True}
        if fix.joined_into is not None:
            row["joined_into"] = fix.joined_into
            changed["joined_into"] = {"from": None, "to": fix.joined_into}
        if fix.structural:
            row["structural_change"] = fix.structural.strip()
            changed["structural"] = {"from": None, "to": row["structural_change"]}
        if changed:
            row["reviewed"] = changed
    return rows


def removed(row):
    """Whether the reviewer took this object out (not a chromosome, or a piece of one)."""
    return bool(row.get("deleted")) or "joined_into" in row


def kept(rows):
    return [row for row in rows if not removed(row)]


def reviewed_karyotype(rows):
    """(karyotype, warnings) of the kept rows: the numerical karyotype of
    ``karyotype_summary`` followed by each structural change the reviewer marked."""
    rows = kept(rows)
    text, warnings = karyotype_summary([type_index(row["type"]) for row in rows])
    marks = [row["structural_change"] for row in rows if row.get("structural_change")]
    for row in rows:
        if row.get("structural_change"):
            warnings.append(f"structural change marked by the reviewer: "
                            f"{row['structural_change']} (chromosome {row['type']}, "
                            f"{row['file']})")
    return ",".join([text, *marks]), warnings


def apply_corrections(result, corrections, reviewer, revision, when):
    """The reviewed result: ``result`` (never changed) with ``corrections`` applied, the
    karyotype recomputed, the automatic karyotype and warnings kept under ``review``."""
    check_corrections(result, corrections)
    rows = corrected_rows(result, corrections)
    karyotype, warnings = reviewed_karyotype(rows)
    reviewed = {key: value for key, value in result.items() if key != "abnormality"}
    reviewed.update({
        "n_chromosomes": len(kept(rows)),
        "karyotype": karyotype,
        "warnings": warnings,
        "chromosomes": rows,
        "review": {"revision": revision, "reviewed_at": when, "reviewer": reviewer,
                   "n_corrected": sum("reviewed" in row for row in rows),
                   "automatic_karyotype": result["karyotype"],
                   "automatic_warnings": result["warnings"],
                   "corrections": [correction_record(fix) for fix in corrections]},
    })
    return reviewed


def correction_record(fix):
    """A Correction as JSON, without the fields it leaves alone."""
    record = {"index": fix.index}
    for field in ("type", "polarity", "joined_into", "structural"):
        if getattr(fix, field) is not None:
            record[field] = getattr(fix, field)
    if fix.deleted:
        record["deleted"] = True
    return record


def corrections_from(records):
    """Correction objects from JSON records (``correction_record``'s shape)."""
    try:
        return [Correction(**record) for record in records]
    except TypeError as exc:
        raise ReviewError(f"bad correction: {exc}") from None


def row_state(row):
    """The reviewable fields of one chromosome row, for the audit's differences."""
    return {"type": row["type"], "polarity": row["polarity"],
            "deleted": bool(row.get("deleted")), "joined_into": row.get("joined_into"),
            "structural": row.get("structural_change")}


def changes_between(before_rows, after_rows):
    """[{index, file, field, from, to}] for every reviewable field that differs."""
    changes = []
    for i, (old, new) in enumerate(zip(before_rows, after_rows)):
        old_state, new_state = row_state(old), row_state(new)
        for field in FIELDS:
            if old_state[field] != new_state[field]:
                changes.append({"index": i, "file": new["file"], "field": field,
                                "from": old_state[field], "to": new_state[field]})
    return changes


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_json(path, what):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReviewError(f"{path}: no {what}") from None
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{path}: cannot read the {what} ({exc})") from None


class ReviewedCase:
    """One case directory (see the module doc): its original result, its review (if any),
    its images; ``save`` writes a review."""

    def __init__(self, case_dir):
        self.dir = Path(case_dir)
        self.original = read_json(self.dir / "result.json", "result.json")

    @property
    def review_dir(self):
        return self.dir / REVIEW_DIR

    def reviewed(self):
        """The reviewed result of the last complete save, or None."""
        path = self.review_dir / "result.json"
        return read_json(path, "reviewed result") if path.exists() else None

    def revision(self, reviewed=None):
        """The revision of the last complete save (0: none); ``reviewed``: that save's result
        when the caller has read it already."""
        reviewed = reviewed or self.reviewed()
        return reviewed["review"]["revision"] if reviewed else 0

    def audit(self, last=None):
        """The audit lines of the complete saves, up to revision ``last`` (default: the last
        complete save; a line past it is what a save that did not finish left)."""
        try:
            lines = read_audit(self.review_dir / AUDIT_FILE)
        except ReportError as exc:
            raise ReviewError(str(exc)) from None
        last = self.revision() if last is None else last
        return [line for line in lines if line["revision"] <= last]

    def images(self):
        """The chromosome images in result order, or None when the case kept none."""
        folder = self.dir / IMAGES_DIR
        if not folder.is_dir():
            return None
        try:
            return [read_gray8(folder / image_name(row["file"]))
                    for row in self.original["chromosomes"]]
        except ImageReadError as exc:
            raise ReviewError(f"{self.dir}: {exc}") from None

    def picture(self, reviewed):
        """The reviewed karyogram PNG: the kept chromosomes, a joined object's image cut
        again from the metaphase with both masks when the case has them; None without
        images."""
        images = self.images()
        if images is None:
            return None
        rows = reviewed["chromosomes"]
        for target in {row["joined_into"] for row in rows if "joined_into" in row}:
            parts = [target] + [i for i, row in enumerate(rows)
                                if row.get("joined_into") == target]
            images[target] = self.joined_image(parts, images[target])
        keep = [i for i, row in enumerate(rows) if not removed(row)]
        shown = [{**rows[i], "low_confidence": rows[i]["low_confidence"]
                  and "reviewed" not in rows[i]} for i in keep]
        title = f"{reviewed['case']} (reviewed, revision {reviewed['review']['revision']})"
        return karyogram_png({**reviewed, "case": title, "chromosomes": shown},
                             [images[i] for i in keep])

    def joined_image(self, parts, fallback):
        """The chromosome made of the segments ``parts``, cut from the metaphase image
        (``fallback`` when the case has no metaphase image or no polygons)."""
        metaphase = self.dir / IMAGES_DIR / METAPHASE_IMAGE
        rows = self.original["chromosomes"]
        polygons = [rows[i].get("segment", {}).get("polygon") for i in parts]
        if not metaphase.exists() or not all(polygons):
            return fallback
        background = self.original.get("segmentation", {}).get("background", "light")
        return joined_cutout(read_gray8(metaphase), polygons, background)

    def report(self, reviewed, karyogram, audit):
        overlay = self.dir / "overlay.png"
        return report_html(reviewed, karyogram,
                           overlay.read_bytes() if overlay.exists() else None, audit)

    def save(self, corrections, reviewer, token=None, base_revision=None):
        """Write the review of ``corrections`` (the whole set, against the original) made on
        ``base_revision`` (None: on whatever is saved); returns (reviewed result, audit
        line). ReviewConflict when the case was saved since ``base_revision``; the caller
        holds the case's lock (``ReviewStore``)."""
        saved = self.reviewed()
        current = self.revision(saved)
        if base_revision is not None and base_revision != current:
            raise ReviewConflict(f"{self.dir.name}: saved as revision {current} since "
                                 f"revision {base_revision} was opened; reload the case")
        previous = saved or self.original
        when = now_iso()
        reviewed = apply_corrections(self.original, corrections, reviewer, current + 1, when)
        line = {"revision": current + 1, "time": when, "reviewer": reviewer, "token": token,
                "changes": changes_between(previous["chromosomes"], reviewed["chromosomes"])}
        audit = self.audit(current) + [line]
        karyogram = self.picture(reviewed)
        files = {"result.csv": result_csv({**reviewed, "chromosomes": kept(
                     reviewed["chromosomes"])}).encode("utf-8"),
                 "report.html": self.report(reviewed, karyogram, audit).encode("utf-8"),
                 AUDIT_FILE: "".join(json.dumps(entry) + "\n" for entry in audit).encode(),
                 "result.json": (json.dumps(reviewed, indent=2, ensure_ascii=False)
                                 + "\n").encode("utf-8")}
        if karyogram is not None:
            files = {"karyogram.png": karyogram, **files}
        self.review_dir.mkdir(exist_ok=True)
        for name, data in files.items():  # result.json last: it completes the save
            write_atomic(self.review_dir / name, data)
        return reviewed, line


class ReviewStore:
    """The reviewable cases under one directory (``vfinfer serve --cases DIR``), one lock
    per case so that saves of one case never interleave (within this process: one server
    per directory)."""

    def __init__(self, root):
        self.root = Path(root)
        self._locks, self._guard = {}, threading.Lock()

    def case_names(self):
        return sorted(path.parent.name for path in self.root.glob("*/result.json"))

    def path(self, name):
        """The directory of case ``name``; ReviewError for a name that is not a case here."""
        if not name or name.startswith(".") or Path(name).name != name:
            raise UnknownCase(f"{name!r} is not a case name")
        path = self.root / name
        if not (path / "result.json").is_file():
            raise UnknownCase(f"{name}: no such case")
        return path

    def open(self, name):
        return ReviewedCase(self.path(name))

    def lock(self, name):
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def save(self, name, corrections, reviewer, token=None, base_revision=None):
        with self.lock(name):
            return self.open(name).save(corrections, reviewer, token, base_revision)


def reviewed_case_dirs(root):
    """The reviewed case directories under ``root`` (or ``root`` itself when it is one)."""
    root = Path(root)
    if (root / REVIEW_DIR / "result.json").is_file():
        return [root]
    return sorted(path.parent.parent for path in root.glob(f"*/{REVIEW_DIR}/result.json"))


def reviewed_labels(root):
    """Labelled chromosome images (``vfinfer.io.labels.Label``) from the reviewed cases under
    ``root``: each kept chromosome's image in ``images/`` with its reviewed type and
    polarity; removed objects and joined ones (whose image is a piece) are left out.
    ReviewError when ``root`` holds no reviewed case or a case kept no images."""
    from vfinfer.io.labels import NOT_LABELLED, Label

    cases = reviewed_case_dirs(root)
    if not cases:
        raise ReviewError(f"{root}: no reviewed case (a case directory with "
                          f"{REVIEW_DIR}/result.json)")
    labels = []
    for case_dir in cases:
        reviewed = read_json(case_dir / REVIEW_DIR / "result.json", "reviewed result")
        rows = reviewed["chromosomes"]
        joined = {row["joined_into"] for row in rows if "joined_into" in row}
        for index, row in enumerate(rows):
            if index in joined or removed(row):
                continue
            path = case_dir / IMAGES_DIR / image_name(row["file"])
            if not path.is_file():
                raise ReviewError(f"{path}: missing (the case kept no images: run it with "
                                  "--keep-images)")
            polarity = (POLARITY_NAMES.index(row["polarity"])
                        if row["polarity"] in POLARITY_NAMES else NOT_LABELLED)
            labels.append(Label(cell=f"{Path(root).name}/{case_dir.name}", slide="",
                                path=path, type=type_index(row["type"]), polarity=polarity))
    return labels
