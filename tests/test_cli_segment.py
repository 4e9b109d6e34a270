"""``vfinfer segment``, ``vfinfer run IMAGE`` and ``vfinfer eval-seg`` from the command line:
results and overlays written, bad metaphase images give one line each and the others finish."""

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.model.manifest import demo_model_dir, load_manifest
from vfinfer.tools.synthesis.metaphases import render_metaphase, write_metaphases


@pytest.fixture(scope="module")
def metaphase_png(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    image, _ = render_metaphase(9, "46,XX", size=(512, 640), background="light")
    path = root / "meta_46XX.png"
    cv2.imwrite(str(path), image)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_segment_then_run_the_case_directory(tmp_path, metaphase_png):
    done = invoke("segment", metaphase_png, "--out", tmp_path / "seg")
    assert done.exit_code == 0, done.output
    case = tmp_path / "seg" / "meta_46XX"
    assert "chromosomes ->" in done.output and (case / "chr_01.png").is_file()
    done = invoke("run", case, "--out", tmp_path / "res")
    assert done.exit_code == 0, done.output
    result = json.loads((tmp_path / "res" / "meta_46XX" / "result.json").read_text())
    assert not any("ignored" in w for w in result["warnings"])  # segmentation/ is known
    # the folder of 'vfinfer segment' is judged by the demo classifier's figures of
    # segmented cells
    assert all(c["segmented"] for c in result["chromosomes"])
    assert not any("not validated" in r for r in result["verdict"]["reasons"])
    segmented = load_manifest(demo_model_dir()).segmented_domain
    assert result["verdict"]["limits"] == segmented["limits"]
    again = invoke("segment", metaphase_png, "--out", tmp_path / "seg")
    assert again.exit_code == 1 and "already exists" in again.output


def test_run_on_a_metaphase_image_writes_result_and_overlay(tmp_path, metaphase_png):
    done = invoke("run", metaphase_png, "--out", tmp_path / "res")
    assert done.exit_code == 0, done.output
    out = tmp_path / "res" / "meta_46XX"
    for name in ("result.json", "result.csv", "karyogram.png", "overlay.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert result["segmentation"]["found"] == len(result["chromosomes"])
    assert all("polygon" in c["segment"] for c in result["chromosomes"])
    overlay = cv2.imread(str(out / "overlay.png"))
    assert overlay.shape[:2] == (512, 640)


def bad_images(root):
    wide = np.zeros((8, 5000), np.uint8)
    tiff16 = render_metaphase(4, size=(384, 512))[0].astype(np.uint16) * 250
    files = {"empty.png": b"", "blank.png": cv2.imencode(".png", np.full((99, 99), 240,
                                                                           np.uint8))[1],
             "huge.png": cv2.imencode(".png", wide)[1], "wide16.tif":
             cv2.imencode(".tiff", tiff16)[1]}
    paths = {}
    for name, data in files.items():
        (root / name).write_bytes(bytes(data))
        paths[name] = root / name
    return paths


def test_bad_metaphase_images_give_one_line_each(tmp_path):
    paths = bad_images(tmp_path)
    done = invoke("run", *paths.values(), "--out", tmp_path / "res")
    lines = done.output.splitlines()
    assert done.exit_code == 1
    assert "Traceback" not in done.output
    assert any(line.startswith("empty: failed") and "empty file" in line for line in lines)
    assert any(line.startswith("blank: failed") and "no chromosome" in line for line in lines)
    assert any(line.startswith("huge: failed") and "downscale" in line for line in lines)
    assert any(line.startswith("wide16: ") and "chromosomes" in line for line in lines)
    assert "1 done, 0 skipped, 3 failed" in done.output


@pytest.mark.slow
def test_eval_seg_reports_coco_figures(tmp_path):
    pytest.importorskip("pycocotools", reason="eval-seg needs the tools extra (pycocotools)")
    write_metaphases(tmp_path / "data", seed=77, count=2, size=(384, 512))
    for model in ("classical", None):
        args = ["eval-seg", tmp_path / "data", "--json", tmp_path / "report.json"]
        done = invoke(*(args + (["--seg-model", model] if model else [])))
        assert done.exit_code == 0, done.output
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["images"] == 2 and report["annotated"] > 40
        assert 0 <= report["mAP"] <= report["AP50"] <= 100
        assert 0 <= report["precision50"] <= 100 and report["timing_ms"]["total"]["median"] > 0
        within = sum(abs(p["found"] - p["annotated"]) <= 1 for p in report["per_image"])
        assert report["count_within_1_images"] == within
        assert f"objects found within +-1 of the annotation: {within}/2" in done.output
    assert report["AP50"] > 50  # the demo network on metaphases like its training data


def test_a_labelme_file_is_a_metaphase_image_too(tmp_path):
    (path,) = write_metaphases(tmp_path / "data", seed=78, count=1, size=(384, 512))
    done = invoke("segment", path, "--out", tmp_path / "seg")
    assert done.exit_code == 0, done.output
    assert (tmp_path / "seg" / path.stem / "chr_01.png").is_file()
