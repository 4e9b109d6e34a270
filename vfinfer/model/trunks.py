"""Geometry of the three trunks a model config can name: stride, output channels, MACs.

Pure arithmetic on a ``ModelConfig`` (no torch): it validates a config and gives the sizes the
classification and localization subnets, the heads and ``count_macs`` derive from. The
networks themselves are in ``vfinfer_export`` (``models.py``, ``trunk_vgg.py``,
``trunk_chrblock.py``). The runtime never reads this module's answers: it takes tensor shapes
from the manifest's graph records, so it runs every trunk through the same code.

* ``wrn``: the wide residual trunk of Varifocal-Net (Qin et al. 2019, Fig. 4, Table II): a
  3x3 stem of ``stem_channels`` at ``stem_stride``, three blocks of ``units_per_block`` wide
  residual units, each block halving the side.
* ``vgg16-res``: VGG-16's 13 3x3 convolutions in five blocks (``depths`` 2, 2, 3, 3, 3) with a
  residual shortcut over each block, then the max-pool of ``stage_strides`` (IJMTFM 2026,
  "dual VGG-16 backbones enhanced with residual connections"; ``vfinfer_export.trunk_vgg``).
* ``chrblock``: ChrNet4 of Render-Attention (Wang et al., section II-B.3, Fig. 3): a 7x7 stem
  conv at ``stem_stride``, a 3x3 max-pool of stride ``stem_pool``, then stages of ChrBlocks
  (1x1, grouped 3x3, 1x1 bottleneck with squeeze-and-excitation attention) of ``depths``
  blocks each, the first block of a stage at ``stage_strides``.
"""

from math import prod

TRUNKS = ("wrn", "vgg16-res", "chrblock")
CHRBLOCK_EXPANSION = 4  # Fig. 3 (b): a stage of base channels c ends with a 1x1 conv to 4c

# fields a trunk does not use, with the only value they may take then
_NEUTRAL = {"stem_channels": 0, "stem_stride": 1, "units_per_block": 0, "depths": (),
            "stage_strides": (), "stem_pool": 1, "cardinality": 0, "base_width": 0,
            "se_reduction": 0}
_UNUSED = {
    "wrn": ("depths", "stage_strides", "stem_pool", "cardinality", "base_width",
            "se_reduction"),
    "vgg16-res": ("stem_channels", "stem_stride", "units_per_block", "stem_pool",
                  "cardinality", "base_width", "se_reduction"),
    "chrblock": ("units_per_block",),
}


def check(config):
    """Raise ValueError for a config its trunk cannot be built from."""
    if config.trunk not in TRUNKS:
        raise ValueError(f"unknown trunk {config.trunk!r}: choose one of {', '.join(TRUNKS)}")
    for name in _UNUSED[config.trunk]:
        if getattr(config, name) != _NEUTRAL[name]:
            raise ValueError(f"{name} does not apply to the {config.trunk} trunk "
                             f"(leave it at {_NEUTRAL[name]!r})")
    if config.trunk == "wrn":
        if len(config.widths) != 3 or config.units_per_block < 1:
            raise ValueError("the wrn trunk needs three widths and units_per_block >= 1")
        return
    n = len(config.widths)
    if len(config.depths) != n or len(config.stage_strides) != n or min(config.depths) < 1:
        raise ValueError(f"the {config.trunk} trunk needs one depth (>= 1) and one stage "
                         "stride per width")
    if not set(config.stage_strides) <= {1, 2}:
        raise ValueError("stage_strides must be 1 or 2")
    if config.trunk == "chrblock":
        _check_chrblock(config)


def _check_chrblock(config):
    if min(config.cardinality, config.base_width, config.se_reduction, config.stem_channels) < 1:
        raise ValueError("the chrblock trunk needs stem_channels, cardinality, base_width "
                         "and se_reduction >= 1")
    for c in config.widths:
        width = grouped_width(config, c)
        if width < config.cardinality or width % config.cardinality:
            raise ValueError(f"grouped width {width} (stage of {c}) is not a multiple of "
                             f"cardinality {config.cardinality}")
        if CHRBLOCK_EXPANSION * c < config.se_reduction:
            raise ValueError(f"se_reduction {config.se_reduction} leaves no attention unit")


def grouped_width(config, c):
    """ChrBlock's grouped-conv channels C = c x W / C0 x G (section II-B.3), C0 = widths[0]."""
    return c * config.base_width * config.cardinality // config.widths[0]


def stride(config):
    """Input side / trunk output side."""
    if config.trunk == "wrn":
        return config.stem_stride * 8  # three blocks, each downsampling by 2
    if config.trunk == "vgg16-res":
        return prod(config.stage_strides)
    return config.stem_stride * config.stem_pool * prod(config.stage_strides)


def out_channels(config):
    """Channels of the trunk output (what the subnets pool)."""
    if config.trunk == "chrblock":
        return CHRBLOCK_EXPANSION * config.widths[-1]
    return config.widths[-1]


def macs(config, side):
    """Multiply-accumulates of the trunk's convolutions (and attention FCs) on a side^2 input."""
    return {"wrn": _wrn_macs, "vgg16-res": _vgg_macs, "chrblock": _chrblock_macs}[
        config.trunk](config, side)


def _wrn_macs(config, side):
    s = side // config.stem_stride
    total = 9 * config.stem_channels * s * s
    n_in = config.stem_channels
    for width in config.widths:
        for i in range(config.units_per_block):
            if i == 0:
                s //= 2
            total += 9 * n_in * width * s * s + 9 * width * width * s * s
            if n_in != width or i == 0:
                total += n_in * width * s * s
            n_in = width
    return total


def _vgg_macs(config, side):
    s, n_in, total = side, 1, 0
    for width, depth, pool in zip(config.widths, config.depths, config.stage_strides):
        total += 9 * n_in * width * s * s + (depth - 1) * 9 * width * width * s * s
        if n_in != width:
            total += n_in * width * s * s  # 1x1 projection shortcut
        n_in, s = width, s // pool
    return total


def _chrblock_macs(config, side):
    s = side // config.stem_stride
    total = 49 * config.stem_channels * s * s
    s //= config.stem_pool
    n_in = config.stem_channels
    for c, depth, first_stride in zip(config.widths, config.depths, config.stage_strides):
        width, n_out = grouped_width(config, c), CHRBLOCK_EXPANSION * c
        for i in range(depth):
            step = first_stride if i == 0 else 1
            total += n_in * width * s * s
            s //= step
            total += 9 * (width // config.cardinality) * width * s * s + width * n_out * s * s
            total += 2 * n_out * (n_out // config.se_reduction)  # attention FCs (Fig. 3 a)
            if n_in != n_out or step != 1:
                total += n_in * n_out * s * s  # projection shortcut
            n_in = n_out
    return total
