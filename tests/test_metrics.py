"""Metrics of Sec. III-C on tiny examples worked out by hand."""

import numpy as np
import pytest

from vfinfer.tools.evaluation import metrics

# Three classes, six samples:
#   true  0 0 0 1 1 2
#   pred  0 0 1 1 2 2
# class 0: TP 2, FP 0, FN 1 -> P 1,   R 2/3, F1 = 2*1*(2/3)/(1+2/3) = 4/5
# class 1: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 = 1/2
# class 2: TP 1, FP 1, FN 0 -> P 1/2, R 1,   F1 = 2*(1/2)*1/(3/2) = 2/3
TRUE = [0, 0, 0, 1, 1, 2]
PRED = [0, 0, 1, 1, 2, 2]


def test_accuracy():
    assert metrics.accuracy(TRUE, PRED) == pytest.approx(4 / 6)  # samples 0, 1, 3, 5 are right
    assert metrics.accuracy([3], [3]) == 1.0
    with pytest.raises(ValueError, match="no samples"):
        metrics.accuracy([], [])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([1, 2], [1])


def test_confusion_matrix_rows_true_columns_predicted():
    cm = metrics.confusion_matrix(TRUE, PRED, n=3)
    assert cm.tolist() == [[2, 1, 0],
                           [0, 1, 1],
                           [0, 0, 1]]
    assert metrics.confusion_matrix(TRUE, PRED).shape == (24, 24)  # default n = 24 types
    assert metrics.confusion_matrix(TRUE, PRED).sum() == 6
    with pytest.raises(ValueError, match="0..2"):
        metrics.confusion_matrix([0, 3], [0, 0], n=3)


def test_per_class_prf_by_hand():
    prf = metrics.per_class_prf(TRUE, PRED, 3)
    np.testing.assert_allclose(prf["precision"], [1, 1 / 2, 1 / 2])
    np.testing.assert_allclose(prf["recall"], [2 / 3, 1 / 2, 1])
    np.testing.assert_allclose(prf["f1"], [4 / 5, 1 / 2, 2 / 3])
    assert prf["support"].tolist() == [3, 2, 1]
    assert prf["predicted"].tolist() == [2, 2, 2]
    assert prf["present"].tolist() == [True, True, True]


def test_macro_f1_eq12():
    # (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90
    assert metrics.macro_f1(TRUE, PRED, 3) == pytest.approx(59 / 90)


def test_zero_over_zero_is_zero_and_absent_classes_left_out():
    # 4 classes; class 3 never occurs; class 2 is predicted but never true; class 1 is true
    # but never predicted.
    #   true 0 0 1     pred 0 2 0
    # class 0: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
    # class 1: TP 0, FP 0, FN 1 -> P 0/0 = 0, R 0, F1 0
    # class 2: TP 0, FP 1, FN 0 -> P 0, R 0/0 = 0, F1 0
    # class 3: nothing at all -> all 0 and not present
    prf = metrics.per_class_prf([0, 0, 1], [0, 2, 0], 4)
    np.testing.assert_allclose(prf["precision"], [1 / 2, 0, 0, 0])
    np.testing.assert_allclose(prf["recall"], [1 / 2, 0, 0, 0])
    np.testing.assert_allclose(prf["f1"], [1 / 2, 0, 0, 0])
    assert prf["present"].tolist() == [True, True, True, False]
    # macro F1 over the 3 present classes: (1/2 + 0 + 0) / 3 = 1/6 (not 1/8)
    assert metrics.macro_f1([0, 0, 1], [0, 2, 0], 4) == pytest.approx(1 / 6)
    # polarity, all q-arm down and all right: only class 1 present -> F1 = 1
    assert metrics.macro_f1([1, 1, 1], [1, 1, 1], 2) == 1.0


