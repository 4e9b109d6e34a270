"""``vfinfer segment``'s output: a case directory of cut-outs a user can check, correct and then
``vfinfer run``.

    OUT/<image>/chr_01.png ...              the cut-outs (rotated and cropped for the classifier)
    OUT/<image>/segmentation/segments.json  per cut-out: box, polygon, area, score, turn; the
                                            source image, the segmentation model, timings
    OUT/<image>/segmentation/overlay.png    the instances drawn on the metaphase
    OUT/<image>/segmentation/masks/chr_01.png  each mask (255 = chromosome) over its box

``list_case`` skips the ``segmentation`` folder, so the directory runs as a case as it is; a
user who deletes or replaces a cut-out simply runs what is left. The directory is built under
a temporary name beside OUT/<image> and renamed into place when complete; an existing one is
kept unless overwrite is asked.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from vfinfer.segment.overlay import overlay_png
from vfinfer.util.images import SEGMENTATION_DIR, encode_png


def _files(segmented, segmenter, source):
    """{relative path: bytes} of one segmented metaphase."""
    files = {}
    for cut in segmented.cutouts:
        files[cut.name] = encode_png(cut.image)
        files[f"{SEGMENTATION_DIR}/masks/{cut.name}"] = encode_png(cut.mask.astype("uint8") * 255)
    files[f"{SEGMENTATION_DIR}/overlay.png"] = overlay_png(segmented.gray, segmented.cutouts)
    doc = {"image": str(source), **segmented.section(segmenter), "notes": segmented.notes,
           "cutouts": [cut.record() for cut in segmented.cutouts]}
    files[f"{SEGMENTATION_DIR}/segments.json"] = (json.dumps(doc, indent=1) + "\n").encode()
    return files


def write_segmented(out_root, segmented, segmenter, source, overwrite=False):
    """Write OUT/<name>/ (module doc); returns its path. ``FileExistsError`` when it exists
    and ``overwrite`` is false."""
    target = Path(out_root) / segmented.name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; left untouched (pass --overwrite "
                              "to replace)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{segmented.name}.partial-"))
    try:
        for rel, data in _files(segmented, segmenter, source).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        tmp.chmod(0o755)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
