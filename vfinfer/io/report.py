"""The case report: one self-contained HTML file (``OUT/<case>/report.html``) that a
cytogeneticist reads on screen or prints to A4, from the files of one case.

It holds the case, the model (its directory, preset, G-Net sha256 and training data), backend
and dispatch, the verdict, the karyotype with every warning, the karyogram and the metaphase
overlay (inline as data: URIs: no network, no outside CSS, scripts or fonts), the calls with
the uncertain ones first and, for a reviewed result, what the reviewer changed. The HTML comes
from a Jinja2 template (``templates/report.html.j2``) with autoescaping on, so a case or file
name is always text, never markup.

``report_html`` renders a result held in memory (``vfinfer run`` writes the report with the
other files); ``write_report`` renders one again from a case directory (``vfinfer report``).
"""

import base64
import functools
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from vfinfer.pipeline.result import arm_text
from vfinfer.util.atomic import write_atomic

REPORT_NAME = "report.html"
AUDIT_NAME = "audit.jsonl"
TEMPLATE = "report.html.j2"
SHA_SHOWN = 12  # hex digits of the G-Net sha256 in the report
REQUIRED_KEYS = ("case", "chromosomes", "karyotype", "verdict", "warnings")
POLARITY_MARKS = {"q-arm down": "down", "q-arm up": "up"}
FIELD_NAMES = {"type": "type", "polarity": "polarity", "deleted": "removed",
               "joined_into": "part of #", "structural": "structural change"}


class ReportError(ValueError):
    """A case directory whose files cannot make a report (missing or unreadable
    result.json, a bad audit.jsonl line); the message names the file and the problem."""


class ReportExistsError(FileExistsError):
    """The case directory holds a report already and overwrite was not asked for."""


@functools.lru_cache(maxsize=1)
def _environment():
    """The template environment: package templates, autoescaping on, undefined names fail."""
    loader = jinja2.FileSystemLoader(Path(__file__).parent / "templates")
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def report_html(result, karyogram_png=None, overlay_png=None, audit=(), generated=None):
    """The case report of ``result`` as one self-contained HTML document (str).

    ``karyogram_png`` and ``overlay_png``: the PNG bytes shown inline (None: left out);
    ``audit``: the review trail, one dict per save (``revision``, ``time``, ``reviewer``,
    ``changes``: ``index``, ``file``, ``field``, ``from``, ``to``); ``generated``: the time
    printed as the report's date (default: now, UTC).
    """
    check_result(result)
    generated = generated or datetime.now(timezone.utc)
    kept, removed = split_removed(result["chromosomes"])
    prefix = common_prefix([c.get("file", "") for _, c in kept])
    context = {
        "case": result["case"],
        "generated": format_time(generated),
        "model": model_facts(result.get("model") or {}),
        "backend": backend_text(result.get("backend")),
        "dispatch": dispatch_text(result),
        "n_chromosomes": len(kept),
        "verdict": verdict_facts(result),
        "karyotype": result["karyotype"],
        "warnings": list(result["warnings"]),
        "numerical": (result.get("abnormality") or {}).get("explanation"),
        "structural": structural_text(result.get("structural")),
        "segmentation": segmentation_text(result.get("segmentation")),
        "review": review_facts(result.get("review"), audit),
        "karyogram": data_uri(karyogram_png),
        "overlay": data_uri(overlay_png),
        "rows": sorted_rows(kept, prefix),
        "removed": [call_row(i, c) for i, c in removed],
        "prefix": prefix,
    }
    return _environment().get_template(TEMPLATE).render(**context)


def check_result(result):
    """ReportError unless ``result`` looks like a vfinfer result."""
    if not isinstance(result, dict):
        raise ReportError("not a vfinfer result: a JSON object is expected")
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ReportError(f"not a vfinfer result: missing {', '.join(missing)}")
    if not isinstance(result["chromosomes"], list):
        raise ReportError("not a vfinfer result: 'chromosomes' is not a list")


def data_uri(png):
    """A PNG as a data: URI for an <img> (None stays None)."""
    if not png:
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def format_time(moment):
    """A datetime or an ISO string as ``2026-12-06 08:40 UTC`` (other strings as given)."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def model_facts(model):
    """The model lines: directory name, preset, short G-Net sha256, training data."""
    sha = model.get("gnet_sha256") or ""
    source = model.get("source") or {}
    return {
        "name": Path(model["dir"]).name if model.get("dir") else "unknown",
        "preset": model.get("preset") or "unknown",
        "sha": sha[:SHA_SHOWN] or "not recorded",
        "source": source_text(source),
        "training": training_text(model.get("training")),
    }


def source_text(source):
    """Where the graphs came from: the checkpoint by file name, or the source's kind."""
    if source.get("path"):
        return f"{source.get('kind', 'checkpoint')} {Path(source['path']).name}"
    return source.get("kind") or "not recorded"


