"""Tiny model configs for fast tests of the trainer, the export and the runtime (a 64-pixel G
input, 8-16 channels): one per trunk (``vfinfer.model.trunks``)."""

from vfinfer.model.config import ModelConfig

TINY = ModelConfig(
    preset="tiny", canvas=96, g_input=64, l_input=32, t1=16, t2=32, stem_channels=8,
    stem_stride=1, widths=(8, 16, 16), units_per_block=1, cls_pool=4, loc_pool=8,
    loc_hidden=16, mlp_hidden=16,
)
# the same trainer for every trunk (vfinfer.model.trunks): tiny residual VGG and ChrNet4 trunks
TINY_TRUNKS = {
    "wrn": TINY,
    "vgg16-res": ModelConfig(
        preset="tiny-vgg", canvas=96, g_input=64, l_input=32, t1=16, t2=32, stem_channels=0,
        stem_stride=1, widths=(8, 16, 16, 16), units_per_block=0, cls_pool=4, loc_pool=8,
        loc_hidden=16, mlp_hidden=16, trunk="vgg16-res", depths=(1, 1, 2, 1),
        stage_strides=(2, 2, 2, 1)),
    "chrblock": ModelConfig(
        preset="tiny-chrblock", canvas=96, g_input=64, l_input=32, t1=16, t2=32,
        stem_channels=8, stem_stride=2, widths=(8, 16, 16), units_per_block=0, cls_pool=4,
        loc_pool=8, loc_hidden=16, mlp_hidden=16, trunk="chrblock", depths=(1, 1, 1),
        stage_strides=(1, 2, 2), cardinality=4, base_width=2, se_reduction=8),
}
