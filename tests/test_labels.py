"""``vfinfer.io.labels``: the one reader of labels.csv behind train, eval, calibrate and
domain."""

import cv2
import numpy as np
import pytest

from vfinfer.io.labels import Label, by_cell, cell_slides, labels_path, read_labels
from vfinfer.tools.synthesis.cells import write_cases


def _write_labels(root, lines):
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture()
def small_set(tmp_path):
    image = np.full((30, 12), 255, np.uint8)
    image[5:25, 3:9] = 60
    for cell in ("c1", "c2"):
        (tmp_path / cell).mkdir()
        for name in ("a.png", "b.png"):
            cv2.imwrite(str(tmp_path / cell / name), image)
    return tmp_path


def test_synthetic_cells_read_in_order(tmp_path):
    names = [write_cases(k, tmp_path, seed=s)[0] for k, s in [("46,XY", 1), ("47,XX,+21", 2)]]
    labels = read_labels(tmp_path)
    cells = by_cell(labels)
    assert list(cells) == names and [len(v) for v in cells.values()] == [46, 47]
    assert all(label.path.is_file() and 0 <= label.type <= 23 and label.polarity in (0, 1)
               for label in labels)
    assert labels_path(tmp_path) == tmp_path / "labels.csv"


def test_letters_numbers_slides_and_empty_polarity(small_set):
    _write_labels(small_set, ["Cell,slide,file,type,polarity,note",
                              "c1,s1,c1/a.png,X,0,x", "c1,s1,c1/b.png,24,1,",
                              "c2,,c2/a.png,1,,", "c2,,c2/b.png,22,1,y"])
    labels = read_labels(small_set)
    assert labels[:2] == [Label("c1", "s1", small_set / "c1/a.png", 22, 0),
                          Label("c1", "s1", small_set / "c1/b.png", 23, 1)]
    assert (labels[2].type, labels[2].polarity, labels[2].slide) == (0, -1, "")
    assert [label.unit for label in labels] == ["s1", "s1", "c2", "c2"]
    assert cell_slides(labels) == {"c1": "s1"}


@pytest.mark.parametrize("lines, message", [
    (["cell,file,polarity", "c1,c1/a.png,1"], "line 1: missing column(s) type"),
    (["cell,file,type,polarity", "c1,c1/a.png,1,1", "c1,c1/b.png,25,1"],
     "line 3: type '25' is not 1-24"),
    (["cell,file,type,polarity", "c1,c1/a.png,0,1"], "line 2: type '0'"),
    (["cell,file,type,polarity", "c1,c1/a.png,q,1"], "line 2: type 'q' is not 1-24"),
    (["cell,file,type,polarity", "c1,c1/a.png,3,2"], "line 2: polarity '2' is not 0"),
    (["cell,file,type,polarity", "c1,c1/a.png,3"], "line 2: empty or missing 'polarity'"),
    (["cell,file,type,polarity", ",c1/a.png,3,1"], "line 2: empty or missing 'cell'"),
    (["cell,file,type,polarity", "c1,c1/a.png,3,1", "c1,c1/a.png,4,1"],
     "line 3: file c1/a.png is listed again (first on line 2)"),
    (["cell,file,type,polarity"], "no labelled images"),
    (["cell,file,type,polarity", "c1,c1/a.png,3,1", "c1,c1/gone.png,3,1",
      "c2,c2/x.png,4,1"], "2 of 3 listed image files are missing: line 3: "),
])
def test_bad_labels_name_the_csv_and_line(small_set, lines, message):
    _write_labels(small_set, lines)
    with pytest.raises(ValueError) as info:
        read_labels(small_set, "labels.csv")
    assert str(small_set / "labels.csv") in str(info.value)
    assert message in str(info.value)


def test_labels_file_not_found(small_set):
    with pytest.raises(ValueError, match="labels file not found: nope.csv"):
        read_labels(small_set, "nope.csv")
    with pytest.raises(ValueError, match="data directory not found"):
        read_labels(small_set / "missing", "labels.csv")


def test_a_labels_file_outside_data_dir(small_set, tmp_path_factory):
    """A relative labels path not in DATA_DIR is taken from the current directory; an
    absolute one as it is; ``file`` stays relative to DATA_DIR."""
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "mine.csv"
    elsewhere.write_text("cell,file,type,polarity\nc1,c1/a.png,7,1\n")
    (label,) = read_labels(small_set, elsewhere)
    assert label.path == small_set / "c1/a.png" and label.type == 6
