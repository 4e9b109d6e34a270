"""The segmentation stage in the runtime: the instance step, the classical baseline, the demo
segmentation model on synthetic metaphases, cut-outs, the metaphase-to-result path, bad
inputs. No torch needed."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vfinfer.pipeline.metaphase import MetaphasePipeline, NoChromosomesError
from vfinfer.segment.channels import target_maps
from vfinfer.segment.classical import classical_instances
from vfinfer.segment.instances import instances_from_maps
from vfinfer.segment.model import ImageTooLargeError, demo_seg_model_dir, load_seg_model
from vfinfer.segment.segmenter import Segmenter
from vfinfer.tools.evaluation.segmentation import iou_matrix
from vfinfer.tools.synthesis.metaphases import render_metaphase
from vfinfer.util.images import list_case

SHAPE = (200, 300)


def rod(p0, p1, width=9):
    mask = np.zeros(SHAPE, np.uint8)
    cv2.line(mask, p0, p1, 1, width)
    return mask.astype(bool)


@pytest.fixture
def scene():
    """Rods standing alone, touching side by side and crossing, and a round nucleus (not
    annotated, as in real annotations): (light-background image, rod masks, nucleus mask)."""
    rods = [rod((20, 20), (20, 80)), rod((29, 20), (29, 80)),  # touching, side by side
            rod((80, 30), (150, 110)), rod((80, 110), (150, 30)),  # an X crossing
            rod((200, 20), (215, 70)), rod((250, 20), (250, 50)), rod((280, 25), (270, 55)),
            rod((30, 130), (45, 160)), rod((70, 150), (100, 160)),
            rod((250, 170), (280, 185))]  # alone
    nucleus = np.zeros(SHAPE, np.uint8)
    cv2.circle(nucleus, (190, 150), 28, 1, -1)
    image = np.full(SHAPE, 235, np.float32)
    for mask in rods:
        image[mask] *= 0.45  # stains multiply where rods cross
    image[nucleus.astype(bool)] = 120
    return image.astype(np.uint8), rods, nucleus.astype(bool)


def best_matches(truth, instances, shape):
    iou = iou_matrix(truth, [inst.full_mask(shape) for inst in instances])
    return iou


def test_instance_step_finds_every_rod_once_and_gives_the_crossing_to_both(scene):
    _, rods, nucleus = scene
    probs = target_maps(rods, SHAPE).astype(np.float32)  # the maps a perfect network gives
    instances = instances_from_maps(probs)
    iou = best_matches(rods, instances, SHAPE)
    assert iou.shape == (len(rods), len(instances)) == (10, 10)
    assert (iou.max(axis=1) > 0.8).all(), iou.round(2)  # every rod found
    assert ((iou > 0.5).sum(axis=0) == 1).all()  # and each instance is one rod
    crossing = rods[2] & rods[3]
    owners = [inst for inst in instances if inst.full_mask(SHAPE)[crossing].mean() > 0.9]
    assert len(owners) == 2  # the overlap pixels belong to both crossing rods
    assert not any(inst.full_mask(SHAPE)[nucleus].any() for inst in instances)


def test_classical_baseline_finds_the_lone_rod_and_drops_the_nucleus(scene):
    """What the baseline can do; two rods touching along their length have no neck for the
    distance transform to split (the network's touch map is there for that)."""
    image, rods, nucleus = scene
    instances = classical_instances(image, "light")
    iou = best_matches(rods, instances, SHAPE)
    assert iou[4:].max(axis=1).min() > 0.8
    assert not any((inst.full_mask(SHAPE) & nucleus).sum() > 0.5 * nucleus.sum()
                   for inst in instances)


def test_demo_model_manifest_and_graph():
    model = load_seg_model(demo_seg_model_dir())
    assert model.data["kind"] == "segmentation"
    assert model.data["op_audit"]["unsupported"] == []
    assert model.data["training"]["data"].startswith("synthetic")
    assert max(v["max_abs"] for v in model.data["parity"]["shapes"].values()) < 1e-4


@pytest.fixture(scope="module")
def demo_segmenter():
    seg = Segmenter()
    yield seg
    seg.close()


@pytest.mark.parametrize("background", ["light", "dark"])
def test_demo_model_on_a_synthetic_metaphase(demo_segmenter, background):
    """A metaphase the demo model never saw (seed outside its training set): most
    chromosomes found once, none on a nucleus."""
    image, masks = render_metaphase(424242, "46,XY", background=background)
    found = demo_segmenter.segment(image)
    assert found.background == background
    iou = best_matches(masks, found.instances, image.shape)
    recall = float(np.mean(iou.max(axis=1) >= 0.5))
    precision = float(np.mean(iou.max(axis=0) >= 0.5))
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    assert found.timing_ms["segmentation"] > 0


def test_metaphase_to_result_through_the_runtime(tmp_path):
    image, _ = render_metaphase(7, "47,XY,+21", background="light")
    with MetaphasePipeline() as mp:
        result = mp.run_image(image, name="meta")
    assert result["segmentation"]["found"] == result["n_chromosomes"] >= 30
    first = result["chromosomes"][0]
    assert first["file"] == "chr_01.png"
    x0, y0, x1, y1 = first["segment"]["box"]
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    assert len(first["segment"]["polygon"]) >= 3
    assert result["karyotype"] is not None or result["verdict"]["text"]
    assert {"segmentation", "instances", "cutouts"} <= set(result["timing_ms"])


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


def test_huge_image_is_refused_with_one_line(demo_segmenter):
    side = demo_segmenter.model.input.max_side + 8
    with pytest.raises(ImageTooLargeError, match="downscale it"):
        demo_segmenter.segment(np.zeros((16, side), np.uint8))


def test_sixteen_bit_image_is_segmented(demo_segmenter):
    image, masks = render_metaphase(11, size=(384, 512), background="dark")
    wide = image.astype(np.uint16) * 200  # a 16-bit camera image
    found = demo_segmenter.segment(wide)
    assert len(found.instances) >= 0.7 * len(masks)


def test_segmented_case_directory_runs_as_a_case(tmp_path):
    from vfinfer.io.segments import write_segmented
    from vfinfer.pipeline.metaphase import segment_image

    seg = Segmenter()
    image, _ = render_metaphase(5, size=(384, 512))
    segmented = segment_image(seg, image, "meta", "none")
    target = write_segmented(tmp_path, segmented, seg, "meta.png")
    paths, ignored = list_case(target)
    assert len(paths) == len(segmented.cutouts) and ignored == []
    doc = json.loads((target / "segmentation" / "segments.json").read_text())
    assert [c["file"] for c in doc["cutouts"]] == [p.name for p in paths]
    assert (target / "segmentation" / "overlay.png").is_file()
    mask = cv2.imread(str(target / "segmentation" / "masks" / "chr_01.png"), 0)
    x0, y0, x1, y1 = doc["cutouts"][0]["box"]
    assert mask.shape == (y1 - y0, x1 - x0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_segmented(tmp_path, segmented, seg, "meta.png")


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
