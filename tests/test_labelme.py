"""labelme JSON: polygons and the embedded image are read, a broken file gives one clear line."""

import base64
import json

import cv2
import numpy as np
import pytest

from vfinfer.io.labelme import LabelmeError, polygon_masks, read_labelme, write_labelme


@pytest.fixture
def image():
    img = np.full((60, 80), 10, np.uint8)
    img[10:20, 10:40] = 200
    return img


SQUARE = np.array([[10.0, 10.0], [39.0, 10.0], [39.0, 19.0], [10.0, 19.0]])
TRIANGLE = np.array([[50.0, 30.0], [70.0, 30.0], [60.0, 50.0]])


def test_round_trip_keeps_image_and_polygons(tmp_path, image):
    path = tmp_path / "cell.json"
    write_labelme(path, image, [SQUARE, TRIANGLE])
    got = read_labelme(path)
    assert np.array_equal(got.image, image)
    assert len(got.polygons) == 2
    assert np.allclose(got.polygons[0], SQUARE)
    masks = polygon_masks(got.polygons, image.shape)
    assert masks[0].sum() == 30 * 10  # the square's pixels, edges included
    assert masks[1][40, 60] and not masks[1][10, 10]


def test_labels_are_kept_per_polygon(tmp_path, image):
    path = tmp_path / "typed.json"
    write_labelme(path, image, [SQUARE, TRIANGLE], label=["21", "X"])
    assert read_labelme(path).labels == ["21", "X"]
    write_labelme(path, image, [SQUARE, TRIANGLE])
    assert read_labelme(path).labels == ["chr", "chr"]
    with pytest.raises(ValueError, match="1 labels for 2 polygons"):
        write_labelme(path, image, [SQUARE, TRIANGLE], label=["21"])


def test_synthetic_metaphases_label_each_polygon_with_its_type(tmp_path):
    """The labels are the truth of an end-to-end measurement: each polygon's type, the
    karyotype's chromosomes all there, and the polygon the one of that chromosome."""
    from collections import Counter

    from vfinfer.tools.synthesis.metaphases import render_typed_metaphase, write_metaphases

    (path,) = write_metaphases(tmp_path, seed=5, count=1, karyotypes=("47,XY,+21",))
    got = read_labelme(path)
    assert Counter(got.labels) == Counter([str(i) for i in range(1, 23)] * 2 + ["21", "X", "Y"])
    image, masks, types = render_typed_metaphase(5000, "47,XY,+21")
    assert np.array_equal(image, got.image) and types == got.labels
    areas = {name: [m.sum() for m, t in zip(masks, types) if t == name] for name in ("1", "21")}
    assert min(areas["1"]) > 2 * max(areas["21"])  # the polygon is that chromosome's


def test_reads_image_path_and_skips_non_polygons(tmp_path, image):
    cv2.imwrite(str(tmp_path / "cell.png"), image)
    doc = {"shapes": [{"label": "chr", "points": SQUARE.tolist(), "shape_type": "polygon"},
                      {"label": "chr", "points": [[1, 1], [5, 5]], "shape_type": "rectangle"},
                      {"label": "nucleus", "points": TRIANGLE.tolist(),
                       "shape_type": "polygon"}],
           "imagePath": "cell.png", "imageData": None, "imageHeight": 60, "imageWidth": 80}
    (tmp_path / "cell.json").write_text(json.dumps(doc))
    got = read_labelme(tmp_path / "cell.json", skip_labels=("nucleus",))
    assert got.image.shape == (60, 80)
    assert len(got.polygons) == 1


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not a JSON file"),
    ("[1, 2]", "not a labelme annotation"),
    (json.dumps({"imageData": "aGVsbG8="}), "no 'shapes' list"),
    (json.dumps({"shapes": [], "imageData": base64.b64encode(b"junk").decode()}),
     "embedded image unreadable"),
    (json.dumps({"shapes": []}), "no image"),
    (json.dumps({"shapes": [{"points": [[1, "x"]], "shape_type": "polygon"}],
                 "imageData": "aGVsbG8="}), "shape 0"),
])
def test_broken_file_gives_one_clear_line(tmp_path, content, problem):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(LabelmeError) as err:
        read_labelme(path)
    text = str(err.value)
    assert text.startswith(str(path)) and problem in text and "\n" not in text


def test_size_mismatch_is_named(tmp_path, image):
    path = tmp_path / "cell.json"
    write_labelme(path, image, [SQUARE])
    doc = json.loads(path.read_text())
    doc["imageHeight"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(LabelmeError, match="does not match the image"):
        read_labelme(path)


def test_missing_file(tmp_path):
    with pytest.raises(LabelmeError, match="file not found"):
        read_labelme(tmp_path / "absent.json")


def test_coco_polygons_are_read(tmp_path, image):
    from vfinfer.io.labelme import read_coco

    cv2.imwrite(str(tmp_path / "m1.png"), image)
    doc = {"images": [{"id": 7, "file_name": "m1.png", "height": 60, "width": 80}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1,
                            "segmentation": [SQUARE.ravel().tolist()]},
                           {"id": 2, "image_id": 7, "category_id": 1,
                            "segmentation": [TRIANGLE.ravel().tolist()]}],
           "categories": [{"id": 1, "name": "chr"}]}
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    (got,) = read_coco(tmp_path / "coco.json")
    assert np.array_equal(got.image, image) and len(got.polygons) == 2
    assert np.allclose(got.polygons[1], TRIANGLE)
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(LabelmeError, match="not a COCO annotation file"):
        read_coco(tmp_path / "bad.json")
