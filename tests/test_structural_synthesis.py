"""Synthetic structural aberrations: the axis profile, each operation's geometry and row order,
the labels, the seams, the cell writer and its command. On the project's own synthetic
chromosomes only (``render_chromosome``, upright, p-arm up).

Row order is checked on "ramp" chromosomes: the outline of a rendered chromosome filled with
the gray level 20 + its image row, so that every row of a result says which source row it
came from (a row's darkest pixel; its edges only blend towards the white background)."""

import csv

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.tools.synthesis.cells import CHROMOSOME_FACTS, render_chromosome, write_cases
from vfinfer.tools.synthesis.structural import (
    BLEND_ROWS,
    axis_profile,
    body_mask,
    draw_aberration,
    duplication,
    interstitial_deletion,
    isochromosome,
    paracentric_inversion,
    pericentric_inversion,
    terminal_deletion,
    translocation,
)
from vfinfer.tools.synthesis.structural_cases import STRUCTURAL_HEADER, write_structural_cases
from vfinfer.util.geometry import chromosome_mask
from vfinfer.util.images import read_gray8

RAMP_BASE = 20


def _rendered(chromosome_type, seed):
    """A synthetic chromosome of type 1-24 (upright, p-arm up)."""
    return render_chromosome(chromosome_type - 1, np.random.default_rng(seed))


def _ramp(chromosome_type, seed=0):
    """The axis profile of a ramp chromosome: a rendered outline, each row's gray level
    ``RAMP_BASE`` + its row."""
    image = _rendered(chromosome_type, seed)
    mask = body_mask(image)
    rows = np.arange(image.shape[0])[:, None] + RAMP_BASE
    return axis_profile(np.where(mask, rows, 255).astype(np.uint8), chromosome_type)


def _decoded(result):
    """The source row each chromosome row of a ramp result shows."""
    rows = result.image[result.top:result.top + len(result.source_rows())]
    return rows.min(axis=1).astype(int) - RAMP_BASE


def _seams(result):
    """Output rows (from the first chromosome row) where one piece ends and the next begins."""
    return np.cumsum([p.count for p in result.pieces])[:-1]


def _readable(result, profiles):
    """Chromosome rows of a result outside every seam's cross-fade whose source row is at
    least 4 pixels wide (a narrower tip, once scaled across, has no pixel left unblended)."""
    rows = result.source_rows()
    keep = np.array([profiles[s].width[r] >= 4 for s, r in rows])
    for seam in _seams(result):
        keep[max(0, seam - BLEND_ROWS):seam + BLEND_ROWS] = False
    return keep


def _assert_rows(result, expected, profile):
    """The result is made of ``expected`` rows of ``profile`` (a ramp), and its pixels show
    them away from the seams."""
    expected = np.asarray(expected)
    np.testing.assert_array_equal(result.source_rows()[:, 1], expected)
    keep = _readable(result, [profile])
    np.testing.assert_array_equal(_decoded(result)[keep], expected[keep])


def _length(image):
    """Rows of an image's chromosome mask."""
    return int(body_mask(image).any(axis=1).sum())


# -- the axis profile ---------------------------------------------------------------------------
@pytest.mark.parametrize("chromosome_type", [1, 5, 9, 13, 18, 23])
def test_axis_profile_extent_and_centromere(chromosome_type):
    image = _rendered(chromosome_type, 11)
    profile = axis_profile(image, chromosome_type)
    dark_rows = np.flatnonzero((image < 254).any(axis=1))
    assert (profile.top, profile.bottom) == (dark_rows[0], dark_rows[-1])
    index = CHROMOSOME_FACTS[chromosome_type - 1][1]
    assert abs(profile.fraction(profile.centromere) - index) <= 0.06
    assert profile.refined  # the synthetic chromosomes have a clear primary constriction
    plain = axis_profile(image, chromosome_type, refine=False)
    assert plain.centromere == profile.top + round(index * profile.length)
    assert not plain.refined


