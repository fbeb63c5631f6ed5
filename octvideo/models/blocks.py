"""Residual blocks and stages shared by every network, in 2-D or 3-D, plain or octave.

A block takes the octave split of its input and the alpha of its output; all
pair handling happens inside ``octvideo.nn``, so the blocks read like torchvision's.
"""

from __future__ import annotations

from functools import partial
from typing import List, Optional, Sequence, Tuple, Type, Union

from torch import nn

from octvideo.nn import (
    Octave,
    OctaveApply,
    OctaveBatchNorm,
    OctaveChannels,
    OctConv2d,
    OctConv3d,
    check_alpha,
    octave_add,
)

Channels = Union[int, OctaveChannels]


def octave_conv(
    dims: int,
    in_channels: Channels,
    out_channels: int,
    kernel: Tuple[int, ...],
    stride: Tuple[int, ...],
    alpha_in: float,
    alpha_out: float,
    octave_pool: Tuple[int, ...],
) -> nn.Module:
    """A bias-free convolution with "same" padding, octave whenever an alpha is non-zero."""
    conv = OctConv3d if dims == 3 else OctConv2d
    return conv(
        in_channels,
        out_channels,
        kernel,
        alpha_in=alpha_in,
        alpha_out=alpha_out,
        stride=stride,
        padding=tuple(k // 2 for k in kernel),
        octave_pool=octave_pool,
    )


def kernel_shape(dims: int, temporal: int, spatial: int) -> Tuple[int, ...]:
    """``(temporal, spatial, spatial)`` in 3-D, ``(spatial, spatial)`` in 2-D."""
    return (temporal, spatial, spatial) if dims == 3 else (spatial, spatial)


class ConvBN(nn.Module):
    """Convolution followed by batch norm (and ReLU when ``relu``)."""

    def __init__(self, conv: nn.Module, relu: bool) -> None:
        super().__init__()
        self.conv = conv
        self.bn = OctaveBatchNorm(conv.out_split, dims=conv.dims)
        self.relu = OctaveApply(nn.ReLU(inplace=True)) if relu else None

    @property
    def out_split(self) -> OctaveChannels:
        return self.conv.out_split

    def forward(self, x: Octave) -> Octave:
        x = self.bn(self.conv(x))
        return x if self.relu is None else self.relu(x)


class ResidualBlock(nn.Module):
    """``relu(branch(x) + shortcut(x))``; a subclass builds the branch's convolutions in ``build``."""

    expansion = 1

    def __init__(
        self,
        in_channels: Channels,
        width: int,
        *,
        stride: int = 1,
        temporal_kernel: int = 1,
        alpha_in: float = 0.0,
        alpha: float = 0.0,
        octave_pool: Tuple[int, ...] = (1, 2, 2),
        dims: int = 3,
    ) -> None:
        super().__init__()
        strides = kernel_shape(dims, 1, stride)
        conv = partial(octave_conv, dims, octave_pool=octave_pool)
        self.branch: List[str] = self.build(conv, dims, in_channels, width, strides, temporal_kernel, alpha_in, alpha)
        out_channels = width * self.expansion
        self.downsample = _shortcut(dims, in_channels, out_channels, strides, alpha_in, alpha, octave_pool)
        self.relu = OctaveApply(nn.ReLU(inplace=True))

    def build(self, conv, dims, in_channels, width, strides, temporal_kernel, alpha_in, alpha) -> List[str]:
        """Create the branch's ``ConvBN`` attributes and return their names in order."""
        raise NotImplementedError

    @property
    def out_split(self) -> OctaveChannels:
        return getattr(self, self.branch[-1]).out_split

    def forward(self, x: Octave) -> Octave:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for name in self.branch:
            out = getattr(self, name)(out)
        return self.relu(octave_add(out, identity))


class Bottleneck(ResidualBlock):
    """1 x 1 (with the block's temporal kernel) -> 3 x 3 (strided) -> 1 x 1 expansion, plus shortcut."""

    expansion = 4

    def build(self, conv, dims, in_channels, width, strides, temporal_kernel, alpha_in, alpha) -> List[str]:
        one = kernel_shape(dims, 1, 1)
        out = width * self.expansion
        self.conv1 = ConvBN(conv(in_channels, width, kernel_shape(dims, temporal_kernel, 1), one, alpha_in, alpha), relu=True)
        self.conv2 = ConvBN(conv(width, width, kernel_shape(dims, 1, 3), strides, alpha, alpha), relu=True)
        self.conv3 = ConvBN(conv(width, out, one, one, alpha, alpha), relu=False)
        return ["conv1", "conv2", "conv3"]


class BasicBlock(ResidualBlock):
    """Two 3 x 3 convolutions (the first strided, with the block's temporal kernel), plus shortcut."""

    def build(self, conv, dims, in_channels, width, strides, temporal_kernel, alpha_in, alpha) -> List[str]:
        one = kernel_shape(dims, 1, 1)
        self.conv1 = ConvBN(conv(in_channels, width, kernel_shape(dims, temporal_kernel, 3), strides, alpha_in, alpha), relu=True)
        self.conv2 = ConvBN(conv(width, width, kernel_shape(dims, 1, 3), one, alpha, alpha), relu=False)
        return ["conv1", "conv2"]


Block = Type[ResidualBlock]


def _shortcut(dims, in_channels, out_channels, strides, alpha_in, alpha, octave_pool) -> Optional[ConvBN]:
    in_total = in_channels if isinstance(in_channels, int) else sum(in_channels)
    changes_split = alpha_in != alpha or not isinstance(in_channels, int)
    if in_total == out_channels and all(s == 1 for s in strides) and not changes_split:
        return None
    one = kernel_shape(dims, 1, 1)
    return ConvBN(octave_conv(dims, in_channels, out_channels, one, strides, alpha_in, alpha, octave_pool), relu=False)


def make_stage(
    block: Block,
    in_channels: Channels,
    width: int,
    temporal_kernels: Sequence[int],
    *,
    stride: int,
    alpha_in: float,
    alpha: float,
    octave_pool: Tuple[int, ...],
    dims: int = 3,
) -> nn.Sequential:
    """One ResNet stage: ``len(temporal_kernels)`` blocks, the first one strided and changing width/split."""
    blocks: List[nn.Module] = []
    for i, temporal in enumerate(temporal_kernels):
        b = block(
            in_channels,
            width,
            stride=stride if i == 0 else 1,
            temporal_kernel=temporal,
            alpha_in=alpha_in if i == 0 else alpha,
            alpha=alpha,
            octave_pool=octave_pool,
            dims=dims,
        )
        blocks.append(b)
        in_channels = width * block.expansion
    return nn.Sequential(*blocks)


def stage_alphas(alpha: float, last_stage_alpha: Optional[float], num_classes: int, num_stages: int = 4) -> List[float]:
    """Check a network's arguments and return the per-stage alpha: ``alpha`` everywhere but the
    last stage, which runs at ``last_stage_alpha`` (0 by default, as in the official Oct-ResNets)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    check_alpha(alpha)
    last = 0.0 if last_stage_alpha is None else check_alpha(last_stage_alpha, "last_stage_alpha")
    return [alpha] * (num_stages - 1) + [last]
