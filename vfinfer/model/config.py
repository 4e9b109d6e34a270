"""Model configuration: every size and constant of a Varifocal-Net model.

The same numbers travel into the exported model's manifest, so the runtime never
hard-codes them. ``trunk`` names the deep CNN of G-Net and L-Net (``wrn``, ``vgg16-res`` or
``chrblock``; geometry in ``vfinfer.model.trunks``); the subnets, the crop, the heads and the
runtime are the same for all three. Six presets, a paper-size and a compact one per trunk:

* ``paper``: the network of Qin et al. 2019 (Tables II-III, section III-B): canvas 320,
  G input 256, L input 128, T1 = 64, T2 = 128, a WRN-28-10 style trunk (16-channel stem,
  blocks of 160/320/640 channels, four wide residual units each, each block downsampling
  by 2), trunk output 640 x 32 x 32 for the G input.
* ``compact``: the same design sized for a 2-core CPU: canvas 176, G input 128, L input 64,
  T1 = 32, T2 = 64 (the paper's ratios), a stride-2 stem and blocks of 32/64/128 channels
  with two units each: 0.131 GMAC per chromosome (G + L + heads, ``count_macs``).
* ``paper-vgg`` / ``compact-vgg``: the same sizes with the residual VGG-16 trunk of the
  dual-VGG-16 Varifocal-Net (IJMTFM 2026); choices in ``vfinfer_export.trunk_vgg``.
* ``paper-chrblock`` / ``compact-chrblock``: the same sizes with the ChrNet4 trunk of
  Render-Attention (section II-B.3, Fig. 3); choices in ``vfinfer_export.trunk_chrblock``.
"""

from dataclasses import asdict, dataclass, fields

from vfinfer.model import trunks

TTA_MODES = ("none", "mirror")  # test-time augmentation (vfinfer.pipeline.tta)