def test_centromere_stays_at_the_index_without_a_constriction():
    block = np.full((104, 30), 255, np.uint8)
    block[2:102, 5:25] = 90  # a straight rod: no width minimum anywhere
    profile = axis_profile(block, 5)
    assert not profile.refined
    assert profile.centromere == 2 + round(CHROMOSOME_FACTS[4][1] * 100)
    assert profile.length == 100 and profile.median_width == 20


def test_mask_keeps_a_pale_chromosome_whole():
    rod = np.full((80, 24), 255, np.uint8)
    rod[2:78, 4:20] = 60
    rod[30:50, 4:20] = 235  # a pale band, lighter than Otsu's threshold
    assert chromosome_mask(rod).any(axis=1).sum() < 40  # Otsu keeps one dark part only
    assert body_mask(rod).any(axis=1).sum() == 76
    assert axis_profile(rod, 1).length == 76


def test_mask_is_the_largest_component_with_its_holes_filled():
    image = np.full((60, 40), 255, np.uint8)
    image[5:45, 5:25] = 80  # the chromosome (800 pixels) ...
    image[20:26, 12:18] = 255  # ... with a hole
    image[50:54, 30:34] = 30  # debris
    mask = body_mask(image)
    assert mask[5:45, 5:25].all() and mask.sum() == 800 and not mask[50:54, 30:34].any()
    ring = np.full((60, 60), 255, np.uint8)
    ring[0:60, 0:2] = ring[0:60, 58:60] = ring[0:2, :] = ring[58:60, :] = 40  # a thin frame
    ring[15:45, 20:40] = 90  # the larger component, inside the frame's hole
    mask = body_mask(ring)
    assert mask.sum() == 600 and mask[15:45, 20:40].all()
    corner = np.full((30, 20), 255, np.uint8)
    corner[0:30, 0:8] = 70  # touching the borders
    assert body_mask(corner).sum() == 240
    assert not body_mask(np.full((10, 10), 255, np.uint8)).any()


def test_mask_falls_back_to_otsu_without_a_white_background():
    gray = np.random.default_rng(0).integers(225, 250, size=(60, 30)).astype(np.uint8)
    gray[5:55, 10:20] = 70
    np.testing.assert_array_equal(body_mask(gray), chromosome_mask(gray))
    assert body_mask(gray).any(axis=1).sum() == 50


def test_axis_profile_refuses_bad_input():
    with pytest.raises(ValueError, match="type must be 1-24"):
        axis_profile(_rendered(1, 0), 25)
    with pytest.raises(ValueError, match="no chromosome"):
        axis_profile(np.full((20, 20), 255, np.uint8), 1)


# -- each operation: rows, length, label --------------------------------------------------------
def test_interstitial_deletion_removes_the_rows():
    profile = _ramp(1)
    cen = profile.fraction(profile.centromere)
    result = interstitial_deletion(profile, cen + 0.1, 0.2)
    first, stop = profile.row(cen + 0.1), profile.row(cen + 0.1) + round(0.2 * profile.length)
    top, bottom = profile.top, profile.bottom
    _assert_rows(result, list(range(top, first)) + list(range(stop, bottom + 1)), profile)
    assert _length(result.image) == profile.length - (stop - first)
    assert (result.kind, result.chromosome_type, result.arm) == ("del", 1, "q")
    assert result.start == pytest.approx(profile.fraction(first), abs=1e-4)
    assert result.size == pytest.approx(0.2, abs=1.0 / profile.length)
    assert result.iscn == f"del(1)(q:{result.start:.2f}-{result.end:.2f})"
    # the seam is a cross-fade: its rows step from the row above it to the row below it
    seam = _seams(result)[0]
    fade = _decoded(result)[seam - BLEND_ROWS:seam + BLEND_ROWS]
    assert len(fade) >= 2 and (np.diff(fade) > 0).all()
    assert ((fade > first - 1) & (fade < stop)).all()


