"""Building blocks of OverLoCK: Dilated RepConv, SE, GRN, LayerScale, ContMix and the blocks."""
from .blocks import ContextDownsample, DynamicConvBlock, RepConvBlock
from .contmix import ContMixBlock, ContMixMixer
from .conv import DILATED_BRANCHES, DilatedRepConv, ResDWConv
from .norm import GRN, LayerNorm2d
from .scale import LayerScale
from .se import SEModule

__all__ = [
    "DILATED_BRANCHES",
    "ContMixBlock",
    "ContMixMixer",
    "ContextDownsample",
    "DilatedRepConv",
    "DynamicConvBlock",
    "GRN",
    "LayerNorm2d",
    "LayerScale",
    "RepConvBlock",
    "ResDWConv",
    "SEModule",
]