@dataclass(frozen=True)
class ModelConfig:
    preset: str
    canvas: int  # square padding canvas (pixels of the original image)
    g_input: int  # G-Net input side after resizing the canvas
    l_input: int  # L-Net input side (the crop is resized to this)
    t1: float  # eq. 5 minimum margin, in G-input pixels
    t2: float  # eq. 5 maximum shift, in G-input pixels
    stem_channels: int
    stem_stride: int
    widths: tuple  # channels of the three residual blocks
    units_per_block: int
    cls_pool: int  # max-pool output side for classification features (4 in the paper)
    loc_pool: int  # max-pool output side for the localization subnet (8 in the paper)
    loc_hidden: int  # FC width in the localization subnet (1024)
    mlp_hidden: int  # FC width in each MLP head (512)
    pad_value: int = 255
    n_types: int = 24
    n_polarities: int = 2
    dispatch_threshold: float = 0.9
    # the images' convention after vfinfer.util.geometry: "light" (dark chromosomes on a
    # light background, as bright-field G-band) or "dark" (fluorescence); inputs of the other
    # kind are inverted
    background: str = "light"
    # rotate-and-crop before the canvas (Render-Attention): none, principal-axis or hough
    rotate_crop: str = "none"
    # size normalization before the canvas (vfinfer.util.geometry): each cut-out scaled by
    # size_norm / the median chromosome length of its cell (pixels); 0: off
    size_norm: float = 0.0
    size_norm_min_count: int = 10  # fewer measured chromosomes in a cell: not scaled
    tta: str = "none"  # test-time augmentation: none | mirror (vfinfer.pipeline.tta)
    trunk: str = "wrn"  # wrn | vgg16-res | chrblock (vfinfer.model.trunks)
    depths: tuple = ()  # blocks (vgg16-res: convs) per stage; wrn uses units_per_block
    stage_strides: tuple = ()  # vgg16-res: pool after each block; chrblock: 1st block's stride
    stem_pool: int = 1  # chrblock: stride of the 3x3 max-pool after the stem conv
    cardinality: int = 0  # chrblock: groups G of the 3x3 conv
    base_width: int = 0  # chrblock: channels W per group in the first stage
    se_reduction: int = 0  # chrblock: channel attention reduction ratio

    def __post_init__(self):
        for name in ("widths", "depths", "stage_strides"):
            object.__setattr__(self, name, tuple(int(w) for w in getattr(self, name)))
        object.__setattr__(self, "size_norm", float(self.size_norm))
        if self.background not in ("light", "dark"):
            raise ValueError(f"background must be light or dark, not {self.background!r}")
        if self.rotate_crop not in ("none", "principal-axis", "hough"):
            raise ValueError("rotate_crop must be none, principal-axis or hough, not "
                             f"{self.rotate_crop!r}")
        if self.size_norm < 0 or self.size_norm_min_count < 1:
            raise ValueError("size_norm must be 0 (off) or a positive length and "
                             "size_norm_min_count at least 1, not "
                             f"{self.size_norm!r}, {self.size_norm_min_count!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {self.tta!r}")
        trunks.check(self)
        for name in ("g_input", "l_input"):
            if getattr(self, name) % self.trunk_stride:
                raise ValueError(f"{name}={getattr(self, name)} is not a multiple of the "
                                 f"trunk stride {self.trunk_stride}")
            side = getattr(self, name) // self.trunk_stride
            if side % self.cls_pool:
                raise ValueError(
                    f"{name}={getattr(self, name)} gives a {side}x{side} trunk output, "
                    f"not divisible by cls_pool={self.cls_pool}"
                )
        if (self.g_input // self.trunk_stride) % self.loc_pool:
            raise ValueError("the G trunk output side must be divisible by loc_pool")
        if self.t1 + self.t2 + self.t1 > self.g_input:
            raise ValueError("eq. 5 boxes must stay inside the G input: 2*T1 + T2 <= g_input")

    @property
    def trunk_stride(self):
        return trunks.stride(self)

    @property
    def feature_channels(self):
        return trunks.out_channels(self)

    @property
    def feature_size(self):
        """Length of one pooled feature vector (C x cls_pool x cls_pool)."""
        return self.feature_channels * self.cls_pool * self.cls_pool

    def to_dict(self):
        data = asdict(self)
        for name in ("widths", "depths", "stage_strides"):
            data[name] = list(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


# the Varifocal-Net sizes (input, crop, subnets, heads), shared by every trunk
_SIZES = {
    "paper": dict(canvas=320, g_input=256, l_input=128, t1=64, t2=128, cls_pool=4, loc_pool=8,
                  loc_hidden=1024, mlp_hidden=512),
    "compact": dict(canvas=176, g_input=128, l_input=64, t1=32, t2=64, cls_pool=4, loc_pool=8,
                    loc_hidden=256, mlp_hidden=256),
}
_VGG16 = dict(stem_channels=0, stem_stride=1, units_per_block=0, trunk="vgg16-res",
              depths=(2, 2, 3, 3, 3), stage_strides=(2, 2, 2, 2, 1))
_CHRNET4 = dict(stem_stride=2, stem_pool=2, units_per_block=0, trunk="chrblock",
                depths=(2, 3, 3, 2), base_width=4, se_reduction=16)
# preset name: (size, trunk fields)
_PRESET_TABLE = {
    "paper": ("paper", dict(stem_channels=16, stem_stride=1, widths=(160, 320, 640),
                            units_per_block=4)),
    "compact": ("compact", dict(stem_channels=16, stem_stride=2, widths=(32, 64, 128),
                                units_per_block=2)),
    "paper-vgg": ("paper", dict(_VGG16, widths=(64, 128, 256, 512, 512))),
    "compact-vgg": ("compact", dict(_VGG16, widths=(16, 32, 64, 128, 128))),
    "paper-chrblock": ("paper", dict(_CHRNET4, stem_channels=64, widths=(64, 128, 256, 512),
                                     stage_strides=(1, 2, 2, 2), cardinality=32)),
    "compact-chrblock": ("compact", dict(_CHRNET4, stem_channels=16, widths=(16, 32, 64, 128),
                                         stage_strides=(1, 2, 2, 1), cardinality=8)),
}
PRESETS = {name: ModelConfig(preset=name, **_SIZES[size], **trunk)
           for name, (size, trunk) in _PRESET_TABLE.items()}


def preset(name):
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}"
        ) from None


def count_macs(config):
    """Multiply-accumulates per chromosome of G-Net + L-Net + heads (convs and FCs)."""
    total = 0
    for side, with_loc in ((config.g_input, True), (config.l_input, False)):
        total += trunks.macs(config, side)
        total += config.feature_size * (config.n_types + config.n_polarities)
        if with_loc:
            loc_in = config.feature_channels * config.loc_pool ** 2
            total += loc_in * config.loc_hidden + config.loc_hidden * 3
    fused = 2 * config.feature_size
    total += 2 * fused * config.mlp_hidden
    total += config.mlp_hidden * (config.n_types + config.n_polarities)
    return total
