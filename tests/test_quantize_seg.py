"""INT8 of a segmentation model (``vfinfer quantize-seg``): the graph written and listed,
checked by mask AP against FP32 on held-out labelled metaphases, and run only when usable."""

import json
import shutil

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx", reason="the tools extra (onnx) is not installed")
pytest.importorskip("pycocotools", reason="the tools extra (pycocotools) is not installed")

from vfinfer.cli import main  # noqa: E402
from vfinfer.segment.model import SegModelError, demo_seg_model_dir, load_seg_model  # noqa: E402
from vfinfer.segment.segmenter import Segmenter  # noqa: E402
from vfinfer.tools.precision.quantize_seg import verdict  # noqa: E402
from vfinfer.tools.synthesis.metaphases import write_metaphases  # noqa: E402


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    root = tmp_path_factory.mktemp("segint8")
    calib = write_metaphases(root / "calib", seed=81, count=2, size=(384, 512))
    write_metaphases(root / "holdout", seed=82, count=2, size=(384, 512))
    seg_dir = root / "seg"
    shutil.copytree(demo_seg_model_dir(), seg_dir)
    ran = CliRunner().invoke(main, ["quantize-seg", str(seg_dir), "--calib", str(calib[0]),
                                    "--calib", str(calib[1]), "--holdout",
                                    str(root / "holdout"), "--threads", "1",
                                    "--max-ap-drop", "100"])
    return seg_dir, ran


@pytest.mark.slow
def test_the_int8_graph_is_written_checked_and_run(quantized):
    seg_dir, ran = quantized
    assert ran.exit_code == 0, ran.output
    assert "INT8 segmentation usable: AP50" in ran.output
    data = load_seg_model(seg_dir).data
    audit, record = data["int8_audit"], data["graphs"]["seg_int8"]
    assert audit["usable"] and audit["fp32"]["images"] == audit["int8"]["images"] == 2
    assert record["kept_fp32"] and record["source_sha256"] == data["graphs"]["seg"]["sha256"]
    assert (seg_dir / "seg_int8.onnx").stat().st_size < (seg_dir / "seg.onnx").stat().st_size
    segmenter = Segmenter(seg_dir, threads=1, precision="int8")
    assert segmenter.describe()["precision"] == "int8"
    assert load_seg_model(seg_dir).graph_path("int8").name == "seg_int8.onnx"


@pytest.mark.slow
def test_an_unchecked_or_failed_int8_graph_is_refused(quantized, tmp_path):
    seg_dir, _ = quantized
    copy = tmp_path / "seg"
    shutil.copytree(seg_dir, copy)
    manifest = copy / "manifest.json"
    data = json.loads(manifest.read_text())
    data["int8_audit"].update(usable=False, reason="AP50 90.00 -> 80.00")
    manifest.write_text(json.dumps(data))
    with pytest.raises(SegModelError, match="marked unusable: AP50 90.00 -> 80.00"):
        Segmenter(copy, precision="int8")
    del data["int8_audit"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(SegModelError, match="no checked INT8"):
        Segmenter(copy, precision="int8")
    Segmenter(copy, precision="fp32")  # FP32 is unaffected


def test_the_ap_rule():
    fp32 = {"AP50": 90.0, "mAP": 77.0, "images": 20}
    assert verdict(fp32, {"AP50": 89.5, "mAP": 78.0, "images": 20}, 1.0)[0]
    assert not verdict(fp32, {"AP50": 88.9, "mAP": 78.0, "images": 20}, 1.0)[0]
    usable, reason = verdict(fp32, {"AP50": 90.0, "mAP": 75.5, "images": 20}, 1.0)
    assert not usable and "mAP 77.00 -> 75.50 on 20 held-out metaphases" in reason
