"""Tests for vfinfer.calls.optimal: optimal dispatch on hand-built probability matrices.

Type indices are 0-based: index 0 is chromosome 1, 3 is chromosome 4, 20 is chromosome 21,
22 = X, 23 = Y.
"""

import json

import numpy as np
import pytest

from vfinfer.calls.dispatch import dispatch, dispatch_counts
from vfinfer.calls.karyotype import karyotype_summary, parse_karyotype
from vfinfer.calls.optimal import (
    HYPOTHESES,
    OptimalDispatch,
    OptimalParams,
    hypothesis_costs,
    log_priors,
    neg_log_probs,
    optimal_dispatch,
)

from helpers import FEMALE, MALE, X, cell, row

P = 0.98  # the top probability of a clean row in these tests


# --------------------------------------------------------------------------- hypotheses


def test_hypothesis_set():
    names = [h.name for h in HYPOTHESES]
    assert len(names) == 94 == len(set(names))
    for name in ("46,XX", "46,XY", "47,XY,+21", "47,XX,+1", "45,XX,-22", "45,XY,-7", "45,X",
                 "47,XXX", "47,XXY", "47,XYY"):
        assert name in names
    kinds = [h.kind for h in HYPOTHESES]
    assert kinds.count("normal") == 2 and kinds.count("sex") == 4
    assert kinds.count("gain") == 44 and kinds.count("loss") == 44
    for h in HYPOTHESES:
        assert np.array_equal(h.counts, parse_karyotype(h.name))
        assert karyotype_summary(np.repeat(np.arange(24), h.counts))[0] == h.name


def test_priors_split_class_mass_evenly():
    params = OptimalParams(prior_normal=0.9, prior_gain=0.044, prior_loss=0.088, prior_sex=0.02)
    lp = dict(zip([h.name for h in HYPOTHESES], log_priors(params)))
    assert lp["46,XY"] == pytest.approx(np.log(0.45))
    assert lp["47,XY,+21"] == pytest.approx(np.log(0.001))
    assert lp["45,XX,-7"] == pytest.approx(np.log(0.002))
    assert lp["45,X"] == pytest.approx(np.log(0.005))


# --------------------------------------------------------------------------- the cases


def test_clean_46_xy_is_normal_without_warning():
    result = optimal_dispatch(cell(MALE, P))
    assert result["karyotype"] == result["most_likely"] == result["best_normal"] == "46,XY"
    assert result["abnormal"] is False
    assert result["call"] == "normal"
    assert result["warnings"] == [] and result["notes"] == []
    assert result["types"] == MALE
    assert result["margin"] < -OptimalParams().threshold
    assert result["confidence"] == "clearly normal"
    assert result["missing"] == [] and result["extra"] == []
    assert result["hypotheses"][0]["karyotype"] == "46,XY"
    assert result["hypotheses"][0]["llr_vs_normal"] == 0
    json.dumps(result)  # JSON-ready


def test_clean_46_xx_is_normal():
    result = optimal_dispatch(cell(FEMALE, P))
    assert result["karyotype"] == "46,XX" and not result["abnormal"]
    assert result["types"] == FEMALE


def test_trisomy_21_is_found():
    probs = np.vstack([cell(MALE, P), row(20, 0.97)])  # a third chromosome 21 at the end
    probs[40] = row(20, 0.95)
    result = optimal_dispatch(probs)
    assert result["karyotype"] == result["most_likely"] == "47,XY,+21"
    assert result["abnormal"] is True
    assert result["call"] == "trisomy 21"
    assert result["best_normal"] == "46,XY"
    assert result["margin"] >= OptimalParams().threshold
    assert result["types"] == MALE + [20]
    assert result["confidence"] in ("moderate", "strong")
    (warning,) = result["warnings"]
    assert warning.startswith("possible trisomy 21, 47,XY,+21 (log-likelihood ratio ")
    assert f"{result['margin']:.1f} over 46,XY, threshold 2.0)" in warning
    assert "cytogeneticist" in warning


