"""The ``chrblock`` trunk: ChrNet4 of Render-Attention as G-Net's and L-Net's deep CNN.

Render-Attention (Wang et al., ``../shared/papers/render-attention-wang-karyotyping.txt``,
section II-B.3 and Fig. 3) classifies chromosomes with ChrNet4, a stack of "ChrBlock"s in the
ResNet / ResNeXt / SENet lineage. What the paper fixes, and is followed here:

* ChrBlock: three convolutions of kernel 1x1, 3x3 and 1x1, each followed by batch
  normalization, activated by ReLU, and an attention layer (Fig. 3 a): average pooling, a
  linear layer, a leaky ReLU, a linear layer and a sigmoid (``attention.fc.0``, ``.2``, ``.3``
  keep the paper's layer indices);
* phase 1: a convolution to half the side (Fig. 3 b: 7x7, stride 2, 64 channels), then a 3x3
  max-pool of stride 2 (``stem_*``);
* phase 2: four stages of base channels c = 64, 128, 256, 512, with cardinality G = 32 and
  base width W = 4; the grouped 3x3 conv has C = c x W / C0 x G channels (C0 = 64, the first
  stage's c) and each stage ends in 4c channels (Fig. 3 b: 128/256, 256/512, 512/1024,
  1024/2048); stages 2-4 halve the side (56, 28, 14, 7 for its 224-pixel input);
* blocks per stage: the text says "twice, three times, and twice" for four stages and Fig. 3
  shows x2 for stages 1 and 4; 2, 3, 3, 2 is the reading that matches the paper's model size:
  with SENet's reduction ratio 16 it has 16.36 M parameters (24 classes, one input channel),
  62.40 MB in float32 against the 62.39 MB of Table II (ResNeXt50 and SENet50's sizes there
  match their 24-class parameter counts the same way, in MiB).

What the paper leaves open, and what was chosen:

* attention reduction ratio 16 (SENet's default; it also gives the reported size), linear
  layers with biases, the leaky ReLU's slope PyTorch's default 0.01;
* the attention rescales the third BN's output before the residual addition, and the ReLU of
  the third convolution follows the addition (SE-ResNeXt); the stride of a stage's first block
  sits on the grouped 3x3 conv (ResNeXt); the shortcut is identity, or a strided 1x1 conv + BN
  where the channels or the side change;
* phase 3 (average pooling, a 24-way FC) and the center loss of eq. 3 are not used: the
  Varifocal-Net classification and localization subnets follow the trunk, and the project's
  trainer uses the same losses for every trunk. With the 256-pixel G input the trunk output is
  2048 x 8 x 8 (L: 2048 x 4 x 4); the subnets max-pool it to 4x4 and 8x8 as for the WRN;
* one input channel (gray), not three.

``compact-chrblock`` quarters the channels (stem 16, c = 16, 32, 64, 128, out 512) and the
cardinality (8, base width 4 kept, C0 = 16), and its fourth stage does not downsample, so
the 128-pixel G input still gives an 8x8 trunk output for the 8x8 localizer pooling (stride 16,
as the compact WRN).
"""

from torch import nn
from torch.nn import functional as F

from vfinfer.model.trunks import CHRBLOCK_EXPANSION, grouped_width


class ChannelAttention(nn.Module):
    """Fig. 3 (a): squeeze (average pool), excite (FC, leaky ReLU, FC, sigmoid), rescale."""

    def __init__(self, channels, reduction):
        super().__init__()
        hidden = channels // reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x):
        weights = self.fc(self.pool(x).flatten(1))
        return x * weights.unsqueeze(-1).unsqueeze(-1)


class ChrBlock(nn.Module):
    """1x1 -> grouped 3x3 (stride) -> 1x1 bottleneck, channel attention, residual addition."""

    def __init__(self, n_in, width, n_out, stride, groups, reduction):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, n_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(n_out)
        self.attention = ChannelAttention(n_out, reduction)
        self.shortcut = None
        if n_in != n_out or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(n_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ChrBlockTrunk(nn.Module):
    """Phase 1 (stem conv, BN, ReLU, max-pool) and phase 2 (stages of ChrBlocks) of ChrNet4."""

    def __init__(self, config):
        super().__init__()
        self.stem = nn.Conv2d(1, config.stem_channels, 7, config.stem_stride, 3, bias=False)
        self.stem_bn = nn.BatchNorm2d(config.stem_channels)
        self.stem_pool = None
        if config.stem_pool > 1:
            self.stem_pool = nn.MaxPool2d(3, config.stem_pool, 1)
        blocks, n_in = [], config.stem_channels
        for c, depth, stride in zip(config.widths, config.depths, config.stage_strides):
            width, n_out = grouped_width(config, c), CHRBLOCK_EXPANSION * c
            for i in range(depth):
                blocks.append(ChrBlock(n_in, width, n_out, stride if i == 0 else 1,
                                       config.cardinality, config.se_reduction))
                n_in = n_out
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        out = F.relu(self.stem_bn(self.stem(x)))
        if self.stem_pool is not None:
            out = self.stem_pool(out)
        return self.blocks(out)
