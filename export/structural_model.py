"""The structural-score network (``vfinfer.pipeline.structural`` describes its inputs).

Four conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) on the H x W darkness canvas,
then ``pool``: ``global`` average and max pooling over the whole map, or ``rows``: the
average over the width of each row of the last map, kept in order from the p-arm end to the
q-arm end (H / 16 rows), so that the head sees the order of the bands along the chromosome,
which deletions, duplications, inversions and translocations change. The condition (24-way
one-hot of the called type and the log relative length) is concatenated before two fully
connected layers; the output ``score`` is the sigmoid of one logit: the probability that the
chromosome is aberrant. With ``homologue``, the canvas has a second channel (the homologue's)
and the condition two more values. ``fit`` records how its canvases are made (each
chromosome fitted, or the cell's scale). With ``arm_head``, a second linear layer on the same hidden
features gives three logits for where the change lies (``vfinfer.pipeline.structural.ARMS``);
with ``position_head``, another gives the changed segment's start and end (fractions of the
length), a training target only: it is not exported.
"""

import torch
from torch import nn

from vfinfer.pipeline.structural import ARMS, FITS, cond_size

DEFAULT_WIDTHS = (16, 32, 48, 64)
DEFAULT_HIDDEN = 64
DEFAULT_HEIGHT, DEFAULT_WIDTH = 96, 32
POOLS = ("global", "rows")


class StructuralNet(nn.Module):
    """``forward(image, cond) -> logit`` (N,); ``score`` is its sigmoid (N, 1)."""

    def __init__(self, widths=DEFAULT_WIDTHS, hidden=DEFAULT_HIDDEN, height=DEFAULT_HEIGHT,
                 width=DEFAULT_WIDTH, homologue=False, pool="global", arm_head=False,
                 fit="each", position_head=False):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        self.fit = fit  # how its inputs are made (vfinfer.pipeline.structural.canvas_of)
        self.pool = pool
        self.widths, self.hidden = tuple(int(w) for w in widths), int(hidden)
        self.height, self.width = int(height), int(width)
        self.homologue = bool(homologue)
        self.channels, self.cond_size = 1 + self.homologue, cond_size(self.homologue)
        layers, channels = [], self.channels
        for out in self.widths:
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.rows = self.height // 2 ** len(self.widths)
        pooled = 2 * channels if pool == "global" else channels * self.rows
        self.head = nn.Sequential(nn.Linear(pooled + self.cond_size, self.hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(0.2),
                                  nn.Linear(self.hidden, self.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(self.hidden, 1))
        self.arm_head = bool(arm_head)
        self.arm = nn.Linear(self.hidden, len(ARMS)) if self.arm_head else None
        self.position_head = bool(position_head)  # training only: not exported
        self.position = nn.Linear(self.hidden, 2) if self.position_head else None

    def _hidden(self, image, cond):
        """The features before the last layer of ``head``, (N, hidden)."""
        x = self.features(image)
        if self.pool == "rows":
            pooled = torch.cat([x.mean(dim=3).flatten(1), cond], dim=1)
        else:
            pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), cond], dim=1)
        return self.head[:-1](pooled)

    def forward(self, image, cond):
        """The logit of each chromosome, shape (N,)."""
        return self.head[-1](self._hidden(image, cond))[:, 0]

    def forward_all(self, image, cond):
        """(logit (N,), arm logits (N, 3) or None, segment (N, 2) in 0..1 or None): every
        head the network has."""
        hidden = self._hidden(image, cond)
        return (self.head[-1](hidden)[:, 0], self.arm(hidden) if self.arm_head else None,
                torch.sigmoid(self.position(hidden)) if self.position_head else None)

    def score(self, image, cond):
        """The probability of an aberration, shape (N, 1) (the exported output)."""
        return torch.sigmoid(self.forward(image, cond))[:, None]

    def spec(self):
        """The constructor's arguments, for the checkpoint."""
        spec = {"widths": list(self.widths), "hidden": self.hidden, "height": self.height,
                "width": self.width}
        spec.update({"homologue": True} if self.homologue else {})
        spec.update({"pool": self.pool} if self.pool != "global" else {})
        spec.update({"arm_head": True} if self.arm_head else {})
        spec.update({"fit": self.fit} if self.fit != "each" else {})
        spec.update({"position_head": True} if self.position_head else {})
        return spec


class StructuralExport(nn.Module):
    """The graph that is exported: ``(image, cond) -> score``, and ``arm`` (the softmax of the
    arm logits) with the arm head."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image, cond):
        """``StructuralNet.score`` (and the arm probabilities)."""
        if not self.net.arm_head:
            return self.net.score(image, cond)
        logit, arm, _ = self.net.forward_all(image, cond)  # the position head: training only
        return torch.sigmoid(logit)[:, None], torch.softmax(arm, dim=1)
