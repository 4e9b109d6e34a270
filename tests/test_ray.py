"""``vfinfer run --ray`` on a local Ray instance (2 CPUs): the same results as ``vfinfer run``,
a bad cell fails alone, a second run skips what is done."""

import json

import pytest
from click.testing import CliRunner

from vfinfer.cli import main

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("ray.data", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    except Exception as exc:  # e.g. no shared memory or sockets for Ray's processes here
        pytest.skip(f"Ray cannot start on this machine: {' '.join(str(exc).split())[:300]}")
    yield
    ray.shutdown()


def calls(out, name):
    result = json.loads((out / name / "result.json").read_text())
    return result["karyotype"], [(c["file"], c["type"], c["polarity"], round(c["type_prob"], 4))
                                 for c in result["chromosomes"]]


@pytest.mark.slow
def test_ray_run_matches_vfinfer_run(local_ray, tmp_path, case_dirs, model_dir):
    from vfinfer.cluster.ray_run import run_on_ray

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    cells = [*case_dirs, bad]
    plain = tmp_path / "plain"
    result = CliRunner().invoke(main, ["run", *map(str, case_dirs), "--model", str(model_dir),
                                       "--out", str(plain), "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = []
    failed = run_on_ray(cells, actors=2, model_dir=model_dir, out_dir=tmp_path / "ray",
                        threads=1, echo=lines.append)
    assert failed == ["broken"]
    assert any(line.startswith("broken: failed: ") and "a.png" in line for line in lines)
    for case in case_dirs:
        assert calls(tmp_path / "ray", case.name) == calls(plain, case.name)
        assert (tmp_path / "ray" / case.name / "karyogram.png").stat().st_size > 0
        assert case.name in (tmp_path / "ray" / case.name / "report.html").read_text()
    again = []
    assert run_on_ray(case_dirs, model_dir=model_dir, out_dir=tmp_path / "ray",
                      echo=again.append) == []
    assert again[-1] == f"0 done, {len(case_dirs)} skipped, 0 failed"


def test_ray_options_on_the_command_line(tmp_path, case_dirs):
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--ray", str(case_dirs[0]), str(case_dirs[1])])
    assert result.exit_code == 2 and "put --ray after the case directories" in result.output
    result = runner.invoke(main, ["run", str(case_dirs[0]), "--ray-actors", "2"])
    assert result.exit_code == 2 and "--ray-actors needs --ray" in result.output
