"""Octave Convolution layers and the companions that carry the ``(high, low)`` pair."""

from .layers import FramePairMaxPool, OctaveApply, OctaveBatchNorm, OctaveGlobalPool, StemMaxPool
from .octave import (
    Octave,
    OctaveChannels,
    check_alpha,
    octave_add,
    octave_cat,
    octave_map,
    pack,
    split_channels,
    unpack,
)
from .octconv import OctConv, OctConv2d, OctConv3d

__all__ = [
    "FramePairMaxPool",
    "OctConv",
    "OctConv2d",
    "OctConv3d",
    "Octave",
    "OctaveApply",
    "OctaveBatchNorm",
    "OctaveChannels",
    "OctaveGlobalPool",
    "StemMaxPool",
    "check_alpha",
    "octave_add",
    "octave_cat",
    "octave_map",
    "pack",
    "split_channels",
    "unpack",
]