@pytest.mark.parametrize("arm", ["p", "q"])
def test_terminal_deletion_keeps_the_end_cap(arm):
    profile = _ramp(1)
    result = terminal_deletion(profile, arm, 0.2)
    cap, d = profile.cap_rows, round(0.2 * profile.length)
    top, bottom = profile.top, profile.bottom
    if arm == "p":
        expected = list(range(top, top + cap)) + list(range(top + cap + d, bottom + 1))
        assert result.iscn == f"del(1)(p:{result.end:.2f})"
    else:
        expected = list(range(top, bottom + 1 - cap - d)) + list(range(bottom + 1 - cap,
                                                                        bottom + 1))
        assert result.iscn == f"del(1)(q:{result.start:.2f})"
    _assert_rows(result, expected, profile)
    assert _length(result.image) == profile.length - d
    assert result.size == pytest.approx(d / profile.length, abs=1e-4)
    assert (result.kind, result.arm) == ("del", arm)


def test_duplication_repeats_the_rows_in_tandem():
    profile = _ramp(2, seed=3)
    cen = profile.fraction(profile.centromere)
    result = duplication(profile, cen + 0.15, 0.15)
    first = profile.row(cen + 0.15)
    stop = first + round(0.15 * profile.length)
    _assert_rows(result, list(range(profile.top, stop)) + list(range(first, profile.bottom + 1)),
                 profile)
    assert _length(result.image) == profile.length + (stop - first)
    assert result.iscn == f"dup(2)(q:{result.start:.2f}-{result.end:.2f})"


def test_paracentric_inversion_reverses_exactly_the_rows():
    profile = _ramp(1, seed=5)
    first = profile.top + profile.cap_rows + 2
    size = (profile.centromere - 10 - first) / profile.length
    result = paracentric_inversion(profile, profile.fraction(first), size)
    stop = first + round(size * profile.length)
    expected = (list(range(profile.top, first)) + list(range(stop - 1, first - 1, -1))
                + list(range(stop, profile.bottom + 1)))
    _assert_rows(result, expected, profile)
    assert _length(result.image) == profile.length
    assert (result.arm, result.iscn) == ("p", f"inv(1)(p:{result.start:.2f}-{result.end:.2f})")


def test_pericentric_inversion_spans_the_centromere():
    profile = _ramp(9, seed=2)
    cen = profile.fraction(profile.centromere)
    result = pericentric_inversion(profile, cen - 0.1, 0.3)
    first = profile.row(cen - 0.1)
    stop = first + round(0.3 * profile.length)
    assert first < profile.centromere < stop
    expected = (list(range(profile.top, first)) + list(range(stop - 1, first - 1, -1))
                + list(range(stop, profile.bottom + 1)))
    _assert_rows(result, expected, profile)
    assert _length(result.image) == profile.length
    assert result.arm == "pq"
    assert result.iscn == f"inv(9)(p:{result.start:.2f}q:{result.end:.2f})"
    with pytest.raises(ValueError, match="does not span its centromere"):
        pericentric_inversion(profile, cen + 0.05, 0.1)


def test_isochromosome_mirrors_an_arm_at_the_centromere():
    profile = _ramp(5, seed=4)
    cen, bottom = profile.centromere, profile.bottom
    result = isochromosome(profile, "q")
    _assert_rows(result, list(range(bottom, cen, -1)) + list(range(cen, bottom + 1)), profile)
    q_rows = bottom + 1 - cen
    assert _length(result.image) == 2 * q_rows - 1  # twice the q arm: longer than chr5 itself
    assert result.image.shape[0] > profile.length * 1.25
    assert (result.kind, result.arm, result.iscn) == ("i", "q", "i(5)(q10)")
    assert result.end == 1.0 and result.start == pytest.approx(profile.fraction(cen), abs=1e-4)
    p_iso = isochromosome(profile, "p")
    top = profile.top
    _assert_rows(p_iso, list(range(top, cen + 1)) + list(range(cen - 1, top - 1, -1)), profile)


