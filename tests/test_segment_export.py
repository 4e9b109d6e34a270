"""The PyTorch side of segmentation: the trainer on labelme files, the ONNX export with its
parity check, op audit and FP16 graph, and the runtime running the exported graph."""

import json

import numpy as np
import pytest
import torch

from vfinfer.segment.model import load_seg_model
from vfinfer.segment.segmenter import Segmenter
from vfinfer.tools.synthesis.metaphases import render_metaphase, write_metaphases
from vfinfer_export.seg_export import PROBABILITY_TOLERANCE, export_seg
from vfinfer_export.seg_model import SegNet
from vfinfer_export.seg_train import load_seg_checkpoint, train_seg

WIDTHS = (4, 8, 16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = SegNet(WIDTHS).eval()
    out = tmp_path_factory.mktemp("seg") / "model"
    manifest = export_seg(net, out, {"kind": "random-init"}, log=lambda _line: None)
    return net, out, manifest


@pytest.mark.slow
def test_parity_op_audit_and_fp16(exported):
    net, out, manifest = exported
    for shape, entry in manifest["parity"]["shapes"].items():
        assert entry["max_abs"] <= PROBABILITY_TOLERANCE, shape
        assert entry["agreement"] > 0.999
    assert manifest["op_audit"]["unsupported"] == []
    assert {"Conv", "ConvTranspose", "Sigmoid"} <= set(manifest["op_audit"]["ops"])
    fp16 = manifest["graphs"]["seg_fp16"]
    assert (out / fp16["file"]).is_file() and fp16["agreement_vs_fp32"] > 0.99
    assert any(k["reason"].startswith("output sigmoid") for k in fp16["kept_fp32"])
    assert not list(out.glob("*.data"))  # one self-contained file per graph


@pytest.mark.slow
def test_runtime_runs_the_exported_graph_like_torch(exported):
    net, out, _ = exported
    seg = Segmenter(out)
    image, _ = render_metaphase(1, size=(200, 300))  # not a multiple of 4: padded
    probs = seg.maps(image)
    from vfinfer.segment.model import prepare_input

    x, _ = prepare_input(image, load_seg_model(out).input)
    with torch.no_grad():
        ref = net.probabilities(torch.from_numpy(x)).numpy()[0][:, :200, :300]
    assert probs.shape == (3, 200, 300)
    assert float(np.abs(probs - ref).max()) < 1e-4
    fp16 = Segmenter(out, precision="fp16").maps(image)
    assert float(np.mean((fp16 > 0.5) == (probs > 0.5))) > 0.99


@pytest.mark.slow
def test_trainer_learns_and_resumes(tmp_path):
    write_metaphases(tmp_path / "data", seed=3, count=2, size=(192, 256))
    log = []
    train_seg(tmp_path / "data", tmp_path / "run", widths=WIDTHS, epochs=1, crop=64,
              crops_per_image=2, batch_size=4, log=log.append)
    path = train_seg(tmp_path / "data", tmp_path / "run", widths=WIDTHS, epochs=2, crop=64,
                     crops_per_image=2, batch_size=4, resume=True, log=log.append)
    assert any("resuming after epoch 1" in line for line in log)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2]
    net, extra = load_seg_checkpoint(path)
    assert net.widths == WIDTHS and extra["training"]["images"] == 2


@pytest.mark.slow
def test_trainer_reads_coco_json(tmp_path):
    import cv2

    from vfinfer.tools.synthesis.metaphases import mask_polygon

    image, masks = render_metaphase(8, size=(192, 256))
    cv2.imwrite(str(tmp_path / "m.png"), image)
    doc = {"images": [{"id": 1, "file_name": "m.png"}], "categories": [{"id": 1}],
           "annotations": [{"id": k, "image_id": 1, "category_id": 1,
                            "segmentation": [mask_polygon(m).ravel().tolist()]}
                           for k, m in enumerate(masks)]}
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    path = train_seg(tmp_path / "coco.json", tmp_path / "run", widths=WIDTHS, epochs=1,
                     crop=64, crops_per_image=1, batch_size=2, log=lambda _line: None)
    _, extra = load_seg_checkpoint(path)
    assert extra["training"]["files"] == ["m.png"]
    assert extra["training"]["areas"]["chromosomes"] == len(masks)