def training_text(training):
    """The training data in one line, from the model summary's ``training`` key."""
    if not training:
        return "not recorded in this result"
    parts = [f"data set {training['data']}" if training.get("data") else "data set not named"]
    if training.get("train_slides") is not None:
        parts.append(f"{training['train_slides']} training and "
                     f"{training.get('val_slides', '?')} validation slides")
    if training.get("polarity"):
        parts.append(f"polarity {training['polarity']}")
    if training.get("domain_cells"):
        parts.append(f"verdict limits fitted on {training['domain_cells']} in-domain cells")
    return "; ".join(parts)


def backend_text(backend):
    """``onnxruntime-cpu, fp32`` from the result's backend record."""
    if not isinstance(backend, dict):
        return str(backend or "not recorded")
    extra = [backend[key] for key in ("precision", "provider") if backend.get(key)]
    return ", ".join([str(backend.get("name", "unknown")), *map(str, extra)])


def dispatch_text(result):
    """The dispatch mode, with why ``--dispatch auto`` chose it."""
    mode = str(result.get("dispatch") or "not recorded")
    reason = result.get("dispatch_auto_reason")
    return f"{mode} ({reason})" if reason else mode


def verdict_facts(result):
    """Karyotyped or not, the verdict's sentence, and its reasons when withheld."""
    verdict = result["verdict"] or {}
    karyotyped = bool(verdict.get("karyotyped", result["karyotype"] is not None))
    return {"karyotyped": karyotyped, "text": verdict.get("text", ""),
            "reasons": [] if karyotyped else list(verdict.get("reasons") or [])}


def structural_text(section):
    """Whether the cell was screened for structural abnormalities, in one line."""
    if not section:
        return "structural abnormalities: not recorded in this result"
    if not section.get("screened"):
        return section.get("note") or "structural abnormalities not screened"
    return (f"screened for structural abnormalities: {section.get('flagged', 0)} flagged "
            f"(structural score threshold {section.get('threshold')})")


def segmentation_text(section):
    """For a metaphase: the segmentation model and how many objects it found."""
    if not section:
        return None
    model = section.get("model") or {}
    name = Path(model["dir"]).name if model.get("dir") else model.get("kind", "classical")
    review = section.get("review") or {}
    flagged = ", ".join(f"{n} {flag}?" for flag, n in review.items() if n)
    trained = f" ({model['trained_on']})" if model.get("trained_on") else ""
    return (f"{name}{trained}: {section.get('found', '?')} objects found"
            + (f"; to review: {flagged}" if flagged else ""))


def split_removed(chromosomes):
    """(kept, removed): (index, chromosome) pairs; removed ones the reviewer deleted or
    joined into another chromosome (``vfinfer.io.review``)."""
    kept = [(i, c) for i, c in enumerate(chromosomes) if not is_removed(c)]
    removed = [(i, c) for i, c in enumerate(chromosomes) if is_removed(c)]
    return kept, removed


def is_removed(chromosome):
    return bool(chromosome.get("deleted")) or "joined_into" in chromosome


def call_flags(chromosome):
    """Short flags of one call: low confidence, dispatch's change, structural score,
    segmentation review, and the reviewer's corrections."""
    flags = []
    if chromosome.get("low_confidence"):
        flags.append("low confidence")
    before = chromosome.get("type_before_dispatch")
    if before is not None and before != chromosome.get("type"):
        flags.append(f"dispatch {before}\u2192{chromosome.get('type')}")
    structural = chromosome.get("structural") or {}
    if structural.get("flagged"):
        where = (f", {arm_text(structural['arm'], structural.get('arm_prob', 0.0))}"
                 if structural.get("arm") else "")
        flags.append(f"structural {structural.get('score', 0):.2f}{where}")
    for flag in (chromosome.get("segment") or {}).get("review") or []:
        flags.append(f"{flag}?")
    return flags


def reviewed_marks(chromosome):
    """The reviewer's corrections of one call: ``type 19\u219220``, ... (field order kept)."""
    marks = chromosome.get("reviewed") or {}
    return [f"{FIELD_NAMES.get(field, field)} {value_text(change.get('from'))}\u2192"
            f"{value_text(change.get('to'))}" if isinstance(change, dict) else str(field)
            for field, change in marks.items()]


def is_uncertain(chromosome):
    """Low confidence or flagged (dispatch, structural score, segmentation review)."""
    return bool(call_flags(chromosome))


