"""``--dispatch auto`` (vfinfer.calls.auto): the dispatch mode a model's own validation figures
found best, chosen from hand-made manifests, and on the bundled demo model end to end."""

import json
import shutil

import pytest
from click.testing import CliRunner

from vfinfer.calls.auto import choose_dispatch, resolve_dispatch
from vfinfer.cli import main
from vfinfer.model.manifest import demo_model_dir
from vfinfer.pipeline import Pipeline
from vfinfer.util.images import read_case

CALIBRATED = {"optimal": {"threshold": 0.4}, "calibration": {"threshold_calibrated": True}}


def manifest(exact=None, dispatch=None):
    """A manifest's data with the parts ``resolve_dispatch`` reads."""
    data = {"dispatch": {"algorithm": "paper", "threshold": 0.9, **(dispatch or {})}}
    if exact is not None:
        data["domain"] = {"limits": {}, "karyotype_exact": exact}
    return data


def demo_with_exact(tmp_path, exact):
    """A copy of the demo model whose domain figures hold these exact-karyotype shares."""
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir(), model)
    data = json.loads((model / "manifest.json").read_text())
    data["domain"]["karyotype_exact"] = exact
    (model / "manifest.json").write_text(json.dumps(data))
    return model


@pytest.mark.parametrize("exact, expected", [
    ({"none": 0.62, "paper": 0.80, "optimal": 0.97, "cells": 40}, "optimal"),
    ({"none": 0.05, "paper": 0.90, "optimal": 0.86, "cells": 57}, "paper"),
    ({"none": 0.70, "paper": 0.60, "optimal": 0.65, "cells": 9}, "none"),
    ({"none": 0.5, "paper": 0.8, "optimal": 0.8, "cells": 5}, "optimal"),  # tie: optimal
    ({"none": 0.8, "paper": 0.8, "optimal": 0.1, "cells": 5}, "paper"),  # tie: paper
    ({"none": None, "paper": 0.3, "optimal": None, "cells": 5}, "paper"),  # only one figure
])
def test_the_best_exact_share_wins(exact, expected):
    mode, reason = resolve_dispatch(manifest(exact))
    assert mode == expected
    assert reason.startswith("auto: ") and f"on its {exact['cells']} validation cells" in reason
    assert f"paper {exact['paper']:.2f}" in reason


def test_the_figures_outrank_the_calibration():
    exact = {"none": 0.2, "paper": 0.9, "optimal": 0.7, "cells": 20}
    assert resolve_dispatch(manifest(exact, CALIBRATED)).mode == "paper"
    mode, reason = resolve_dispatch(manifest({**exact, "optimal": 0.95}, CALIBRATED))
    assert mode == "optimal" and reason == ("auto: calibrated parameters, exact karyotypes "
                                            "none 0.20 / paper 0.90 / optimal 0.95 on its 20 "
                                            "validation cells")
    mode, reason = resolve_dispatch(manifest({**exact, "optimal": 0.95}))
    assert reason.startswith("auto: uncalibrated default parameters, exact karyotypes")


def test_without_figures_calibrated_parameters_choose_optimal():
    mode, reason = resolve_dispatch(manifest(None, CALIBRATED))
    assert mode == "optimal" and "calibrated optimal-dispatch parameters" in reason
    # a domain section without per-mode figures (vfinfer domain without --labels)
    data = manifest(None, CALIBRATED) | {"domain": {"limits": {}}}
    assert resolve_dispatch(data).mode == "optimal"


@pytest.mark.parametrize("dispatch", [
    None,
    {"optimal": {"threshold": 2.0}},  # parameters without a calibration report
    {"optimal": {"threshold": 2.0}, "calibration": {"threshold_calibrated": False}},
])
def test_without_figures_or_calibration_algorithm_1(dispatch):
    mode, reason = resolve_dispatch(manifest(None, dispatch))
    assert mode == "paper" and reason.endswith("Algorithm 1")
    assert "'vfinfer domain --labels'" in reason and "'vfinfer calibrate'" in reason
    assert resolve_dispatch({}).mode == "paper"


