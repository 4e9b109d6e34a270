"""The optional OpenVINO backend (skipped when openvino, an optional extra, is not installed)."""

import threading

import numpy as np
import pytest

from vfinfer.backends import BackendError
from vfinfer.pipeline import Pipeline
from vfinfer.util.images import read_case

pytest.importorskip("openvino", reason="the optional openvino extra is not installed")

pytestmark = pytest.mark.slow  # every test runs the exported compact model (model_dir)


@pytest.fixture(scope="module")
def images(synth_root):
    case = next(p for p in sorted(synth_root.iterdir()) if p.is_dir())
    return read_case(case)[0]


def test_f32_matches_onnxruntime(model_dir, images):
    with Pipeline(model_dir, backend="ort") as ort_pipe:
        expected = ort_pipe.infer(images)
    with Pipeline(model_dir, backend="openvino", precision="fp32", batch_size=20) as ov_pipe:
        got = ov_pipe.infer(images)
        described = ov_pipe.backend.describe()
    assert described["name"] == "openvino-cpu" and described["precision"] == "fp32"
    np.testing.assert_array_equal(got["type_probs"].argmax(1), expected["type_probs"].argmax(1))
    assert np.abs(got["type_probs"] - expected["type_probs"]).max() < 1e-4
    assert np.abs(got["boxes"] - expected["boxes"]).max() < 1.0


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_elsewhere(model_dir, images):
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with Pipeline(model_dir, backend="openvino", precision="bf16") as pipe:
            result = pipe.run_case(images)
            compiled = pipe.backend.gnet.compiled.get_property("INFERENCE_PRECISION_HINT")
        assert result["backend"]["precision"] == "bf16" and compiled.get_type_name() == "bf16"
        assert result["n_chromosomes"] == len(images)
    else:  # OpenVINO would quietly run f32: the backend must not claim bf16
        with pytest.raises(BackendError, match="no bfloat16 support"):
            Pipeline(model_dir, backend="openvino", precision="bf16")


def test_threads_get_their_own_requests(model_dir, images):
    with Pipeline(model_dir, backend="openvino", precision="fp32") as pipe:
        sequential = [pipe.infer(images[i::3])["type_probs"] for i in range(3)]
        results = [None] * 3

        def work(i):
            results[i] = pipe.infer(images[i::3])["type_probs"]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for a, b in zip(results, sequential):
        np.testing.assert_array_equal(a, b)


def test_refuses_other_precisions(model_dir):
    with pytest.raises(BackendError, match="fp32 or bf16"):
        Pipeline(model_dir, backend="openvino", precision="int8")
