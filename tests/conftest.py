"""Shared fixtures: the compact model the runtime tests run (exported once per session, or the
bundled demo model without the export extra), synthetic cases, a rod scene for the
segmentation tests. Plain helper functions are in helpers.py."""

import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vfinfer.model.config import preset
from vfinfer.model.manifest import demo_model_dir
from vfinfer.tools.synthesis.cells import write_cases

from helpers import SHAPE, rod

PKI3 = Path(__file__).resolve().parents[2] / "shared" / "data" / "pki3"

# test modules that import an extra at the top: without it they are not collected (said in
# the report header), and the runtime tests run on the bundled demo model instead
NEEDS = {
    "torch": ["test_checkpoint.py", "test_export.py", "test_models.py", "test_trunks.py",
              "test_segment_export.py"],
    "onnx": ["test_export.py", "test_fp16.py", "test_op_audit.py", "test_quantize.py",
             "test_trt_build_fakes.py", "test_trunks.py", "test_segment_export.py"],
}
MISSING = [name for name in NEEDS if importlib.util.find_spec(name) is None]
collect_ignore = sorted({f for name in MISSING for f in NEEDS[name]})


def pytest_report_header(config):
    if not MISSING:
        return []
    return [f"not installed: {', '.join(MISSING)}; left out: {', '.join(collect_ignore)} "
            "(pip install -e '.[export,dev]' runs them)"]


@pytest.fixture(scope="session")
def compact_model():
    torch = pytest.importorskip("torch", reason="the export extra (torch) is not installed")
    from vfinfer_export.models import VarifocalNet

    torch.manual_seed(0)
    return VarifocalNet(preset("compact")).eval()


def export_side_installed():
    return all(importlib.util.find_spec(name) is not None
               for name in ("torch", "onnx", "vfinfer_export"))


@pytest.fixture(scope="session")
def model_dir(request, tmp_path_factory):
    """A random-init compact model exported from PyTorch (with the export extra), else a copy
    of the bundled demo model, so the runtime tests still run where torch is not installed."""
    out = tmp_path_factory.mktemp("models") / "compact"
    if not export_side_installed():
        shutil.copytree(demo_model_dir(), out)
        return out
    from vfinfer_export.onnx_export import export_model

    compact_model = request.getfixturevalue("compact_model")
    export_model(compact_model, out, {"kind": "random-init", "seed": 0}, log=lambda *a: None)
    return out


TRUNK_VARIANTS = ("compact-vgg", "compact-chrblock")  # the other trunks, at compact sizes


@pytest.fixture(scope="session")
def variant_dirs(tmp_path_factory):
    """``get(preset)`` -> namespace(dir, model, output): an untrained model exported once per
    session through ``vfinfer export --preset P --random-init``, the PyTorch model it holds
    and what the command printed."""
    pytest.importorskip("torch", reason="the export extra (torch) is not installed")
    from click.testing import CliRunner

    from vfinfer.cli import main
    from vfinfer_export.models import random_model

    root, made = tmp_path_factory.mktemp("variants"), {}

    def get(name):
        if name not in made:
            out = root / name
            result = CliRunner().invoke(main, ["export", "--preset", name, "--random-init",
                                               "--seed", "0", "--out", str(out)])
            assert result.exit_code == 0, result.output
            made[name] = SimpleNamespace(dir=out, model=random_model(preset(name), seed=0),
                                         output=result.output)
        return made[name]
    return get


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Two synthetic cells: a normal male and a trisomy 21 (46 and 47 images)."""
    root = tmp_path_factory.mktemp("synth")
    write_cases("46,XY", root, seed=11)
    write_cases("47,XY,+21", root, seed=12)
    return root


@pytest.fixture()
def case_dirs(synth_root):
    return sorted(p for p in synth_root.iterdir() if p.is_dir())


@pytest.fixture()
def fresh_copy(tmp_path):
    """Copy a directory into tmp_path (so a test can damage it)."""
    def copy(src, name=None):
        dst = tmp_path / (name or Path(src).name)
        shutil.copytree(src, dst)
        return dst
    return copy


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