def test_an_explicit_mode_is_kept():
    data = manifest({"none": 0.1, "paper": 0.2, "optimal": 0.9, "cells": 3})
    assert choose_dispatch("paper", data) == ("paper", "--dispatch paper; auto would choose "
                                                        "optimal")
    assert choose_dispatch("auto", data).mode == "optimal"


def test_pipeline_reports_the_mode_used_and_why(tmp_path, case_dirs):
    model = demo_with_exact(tmp_path, {"none": 0.1, "paper": 0.9, "optimal": 0.8, "cells": 8})
    images = read_case(case_dirs[0])[0]
    with Pipeline(model) as auto, Pipeline(model, dispatch_mode="optimal") as optimal:
        assert (auto.dispatch_mode, optimal.dispatch_mode) == ("paper", "optimal")
        chosen, given = auto.run_case(images), optimal.run_case(images)
    assert chosen["dispatch"] == "paper" and "paper 0.90" in chosen["dispatch_auto_reason"]
    assert list(chosen)[3:5] == ["dispatch", "dispatch_auto_reason"]
    assert given["dispatch"] == "optimal" and "dispatch_auto_reason" not in given
    with pytest.raises(ValueError, match="unknown dispatch mode 'best'"):
        Pipeline(model, dispatch_mode="best")


def test_demo_model_calls_the_trisomy_with_auto(tmp_path):
    """The demo model's domain figures (40 synthetic validation cells) found optimal dispatch
    best, so ``vfinfer run`` uses it by default and calls 47,XY,+21 on a cell where Algorithm 1
    gets the karyotype wrong."""
    runner = CliRunner()
    made = runner.invoke(main, ["synth", "--karyotype", "47,XY,+21", "--seed", "5", "--out",
                                str(tmp_path / "X")])
    assert made.exit_code == 0, made.output
    case = next(p for p in (tmp_path / "X").iterdir() if p.is_dir())
    done = runner.invoke(main, ["run", str(case), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[1] == ("dispatch optimal (auto: uncalibrated default parameters, exact "
                        "karyotypes none 0.90 / paper 0.90 / optimal 1.00 on its 40 "
                        "validation cells)")
    assert f"{case.name}: 47 chromosomes, 47,XY,+21," in done.output
    result = json.loads((tmp_path / "out" / case.name / "result.json").read_text())
    assert result["dispatch"] == "optimal" and result["karyotype"] == "47,XY,+21"
    assert result["dispatch_auto_reason"] == lines[1][len("dispatch optimal ("):-1]
    paper = runner.invoke(main, ["run", str(case), "--out", str(tmp_path / "paper"),
                                 "--dispatch", "paper"])
    assert "dispatch paper (--dispatch paper; auto would choose optimal)" in paper.output
    assert f"{case.name}: 47 chromosomes, 47,XY," in paper.output
    assert f"{case.name}: 47 chromosomes, 47,XY,+21," not in paper.output


def test_eval_counts_the_verdict_of_the_chosen_dispatch(tmp_path, synth_root):
    from vfinfer.tools.evaluation.evaluate import evaluate
    from vfinfer.tools.evaluation.report import format_report

    model = demo_with_exact(tmp_path, {"none": 0.1, "paper": 0.2, "optimal": 0.8, "cells": 10})
    auto = evaluate(synth_root, model_dir=model, log=lambda *a: None, simulate=0)
    assert auto["dispatch"]["mode"] == "optimal" and auto["verdict"]["dispatch"] == "optimal"
    assert auto["verdict"]["not_karyotyped"] == 0
    assert "dispatch  optimal (auto: uncalibrated default parameters" in format_report(auto)
    paper = evaluate(synth_root, model_dir=model, log=lambda *a: None, simulate=0,
                     dispatch_mode="paper")
    assert paper["dispatch"] == {"mode": "paper",
                                 "reason": "--dispatch paper; auto would choose optimal"}
    assert paper["verdict"]["not_karyotyped"] == 2 and paper["verdict"]["reasons"] == {"model": 2}
