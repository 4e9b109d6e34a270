"""vfinfer.tools.evaluation.simulate: abnormal cells made from normal labelled ones, and their
figures."""

import numpy as np
import pytest

from vfinfer.calls.karyotype import karyotype_summary
from vfinfer.calls.optimal import OptimalParams
from vfinfer.tools.evaluation.dispatch_figures import simulated_figures
from vfinfer.tools.evaluation.simulate import simulate_abnormal

from helpers import FEMALE, MALE

TRISOMY_21 = MALE + [20]


def confident(types, rng, p=0.97):
    """Rows with ``p`` (jittered) on the true type, so every row of a cell is distinct."""
    rows = np.full((len(types), 24), (1 - p) / 23)
    rows[np.arange(len(types)), types] = p
    rows += rng.uniform(0, 1e-4, rows.shape)
    return rows / rows.sum(1, keepdims=True)


@pytest.fixture()
def cells():
    rng = np.random.default_rng(1)
    true = {"a.1": np.array(MALE), "a.2": np.array(FEMALE), "b.1": np.array(MALE),
            "c.1": np.array(TRISOMY_21)}
    probs = {c: confident(t, rng) for c, t in true.items()}
    slides = {c: c.split(".")[0] for c in true}
    return probs, true, slides


def test_kinds_cycle_and_true_types_follow(cells):
    probs, true, slides = cells
    sim_p, sim_t, info = simulate_abnormal(probs, true, slides, per_cell=3, seed=0)
    assert len(sim_p) == 9  # 3 normal cells x 3; the trisomy is never a source
    assert {i["source"] for i in info.values()} == {"a.1", "a.2", "b.1"}
    for name, i in info.items():
        source = true[i["source"]]
        assert sim_p[name].shape == (sim_t[name].size, 24)
        assert sim_t[name].size == source.size + (1 if i["change"][0] == "+" else -1)
        assert i["karyotype"] == karyotype_summary(sim_t[name])[0] != karyotype_summary(source)[0]
    assert [info[n]["kind"] for n in sorted(info) if n.startswith("a.1")] == \
        ["gain", "loss", "sex"]


def test_donor_rows_are_real_rows_of_another_cell_of_the_same_slide(cells):
    probs, true, slides = cells
    sim_p, _, info = simulate_abnormal(probs, true, slides, per_cell=30, seed=3)
    for name, i in info.items():
        if i["change"][0] != "+":
            continue
        added = sim_p[name][-1]
        donors = [c for c in probs if c != i["source"]
                  and any(np.array_equal(added, r) for r in probs[c])]
        assert donors, name
        other = "a.2" if i["source"] == "a.1" else "a.1"
        chrom = int(np.argmax(added))
        if i["source"].startswith("a.") and (true[other] == chrom).any():
            assert donors == [other]  # slide a's other cell has that type: it is the donor


def test_seeded_and_none_when_zero(cells):
    probs, true, slides = cells
    first = simulate_abnormal(probs, true, slides, per_cell=3, seed=5)[2]
    assert first == simulate_abnormal(probs, true, slides, per_cell=3, seed=5)[2]
    assert simulate_abnormal(probs, true, slides, per_cell=0)[0] == {}
    with pytest.raises(ValueError):
        simulate_abnormal(probs, true, slides, per_cell=-1)


def test_optimal_dispatch_calls_clean_simulated_cells_exactly(cells):
    probs, true, slides = cells
    sim_p, sim_t, info = simulate_abnormal(probs, true, slides, per_cell=6, seed=2)
    figures = simulated_figures(sim_p, sim_t, info, OptimalParams())
    assert figures["n"] == len(sim_p) == 18
    assert figures["flagged"] == figures["exact"] == 18 and figures["missed"] == []
    assert set(figures["by_kind"]) == {"gain", "loss", "sex"}


def test_an_unflagged_cell_is_listed_as_missed(cells):
    probs, true, slides = cells
    sim_p, sim_t, info = simulate_abnormal(probs, true, slides, per_cell=3, seed=0)
    strict = OptimalParams(threshold=1e6)  # nothing can pass this margin
    figures = simulated_figures(sim_p, sim_t, info, strict)
    assert figures["flagged"] == 0 and len(figures["missed"]) == figures["n"]


def test_calibration_keeps_simulated_cells_apart(cells):
    from vfinfer.tools.evaluation.calibrate import calibrate

    probs, true, slides = cells
    normal = {c: probs[c] for c in ("a.1", "a.2", "b.1")}
    normal_true = {c: true[c] for c in normal}
    sim_p, sim_t, info = simulate_abnormal(probs, true, slides, per_cell=4, seed=0)
    grid = {"extra_penalty": (10.0,), "missing_penalty": (10.0,), "prior_gain": (0.03,),
            "prior_loss": (0.05,), "prior_sex": (0.02,)}
    _, report = calibrate({**normal, **sim_p}, {**normal_true, **sim_t}, grid=grid,
                          simulated=info)
    assert report["n_abnormal"] == len(sim_p) == report["n_simulated"] == 12
    assert report["n_abnormal_real"] == 0 and report["training"]["n_cells"] == 3
    assert report["simulated"]["n"] == 12 and report["threshold_calibrated"]
    assert any("no real abnormal cell" in w for w in report["warnings"])
