"""The ``vgg16-res`` trunk: VGG-16 with residual connections, as G-Net's and L-Net's deep CNN.

The dual-VGG-16 Varifocal-Net (IJMTFM 2026, ``../shared/papers/dual-vgg16-varifocal-abnormality-
ijmtfm-2026.txt``; only the abstract is available) replaces the wide residual trunks of the
global and local networks by "dual VGG-16 backbones enhanced with residual connections and
multi-task learning". What the abstract fixes, and is followed here:

* two backbones of the same design with their own weights, one in G-Net (global scale) and one
  in L-Net (local scale): the Varifocal-Net structure, unchanged;
* VGG-16 (Simonyan and Zisserman 2015, configuration D): 13 3x3 convolutions, stride 1, pad 1,
  in five blocks of 2, 2, 3, 3, 3 convolutions of 64, 128, 256, 512, 512 channels, 2x2 max-pools
  between blocks (``depths``, ``widths``, ``stage_strides`` of the ``paper-vgg`` preset);
* multi-task learning: the type and polarity losses of Varifocal-Net's eq. 3, which the
  trainer already uses (abnormality detection is the dispatch's count warnings and optimal
  dispatch, downstream of the networks).

What the abstract leaves open, and what was chosen:

* where the residual connections go: one shortcut over each VGG block (its 2 or 3 convs), a
  1x1 projection conv + BN where the block changes the channel count (blocks 1-4), identity
  where it does not (block 5, 512 -> 512), added before the block's last ReLU as in ResNet's
  basic block; the max-pool follows the addition;
* batch normalization after every convolution (VGG-16 had none; the "BN" variant of VGG):
  the trunk is trained from He initialization with the project's schedule, like the others;
* VGG-16's fifth max-pool and its three FC layers are dropped: the Varifocal-Net subnets
  (max-pool to 4x4 for classification, 8x8 for the localizer) take their place, so the trunk
  output is 512 x 16 x 16 for the 256-pixel G input and 512 x 8 x 8 for the 128-pixel L input
  (stride 16);
* one input channel (the gray, z-scored chromosome image), not three.

``compact-vgg`` keeps the 13-conv layout and quarters the widths (16, 32, 64, 128, 128), so its
trunk ends in the 128 channels of the compact WRN and shares its subnets' and heads' sizes.
"""

from torch import nn
from torch.nn import functional as F


class ResidualVGGBlock(nn.Module):
    """``depth`` conv3x3-BN-ReLU layers with a shortcut over them, then an optional max-pool."""

    def __init__(self, n_in, width, depth, pool):
        super().__init__()
        convs, bns = [], []
        for i in range(depth):
            convs.append(nn.Conv2d(n_in if i == 0 else width, width, 3, 1, 1, bias=False))
            bns.append(nn.BatchNorm2d(width))
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(bns)
        self.shortcut = None
        if n_in != width:
            self.shortcut = nn.Sequential(nn.Conv2d(n_in, width, 1, bias=False),
                                          nn.BatchNorm2d(width))
        self.pool = nn.MaxPool2d(pool) if pool > 1 else None

    def forward(self, x):
        out = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            out = bn(conv(out))
            if i < len(self.convs) - 1:
                out = F.relu(out)
        out = F.relu(out + (x if self.shortcut is None else self.shortcut(x)))
        return out if self.pool is None else self.pool(out)


class VGG16ResTrunk(nn.Module):
    """Five residual VGG blocks (``config.widths``, ``depths``, ``stage_strides``)."""

    def __init__(self, config):
        super().__init__()
        blocks, n_in = [], 1
        for width, depth, pool in zip(config.widths, config.depths, config.stage_strides):
            blocks.append(ResidualVGGBlock(n_in, width, depth, pool))
            n_in = width
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)
