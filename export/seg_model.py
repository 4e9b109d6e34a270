"""The segmentation network: a small U-Net (Ronneberger et al. 2015) with three output maps.

Chosen by measurement on a 2-core CPU (README, "Segmentation"): a fully convolutional
encoder-decoder at full image resolution keeps the one- or two-pixel gaps between touching
chromosomes that a detector working on 1/4 or 1/8 resolution features loses, trains from
scratch on ~100 images in well under two hours, and runs a 768 x 576 metaphase in a fraction
of a second. Instances come from its maps by the instance step (``vfinfer.segment.instances``)
instead of a Mask R-CNN head, which is what lets an overlap pixel belong to two chromosomes
without a box per chromosome.

Layout: ``levels`` resolutions, two 3x3 conv + BN + ReLU per level, 2x2 max-pool down, 2x2
transposed conv up with skip concatenation, a 1x1 conv to the three maps of
``vfinfer.segment.channels.CHANNELS`` and a sigmoid. Inputs must be a multiple of
``2 ** (levels - 1)`` on each side (the runtime pads).
"""

import torch
from torch import nn

from vfinfer.segment.channels import CHANNELS


def _block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True))


class SegNet(nn.Module):
    """``forward(image (N, 1, H, W)) -> logits (N, 3, H, W)``; ``probabilities`` adds the
    sigmoid (what the exported graph returns)."""

    def __init__(self, widths=(16, 32, 64, 96)):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.down = nn.ModuleList()
        c_in = 1
        for w in self.widths:
            self.down.append(_block(c_in, w))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_low, w in zip(self.widths[::-1][:-1], self.widths[::-1][1:]):
            self.up.append(nn.ConvTranspose2d(w_low, w, 2, stride=2))
            self.merge.append(_block(2 * w, w))
        self.out = nn.Conv2d(self.widths[0], len(CHANNELS), 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    @property
    def multiple(self):
        return 2 ** (len(self.widths) - 1)

    def forward(self, image):
        skips = []
        x = image
        for k, block in enumerate(self.down):
            if k:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[::-1][1:]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)

    def probabilities(self, image):
        return torch.sigmoid(self.forward(image))


class SegExport(nn.Module):
    """The graph that is exported: image -> probabilities."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image):
        return self.net.probabilities(image)


def macs_per_pixel(widths):
    """Multiply-accumulates per input pixel (convolutions only), for the manifest."""
    total, c_in = 0.0, 1
    for level, w in enumerate(widths):
        total += (9 * c_in * w + 9 * w * w) / 4 ** level
        c_in = w
    for level in range(len(widths) - 2, -1, -1):
        w = widths[level]
        total += (4 * widths[level + 1] * w + 9 * 2 * w * w + 9 * w * w) / 4 ** level
    return total + widths[0] * len(CHANNELS)
