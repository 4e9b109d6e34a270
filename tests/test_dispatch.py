"""Tests for vfinfer.calls.dispatch: one test per branch of Algorithm 1 (Qin et al. 2019).

Type indices are 0-based: index 0 is chromosome 1, 20 is chromosome 21, 22 = X, 23 = Y.
"""

import numpy as np
import pytest

from vfinfer.calls.dispatch import argmax_types, dispatch, dispatch_counts

from helpers import MALE, X, Y, cell, row


def test_clean_46_xy_gives_no_warnings():
    # every row has 0.99 on its true type: argmax is right, no type is over-full
    probs = cell(MALE)
    types, warnings = dispatch(probs)
    assert types.tolist() == MALE
    assert warnings == []
    assert types.dtype == np.int64


def test_over_full_type_sends_least_probable_to_second_choice():
    # 46,XY in the order [2, 1, 1, 2, 3, 3, ...] (chromosome numbers); row 0 is a chromosome 2
    # that looks like a chromosome 1: P[0] = 0.60, P[1] = 0.35.
    # First pass: T_0 = {0, 1, 2} (rows 1, 2 have P[0] = 0.99, 0.95).
    # |T_0| = 3 > S = 2; sorted by P[:, 0]: rows 1 (0.99), 2 (0.95), 0 (0.60).
    # 0.60 is not > 0.9, so Q_0 = {1, 2}; row 0 goes to its second choice, index 1.
    probs = cell([1, 0, 0, 1] + MALE[4:])
    probs[0] = row(0, 0.60, second=1, q=0.35)
    probs[2] = row(0, 0.95)
    assert argmax_types(probs)[:4].tolist() == [0, 0, 0, 1]
    types, warnings = dispatch(probs)
    assert types[:4].tolist() == [1, 0, 0, 1]
    assert dispatch_counts(types).tolist() == [2] * 22 + [1, 1]
    assert warnings == []


def test_trisomy_kept_when_all_three_above_threshold():
    # 47,XY,+21: three rows with P[20] = 0.99, 0.97, 0.95, all > 0.9 -> Q_20 has S+1 = 3
    probs = np.vstack([cell(MALE), row(20, 0.95)])
    probs[40] = row(20, 0.97)
    types, warnings = dispatch(probs)
    assert (types == 20).sum() == 3
    assert warnings == ["chromosome 21: 3 found, 2 expected"]


def test_threshold_is_strict():
    # as above but the third chromosome 21 has P[20] exactly 0.9 (second choice: 22, index 21).
    # 0.9 > 0.9 is false -> only S = 2 kept; the 0.9 row moves to index 21, which then has 3.
    probs = np.vstack([cell(MALE), row(20, 0.9, second=21, q=0.05)])
    types, warnings = dispatch(probs)
    assert types[-1] == 21
    assert warnings == ["chromosome 22: 3 found, 2 expected"]
    # with a lower threshold the same row stays a 21
    types, warnings = dispatch(probs, threshold=0.85)
    assert types[-1] == 20
    assert warnings == ["chromosome 21: 3 found, 2 expected"]


def test_four_above_threshold_keep_three():
    # four rows with P[20] = 0.99, 0.99, 0.95, 0.93: the top S+1 = 3 are all > 0.9 and kept;
    # the fourth (0.93, second choice index 19 = chromosome 20) leaves.
    probs = np.vstack([cell(MALE), row(20, 0.95), row(20, 0.93, second=19, q=0.05)])
    types, warnings = dispatch(probs)
    assert (types == 20).sum() == 3
    assert types[-1] == 19
    assert warnings == [
        "chromosome 20: 3 found, 2 expected",
        "chromosome 21: 3 found, 2 expected",
    ]


def test_y_with_one_candidate_below_threshold():
    # 46,XY where the X (row 44) looks like a Y: P[Y] = 0.70, P[X] = 0.25.
    # T_Y = {44, 45}, |T_Y| = 2 > S = 1; top S+1 = 2 are 0.99 and 0.70, not both > 0.9,
    # so Q_Y = {45} and row 44 goes to its second choice, X.
    probs = cell(MALE)
    probs[44] = row(Y, 0.70, second=X, q=0.25)
    types, warnings = dispatch(probs)
    assert types[44:].tolist() == [X, Y]
    assert warnings == []