def test_trisomy_21_margin_follows_the_extra_penalty_and_priors():
    # under 46,XY the third 21 is an extra object (cost extra_penalty); under 47,XY,+21 it
    # fits a slot, so the margin is extra_penalty + log prior(+21) - log prior(46,XY)
    probs = np.vstack([cell(MALE, P), row(20, P)])
    params = OptimalParams()
    result = optimal_dispatch(probs, params)
    lp = dict(zip([h.name for h in HYPOTHESES], log_priors(params)))
    expected = params.extra_penalty + lp["47,XY,+21"] - lp["46,XY"]
    assert result["margin"] == pytest.approx(expected, abs=1e-9)


def test_confident_misclassification_is_a_false_warning_for_algorithm_1_only():
    # row 6 is a chromosome 4 that looks like a 5: P(5) = 0.60, P(4) = 0.35. The second real
    # 5 (row 9) is unsure: P(5) = 0.58, P(6) = 0.40. Algorithm 1 keeps the two most probable
    # 5s (rows 8 and 6) and moves row 9 to 6: counts 4: 1, 6: 3 and two false warnings.
    probs = cell(MALE, P)
    probs[6] = row(4, 0.60, second=3, q=0.35)
    probs[9] = row(4, 0.58, second=5, q=0.40)
    paper_types, paper_warnings = dispatch(probs, 0.9)
    assert paper_types[6] == 4 and paper_types[9] == 5
    assert len(paper_warnings) == 2
    result = optimal_dispatch(probs)
    assert result["karyotype"] == "46,XY" and not result["abnormal"]
    assert result["warnings"] == []
    assert result["types"] == MALE  # both fixed by the global assignment
    assert result["confidence"] == "clearly normal"


def test_misclassification_into_a_type_that_is_not_over_full():
    # a 7 that looks like an X in a male cell: X is not over-full (S = 2), so Algorithm 1
    # leaves it and warns twice; the 46,XY assignment puts it back to 7.
    probs = cell(MALE, P)
    probs[12] = row(X, 0.60, second=6, q=0.35)
    _, paper_warnings = dispatch(probs, 0.9)
    assert len(paper_warnings) == 2
    result = optimal_dispatch(probs)
    assert result["karyotype"] == "46,XY" and result["warnings"] == []
    assert result["types"] == MALE


def test_45_x():
    probs = cell(FEMALE[:-1], P)
    result = optimal_dispatch(probs)
    assert result["karyotype"] == "45,X" and result["abnormal"]
    assert result["call"] == "monosomy X"
    assert result["types"] == FEMALE[:-1]
    assert "possible monosomy X, 45,X" in result["warnings"][0]


@pytest.mark.parametrize("name", ["47,XXY", "47,XXX", "47,XYY", "45,XX,-7", "47,XX,+13"])
def test_other_abnormal_karyotypes_are_found(name):
    types = np.repeat(np.arange(24), parse_karyotype(name)).tolist()
    result = optimal_dispatch(cell(types, P))
    assert result["karyotype"] == name and result["abnormal"]
    assert result["types"] == types


def test_lost_chromosome_below_threshold_is_normal_with_a_missing_slot():
    # 45 chromosomes: one 7 lost in preparation. 45,XY,-7 is the most likely karyotype, but
    # with a threshold above its margin the cell is called 46,XY with an empty 7 slot.
    probs = np.delete(cell(MALE, P), 13, axis=0)
    default = optimal_dispatch(probs)
    assert default["most_likely"] == "45,XY,-7"
    margin = default["margin"]
    assert margin > 0
    params = OptimalParams(threshold=margin + 1.0)
    result = optimal_dispatch(probs, params)
    assert result["karyotype"] == "46,XY" and result["abnormal"] is False
    assert result["most_likely"] == "45,XY,-7"
    assert result["call"] == "normal"
    assert result["missing"] == ["7"]
    assert result["warnings"] == []
    assert result["confidence"] == "borderline"
    assert any("no chromosome found for 1 expected slot(s) of type 7" in n
               for n in result["notes"])
    assert result["types"] == MALE[:13] + MALE[14:]
    assert result["counts_karyotype"] == "45,XY,-7"


def test_lost_chromosome_above_threshold_is_a_loss():
    probs = np.delete(cell(MALE, P), 13, axis=0)
    result = optimal_dispatch(probs)  # default threshold 2 < margin of a clean loss
    assert result["karyotype"] == "45,XY,-7" and result["abnormal"]
    assert result["call"] == "loss of 7"
    assert result["missing"] == []