def test_per_case_accuracy_weighs_cases_equally():
    # case a: 3 of 4 right; case b: 1 of 1 right; case c: 0 of 2 right
    true = [5, 5, 6, 6, 7, 8, 8]
    pred = [5, 5, 6, 0, 7, 0, 0]
    cases = ["a", "a", "a", "a", "b", "c", "c"]
    names, acc = metrics.case_accuracies(true, pred, cases)
    assert names == ["a", "b", "c"]
    np.testing.assert_allclose(acc, [3 / 4, 1, 0])
    # (3/4 + 1 + 0) / 3 = 7/12, whereas the image metrics.accuracy is 4/7
    assert metrics.per_case_accuracy(true, pred, cases) == pytest.approx(7 / 12)
    assert metrics.accuracy(true, pred) == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="case ids"):
        metrics.per_case_accuracy(true, pred, cases[:-1])


def _onehot(types, n=24):
    p = np.zeros((len(types), n))
    p[np.arange(len(types)), types] = 1.0
    return p


def test_per_case_accuracy_dispatch_by_hand():
    # Case "a": chromosome 1 (index 0) three times predicted (one wrongly, P = 0.6 with 0.4
    # on its true type 2, index 1) and one true 2 predicted right. Dispatch: T_0 has 3 > 2
    # members, not all > 0.9, so keep the two at 1.0 and move the 0.6 one to its second
    # choice, index 1: right. Case "b": the same error with P = 0.95 > 0.9: all three
    # kept (a possible trisomy), so it stays wrong.
    wrong_a = np.zeros(24)
    wrong_a[[0, 1]] = [0.6, 0.4]
    wrong_b = np.zeros(24)
    wrong_b[[0, 1]] = [0.95, 0.05]
    probs = np.vstack([_onehot([0, 0]), wrong_a, _onehot([1]),
                       _onehot([0, 0]), wrong_b, _onehot([1])])
    true = [0, 0, 1, 1] * 2
    cases = ["a"] * 4 + ["b"] * 4
    # without dispatch both cases are 3/4 right
    assert metrics.per_case_accuracy(true, probs.argmax(1), cases) == pytest.approx(3 / 4)
    # with dispatch: a 4/4, b 3/4 -> (1 + 3/4) / 2 = 7/8
    assert metrics.per_case_accuracy_dispatch(true, probs, cases, 0.9) == pytest.approx(7 / 8)
    types, warnings = metrics.dispatch_by_case(probs, cases, 0.9)
    assert types.tolist() == [0, 0, 1, 1, 0, 0, 0, 1]
    assert list(warnings) == ["a", "b"]
    assert any(w.startswith("chromosome 1:") for w in warnings["b"])


def _cell(karyotype_counts):
    """0-based types of a cell from {index: count}, everything else normal (46,XX)."""
    counts = {k: 2 for k in range(22)}
    counts[22] = 2
    counts.update(karyotype_counts)
    return np.repeat(list(counts), list(counts.values()))


def test_abnormal_cells():
    cells = [
        _cell({}),              # 46,XX: normal
        _cell({22: 1, 23: 1}),  # 46,XY: normal
        _cell({20: 3}),         # 47,XX,+21: abnormal
        _cell({22: 1}),         # 45,X: X + Y = 1, abnormal
        _cell({22: 2, 23: 1}),  # 47,XXY: X + Y = 3, abnormal
        _cell({20: 3, 21: 1}),  # 46,XX,+21,-22: 46 chromosomes but abnormal
    ]
    assert metrics.abnormal_cells(cells).tolist() == [False, False, True, True, True, True]
    assert metrics.abnormal_cells({"n": cells[0], "t21": cells[2]}).tolist() == [False, True]


def test_warning_stats():
    # 3 abnormal cells (2 warned), 4 normal cells (1 warned)
    abnormal = [True, True, True, False, False, False, False]
    warned = [True, False, True, False, True, False, False]
    stats = metrics.warning_stats(abnormal, warned)
    assert stats == {"n_abnormal": 3, "caught": 2, "missed": 1, "n_normal": 4,
                     "false_warnings": 1, "caught_rate": pytest.approx(2 / 3),
                     "false_warning_rate": pytest.approx(1 / 4)}
    none_abnormal = metrics.warning_stats([False], [False])
    assert none_abnormal["caught_rate"] is None and none_abnormal["false_warning_rate"] == 0
