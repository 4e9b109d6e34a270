"""``vfinfer build`` (vfinfer.tools.precision.engines) against fake TensorRT 10 and 11 modules
written to the documented API: flags and FP32 constraints, the FP16 graphs, the precision
verdict and parser errors. Real builds are in tests/test_gpu.py."""

import enum
import json
import shutil
import sys
import types
from pathlib import Path

import onnx
import pytest

from vfinfer.backends import trt as trt_backend
from vfinfer.model.manifest import load_manifest
from vfinfer.util.machine import cuda_devices

pytestmark = pytest.mark.slow  # every test builds from the exported compact model (model_dir)

GPU_COUNT, GPU_DESCRIPTION = cuda_devices()
needs_gpu = pytest.mark.skipif(GPU_COUNT == 0, reason=f"no CUDA device: {GPU_DESCRIPTION}")
ROOT = Path(__file__).resolve().parents[1]



# ============================================== CPU: build_engines against a fake TensorRT
class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def _fake_tensorrt(version, half_engine=True, parse_ok=True):
    """A tensorrt module with just what trt_build uses; TRT 11 lacks the precision flags."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16 = "float32", "float16"

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="json")
    trt.LayerType = types.SimpleNamespace(CONSTANT="constant", OTHER="other")
    flags = {"FP16": "fp16"}
    if version.startswith("10."):
        flags["OBEY_PRECISION_CONSTRAINTS"] = "obey"
        trt.BuilderFlag = types.SimpleNamespace(**flags)
    else:
        trt.BuilderFlag = types.SimpleNamespace(DIRECT_IO_REMOVED="x")  # no FP16 in 11

    class Tensor:
        def __init__(self, name, dtype="float32"):
            self.name, self.dtype = name, dtype

    class Layer:
        def __init__(self, name, node, kind, half_graph):
            self.name, self.metadata, self.type = name, f"[ONNX Layer: {node}]", kind
            self.precision, self.output_types, self.half_graph = None, {}, half_graph
            self._outputs = [Tensor(name + ":0")]
            self.num_outputs = 1

        def get_output(self, i):
            return self._outputs[i]

        def set_output_type(self, i, dtype):
            self.output_types[i] = dtype

    class Network:
        def __init__(self, flags):
            assert flags == 0
            self.layers, self.inputs = [], []

        num_layers = property(lambda self: len(self.layers))
        num_inputs = property(lambda self: len(self.inputs))

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def node(self):
            return 3

        def desc(self):
            return "unsupported attribute"

        def node_name(self):
            return "node_x"

        def node_operator(self):
            return "GridSample"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            if not parse_ok:
                self.num_errors = 1
                return False
            model = onnx.shape_inference.infer_shapes(onnx.load(path))
            types_ = {v.name: v.type.tensor_type.elem_type
                      for v in list(model.graph.value_info) + list(model.graph.output)}
            inits = {i.name for i in model.graph.initializer}
            self.network.inputs = [Tensor(v.name) for v in model.graph.input
                                   if v.name not in inits]
            for node in model.graph.node:
                half = types_.get(node.output[0]) == onnx.TensorProto.FLOAT16
                if node.op_type == "Gemm":
                    self.network.layers.append(
                        Layer(node.name + " weights", node.name, "constant", half))
                self.network.layers.append(Layer(node.name, node.name, "other", half))
            return True

        def get_error(self, i):
            return ParserError()

    class Cache:
        def serialize(self):
            return b"timing cache"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.profiling_verbosity = set(), [], None

        def set_memory_pool_limit(self, pool, size):
            assert pool == "workspace" and size > 0

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return Cache()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (low, opt, high)

    class Builder:
        built = []

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            assert config.profiling_verbosity == "detailed" and len(config.profiles) == 1
            Builder.built.append((network, config))
            weak_fp16 = "fp16" in config.flags
            layers = []
            for layer in network.layers:
                half = layer.half_graph or (weak_fp16 and layer.precision != "float32")
                layers.append({"Name": layer.name, "LayerType": "CaskConvolution",
                               "Metadata": layer.metadata,
                               "Outputs": [{"Format/Datatype": "Half" if half and half_engine
                                            else "Float"}]})
            return json.dumps({"Layers": layers}).encode()

    class Engine:
        def __init__(self, plan):
            self.info = plan.decode()

        def create_engine_inspector(self):
            return types.SimpleNamespace(get_engine_information=lambda fmt: self.info)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(plan)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


FAKE_MACHINE = {"tensorrt": None, "cuda": "12.6", "cuda_driver": "12.8",
                "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _with_fake_tensorrt(monkeypatch, trt):
    from vfinfer.tools.precision import engines as trt_build

    monkeypatch.setattr(trt_build, "cuda_devices", lambda: (1, "fake GPU"))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "machine_facts",
                        lambda device=0: {**FAKE_MACHINE, "tensorrt": trt.__version__})
    return trt_build


def test_build_with_fake_trt10_uses_flag_and_fp32_constraints(model_dir, tmp_path,
                                                              monkeypatch):
    trt = _fake_tensorrt("10.7.0.23")
    trt_build = _with_fake_tensorrt(monkeypatch, trt)
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    records = trt_build.build_engines(out, max_batch=32, opt_batch=16, log=lambda *a: None)
    manifest = load_manifest(out)
    machine = {**FAKE_MACHINE, "tensorrt": "10.7.0.23"}
    for role in ("gnet", "lnet", "heads"):
        record = manifest.data["engines"][role]
        assert record == records[role] and record["source_graph"] == f"{role}.onnx"
        assert record["build_path"].startswith("trt10")
        assert trt_backend.engine_problems(manifest, machine, role) == []
    network, config = {n: (net, cfg) for n, (net, cfg) in zip(
        ("gnet", "lnet", "heads"), trt.Builder.built)}["heads"]
    assert config.flags == {"fp16", "obey"}
    constrained = {layer.name for layer in network.layers if layer.precision == "float32"}
    kept = set(records["heads"]["kept_fp32"])
    assert {"node_softmax", "node_softmax_1"} <= kept and constrained == kept  # no weights
    assert all(layer.output_types == {0: "float32"} for layer in network.layers
               if layer.name in constrained)
    assert records["heads"]["fp32_constraints"]["unmatched_nodes"] == []
    assert records["gnet"]["profile"]["image"] == [[1, 1, 128, 128], [16, 1, 128, 128],
                                                   [32, 1, 128, 128]]
    assert (out / "gnet.engine").read_bytes().startswith(b'{"Layers"')
    assert (out / "timing.cache").read_bytes() == b"timing cache"


def test_build_with_fake_trt11_uses_the_fp16_graphs_without_flags(model_dir, tmp_path,
                                                                  monkeypatch):
    trt = _fake_tensorrt("11.4.0")
    trt_build = _with_fake_tensorrt(monkeypatch, trt)
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    records = trt_build.build_engines(out, log=lambda *a: None)  # converts to FP16 first
    manifest = load_manifest(out)
    assert "gnet_fp16" in manifest.data["graphs"] and "fp16_audit" in manifest.data
    for role, (network, config) in zip(("gnet", "lnet", "heads"), trt.Builder.built):
        assert config.flags == set()
        assert records[role]["source_graph"] == f"{role}_fp16.onnx"
        assert records[role]["source_sha256"] == manifest.graph(role, "fp16")["sha256"]
        assert records[role]["precision_check"]["half_compute_layers"] > 0
        assert records[role]["fp32_constraints"] is None
        assert not any(layer.precision for layer in network.layers)


def test_build_refuses_an_engine_without_fp16_layers(model_dir, tmp_path, monkeypatch):
    trt_build = _with_fake_tensorrt(monkeypatch, _fake_tensorrt("10.7.0", half_engine=False))
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    with pytest.raises(trt_build.BuildError, match="gnet.engine: no FP16 compute layer.*"
                                                   "refusing to record it"):
        trt_build.build_engines(out, log=lambda *a: None)
    assert "engines" not in load_manifest(out).data and not (out / "gnet.engine").exists()


def test_build_reports_parser_errors_per_node(model_dir, tmp_path, monkeypatch):
    trt_build = _with_fake_tensorrt(monkeypatch, _fake_tensorrt("10.7.0", parse_ok=False))
    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    with pytest.raises(trt_build.BuildError,
                       match=r"gnet.onnx: TensorRT's ONNX parser failed: node 3 \(node_x, "
                             r"GridSample\): unsupported attribute"):
        trt_build.build_engines(out, log=lambda *a: None)