def test_extra_object_below_threshold_is_counted_as_extra():
    # 47 objects, the last a piece of debris that looks a little like a 21
    probs = np.vstack([cell(MALE, P), row(20, 0.3)])
    params = OptimalParams(threshold=50.0)
    result = optimal_dispatch(probs, params)
    assert result["karyotype"] == "46,XY" and not result["abnormal"]
    assert result["most_likely"] == "47,XY,+21"
    assert result["extra"] == [46]  # the least probable 21 is named as the extra object
    assert result["warnings"] == []
    assert any("counted as extra" in n for n in result["notes"])


def test_cost_matches_slots_and_penalties():
    # the constant trick: cost = sum -log P of every chromosome's slot type + extra_penalty per
    # extra object + missing_penalty per empty slot
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(24, 0.3), size=44)
    extra_p, missing_p = 7.0, 5.0
    costs, types = hypothesis_costs(probs, extra_p, missing_p)
    nlp = neg_log_probs(probs)
    for h, hyp in enumerate(HYPOTHESES):
        counts = dispatch_counts(types[h])
        extra = np.maximum(counts - hyp.counts, 0).sum()
        missing = np.maximum(hyp.counts - counts, 0).sum()
        expected = nlp[np.arange(44), types[h]].sum() + extra_p * extra + missing_p * missing
        assert costs[h] == pytest.approx(expected, abs=1e-9)


def test_assignment_is_optimal_against_swaps():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(24, 0.5), size=46)
    costs, types = hypothesis_costs(probs)
    nlp = neg_log_probs(probs)
    h = 1  # 46,XY: every chromosome in a slot, swapping two slots must not help
    t = types[h]
    base = nlp[np.arange(46), t].sum()
    for i in range(46):
        for j in range(i + 1, 46):
            swapped = base - nlp[i, t[i]] - nlp[j, t[j]] + nlp[i, t[j]] + nlp[j, t[i]]
            assert swapped >= base - 1e-9


def test_many_objects_still_have_slots():
    probs = cell(MALE + MALE, P)  # 92 objects (a tetraploid cell): more than 46 + 24 slots
    result = optimal_dispatch(probs)
    assert len(result["types"]) == 92
    assert sorted(result["types"]) == sorted(MALE + MALE)


def test_probabilities_are_clipped_and_checked():
    probs = cell(MALE, P)
    probs[0] = 0.0
    probs[0, 0] = 1.0  # exact zeros elsewhere: the floor keeps the log finite
    result = optimal_dispatch(probs)
    assert np.isfinite(result["margin"])
    with pytest.raises(ValueError, match="N x 24"):
        optimal_dispatch(np.ones((3, 23)))
    with pytest.raises(ValueError, match="finite"):
        optimal_dispatch(np.full((2, 24), np.nan))


def test_no_chromosomes():
    result = optimal_dispatch(np.empty((0, 24)))
    assert result["types"] == [] and "no chromosomes" in result["warnings"]
    assert not result["abnormal"]


# --------------------------------------------------------------------------- params


def test_params_round_trip_through_json():
    params = OptimalParams(prior_gain=0.1, extra_penalty=7.5, threshold=3.25)
    data = json.loads(json.dumps(params.to_dict()))
    assert OptimalParams.from_dict(data) == params
    assert OptimalParams.from_dict({}) == OptimalParams()


@pytest.mark.parametrize("bad", [{"prior_gain": 0.0}, {"prior_loss": -1.0},
                                 {"extra_penalty": -1.0}, {"threshold": float("nan")},
                                 {"prob_floor": 0.0}, {"extra_slots": 0},
                                 {"threshold": -0.5}, {"prior_sex": "x"}])
def test_bad_params_are_rejected(bad):
    with pytest.raises(ValueError):
        OptimalParams(**bad)


def test_unknown_param_is_rejected():
    with pytest.raises(ValueError, match="unknown optimal dispatch parameter"):
        OptimalParams.from_dict({"treshold": 2.0})


def test_object_api_and_top():
    engine = OptimalDispatch(OptimalParams())
    result = engine(cell(MALE, P), top=5)
    assert len(result["hypotheses"]) == 5
    scores = [h["log_likelihood"] for h in result["hypotheses"]]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(TypeError):
        OptimalDispatch({"threshold": 1})