def common_prefix(files, shortest=4):
    """The start that every file name shares (``case_`` of ``case_00.png``), cut back to
    its last separator so that each name keeps a readable tail; "" when under ``shortest``
    characters or for fewer than two files."""
    if len(files) < 2:
        return ""
    prefix = os.path.commonprefix(files)
    cut = max(prefix.rfind(sep) for sep in "_-. /")
    prefix = prefix[:cut + 1] if cut >= 0 else ""
    return prefix if len(prefix) >= shortest else ""


def sorted_rows(indexed, prefix=""):
    """Table rows, the uncertain calls first, then by confidence ascending, then by index."""
    order = sorted(indexed, key=lambda pair: (not is_uncertain(pair[1]),
                                              pair[1].get("type_prob", 0.0), pair[0]))
    return [call_row(i, c, prefix) for i, c in order]


def probability_text(prob):
    """``.57``, ``1.0``: two decimals without the leading zero, to keep the table narrow."""
    return "1.0" if prob >= 0.995 else f"{prob:.2f}".lstrip("0")


def call_row(index, chromosome, prefix=""):
    """One row of the calls table (numbers from 1, as the audit's index + 1); the file name
    without ``prefix``, the start that all files share."""
    top3 = chromosome.get("top3") or []
    file = chromosome.get("file", "")
    return {
        "number": index + 1,
        "file": file[len(prefix):] if prefix and file.startswith(prefix) else file,
        "type": chromosome.get("type", "?"),
        "polarity": POLARITY_MARKS.get(chromosome.get("polarity"), "\u2013"),
        "confidence": f"{chromosome.get('type_prob', 0.0):.2f}",
        "top3": ", ".join(f"{name}\u00a0{probability_text(prob)}" for name, prob in top3),
        "flags": call_flags(chromosome),
        "reviewed": reviewed_marks(chromosome),
        "uncertain": is_uncertain(chromosome),
    }


def value_text(value):
    """An audit value as text: lists joined, None as a dash, booleans as yes / no."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(v) for v in value)
    return str(value)


def review_facts(review, audit):
    """The "Reviewed" section: the result's review record and each save of the trail."""
    audit = list(audit or [])
    if not audit and not review:
        return None
    saves = [{"revision": save.get("revision", "?"), "time": format_time(save.get("time", "?")),
              "reviewer": save.get("reviewer") or "unnamed reviewer",
              "changes": [change_text(change) for change in save.get("changes") or []]}
             for save in audit]
    latest = dict(review or {})
    if saves and not latest:
        latest = {"revision": audit[-1].get("revision"), "reviewer": saves[-1]["reviewer"],
                  "reviewed_at": audit[-1].get("time")}
    return {"saves": saves, "reviewer": latest.get("reviewer") or "unnamed reviewer",
            "revision": latest.get("revision", "?"),
            "time": format_time(latest.get("reviewed_at") or "time not recorded")}


def change_text(change):
    """One change of a save: which chromosome, which field, from what to what."""
    index = change.get("index")
    field = change.get("field", "?")
    return {"number": index + 1 if isinstance(index, int) else "?",
            "file": change.get("file", ""), "field": FIELD_NAMES.get(field, field),
            "from": value_text(change.get("from")), "to": value_text(change.get("to"))}


def read_result(case_dir):
    """result.json of a case directory; ReportError naming the file and the problem."""
    path = Path(case_dir) / "result.json"
    if not Path(case_dir).is_dir():
        raise ReportError(f"{case_dir}: not a case directory (not found)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: not found; run 'vfinfer run' on the case first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read ({exc})") from None
    try:
        check_result(result)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None
    return result


def read_audit(path):
    """The review trail of audit.jsonl (one JSON object a line; [] when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    saves = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            save = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: line {number} is not JSON ({exc})") from None
        if not isinstance(save, dict):
            raise ReportError(f"{path}: line {number} is not a JSON object")
        saves.append(save)
    return saves


def read_png(path):
    """A picture's bytes, or None when the case has none."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read ({exc})") from None


def write_report(case_dir, overwrite=False):
    """Render ``case_dir/report.html`` again from the case's files (result.json,
    karyogram.png, overlay.png, audit.jsonl) and write it atomically; returns its path.

    Raises ReportError (a ValueError) for a missing or unreadable result.json or audit line,
    ReportExistsError when the report exists and ``overwrite`` is False.
    """
    case_dir = Path(case_dir)
    result = read_result(case_dir)
    target = case_dir / REPORT_NAME
    if target.exists() and not overwrite:
        raise ReportExistsError(f"{target}: exists; left untouched (pass --overwrite to "
                                "replace)")
    html = report_html(result, read_png(case_dir / "karyogram.png"),
                       read_png(case_dir / "overlay.png"), read_audit(case_dir / AUDIT_NAME))
    write_atomic(target, html.encode("utf-8"))
    return target
