"""``vfinfer bench``: the report's structure and arithmetic (never its speed)."""

import importlib.util
import json

import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.tools.benchmarking.bench import cpu_facts, run_bench


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


def test_cpu_facts_state_their_rule():
    facts = cpu_facts()
    assert facts["cores"] >= 1 and "cores x GHz" in facts["peak_rule"]


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
