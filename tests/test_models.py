"""Model definitions: output shapes per preset (Tables II-III), MAC counts."""

import pytest
import torch

from vfinfer.model.config import PRESETS, ModelConfig, preset
from vfinfer_export.models import VarifocalNet, count_macs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_output_shapes(name):
    config = preset(name)
    with torch.device("meta"):  # shapes without computing: the paper preset is 105 GMAC
        model = VarifocalNet(config)
        image = torch.empty(3, 1, config.g_input, config.g_input)
        crop = torch.empty(3, 1, config.l_input, config.l_input)
        trunk = model.gnet.trunk(image)
        g_feat, loc, g_type, g_pol = model.gnet(image)
        l_feat, l_type, l_pol = model.lnet(crop)
        type_p, pol_p = model.heads.probabilities(g_feat, l_feat)
    c, p = config.feature_channels, config.cls_pool
    side = config.g_input // config.trunk_stride
    assert trunk.shape == (3, c, side, side)
    assert g_feat.shape == l_feat.shape == (3, c, p, p)
    assert loc.shape == (3, 3)
    assert g_type.shape == l_type.shape == type_p.shape == (3, 24)
    assert g_pol.shape == l_pol.shape == pol_p.shape == (3, 2)
    assert model.lnet.trunk(crop).shape[-1] == config.l_input // config.trunk_stride


def test_paper_preset_matches_the_paper():
    config = preset("paper")
    with torch.device("meta"):
        model = VarifocalNet(config)
        trunk = model.gnet.trunk(torch.empty(1, 1, 256, 256))
        l_trunk = model.lnet.trunk(torch.empty(1, 1, 128, 128))
    assert tuple(trunk.shape) == (1, 640, 32, 32)  # Table II, G-Net deep CNNs
    assert tuple(l_trunk.shape) == (1, 640, 16, 16)  # Table II, L-Net deep CNNs
    convs = [m for m in model.gnet.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 28  # WRN-28: stem + 3 x 4 units x 2 convs + 3 projection shortcuts
    assert model.gnet.loc.fc1.out_features == 1024
    assert model.heads.type_mlp.fc1.out_features == 512
    assert (config.canvas, config.t1, config.t2) == (320, 64, 128)


def test_compact_preset_is_cpu_sized():
    gmac = count_macs(preset("compact")) / 1e9
    assert 0.05 < gmac < 0.2  # documented as about 0.13 GMAC per chromosome
    assert count_macs(preset("paper")) > 500 * count_macs(preset("compact"))


def test_mac_count_matches_a_hook_count():
    config = preset("compact")
    model = VarifocalNet(config).eval()
    total = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total.append(output.numel() * module.in_channels * k)
        elif isinstance(module, torch.nn.Linear):
            total.append(module.in_features * module.out_features)

    for m in model.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        g = model.gnet(torch.zeros(1, 1, config.g_input, config.g_input))
        lf = model.lnet(torch.zeros(1, 1, config.l_input, config.l_input))
        model.heads(g[0], lf[0])
    assert sum(total) == count_macs(config)


def test_config_checks_sizes():
    data = preset("compact").to_dict()
    data["g_input"] = 120  # 120 / 16 is not a whole trunk output
    with pytest.raises(ValueError, match="g_input"):
        ModelConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**preset("compact").to_dict(), "colour": 1})
