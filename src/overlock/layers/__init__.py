"""Building blocks of OverLoCK: Dilated RepConv, SE, GRN, LayerScale, ContMix and the blocks; the conv-BN-ReLU of
mmcv's ConvModule that the dense heads use."""
from .blocks import ContextDownsample, DynamicConvBlock, RepConvBlock, stem
from .contmix import ContMix, ContMixBlock, conv_bn
from .conv import DILATED_BRANCHES, ConvBNReLU, DepthwiseConv2d, DilatedRepConv, ResDWConv
from .norm import GRN, LayerNorm2d
from .scale import LayerScale
from .se import SEModule

__all__ = [
    "ConvBNReLU",
    "DILATED_BRANCHES",
    "ContMix",
    "ContMixBlock",
    "ContextDownsample",
    "DepthwiseConv2d",
    "DilatedRepConv",
    "DynamicConvBlock",
    "GRN",
    "LayerNorm2d",
    "LayerScale",
    "RepConvBlock",
    "ResDWConv",
    "SEModule",
    "conv_bn",
    "stem",
]
