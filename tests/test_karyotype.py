"""Tests for vfinfer.calls.karyotype: ISCN-style numerical karyotypes and their parser."""

import numpy as np
import pytest

from vfinfer.calls.karyotype import karyotype_summary, parse_karyotype

from helpers import X, Y


def types_from(counts):
    """0-based type indices holding ``counts[k]`` chromosomes of each type k."""
    return np.repeat(np.arange(24), counts)


def counts_with(x=0, y=0, **changes):
    """Counts of a cell: two of each autosome, ``x`` X's, ``y`` Y's, ``c21=3`` style changes."""
    counts = np.full(24, 2)
    counts[X], counts[Y] = x, y
    for name, n in changes.items():
        counts[int(name[1:]) - 1] = n
    return counts


@pytest.mark.parametrize(
    "counts, text",
    [
        (counts_with(x=2), "46,XX"),
        (counts_with(x=1, y=1), "46,XY"),
        (counts_with(x=1), "45,X"),
        (counts_with(x=2, y=1), "47,XXY"),
        (counts_with(x=1, y=2), "47,XYY"),
        (counts_with(x=3), "47,XXX"),
        (counts_with(x=2, y=2), "48,XXYY"),
        (counts_with(x=1, y=1, c21=3), "47,XY,+21"),
        (counts_with(x=2, c7=1), "45,XX,-7"),
        (counts_with(x=2, c13=3, c21=3), "48,XX,+13,+21"),
        (counts_with(x=1, y=1, c21=4), "48,XY,+21,+21"),
        (counts_with(x=2, c7=0), "44,XX,-7,-7"),
        (counts_with(x=1, y=1, c1=1, c22=3), "46,XY,-1,+22"),
        (counts_with(), "44,?"),
        (counts_with(c21=3), "45,?,+21"),
    ],
)
def test_summary_and_parse(counts, text):
    rng = np.random.default_rng(0)
    types = rng.permutation(types_from(counts))  # order of chromosomes does not matter
    assert karyotype_summary(types)[0] == text
    assert parse_karyotype(text).tolist() == counts.tolist()


@pytest.mark.parametrize("text", ["46,XX", "46,XY"])
def test_normal_has_no_warnings(text):
    assert karyotype_summary(types_from(parse_karyotype(text)))[1] == []


def test_abnormal_warning_names_each_type():
    _, warnings = karyotype_summary(types_from(counts_with(x=2, y=1, c7=1, c21=3)))
    expected = (
        "Possible numerical abnormality: sex chromosomes (XXY), chromosome 7 (1 copy), "
        "chromosome 21 (3 copies); this is a suggestion from automatic classification and "
        "needs review by a cytogeneticist."
    )
    assert warnings == [expected]


def test_no_sex_chromosomes_warning():
    text, warnings = karyotype_summary(types_from(counts_with()))
    assert text == "44,?"
    assert len(warnings) == 1
    assert "sex chromosomes (none found)" in warnings[0]
    assert "cytogeneticist" in warnings[0]


def test_empty_cell():
    text, warnings = karyotype_summary([])
    assert text.startswith("0,?,-1,-1,-2,-2,")
    assert warnings == ["no chromosomes"]
    assert parse_karyotype(text).tolist() == [0] * 24


def test_round_trip_random_counts():
    rng = np.random.default_rng(1)
    for _ in range(200):
        counts = rng.integers(0, 5, size=24)
        text, _ = karyotype_summary(rng.permutation(types_from(counts)))
        assert parse_karyotype(text).tolist() == counts.tolist()


def test_parse_is_lenient_on_case_space_and_order():
    assert parse_karyotype(" 48, xx, +21, +13 ").tolist() == counts_with(x=2, c13=3, c21=3).tolist()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected 'total,sex"),
        ("46", "expected 'total,sex"),
        ("XY,46", "expected 'total,sex"),
        ("46,", "sex chromosomes"),
        ("46,XZ", "sex chromosomes"),
        ("46,YX", "sex chromosomes"),
        ("47,XX", "total 47 does not match the 46"),
        ("46,XX,21", "not '\\+k' or '-k'"),
        ("47,XX,+21,", "not '\\+k' or '-k'"),
        ("47,XX,+X", "not '\\+k' or '-k'"),
        ("47,XX,+23", "autosome 23 is not in 1-22"),
        ("45,XX,-0", "autosome 0 is not in 1-22"),
        ("46,XX,+7,-7", "both gained and lost"),
        ("43,XX,-7,-7,-7", "more than two losses"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_karyotype(text)


def test_parse_rejects_non_string():
    with pytest.raises(TypeError, match="must be a string"):
        parse_karyotype(None)