def test_isochromosome_of_a_metacentric_keeps_about_the_length():
    profile = axis_profile(_rendered(1, 6), 1)
    for arm in "pq":
        assert abs(_length(isochromosome(profile, arm).image) / profile.length - 1.0) < 0.12


def test_translocation_exchanges_distal_segments():
    a, b = _ramp(9, seed=1), _ramp(22, seed=2)
    der_a, der_b = translocation(a, "q", 0.25, b, "q", 0.4)
    d_a, d_b = round(0.25 * a.length), round(0.4 * b.length)
    assert _length(der_a.image) == a.length - d_a + d_b
    assert _length(der_b.image) == b.length - d_b + d_a
    rows_a = der_a.source_rows()
    assert (rows_a[:, 0] == 0).sum() == a.length - d_a  # a's centric part, then b's segment
    np.testing.assert_array_equal(rows_a[-d_b:], [(1, r) for r in range(b.bottom + 1 - d_b,
                                                                         b.bottom + 1)])
    keep = _readable(der_a, [a, b])
    np.testing.assert_array_equal(_decoded(der_a)[keep], rows_a[keep, 1])
    text = f"t(9;22)(q:{a.fraction(a.bottom + 1 - d_a):.2f};q:{b.fraction(b.bottom + 1 - d_b):.2f})"
    assert der_a.iscn == "der(9)" + text and der_b.iscn == "der(22)" + text
    assert (der_a.chromosome_type, der_a.arm, der_a.end) == (9, "q", 1.0)
    assert der_b.size == pytest.approx(d_b / b.length, abs=1e-4)


def test_translocated_segment_keeps_its_telomere_outwards():
    a, b = _ramp(22, seed=3), _ramp(9, seed=4)
    der_a, der_b = translocation(a, "q", 0.3, b, "p", 0.2)
    d_b = round(0.2 * b.length)
    # b's p-arm segment hangs below a's q arm upside down: b's p telomere is der_a's bottom
    np.testing.assert_array_equal(der_a.source_rows()[-d_b:, 1],
                                  np.arange(b.top + d_b - 1, b.top - 1, -1))
    assert der_a.source_rows()[-1].tolist() == [1, b.top]
    # a's q segment sits on top of b's q... no: on top of b, where b lost its p segment
    assert der_b.source_rows()[0].tolist() == [0, a.bottom]
    assert der_a.iscn.startswith("der(22)t(9;22)(p:") and ";q:" in der_a.iscn
    with pytest.raises(ValueError, match="different types"):
        translocation(a, "q", 0.2, a, "q", 0.2)


@pytest.mark.parametrize("call", [
    lambda p: interstitial_deletion(p, p.fraction(p.centromere) - 0.05, 0.1),  # over the cen
    lambda p: duplication(p, 0.0, 0.1),  # the p end cap
    lambda p: terminal_deletion(p, "p", 0.6),  # past the centromere
    lambda p: isochromosome(p, "x"),
])
def test_operations_refuse_segments_that_do_not_fit(call):
    profile = _ramp(1)
    with pytest.raises(ValueError) as err:
        call(profile)
    assert "\n" not in str(err.value)


# -- seams --------------------------------------------------------------------------------------
def _cone():
    """A slanted cone, drawn with sub-pixel edges: 100 rows, 8 px wide at the top to 26 at the
    bottom, its axis drifting 12 px sideways, plain gray: every join of two of its row slabs
    is a width and axis mismatch."""
    xs = np.arange(50)[None, :]
    rows = np.arange(100)[:, None]
    width, centre = 8 + 18 * rows / 99, 19 + 12 * rows / 99
    cover = np.clip(np.minimum(xs + 1, centre + width / 2) - np.maximum(xs, centre - width / 2),
                    0, 1)
    image = np.full((104, 50), 255, np.uint8)
    image[2:102] = np.rint(255 - 155 * cover)
    return axis_profile(image, 1)