def test_y_with_two_candidates_above_threshold():
    # 47,XYY: P[Y] = 0.99 and 0.95, both > 0.9 -> both kept, sex count 3
    probs = np.vstack([cell(MALE), row(Y, 0.95, second=X, q=0.04)])
    types, warnings = dispatch(probs)
    assert types[-2:].tolist() == [Y, Y]
    assert warnings == ["sex chromosomes: 3 found (X: 1, Y: 2), 2 expected"]


def test_no_cascade_after_second_choice():
    # rows 0-2 argmax to index 0 (P[0] = 0.99, 0.98, 0.80); row 2's second choice is index 1.
    # rows 3, 4 are two confident chromosome 2s, so T_1 = {3, 4} is not over-full.
    # Pass k=0: Q_0 = {0, 1}; row 2 -> O_1 directly. Pass k=1: |T_1| = 2, nothing checked.
    # Final O_1 = {2, 3, 4}: 3 chromosome 2s, and a warning, but no further move.
    probs = cell([0, 0, 0, 1, 1])
    probs[1] = row(0, 0.98)
    probs[2] = row(0, 0.80, second=1, q=0.15)
    types, warnings = dispatch(probs)
    assert types.tolist() == [0, 0, 1, 1, 1]
    assert "chromosome 2: 3 found, 2 expected" in warnings
    assert "chromosome 1: 2 found, 2 expected" not in warnings


def test_second_choice_to_type_already_processed():
    # reassignment back to an earlier type: index 5 over-full, the weakest row's second
    # choice is index 2, which was processed before and already has 2 -> ends with 3
    probs = cell([2, 2, 5, 5, 5])
    probs[4] = row(5, 0.6, second=2, q=0.3)
    types, warnings = dispatch(probs)
    assert types.tolist() == [2, 2, 5, 5, 2]
    assert "chromosome 3: 3 found, 2 expected" in warnings


def test_ties_keep_lower_index_first():
    # three rows with P[7] = 0.5 exactly: stable sort keeps rows 0, 1; row 2 moves.
    # Row 2 has 0.25 on index 3 and on index 9: second-choice tie -> lowest index, 3.
    r = np.zeros(24)
    r[7] = 0.5
    r[[3, 9]] = 0.25
    probs = np.array([r, r, r])
    types, _ = dispatch(probs)
    assert types.tolist() == [7, 7, 3]


def test_argmax_types_and_tie():
    r = np.zeros(24)
    r[[4, 6]] = 0.5
    assert argmax_types([r, row(X)]).tolist() == [4, X]


def test_missing_types_warn():
    # 45,X with monosomy 7 (index 6) removed too: chromosome 7 has 1, sex chromosomes 1
    types_in = [t for t in MALE if t != Y]
    types_in.remove(6)
    _, warnings = dispatch(cell(types_in))
    assert warnings == [
        "chromosome 7: 1 found, 2 expected",
        "sex chromosomes: 1 found (X: 1, Y: 0), 2 expected",
    ]


def test_empty_cell():
    types, warnings = dispatch(np.zeros((0, 24)))
    assert types.shape == (0,)
    assert warnings == ["no chromosomes"]


@pytest.mark.parametrize(
    "probs, message",
    [
        (np.zeros(24), "N x 24"),
        (np.zeros((3, 23)), "N x 24"),
        (np.zeros((2, 3, 24)), "N x 24"),
        (np.full((2, 24), np.nan), "finite"),
        (np.vstack([row(0), np.r_[np.inf, np.zeros(23)]]), r"rows with NaN or inf: \[1\]"),
        ([["a"] * 24], "numeric"),
    ],
)
def test_bad_probabilities(probs, message):
    with pytest.raises(ValueError, match=message):
        dispatch(probs)


@pytest.mark.parametrize("threshold", [float("nan"), "high", None])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        dispatch(cell(MALE), threshold=threshold)


def test_dispatch_counts():
    assert dispatch_counts([]).tolist() == [0] * 24
    assert dispatch_counts(np.array(MALE)).tolist() == [2] * 22 + [1, 1]
    for bad in ([24], [-1], [[0, 1]], [0.5]):
        with pytest.raises(ValueError):
            dispatch_counts(bad)
