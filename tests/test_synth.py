"""Synthetic G-band generator: determinism, counts, layout, image properties, safe writes."""

import csv
import os

import cv2
import numpy as np
import pytest

from vfinfer.model.classes import N_TYPES, X_INDEX, Y_INDEX
from vfinfer.tools.synthesis.cells import (
    CHROMOSOME_FACTS,
    LABEL_HEADER,
    make_training_set,
    render_chromosome,
    write_cases,
)


def _rows(out_dir):
    with open(os.path.join(out_dir, "labels.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def _counts(rows, cell):
    counts = np.zeros(N_TYPES, dtype=int)
    for row in rows:
        if row["cell"] == cell:
            counts[int(row["type"]) - 1] += 1
    return counts


def test_facts_table_is_plausible():
    assert sorted(CHROMOSOME_FACTS) == list(range(N_TYPES))
    lengths = np.array([CHROMOSOME_FACTS[t][0] for t in range(22)])
    assert abs(lengths.sum() - 100.0) < 1.5  # % of haploid autosomal length
    assert lengths.argmax() == 0 and lengths.argmin() == 20  # chr1 longest, chr21 shortest
    for t in (12, 13, 14, 20, 21):  # acrocentrics
        assert CHROMOSOME_FACTS[t][1] <= 0.25
    assert CHROMOSOME_FACTS[0][1] > 0.45


def test_render_is_deterministic_and_looks_like_a_chromosome():
    a = render_chromosome(0, np.random.default_rng(3))
    b = render_chromosome(0, np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.ndim == 2
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(4)
    for t in range(N_TYPES):
        img = render_chromosome(t, rng)
        assert img.dtype == np.uint8
        assert (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]) == (255, 255, 255, 255)
        assert (img < 100).any()  # dark bands
        assert 15 <= img.shape[0] <= 200 and 8 <= img.shape[1] <= 100
    with pytest.raises(ValueError):
        render_chromosome(24, rng)


def test_chr1_taller_than_chr21():
    rng = np.random.default_rng(5)
    h1 = np.mean([render_chromosome(0, rng).shape[0] for _ in range(10)])
    h21 = np.mean([render_chromosome(20, rng).shape[0] for _ in range(10)])
    assert h1 > 2.5 * h21
    assert 100 <= h1 <= 170 and 18 <= h21 <= 40


@pytest.mark.parametrize(
    "karyotype, changes",
    [("46,XY", {}), ("47,XY,+21", {20: 3}), ("45,X", {X_INDEX: 1, Y_INDEX: 0})],
)
def test_counts_follow_karyotype(tmp_path, karyotype, changes):
    names = write_cases(karyotype, tmp_path, seed=1)
    assert len(names) == 1 and "," not in names[0]
    expected = np.full(N_TYPES, 2)
    if "Y" in karyotype:
        expected[X_INDEX], expected[Y_INDEX] = 1, 1
    for t, n in changes.items():
        expected[t] = n
    got = _counts(_rows(tmp_path), names[0])
    np.testing.assert_array_equal(got, expected)
    assert len(os.listdir(tmp_path / names[0])) == expected.sum()


def test_layout_and_determinism(tmp_path):
    names = write_cases("47,XY,+21", tmp_path / "a", seed=7, cases=2)
    again = write_cases("47,XY,+21", tmp_path / "b", seed=7, cases=2)
    assert names == again == ["syn7-47XY+21-0", "syn7-47XY+21-1"]
    with open(tmp_path / "a" / "labels.csv", newline="") as fh:
        assert fh.readline().strip() == ",".join(LABEL_HEADER)
    rows = _rows(tmp_path / "a")
    assert rows == _rows(tmp_path / "b")
    assert len(rows) == 94
    assert {r["slide"] for r in rows} == {"synth-7"}
    assert {r["polarity"] for r in rows} == {"1"}
    for row in rows:
        assert row["file"] == f"{row['cell']}/{os.path.basename(row['file'])}"
        assert os.path.basename(row["file"]).startswith(row["cell"] + "_")
        pa = (tmp_path / "a" / row["file"]).read_bytes()
        assert pa == (tmp_path / "b" / row["file"]).read_bytes()
    img = cv2.imread(str(tmp_path / "a" / rows[0]["file"]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.ndim == 2
    # shuffled: file order is not sorted by type
    types = [int(r["type"]) for r in rows if r["cell"] == names[0]]
    assert types != sorted(types)
    # no temp files left behind
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".tmp")]
    assert not [f for f in os.listdir(tmp_path / "a" / names[0]) if f.startswith(".tmp")]


def test_refuses_existing_case_and_appends(tmp_path):
    first = write_cases("46,XX", tmp_path, seed=2)
    before = (tmp_path / "labels.csv").read_text()
    with pytest.raises(ValueError):
        write_cases("46,XX", tmp_path, seed=2)
    assert (tmp_path / "labels.csv").read_text() == before
    second = write_cases("46,XX", tmp_path, seed=3)
    text = (tmp_path / "labels.csv").read_text()
    assert text.startswith(before) and text.count("cell,slide") == 1
    rows = _rows(tmp_path)
    assert len(rows) == 92
    assert {r["cell"] for r in rows} == {first[0], second[0]}


def test_flip_polarity(tmp_path):
    names = write_cases("46,XY", tmp_path, seed=4, flip_polarity=0.5)
    rows = _rows(tmp_path)
    flipped = sum(r["polarity"] == "0" for r in rows)
    assert 8 <= flipped <= 38
    assert {r["cell"] for r in rows} == set(names)
    with pytest.raises(ValueError):
        write_cases("46,XY", tmp_path, seed=5, flip_polarity=1.5)


def test_make_training_set(tmp_path):
    names = make_training_set(tmp_path, seed=1, n_cases=3)
    rows = _rows(tmp_path)
    assert len(names) == 3 and {r["cell"] for r in rows} == set(names)
    assert len({r["slide"] for r in rows}) == 3
    assert all(44 <= len(os.listdir(tmp_path / n)) <= 48 for n in names)