def test_wrong_checkpoint_is_named(tmp_path):
    bad = tmp_path / "not_seg.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not a vfinfer segmentation checkpoint"):
        load_seg_checkpoint(bad)


def test_scale_jitter_scales_crops_and_their_maps_alike():
    """--scale-jitter: crops of the asked size whose maps stay binary and lie on the scaled
    chromosome; off, the crops are those of a run without the option (same seed)."""
    from vfinfer_export.seg_train import epoch_batches

    rng = np.random.default_rng(0)
    x = np.zeros((120, 160), np.float32)
    targets = np.zeros((3, 120, 160), np.uint8)
    x[40:80, 60:70], targets[0, 40:80, 60:70] = 3.0, 1  # one bright 40 x 10 chromosome
    x += rng.normal(0, 0.01, x.shape).astype(np.float32)
    examples = [(x, targets)]

    def batches(jitter):
        return list(epoch_batches(examples, 0, 0, 64, 6, 3, scale_jitter=jitter))

    def whole_areas(found):
        areas = []
        for xs, ts in found:
            assert xs.shape[1:] == (1, 64, 64) and ts.shape[1:] == (3, 64, 64)
            assert set(np.unique(ts.numpy())) <= {0.0, 1.0}
            on = ts[:, 0].numpy() > 0
            assert (xs[:, 0].numpy()[on] > 1.0).mean() > 0.9  # the map lies on the chromosome
            edge = on[:, 0].any(1) | on[:, -1].any(1) | on[:, :, 0].any(1) | on[:, :, -1].any(1)
            areas += [int(m.sum()) for m, cut in zip(on, edge) if m.any() and not cut]
        return areas

    plain, again = batches(0.0), batches(0.0)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(plain, again))
    assert set(whole_areas(plain)) == {400}  # the 40 x 10 chromosome, turned or not
    scaled = whole_areas(batches(0.5))
    assert any(abs(area - 400) > 100 for area in scaled)  # other sizes


def test_tuning_reaches_a_seam_the_network_is_unsure_of(monkeypatch):
    """export-seg --tune: the grid goes down to touch thresholds a briefly trained network
    needs (its seams between touching chromosomes at a fraction of a percent), and the best
    instance F1 wins."""
    from types import SimpleNamespace

    import vfinfer.backends.ort
    import vfinfer.io.labelme
    import vfinfer.segment.segmenter
    from vfinfer.segment.instances import InstanceParams
    from vfinfer_export.seg_export import tune_instance_params

    left, right = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    left[10:50, 10:20], right[10:50, 20:30] = True, True  # side by side, touching
    probs = np.zeros((3, 64, 64), np.float32)
    probs[0][left | right] = 0.9
    probs[2][10:50, 19:21] = 0.004  # the seam, barely seen
    monkeypatch.setattr(vfinfer.backends.ort, "OrtRunner", lambda path: None)
    monkeypatch.setattr(vfinfer.io.labelme, "read_labelme", lambda path: SimpleNamespace(
        image=np.zeros((64, 64), np.uint8), polygons=[]))
    monkeypatch.setattr(vfinfer.io.labelme, "polygon_masks", lambda polygons, shape: [left, right])
    monkeypatch.setattr(vfinfer.segment.segmenter, "network_maps",
                        lambda runner, spec, image: probs)
    params, grid = tune_instance_params("seg.onnx", None, ["a.json"], InstanceParams())
    assert params.touch < 0.004 and params.chromosome == 0.5
    assert max(g["f1"] for g in grid) == 1.0
    assert all(g["f1"] < 1.0 for g in grid if g["touch"] > 0.004)  # one object: the pair
