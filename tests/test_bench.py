"""``vfinfer bench``: the report's structure and arithmetic (never its speed)."""

import importlib.util
import json

import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.tools.benchmarking.bench import (
    cpu_facts,
    eager_report,
    format_report,
    interleave,
    run_bench,
)


@pytest.mark.slow
def test_report_structure(model_dir):
    from vfinfer.cli.tools import _eager_reference

    reference, why_not = _eager_reference()
    report = run_bench(model_dir, backend="ort", n_cases=2, n_chromosomes=5, warmup_s=0,
                       reference=reference, no_reference=why_not)
    stages = report["stages_ms_per_case"]
    assert set(stages) == {"read", "preprocess", "gnet", "crop", "lnet", "heads", "dispatch",
                           "write"}
    e2e = report["end_to_end_ms_per_case"]
    assert e2e["n"] == 2 and e2e["median"] <= e2e["p90"] <= e2e["p99"]
    assert abs(report["ms_per_image"] * 5 - e2e["median"]) < 1e-6
    assert report["settings"]["chromosomes"] == 5
    batch = report["batch_run_ms_per_case"]
    assert batch["n"] == 3 and batch["median"] > 0
    assert abs(report["batch_run_ms_per_image"] * 5 - batch["median"]) < 1e-6
    network = report["network_ms_per_case"]["median"]
    assert abs(report["batch_run_outside_networks_fraction"] - (1 - network / batch["median"])) \
        < 1e-9
    assert 0.1 < report["gmac_per_chromosome"] < 0.2
    eager = report["pytorch_eager"]
    if importlib.util.find_spec("torch") is None:  # said, not silently missing
        assert eager == {"skipped": "torch side not installed (torch)"}
        return
    assert eager["weights"].startswith("same architecture")
    assert report["speedup_vs_pytorch"] > 0
    assert [p["first"] for p in eager["pairs"]] == ["ours", "eager"]
    assert report["speedup_vs_pytorch"] == eager["ratio_median"]


def test_cpu_facts_state_their_rule():
    facts = cpu_facts()
    assert facts["cores"] >= 1 and "cores x GHz" in facts["peak_rule"]


def test_the_fp32_peak_is_compared_with_fp32_graphs_only():
    from vfinfer.tools.benchmarking.bench import _peak_text

    cpu = {"fp32_peak_gmacs": 80.0, "peak_rule": "cores x GHz x 16"}
    assert _peak_text(1.1, cpu, "fp32") == " = 110% of FP32 peak 80 GMAC/s (cores x GHz x 16)"
    assert _peak_text(None, cpu, "int8") == " (INT8 graphs: the FP32 peak does not bound them)"
    assert _peak_text(None, {"fp32_peak_gmacs": None}, "fp32") == ""