def _widths_and_centres(image):
    """Per chromosome row: the width (the row's darkness over the cone's darkness 155) and
    the darkness-weighted centre, both to a fraction of a pixel."""
    dark = (255 - image.astype(np.float64)) / 155
    rows = dark.sum(axis=1) > 0.5
    widths = dark[rows].sum(axis=1)
    return widths, (dark[rows] * np.arange(image.shape[1])).sum(axis=1) / widths


def test_seams_match_widths_and_axis():
    profile = _cone()
    source_w, source_c = _widths_and_centres(profile.image.astype(np.uint8))
    assert np.abs(np.diff(source_w)).max() < 0.3
    first, stop = profile.row(0.55) - profile.top, profile.row(0.9) - profile.top
    assert source_w[stop] - source_w[first - 1] > 6  # the rows a deletion joins, as they are
    assert source_c[stop] - source_c[first - 1] > 4
    for result in (interstitial_deletion(profile, 0.55, 0.35),
                   paracentric_inversion(profile, 0.55, 0.35),
                   duplication(profile, 0.55, 0.35)):
        widths, centres = _widths_and_centres(result.image)
        # no step: the joined widths are eased in over a chromosome width, the axis meets
        assert np.abs(np.diff(widths)).max() < 1.0, result.iscn
        assert np.abs(np.diff(centres)).max() <= 0.6, result.iscn


@pytest.mark.parametrize("kind", ["del", "dup", "inv", "t", "i"])
def test_results_are_one_clean_chromosome(kind):
    rng = np.random.default_rng(7)
    profiles = [axis_profile(_rendered(t, 20 + t), t) for t in (2, 7)]
    for _ in range(4):
        made = draw_aberration(kind, profiles, rng, 0.1, 0.3)
        assert made, kind
        for result in made:
            image = result.image
            mask = body_mask(image)
            assert (image[~cv2.dilate(mask.astype(np.uint8), np.ones((3, 3))).astype(bool)]
                    == 255).all()  # white outside the chromosome
            rows = np.flatnonzero(mask.any(axis=1))
            assert len(rows) == rows[-1] - rows[0] + 1  # no gap
            assert (image[:, 0] == 255).all() and (image[:, -1] == 255).all()
            source = profiles[0].image
            assert image.min() >= source.min() - 1  # the source's gray scale, not stretched
            assert image.dtype == np.uint8


def test_draw_is_deterministic_and_in_range():
    profile = axis_profile(_rendered(1, 9), 1)
    other = axis_profile(_rendered(4, 9), 4)
    for kind in ("del", "dup", "inv", "t", "i"):
        one = draw_aberration(kind, [profile, other], np.random.default_rng(3), 0.15, 0.25)
        two = draw_aberration(kind, [profile, other], np.random.default_rng(3), 0.15, 0.25)
        assert [r.iscn for r in one] == [r.iscn for r in two]
        np.testing.assert_array_equal(one[0].image, two[0].image)
        assert len(one) == (2 if kind == "t" else 1)
        if kind != "i":
            assert all(0.15 - 0.02 <= r.size <= 0.25 + 0.02 for r in one), kind
    with pytest.raises(ValueError, match="unknown aberration kind"):
        draw_aberration("ring", [profile], np.random.default_rng(0))


# -- the writer and the command -----------------------------------------------------------------
def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def normal_cells(tmp_path_factory):
    folder = tmp_path_factory.mktemp("normal")
    write_cases("46,XY", folder, seed=4, cases=2)
    return folder


