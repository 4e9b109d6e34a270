"""From a metaphase image to a cell's result (``vfinfer.pipeline.metaphase``): the demo
segmentation model and the demo classifier through the runtime, no torch loaded, an image
without chromosomes, threads sharing one pipeline."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vfinfer.calls.karyotype import parse_karyotype
from vfinfer.calls.verdict import SEGMENTED_NOT_FITTED
from vfinfer.model.manifest import demo_model_dir, load_manifest
from vfinfer.pipeline.metaphase import MetaphasePipeline, NoChromosomesError
from vfinfer.tools.synthesis.metaphases import render_metaphase


def cut_out_figures_only(tmp_path):
    """A copy of the demo classifier without its figures on segmented cells."""
    model = tmp_path / "cut-outs-only"
    shutil.copytree(demo_model_dir(), model)
    data = json.loads((model / "manifest.json").read_text())
    del data["domain_segmented"]
    (model / "manifest.json").write_text(json.dumps(data))
    return model


def test_metaphase_to_result_through_the_runtime(tmp_path):
    image, _ = render_metaphase(7, "47,XY,+21", background="light")
    with MetaphasePipeline(cut_out_figures_only(tmp_path)) as mp:
        result = mp.run_image(image, name="meta")
    assert result["segmentation"]["found"] == result["n_chromosomes"] >= 30
    first = result["chromosomes"][0]
    assert first["file"] == "chr_01.png"
    x0, y0, x1, y1 = first["segment"]["box"]
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    assert len(first["segment"]["polygon"]) >= 3
    # a classifier whose domain figures come from ready-made cut-outs only: on segmented
    # ones it withholds the karyotype, with that reason alone
    verdict = result["verdict"]
    assert result["karyotype"] is None and verdict["karyotyped"] is False
    assert verdict["reasons"] == [SEGMENTED_NOT_FITTED]
    assert verdict["text"] == "not karyotyped: " + SEGMENTED_NOT_FITTED
    assert result["warnings"][0] == verdict["text"]
    # the objects flagged for review are counted, named in one warning and kept per object
    review = result["segmentation"]["review"]
    flagged = [row["file"] for row in result["chromosomes"] if row["segment"]["review"]]
    assert len(flagged) <= review["split"] + review["join"]
    if flagged:
        assert result["warnings"][1].startswith("segmentation to review: ")
        assert all(name in result["warnings"][1] for name in flagged)
    assert len(result["warnings"]) == 1 + bool(flagged)
    assert verdict["figures"]["segmented_fraction"] == 1.0
    withheld = verdict["withheld_karyotype"]  # what the dispatch called, for a reviewer
    assert parse_karyotype(withheld) is not None and withheld.split(",")[0].isdigit()
    assert {"segmentation", "instances", "cutouts"} <= set(result["timing_ms"])


def test_the_demo_classifier_judges_segmented_cells_by_their_own_figures():
    """The bundled demo classifier carries figures of segmented synthetic cells
    (domain_segmented): a metaphase like them is karyotyped, and the verdict says by what."""
    manifest = load_manifest(demo_model_dir())
    assert manifest.segmented_domain["fitted_on"]["segmented"] is True
    assert manifest.domain["fitted_on"]["segmented"] is False
    image, _ = render_metaphase(7, "47,XY,+21", background="light")
    with MetaphasePipeline() as mp:
        result = mp.run_image(image, name="meta")
    verdict = result["verdict"]
    assert verdict["limits"] == manifest.segmented_domain["limits"]
    assert SEGMENTED_NOT_FITTED not in verdict["reasons"]
    assert verdict["karyotyped"] == (not verdict["reasons"])
    if verdict["karyotyped"]:
        assert verdict["text"] == "karyotyped: the cell is like the model's in-domain " \
                                  "segmented cells"


def test_runtime_path_loads_no_torch(tmp_path):
    code = ("import sys, numpy as np\n"
            "from vfinfer.pipeline.metaphase import MetaphasePipeline\n"
            "from vfinfer.tools.synthesis.metaphases import render_metaphase\n"
            "image, _ = render_metaphase(3, size=(384, 512))\n"
            "with MetaphasePipeline() as mp:\n"
            "    r = mp.run_image(image)\n"
            "bad = [m for m in ('torch', 'onnx', 'click') if m in sys.modules]\n"
            "print(r['n_chromosomes'], bad)\n"
            "sys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_without_chromosomes_says_so():
    blank = np.full((200, 300), 240, np.uint8)
    with MetaphasePipeline() as mp, pytest.raises(NoChromosomesError, match="no chromosome"):
        mp.run_image(blank, name="blank")


@pytest.mark.slow
def test_metaphase_pipeline_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    images = [render_metaphase(seed, size=(384, 512))[0] for seed in (31, 32)]
    with MetaphasePipeline(threads=1) as mp:
        alone = [mp.run_image(img, name=f"m{k}") for k, img in enumerate(images)]
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda k: mp.run_image(images[k % 2], name=f"m{k % 2}"),
                                     range(6)))
    for k, got in enumerate(together):
        want = alone[k % 2]
        assert [c["type"] for c in got["chromosomes"]] == [c["type"] for c in want["chromosomes"]]
        assert [c["segment"]["box"] for c in got["chromosomes"]] == \
            [c["segment"]["box"] for c in want["chromosomes"]]