@pytest.mark.slow
def test_cli_writes_json(model_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--model", str(model_dir), "--cases", "1",
                                       "--chromosomes", "3", "--warmup", "0", "--no-reference",
                                       "--no-karyogram", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "end to end" in result.output
    saved = json.loads(out.read_text())
    assert saved["pytorch_eager"] == {"skipped": "not requested"}
    assert saved["settings"]["karyogram"] is False


# ------------------------------------------------------------ ours and eager, case by case
def test_interleave_pairs_each_case_in_order_alternating_who_goes_first():
    calls = []

    def ours(i):
        calls.append(("ours", i))
        return 10.0 + i

    def eager(i):
        calls.append(("eager", i))
        return 20.0 + 2 * i

    pairs = interleave(4, ours, eager)
    assert calls == [("ours", 0), ("eager", 0), ("eager", 1), ("ours", 1),
                     ("ours", 2), ("eager", 2), ("eager", 3), ("ours", 3)]
    assert [p["case"] for p in pairs] == [0, 1, 2, 3]
    assert [p["first"] for p in pairs] == ["ours", "eager", "ours", "eager"]
    assert [(p["ours_ms"], p["eager_ms"]) for p in pairs] == [(10, 20), (11, 22), (12, 24),
                                                                (13, 26)]
    assert [p["ratio"] for p in pairs] == [2.0, 2.0, 2.0, 2.0]
    assert interleave(0, ours, eager) == []


class _FakeTimer:
    """An eager timer whose cases take 30, 10, 20 ms, in turn."""

    def __init__(self, log, times=(30.0, 10.0, 20.0)):
        self.log, self.times, self.calls = log, list(times), 0

    def warm_up(self, images, seconds):
        self.log.append("eager warm-up")

    def __call__(self, images):
        self.log.append(f"eager {len(images)}")
        ms = self.times[self.calls % len(self.times)]
        self.calls += 1
        return ms

    def describe(self):
        return {"torch": "fake", "threads": 1, "weights": "none"}


def test_eager_report_keeps_the_pairs_and_the_median_ratio():
    pairs = interleave(3, lambda i: 10.0, lambda i: [30.0, 10.0, 20.0][i])
    report = eager_report(_FakeTimer([]), pairs)
    assert report["pairs"] == pairs and report["torch"] == "fake"
    assert report["ratio_median"] == 2.0  # ratios 3, 1, 2
    assert report["inference_ms_per_case"]["median"] == 20.0
    assert report["inference_ms_per_case"]["n"] == 3


@pytest.mark.slow
def test_run_bench_times_ours_and_eager_case_by_case(model_dir, monkeypatch):
    from vfinfer.tools.benchmarking import bench

    log, real_time_case = [], bench.time_case

    def logged_time_case(pipe, case_dir, out_dir, karyogram=True):
        log.append(f"ours {case_dir.name}")
        return real_time_case(pipe, case_dir, out_dir, karyogram)

    monkeypatch.setattr(bench, "time_case", logged_time_case)
    made = []

    def factory(manifest, threads, batch_size):
        made.append((threads, batch_size))
        return _FakeTimer(log)

    report = run_bench(model_dir, backend="ort", n_cases=3, n_chromosomes=4, warmup_s=0,
                       threads=1, reference=factory)
    names = [p["case"] for p in report["pytorch_eager"]["pairs"]]
    assert len(names) == 3 and made == [(1, report["settings"]["batch"])]
    timed = log[log.index("eager warm-up") + 1:]
    assert timed == [f"ours {names[0]}", "eager 4", "eager 4", f"ours {names[1]}",
                     f"ours {names[2]}", "eager 4"]
    pairs = report["pytorch_eager"]["pairs"]
    assert [p["eager_ms"] for p in pairs] == [30.0, 10.0, 20.0]
    assert all(p["ours_ms"] > 0 and p["ratio"] == p["eager_ms"] / p["ours_ms"] for p in pairs)
    assert report["speedup_vs_pytorch"] == report["pytorch_eager"]["ratio_median"]
    assert report["pytorch_eager"]["ratio_median"] == sorted(p["ratio"] for p in pairs)[1]
    assert report["end_to_end_ms_per_case"]["n"] == 3
    assert "median of the 3 pairs' ratios" in format_report(report)


def test_structural_cost_is_what_the_score_adds_to_a_case():
    from vfinfer.tools.benchmarking.bench import structural_cost

    cost = structural_cost([10.0, 20.0, 5.0], [110.0, 120.0, 105.0])
    assert cost["structural_added_fraction"] == pytest.approx(0.1)
    assert cost["structural_ms_per_case"]["median"] == pytest.approx(10.0)


def test_given_cases_are_the_first_case_folders(tmp_path):
    from vfinfer.tools.benchmarking.bench import given_cases

    for name in ("c", "a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    assert [p.name for p in given_cases(tmp_path, 2)] == ["a", "b"]
    assert given_cases(tmp_path / "a", 5) == [tmp_path / "a"]  # one case folder itself
    with pytest.raises(ValueError, match="not a folder of cells"):
        given_cases(tmp_path / "missing", 2)


@pytest.mark.slow
def test_cli_times_the_users_own_cells(model_dir, tmp_path):
    from vfinfer.tools.synthesis.cells import write_cases

    write_cases("47,XY,+21", tmp_path / "cells", 4, cases=2)
    out = tmp_path / "bench.json"
    done = CliRunner().invoke(main, ["bench", "--model", str(model_dir), "--backend", "ort",
                                     "--cells", str(tmp_path / "cells"), "--cases", "5",
                                     "--warmup", "0", "--no-reference", "--json", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    assert report["settings"]["cases"] == 2 and report["settings"]["chromosomes"] == 47
    assert report["settings"]["cells"] == str(tmp_path / "cells")
    assert report["end_to_end_ms_per_case"]["n"] == 2
    assert "47 chromosomes per case, 2 cases" in done.output
    missing = CliRunner().invoke(main, ["bench", "--cells", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "not a folder of cells" in missing.output
