"""Cut-outs (``vfinfer.segment.cutouts``) of a segmented metaphase written as a case directory
(``vfinfer.io.segments``: the cut-outs, their masks, segments.json and the overlay of
``vfinfer.segment.overlay``) that runs as a case."""

import json

import cv2
import pytest

from vfinfer.segment.segmenter import Segmenter
from vfinfer.tools.synthesis.metaphases import render_metaphase
from vfinfer.util.images import list_case


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