def test_writer_layout_and_ground_truth(normal_cells, tmp_path):
    out = tmp_path / "out"
    names, truth = write_structural_cases(normal_cells, out, seed=1, per_cell=2)
    source = _rows(normal_cells / "labels.csv")
    labels = _rows(out / "labels.csv")
    assert names == sorted({r["cell"] for r in labels}) and len(names) == 2
    assert len(labels) == len(source) == 92
    assert [r["type"] for r in labels] == [r["type"] for r in source]
    assert {r["slide"] for r in labels} == {r["slide"] for r in source}
    with open(out / "structural.csv", newline="") as handle:
        assert handle.readline().strip() == ",".join(STRUCTURAL_HEADER)
    listed = _rows(out / "structural.csv")
    assert listed == [{k: str(v) for k, v in row.items()} for row in truth]
    assert len(listed) >= 4  # two per cell, translocations two files
    by_file = {r["file"]: r for r in listed}
    for label, original in zip(labels, source):
        assert label["file"] == f"{label['cell']}/{label['cell']}_{label['file'][-6:-4]}.png"
        image = read_gray8(out / label["file"])
        unchanged = np.array_equal(image, read_gray8(normal_cells / original["file"]))
        assert unchanged == (label["file"] not in by_file), label["file"]
        if label["file"] in by_file:
            assert by_file[label["file"]]["type"] == label["type"]
    for row in listed:
        assert row["kind"] in ("del", "dup", "inv", "t", "i")
        assert 0.0 <= float(row["start"]) < float(row["end"]) <= 1.0
        assert row["iscn"].startswith(("der(" if row["kind"] == "t" else row["kind"] + "("))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_writer_is_deterministic_and_refuses_to_overwrite(normal_cells, tmp_path):
    write_structural_cases(normal_cells, tmp_path / "a", seed=5, kinds=("t", "inv"))
    write_structural_cases(normal_cells, tmp_path / "b", seed=5, kinds=("t", "inv"))
    assert (tmp_path / "a" / "structural.csv").read_text() == \
        (tmp_path / "b" / "structural.csv").read_text()
    for row in _rows(tmp_path / "a" / "labels.csv"):
        assert (tmp_path / "a" / row["file"]).read_bytes() == \
            (tmp_path / "b" / row["file"]).read_bytes()
    assert {r["kind"] for r in _rows(tmp_path / "a" / "structural.csv")} <= {"t", "inv"}
    before = (tmp_path / "a" / "labels.csv").read_text()
    with pytest.raises(ValueError, match=f"{tmp_path / 'a'} already exists"):
        write_structural_cases(normal_cells, tmp_path / "a", seed=6)
    assert (tmp_path / "a" / "labels.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_writer_copies_cells_in_rounds(normal_cells, tmp_path):
    names, truth = write_structural_cases(normal_cells, tmp_path / "o", seed=2, cells=5,
                                          kinds=("del",))
    assert len(names) == len(set(names)) == 5
    assert sum(name.endswith("-st2-0") for name in names) == 2
    assert {row["cell"] for row in truth} == set(names)


def test_writer_changes_only_q_arm_down_chromosomes(tmp_path):
    write_cases("46,XX", tmp_path / "flipped", seed=3, flip_polarity=1.0)
    with pytest.raises(ValueError, match="q-arm-down chromosome has room"):
        write_structural_cases(tmp_path / "flipped", tmp_path / "o", seed=0)
    assert not (tmp_path / "o").exists()


def test_writer_checks_its_options(normal_cells, tmp_path):
    with pytest.raises(ValueError, match="kinds must be among"):
        write_structural_cases(normal_cells, tmp_path / "o", kinds=("del", "ring"))
    with pytest.raises(ValueError, match="size-min <= size-max"):
        write_structural_cases(normal_cells, tmp_path / "o", size_min=0.3, size_max=0.1)


def test_command_writes_cells(normal_cells, tmp_path):
    result = CliRunner().invoke(main, ["synth-structural", str(normal_cells), "--out",
                                       str(tmp_path / "o"), "--kinds", "dup,i", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wrote 2 cell(s) with 2 aberrant chromosome(s)")
    assert {r["kind"] for r in _rows(tmp_path / "o" / "structural.csv")} <= {"dup", "i"}


def test_command_errors_are_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(main, ["synth-structural", str(missing), "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output == f"error: {missing}: data directory not found\n"
    result = CliRunner().invoke(main, ["synth-structural", str(tmp_path), "--out",
                                       str(tmp_path / "o"), "--kinds", "del,ring"])
    assert result.exit_code == 2 and "give kinds among del,dup,inv,t,i" in result.output
