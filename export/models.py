"""Varifocal-Net in PyTorch (Qin et al. 2019, section II-A and Tables II-III).

* ``Trunk``: first conv, three residual blocks of wide residual units (Fig. 4; the first unit of
  each block changes channels and downsamples with a strided conv and a 1x1 projection
  shortcut), final BN + ReLU. The config's ``trunk`` may name another deep CNN instead
  (``make_trunk``): the residual VGG-16 (``trunk_vgg``) or ChrNet4 (``trunk_chrblock``); the
  subnets and heads below take their sizes from the config and are the same for all three.
* ``GNet``: trunk + classification subnet (max-pool to cls_pool^2, FC to 24 types, FC to 2
  polarities) + localization subnet (max-pool to loc_pool^2, FC, FC 3, sigmoid; eq. 4).
* ``LNet``: trunk + its own classification subnet.
* ``Heads``: two MLPs on concat(G pooled features, L pooled features) (Table III, Fig. 6).
"""

import torch
from torch import nn
from torch.nn import functional as F

from vfinfer.model.config import count_macs  # noqa: F401 - re-exported for the torch side

from .trunk_chrblock import ChrBlockTrunk
from .trunk_vgg import VGG16ResTrunk


class WideResidualUnit(nn.Module):
    """Pre-activation wide residual unit (Fig. 4): BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut."""

    def __init__(self, n_in, n_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(n_in)
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if n_in != n_out or stride != 1:
            self.shortcut = nn.Conv2d(n_in, n_out, 1, stride, 0, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class Trunk(nn.Module):
    """The deep CNN shared in design by G-Net and L-Net (section II-A.1)."""

    def __init__(self, config):
        super().__init__()
        self.stem = nn.Conv2d(1, config.stem_channels, 3, config.stem_stride, 1, bias=False)
        units, n_in = [], config.stem_channels
        for width in config.widths:
            for i in range(config.units_per_block):
                units.append(WideResidualUnit(n_in, width, 2 if i == 0 else 1))
                n_in = width
        self.units = nn.Sequential(*units)
        self.bn = nn.BatchNorm2d(n_in)

    def forward(self, x):
        return F.relu(self.bn(self.units(self.stem(x))))


TRUNKS = {"wrn": Trunk, "vgg16-res": VGG16ResTrunk, "chrblock": ChrBlockTrunk}


def make_trunk(config):
    """The deep CNN that ``config.trunk`` names (the same design for G-Net and L-Net)."""
    return TRUNKS[config.trunk](config)


class ClassificationSubnet(nn.Module):
    """Max-pool to cls_pool x cls_pool, then one FC for type and one for polarity (eq. 1-3)."""

    def __init__(self, config, trunk_side):
        super().__init__()
        self.pool = nn.MaxPool2d(trunk_side // config.cls_pool)
        self.fc_type = nn.Linear(config.feature_size, config.n_types)
        self.fc_polarity = nn.Linear(config.feature_size, config.n_polarities)

    def forward(self, trunk_out):
        pooled = self.pool(trunk_out)
        flat = torch.flatten(pooled, 1)
        return pooled, self.fc_type(flat), self.fc_polarity(flat)


class LocalizationSubnet(nn.Module):
    """Max-pool, FC, FC 3, sigmoid -> (u_x, u_y, u_l) in [0, 1] (eq. 4)."""

    def __init__(self, config, trunk_side):
        super().__init__()
        self.pool = nn.MaxPool2d(trunk_side // config.loc_pool)
        n_in = config.feature_channels * config.loc_pool * config.loc_pool
        self.fc1 = nn.Linear(n_in, config.loc_hidden)
        self.fc2 = nn.Linear(config.loc_hidden, 3)

    def forward(self, trunk_out):
        flat = torch.flatten(self.pool(trunk_out), 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(flat))))


class GNet(nn.Module):
    """Global network: returns (pooled features, loc, type logits, polarity logits)."""

    def __init__(self, config):
        super().__init__()
        side = config.g_input // config.trunk_stride
        self.trunk = make_trunk(config)
        self.cls = ClassificationSubnet(config, side)
        self.loc = LocalizationSubnet(config, side)

    def forward(self, image):
        trunk_out = self.trunk(image)
        pooled, type_logits, polarity_logits = self.cls(trunk_out)
        return pooled, self.loc(trunk_out), type_logits, polarity_logits


class LNet(nn.Module):
    """Local network: returns (pooled features, type logits, polarity logits)."""

    def __init__(self, config):
        super().__init__()
        self.trunk = make_trunk(config)
        self.cls = ClassificationSubnet(config, config.l_input // config.trunk_stride)

    def forward(self, crop):
        return self.cls(self.trunk(crop))


class MLP(nn.Module):
    def __init__(self, n_in, n_hidden, n_out):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.fc2 = nn.Linear(n_hidden, n_out)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Heads(nn.Module):
    """Stage 2 (Fig. 6): type and polarity MLPs on the concatenated G and L features.

    ``forward`` returns logits; ``probabilities`` applies the softmax layers.
    """

    def __init__(self, config):
        super().__init__()
        n_in = 2 * config.feature_size
        self.type_mlp = MLP(n_in, config.mlp_hidden, config.n_types)
        self.polarity_mlp = MLP(n_in, config.mlp_hidden, config.n_polarities)

    def forward(self, g_features, l_features):
        fused = torch.cat([torch.flatten(g_features, 1), torch.flatten(l_features, 1)], 1)
        return self.type_mlp(fused), self.polarity_mlp(fused)

    def probabilities(self, g_features, l_features):
        type_logits, polarity_logits = self(g_features, l_features)
        return torch.softmax(type_logits, 1), torch.softmax(polarity_logits, 1)


class VarifocalNet(nn.Module):
    """All trainable parts of one model; its state_dict is what a checkpoint stores."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gnet = GNet(config)
        self.lnet = LNet(config)
        self.heads = Heads(config)
        self.apply(he_init)


def random_model(config, seed=0):
    """A He-initialized, untrained model in eval mode, reproducible from ``seed``."""
    torch.manual_seed(seed)
    return VarifocalNet(config).eval()


def he_init(module):
    """Step 1 of the training strategy (section II-C): He initialization."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
