"""The three trunks (wrn, vgg16-res, chrblock): config and manifest, the papers' structure, MAC
counts, checkpoints, ONNX parity, FP16 graphs and the runtime, with the WRN presets unchanged."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.model.config import PRESETS, ModelConfig, count_macs, preset
from vfinfer.model.manifest import load_manifest
from vfinfer.pipeline import Pipeline
from vfinfer.util.images import read_case
from vfinfer_export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vfinfer_export.models import VarifocalNet
from vfinfer_export.reference import ReferencePipeline
from vfinfer_export.trunk_chrblock import ChannelAttention, ChrBlock

VARIANTS = ("compact-vgg", "compact-chrblock")
NEW_KEYS = {"trunk": "wrn", "depths": [], "stage_strides": [], "stem_pool": 1,
            "cardinality": 0, "base_width": 0, "se_reduction": 0}
# sha256 of the "key:shape" lines of the state_dict and count_macs, from the code before the
# trunk became a choice (commit cc353d1): the WRN presets' networks are unchanged
WRN_BEFORE = {
    "paper": ("17b6c53fa7657bfe1ff3e6f7e19d68c0ea720fd8d6a1f2981318901362b93d07", 104932859904),
    "compact": ("f4945b0255bb70bc3ee2b4e1dfb10d6e5d10a021530ee0c3c1a62864cc27989a", 130874624),
}


def meta_model(config):
    with torch.device("meta"):
        return VarifocalNet(config)


def layout_digest(model):
    lines = [f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --------------------------------------------------------------------------- config, WRN unchanged
@pytest.mark.parametrize("name", ["paper", "compact"])
def test_wrn_presets_are_unchanged(name):
    digest, macs = WRN_BEFORE[name]
    config = preset(name)
    assert layout_digest(meta_model(config)) == digest
    assert count_macs(config) == macs
    old = {k: v for k, v in config.to_dict().items() if k not in NEW_KEYS}
    assert {k: config.to_dict()[k] for k in NEW_KEYS} == NEW_KEYS
    assert ModelConfig.from_dict(old) == config  # configs written before the trunk choice


OLD_MANIFEST_KEYS = ("preset", "canvas", "g_input", "l_input", "t1", "t2", "stem_channels",
                     "stem_stride", "widths", "units_per_block", "cls_pool", "loc_pool",
                     "loc_hidden", "mlp_hidden", "pad_value", "n_types", "n_polarities",
                     "dispatch_threshold")


def test_a_manifest_from_before_the_trunk_choice_loads_as_the_compact_wrn(tmp_path):
    """A model exported before the trunk (and the normalization options) were written to
    the manifest: only the keys of that time in its config."""
    from vfinfer.model.manifest import demo_model_dir

    old = tmp_path / "old"
    shutil.copytree(demo_model_dir(), old)
    data = json.loads((old / "manifest.json").read_text())
    data["config"] = {k: data["config"][k] for k in OLD_MANIFEST_KEYS}
    (old / "manifest.json").write_text(json.dumps(data))
    manifest = load_manifest(old)
    assert "trunk" not in manifest.data["config"]
    assert manifest.config == preset("compact") and manifest.config.trunk == "wrn"


@pytest.mark.parametrize("base, change, message", [
    ("compact", {"trunk": "resnet"}, "unknown trunk 'resnet'"),
    ("compact", {"depths": (2, 2, 2)}, "depths does not apply to the wrn trunk"),
    ("compact", {"trunk": "vgg16-res"}, "stem_channels does not apply to the vgg16-res trunk"),
    ("compact-vgg", {"depths": (2, 2)}, "needs one depth"),
    ("compact-vgg", {"stage_strides": (2, 2, 2, 2, 4)}, "must be 1 or 2"),
    ("compact-chrblock", {"widths": (16, 24, 64, 128), "base_width": 1},
     "grouped width 12 .stage of 24. is not a multiple of cardinality 8"),
    ("compact-chrblock", {"se_reduction": 0}, "se_reduction >= 1"),
])
def test_config_refuses_what_its_trunk_cannot_build(base, change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**preset(base).to_dict(), **change})


def test_input_must_be_a_multiple_of_the_trunk_stride():
    data = {**preset("compact-chrblock").to_dict(), "stage_strides": [1, 2, 2, 2]}
    with pytest.raises(ValueError, match="2x2 trunk output, not divisible by cls_pool=4"):
        ModelConfig.from_dict(data)  # the compact L input, 64 / 32 = 2
    with pytest.raises(ValueError, match="G trunk output side must be divisible by loc_pool"):
        ModelConfig.from_dict({**data, "l_input": 128})  # G: 128 / 32 = 4, not 8
    with pytest.raises(ValueError, match="g_input=136 is not a multiple of the trunk stride 16"):
        ModelConfig.from_dict({**preset("compact-vgg").to_dict(), "g_input": 136})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_the_runtime_contract(name):
    """Same subnets, heads and tensor contract for every trunk; only C may differ."""
    config = preset(name)
    model = meta_model(config)
    with torch.device("meta"):
        g = model.gnet(torch.empty(2, 1, config.g_input, config.g_input))
        lf = model.lnet(torch.empty(2, 1, config.l_input, config.l_input))
    c, p = config.feature_channels, config.cls_pool
    assert g[0].shape == lf[0].shape == (2, c, p, p)
    assert g[1].shape == (2, 3) and g[2].shape == (2, 24) and g[3].shape == (2, 2)
    assert model.gnet.loc.fc1.in_features == c * config.loc_pool ** 2
    assert model.heads.type_mlp.fc1.in_features == 2 * config.feature_size


# --------------------------------------------------------------------------- the papers' networks
def test_paper_vgg_is_vgg16_with_block_shortcuts():
    config = preset("paper-vgg")
    model = meta_model(config)
    trunk = model.gnet.trunk
    convs3 = [m for m in trunk.modules()
              if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [m.out_channels for m in convs3] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    projections = [b.shortcut for b in trunk.blocks]
    assert [s is None for s in projections] == [False] * 4 + [True]  # 512 -> 512: identity
    with torch.device("meta"):
        assert trunk(torch.empty(1, 1, 256, 256)).shape == (1, 512, 16, 16)
        assert model.lnet.trunk(torch.empty(1, 1, 128, 128)).shape == (1, 512, 8, 8)


def test_paper_chrblock_is_chrnet4():
    """Fig. 3 (b) widths, G = 32, W = 4, and the 62.39 MB of Table II with 2, 3, 3, 2 blocks."""
    config = preset("paper-chrblock")
    trunk = meta_model(config).gnet.trunk
    blocks = list(trunk.blocks)
    assert len(blocks) == 10 and trunk.stem.kernel_size == (7, 7) and trunk.stem.stride == (2, 2)
    first, last = blocks[0], blocks[-1]
    assert (first.conv1.out_channels, first.conv2.groups) == (128, 32)
    assert first.conv3.out_channels == 256
    assert (last.conv1.out_channels, last.conv3.out_channels) == (1024, 2048)
    assert isinstance(first.attention, ChannelAttention)
    assert isinstance(first.attention.fc[1], torch.nn.LeakyReLU)
    assert first.attention.fc[0].out_features == 256 // 16
    with torch.device("meta"):
        assert trunk(torch.empty(1, 1, 224, 224)).shape == (1, 2048, 7, 7)  # Fig. 3 (b): 7x7
    chrnet4 = sum(p.numel() for p in trunk.parameters()) + 2048 * 24 + 24  # + phase 3's FC
    assert abs(chrnet4 * 4 / 2 ** 20 - 62.39) < 0.05


def test_chrblock_attention_rescales_channels():
    torch.manual_seed(0)
    block = ChrBlock(8, 16, 32, 1, groups=4, reduction=8).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        pre = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(
            torch.relu(block.bn1(block.conv1(x))))))))
        weights = torch.sigmoid(block.attention.fc[2](torch.nn.functional.leaky_relu(
            block.attention.fc[0](pre.mean((2, 3))))))
        expected = torch.relu(pre * weights[:, :, None, None] + block.shortcut(x))
        assert torch.allclose(block(x), expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_mac_count_matches_a_hook_count(name):
    """count_macs against the convs and FCs actually run (meta tensors: shapes only)."""
    config = preset(name)
    model = meta_model(config)
    total = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total.append(output.numel() * module.in_channels // module.groups * k)
        elif isinstance(module, torch.nn.Linear):
            total.append(output.numel() * module.in_features)

    for m in model.modules():
        m.register_forward_hook(hook)
    with torch.device("meta"):
        g = model.gnet(torch.empty(1, 1, config.g_input, config.g_input))
        lf = model.lnet(torch.empty(1, 1, config.l_input, config.l_input))
        model.heads(g[0], lf[0])
    assert sum(total) == count_macs(config)


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_checkpoint_round_trip_and_mismatch_report(name, tmp_path):
    model = VarifocalNet(preset(name)).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.config.trunk == model.config.trunk
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                  model.state_dict().values()))
    state = dict(model.state_dict())
    key = next(k for k in state if k.startswith("lnet.trunk.blocks.1."))
    del state[key]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    with pytest.raises(CheckpointError, match=f"missing keys: {key}"):
        load_checkpoint(bare, name)
    with pytest.raises(CheckpointError, match="does not match the compact model: missing keys"):
        load_checkpoint(path, "compact")  # another trunk's weights: named, not a crash


# --------------------------------------------------------------------------- export, runtime
@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_export_records_the_trunk_and_passes_parity(variant_dirs, name):
    variant = variant_dirs(name)
    manifest = load_manifest(variant.dir)
    config = preset(name)
    assert manifest.data["preset"] == name and manifest.config == config
    assert manifest.data["config"]["trunk"] == config.trunk
    assert "max abs err" in variant.output and f"({name} preset)" in variant.output
    c = config.feature_channels
    for role, output in (("gnet", "g_features"), ("lnet", "l_features")):
        record = {o["name"]: o for o in manifest.graph(role)["outputs"]}[output]
        assert record["shape"] == ["batch", c, 4, 4]
    assert [o["name"] for o in manifest.graph("gnet")["outputs"]] == [
        "g_features", "loc", "g_type_logits", "g_polarity_logits"]
    parity = manifest.data["parity"]
    assert parity["batches"] == [1, 7, 46]
    for per_output in parity["outputs"].values():
        for per_batch in per_output.values():
            assert set(per_batch) == {"1", "7", "46"}
            for entry in per_batch.values():
                assert entry["relative"] <= 1e-5
                assert entry.get("argmax_agreement", 1.0) == 1.0


@pytest.fixture(scope="module")
def case46(synth_root):
    case = next(p for p in sorted(synth_root.iterdir()) if p.is_dir() and "46XY" in p.name)
    return case, read_case(case)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_runtime_runs_the_trunk_like_pytorch(variant_dirs, case46, name):
    variant = variant_dirs(name)
    _, images = case46
    expected = ReferencePipeline(variant.model).infer(images)
    with Pipeline(variant.dir, backend="ort", batch_size=16) as pipe:
        got = pipe.infer(images)
    for key in ("type_probs", "polarity_probs"):
        np.testing.assert_array_equal(got[key].argmax(1), expected[key].argmax(1))
        assert np.abs(got[key] - expected[key]).max() < 1e-4
    assert np.abs(got["boxes"] - expected["boxes"]).max() < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_vfinfer_run_on_the_trunk(variant_dirs, case46, name, tmp_path):
    case, _ = case46
    result = CliRunner().invoke(main, ["run", str(case), "--model", str(variant_dirs(name).dir),
                                       "--out", str(tmp_path), "--no-karyogram"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / case.name / "result.json").read_text())
    assert data["n_chromosomes"] == 46 and data["model"]["preset"] == name


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_fp16_graphs_with_range_audit(variant_dirs, case46, name, tmp_path):
    from vfinfer.tools.precision.fp16 import add_fp16_graphs
    from vfinfer.tools.precision.fp16_graph import BOUNDED_OPS

    out = tmp_path / name
    shutil.copytree(variant_dirs(name).dir, out)
    audit = add_fp16_graphs(out, log=lambda *a: None)
    manifest = load_manifest(out)
    assert set(audit["ranges"]) == {"gnet", "lnet", "heads"}
    assert audit["agreement"]["type_argmax_agreement"] >= 0.99
    for role in ("gnet", "lnet", "heads"):
        path = manifest.graph_path(role, "fp16")
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        outputs = {v.name for v in model.graph.output}
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                   for v in list(model.graph.input) + list(model.graph.output))
        for entry in manifest.graph(role, "fp16")["kept_fp32"]:
            node = next(n for n in model.graph.node if n.name == entry["node"])
            if entry["reason"] == BOUNDED_OPS.get(entry["op"]):
                assert outputs & set(node.output)  # the fixed rule keeps graph outputs only
    _, images = case46
    with Pipeline(out, backend="ort", precision="fp16") as pipe:
        fp16_probs = pipe.infer(images)["type_probs"]
    with Pipeline(out, backend="ort") as pipe:
        fp32_probs = pipe.infer(images)["type_probs"]
    assert np.abs(fp16_probs - fp32_probs).max() < 0.05
