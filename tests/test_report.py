"""The case report (``vfinfer.io.report``, ``OUT/<case>/report.html``): what it holds, that it
is self-contained and escaped, the review trail, ``vfinfer report`` and ``vfinfer run``'s
``--report/--no-report``."""

import base64
import copy
import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from markupsafe import escape

from vfinfer.cli import main
from vfinfer.io.report import (
    ReportError,
    ReportExistsError,
    is_uncertain,
    report_html,
    write_report,
)
from vfinfer.model.manifest import demo_model_dir, load_manifest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "syn9002-47XY+21-0"
NAME = EXAMPLE.name


class CallsTable(HTMLParser):
    """The rows of the calls table (inside ``div.calls``): [class, [cell texts]] each."""

    def __init__(self):
        super().__init__()
        self.rows, self.depth, self.row, self.cell = [], 0, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "calls" in (attrs.get("class") or "").split():
            self.depth = 1
        elif tag == "div" and self.depth:
            self.depth += 1
        elif self.depth and tag == "tr":
            self.row = [attrs.get("class") or "", []]
        elif self.row is not None and tag == "td":
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "div" and self.depth:
            self.depth -= 1
        elif tag == "td" and self.cell is not None:
            self.row[1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            if self.row[1]:  # the header row has th cells only
                self.rows.append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def calls_rows(page):
    parser = CallsTable()
    parser.feed(page)
    return parser.rows


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """``vfinfer run`` of the trisomy 21 example cell with the demo model: OUT/<case>/."""
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(main, ["run", str(EXAMPLE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out / NAME


@pytest.fixture()
def case_copy(example_run, tmp_path):
    """A copy of the example's output directory that a test may change."""
    return Path(shutil.copytree(example_run, tmp_path / NAME))


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def test_run_writes_a_report_with_karyotype_verdict_and_every_warning(example_run):
    result = read_json(example_run / "result.json")
    page = (example_run / "report.html").read_text(encoding="utf-8")
    assert result["karyotype"] == "47,XY,+21"
    assert f'<div class="karyotype">{escape(result["karyotype"])}</div>' in page
    assert escape(result["verdict"]["text"]) in page
    assert result["warnings"]  # the trisomy's warning
    for warning in result["warnings"]:
        assert f"<li>{escape(warning)}</li>" in page
    assert escape(result["structural"]["note"]) in page
    assert "not a diagnosis" in page and "review by a cytogeneticist" in page
    model = result["model"]
    assert model["gnet_sha256"][:12] in page and model["preset"] in page
    assert "demo_model" in page and "training and" in page  # the training data line


def test_the_calls_table_has_one_row_per_chromosome_uncertain_first(example_run):
    result = read_json(example_run / "result.json")
    rows = calls_rows((example_run / "report.html").read_text(encoding="utf-8"))
    chromosomes = result["chromosomes"]
    assert sorted(int(cells[0]) for _, cells in rows) == list(range(1, len(chromosomes) + 1))
    uncertain = [i + 1 for i, c in enumerate(chromosomes)
                 if c["low_confidence"] or c["type"] != c["type_before_dispatch"]]
    assert uncertain, "the example cell has low-confidence calls"
    shown = [int(cells[0]) for _, cells in rows]
    assert sorted(shown[:len(uncertain)]) == sorted(uncertain)
    assert all(kind == "uncertain" for kind, _ in rows[:len(uncertain)])
    assert not any(kind for kind, _ in rows[len(uncertain):])
    for part in (rows[:len(uncertain)], rows[len(uncertain):]):
        confidences = [float(cells[4]) for _, cells in part]
        assert confidences == sorted(confidences)
    moved = [c for c in chromosomes if c["type"] != c["type_before_dispatch"]]
    for c in moved:
        [cells] = [cells for _, cells in rows
                   if int(cells[0]) == chromosomes.index(c) + 1]
        assert f"dispatch {c['type_before_dispatch']}\u2192{c['type']}" in cells[6]


def test_the_report_is_self_contained(example_run):
    page = (example_run / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 1  # the karyogram; a case directory has no overlay
    prefix = "data:image/png;base64,"
    assert sources[0].startswith(prefix)
    assert base64.b64decode(sources[0][len(prefix):]) == \
        (example_run / "karyogram.png").read_bytes()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//[a-z]|<(script|link|iframe)\b|@import|url\(", text, re.I)


def small_result():
    """A result with three calls: a sure one, a low-confidence one, one moved by dispatch."""
    def call(file, type_, prob, before=None, low=False):
        return {"file": file, "type": type_, "type_prob": prob, "top3": [[type_, prob]],
                "polarity": "q-arm down", "polarity_prob": 0.99, "box": [0, 0, 1, 1],
                "type_before_dispatch": before or type_, "low_confidence": low}

    return {"case": "cell", "model": {"dir": "/m/model", "preset": "compact",
                                      "gnet_sha256": "ab" * 32},
            "backend": {"name": "onnxruntime-cpu"}, "dispatch": "optimal",
            "n_chromosomes": 3, "karyotype": "46,XX",
            "verdict": {"karyotyped": True, "text": "karyotyped: fine", "reasons": []},
            "warnings": ["one warning"],
            "chromosomes": [call("a.png", "1", 0.99), call("b.png", "2", 0.5, low=True),
                            call("c.png", "3", 0.95, before="4")]}


def test_names_are_escaped_never_markup():
    result = small_result()
    result["case"] = "<script>alert(1)</script>"
    result["chromosomes"][0]["file"] = "<img src=x onerror=alert(2)>.png"
    result["warnings"] = ["<b>bold</b> & co"]
    page = report_html(result)
    assert "<script>" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;.png" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page


def test_withheld_karyotype_shows_not_karyotyped_with_its_reasons():
    result = small_result()
    reason = "images unlike the model's training data (dark background)"
    result.update(karyotype=None, warnings=[f"not karyotyped: {reason}"],
                  verdict={"karyotyped": False, "text": f"not karyotyped: {reason}",
                           "reasons": [reason], "withheld_karyotype": "47,XX,+5"})
    page = report_html(result)
    assert '<div class="karyotype">not karyotyped</div>' in page
    assert f"<li>{escape(reason)}</li>" in page
    assert "47,XX,+5" not in page  # a withheld karyotype is not reported


def test_uncertain_calls_come_first_then_by_confidence():
    rows = calls_rows(report_html(small_result()))
    assert [cells[1] for _, cells in rows] == ["b.png", "c.png", "a.png"]
    assert [kind for kind, _ in rows] == ["uncertain", "uncertain", ""]
    assert is_uncertain({"type": "5", "type_before_dispatch": "5",
                         "segment": {"review": ["split"]}})
    assert not is_uncertain({"type": "5", "type_before_dispatch": "5"})


AUDIT = [
    {"revision": 1, "time": "2026-12-01T09:15:00+00:00", "reviewer": "Dr. <Ada>",
     "token": "t1", "changes": [
         {"index": 1, "file": "b.png", "field": "type", "from": "2", "to": "3"},
         {"index": 0, "file": "a.png", "field": "deleted", "from": False, "to": True}]},
    {"revision": 2, "time": "2026-12-01T10:30:00+00:00", "reviewer": "Dr. Bo",
     "token": None, "changes": [
         {"index": 2, "file": "c.png", "field": "polarity", "from": "q-arm down",
          "to": "q-arm up"}]},
]


def reviewed_result():
    result = small_result()
    result["chromosomes"][0]["deleted"] = True
    result["chromosomes"][1].update(type="3", reviewed={"type": {"from": "2", "to": "3"}})
    result["review"] = {"revision": 2, "reviewed_at": "2026-12-01T10:30:00+00:00",
                        "reviewer": "Dr. Bo"}
    return result


def test_the_review_trail_is_rendered():
    page = report_html(reviewed_result(), audit=AUDIT,
                       generated=datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc))
    assert "<h2>Reviewed</h2>" in page and "The calls below are the corrected ones." in page
    assert "Dr. &lt;Ada&gt;" in page and "Dr. Bo" in page
    assert "2026-12-01 09:15 UTC" in page and "2026-12-02 08:00 UTC" in page
    assert "#2 b.png: type 2 &rarr; 3" in page
    assert "#1 a.png: removed no &rarr; yes" in page
    assert "#3 c.png: polarity q-arm down &rarr; q-arm up" in page
    assert "t1" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    rows = calls_rows(page)
    assert [cells[1] for _, cells in rows] == ["b.png", "c.png"]  # a.png removed
    assert "reviewed: type 2\u21923" in rows[0][1][6]
    assert "<s>#1 a.png: type 1, confidence 0.99</s>" in page
    assert re.search(r"<th>Chromosomes</th><td>2 \(1 removed by the reviewer", page)


def test_no_review_section_without_a_review():
    page = report_html(small_result())
    assert "<h2>Reviewed</h2>" not in page and "corrected" not in page


def test_the_model_summary_names_the_training_data():
    manifest = load_manifest(demo_model_dir())
    training = manifest.summary()["training"]
    assert training["data"] == Path(manifest.data["training"]["data_dir"]).name
    assert training["train_slides"] == manifest.data["training"]["train_slides"]
    assert training["domain_cells"] == manifest.data["domain"]["fitted_on"]["cells"]
    assert "/" not in training["data"]  # no server path in a result


def test_write_report_reads_the_case_files_and_the_audit(case_copy):
    (case_copy / "report.html").unlink()
    (case_copy / "audit.jsonl").write_text("\n".join(json.dumps(s) for s in AUDIT) + "\n")
    target = write_report(case_copy)
    page = target.read_text(encoding="utf-8")
    assert target == case_copy / "report.html" and "Dr. Bo" in page
    assert not list(case_copy.glob(".report.html.*"))  # no temporary file left
    with pytest.raises(ReportExistsError):
        write_report(case_copy)
    (case_copy / "audit.jsonl").write_text('{"revision": 1}\nnot json\n')
    with pytest.raises(ReportError, match=r"audit.jsonl: line 2 is not JSON"):
        write_report(case_copy, overwrite=True)
    assert target.read_text(encoding="utf-8") == page  # the old report kept


@pytest.mark.parametrize("content, problem", [
    (None, "result.json: not found"),
    ("{not json", "result.json: cannot be read"),
    ('{"case": "x"}', "result.json: not a vfinfer result: missing chromosomes"),
])
def test_write_report_names_a_bad_result(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "result.json").write_text(content)
    with pytest.raises(ReportError, match=re.escape(problem)) as caught:
        write_report(tmp_path)
    assert isinstance(caught.value, ValueError) and str(tmp_path) in str(caught.value)


def test_vfinfer_report_writes_skips_and_fails_one_line_each(case_copy, tmp_path):
    (case_copy / "report.html").unlink()
    missing = tmp_path / "no-such-case"
    result = CliRunner().invoke(main, ["report", str(missing), str(case_copy)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{missing}: failed: {missing}: not a case directory (not found)"
    assert lines[1] == f"{case_copy}: report -> {case_copy / 'report.html'}"
    assert lines[2] == "1 written, 0 skipped, 1 failed"
    assert NAME in (case_copy / "report.html").read_text(encoding="utf-8")


def test_vfinfer_report_overwrites_only_when_asked(case_copy):
    (case_copy / "report.html").write_text("old")
    again = CliRunner().invoke(main, ["report", str(case_copy)])
    assert again.exit_code == 0 and "skipped" in again.output and "--overwrite" in again.output
    assert (case_copy / "report.html").read_text() == "old"
    forced = CliRunner().invoke(main, ["report", str(case_copy), "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert (case_copy / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_run_no_report_writes_none_and_drops_a_stale_one(example_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(example_run, out / NAME)
    args = ["run", str(EXAMPLE), "--out", str(out), "--no-report"]
    refused = CliRunner().invoke(main, args)
    assert "already holds results" in refused.output
    result = CliRunner().invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / NAME / "result.json").exists()
    assert not (out / NAME / "report.html").exists()  # it would describe the old result


def test_an_existing_report_alone_keeps_a_case_from_being_rerun(tmp_path):
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "report.html").write_text("signed")
    result = CliRunner().invoke(main, ["run", str(EXAMPLE), "--out", str(tmp_path)])
    assert result.exit_code == 0 and "skipped" in result.output
    assert (tmp_path / NAME / "report.html").read_text() == "signed"


def pdf_pages(chromium, report, pdf):
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--no-pdf-header-footer", f"--print-to-pdf={pdf}", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))


@pytest.mark.slow
def test_a_cell_prints_on_two_a4_pages_at_most(example_run, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed")
    reviewed = copy.deepcopy(read_json(example_run / "result.json"))
    pages = pdf_pages(chromium, example_run / "report.html", tmp_path / "x.pdf")
    assert 1 <= pages <= 2
    case = tmp_path / "reviewed"
    shutil.copytree(example_run, case)
    reviewed["review"] = {"revision": 1, "reviewed_at": "2026-12-01T10:00:00+00:00",
                          "reviewer": "Dr. Bo"}
    (case / "result.json").write_text(json.dumps(reviewed))
    (case / "audit.jsonl").write_text(json.dumps(AUDIT[0]) + "\n")
    write_report(case, overwrite=True)
    assert 1 <= pdf_pages(chromium, case / "report.html", tmp_path / "y.pdf") <= 2
