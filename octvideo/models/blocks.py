"""Residual blocks and stages shared by every network, in 2-D or 3-D, plain or octave.

A block takes the octave split of its input and the alpha of its output; all
pair handling happens inside ``octvideo.nn``, so the blocks read like torchvision's.
Sub-modules are created in the order of their parameters in a checkpoint (optimizer and
ZeRO states are stored by that order), so keep it when editing.
"""

from __future__ import annotations

from collections.abc import Sequence

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

Channels = int | OctaveChannels


def kernel_shape(dims: int, *, temporal: int, spatial: int) -> tuple[int, ...]:
    """``(temporal, spatial, spatial)`` in 3-D, ``(spatial, spatial)`` in 2-D."""
    return (temporal, spatial, spatial) if dims == 3 else (spatial, spatial)


class ConvBN(nn.Module):
    """A bias-free convolution with "same" padding (octave whenever an alpha is non-zero),
    batch norm, and ReLU when ``relu``. ``stride`` defaults to 1 in every dimension."""

    def __init__(
        self,
        dims: int,
        *,
        in_channels: Channels,
        out_channels: int,
        kernel: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        alpha_in: float = 0.0,
        alpha_out: float = 0.0,
        octave_pool: tuple[int, ...],
        relu: bool,
    ) -> None:
        super().__init__()
        conv = OctConv3d if dims == 3 else OctConv2d
        self.conv = conv(
            in_channels,
            out_channels,
            kernel,
            alpha_in=alpha_in,
            alpha_out=alpha_out,
            stride=stride or (1,) * len(kernel),
            padding=tuple(k // 2 for k in kernel),
            octave_pool=octave_pool,
        )
        self.bn = OctaveBatchNorm(self.conv.out_split, dims=dims)
        self.relu = OctaveApply(nn.ReLU(inplace=True)) if relu else None

    @property
    def out_split(self) -> OctaveChannels:
        return self.conv.out_split

    def forward(self, x: Octave) -> Octave:
        x = self.bn(self.conv(x))
        return x if self.relu is None else self.relu(x)


def shortcut(
    dims: int,
    *,
    in_channels: Channels,
    out_channels: int,
    stride: tuple[int, ...],
    alpha_in: float,
    alpha_out: float,
    octave_pool: tuple[int, ...],
) -> ConvBN | None:
    """A block's projection shortcut (a strided 1 x 1 ``ConvBN``), or None where the input can be
    added as it is: same channels, stride 1 and the same octave split."""
    in_total = in_channels if isinstance(in_channels, int) else sum(in_channels)
    changes_split = alpha_in != alpha_out or not isinstance(in_channels, int)
    if in_total == out_channels and all(s == 1 for s in stride) and not changes_split:
        return None
    return ConvBN(
        dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel=kernel_shape(dims, temporal=1, spatial=1),
        stride=stride,
        alpha_in=alpha_in,
        alpha_out=alpha_out,
        octave_pool=octave_pool,
        relu=False,
    )


class ResidualBlock(nn.Module):
    """``relu(residual(x) + shortcut(x))``. A subclass creates its ``ConvBN`` layers, then
    ``downsample`` (from :func:`shortcut`) and ``relu``, and defines ``residual`` and ``out_split``."""

    expansion = 1
    downsample: ConvBN | None
    relu: nn.Module

    @property
    def out_split(self) -> OctaveChannels:
        raise NotImplementedError

    def residual(self, x: Octave) -> Octave:
        raise NotImplementedError

    def forward(self, x: Octave) -> Octave:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(octave_add(self.residual(x), identity))


class Bottleneck(ResidualBlock):
    """1 x 1 (with the block's temporal kernel) -> 3 x 3 (strided) -> 1 x 1 expansion, plus shortcut.

    ``in_channels`` is the input's total or ``(high, low)`` split (taken as it is, whatever
    ``alpha_in``); the output has ``width * expansion`` channels at ``alpha``.
    """

    expansion = 4

    def __init__(
        self,
        dims: int,
        *,
        in_channels: Channels,
        width: int,
        stride: int = 1,
        temporal_kernel: int = 1,
        alpha_in: float = 0.0,
        alpha: float = 0.0,
        octave_pool: tuple[int, ...],
    ) -> None:
        super().__init__()
        strides = kernel_shape(dims, temporal=1, spatial=stride)
        out_channels = width * self.expansion
        self.conv1 = ConvBN(
            dims, in_channels=in_channels, out_channels=width,
            kernel=kernel_shape(dims, temporal=temporal_kernel, spatial=1),
            alpha_in=alpha_in, alpha_out=alpha, octave_pool=octave_pool, relu=True,
        )
        self.conv2 = ConvBN(
            dims, in_channels=width, out_channels=width, kernel=kernel_shape(dims, temporal=1, spatial=3),
            stride=strides, alpha_in=alpha, alpha_out=alpha, octave_pool=octave_pool, relu=True,
        )
        self.conv3 = ConvBN(
            dims, in_channels=width, out_channels=out_channels, kernel=kernel_shape(dims, temporal=1, spatial=1),
            alpha_in=alpha, alpha_out=alpha, octave_pool=octave_pool, relu=False,
        )
        self.downsample = shortcut(
            dims, in_channels=in_channels, out_channels=out_channels, stride=strides,
            alpha_in=alpha_in, alpha_out=alpha, octave_pool=octave_pool,
        )
        self.relu = OctaveApply(nn.ReLU(inplace=True))

    @property
    def out_split(self) -> OctaveChannels:
        return self.conv3.out_split

    def residual(self, x: Octave) -> Octave:
        return self.conv3(self.conv2(self.conv1(x)))


class BasicBlock(ResidualBlock):
    """Two 3 x 3 convolutions (the first strided, with the block's temporal kernel), plus shortcut.

    Arguments as :class:`Bottleneck`'s; the output has ``width`` channels at ``alpha``.
    """

    def __init__(
        self,
        dims: int,
        *,
        in_channels: Channels,
        width: int,
        stride: int = 1,
        temporal_kernel: int = 1,
        alpha_in: float = 0.0,
        alpha: float = 0.0,
        octave_pool: tuple[int, ...],
    ) -> None:
        super().__init__()
        strides = kernel_shape(dims, temporal=1, spatial=stride)
        self.conv1 = ConvBN(
            dims, in_channels=in_channels, out_channels=width,
            kernel=kernel_shape(dims, temporal=temporal_kernel, spatial=3),
            stride=strides, alpha_in=alpha_in, alpha_out=alpha, octave_pool=octave_pool, relu=True,
        )
        self.conv2 = ConvBN(
            dims, in_channels=width, out_channels=width, kernel=kernel_shape(dims, temporal=1, spatial=3),
            alpha_in=alpha, alpha_out=alpha, octave_pool=octave_pool, relu=False,
        )
        self.downsample = shortcut(
            dims, in_channels=in_channels, out_channels=width, stride=strides,
            alpha_in=alpha_in, alpha_out=alpha, octave_pool=octave_pool,
        )
        self.relu = OctaveApply(nn.ReLU(inplace=True))

    @property
    def out_split(self) -> OctaveChannels:
        return self.conv2.out_split

    def residual(self, x: Octave) -> Octave:
        return self.conv2(self.conv1(x))


Block = type[ResidualBlock]


def make_stage(
    dims: int,
    *,
    block: Block,
    in_channels: Channels,
    width: int,
    temporal_kernels: Sequence[int],
    stride: int,
    alpha_in: float,
    alpha: float,
    octave_pool: tuple[int, ...],
) -> nn.Sequential:
    """One ResNet stage: ``len(temporal_kernels)`` blocks, the first one strided and changing width/split."""
    blocks: list[nn.Module] = []
    for i, temporal in enumerate(temporal_kernels):
        blocks.append(
            block(
                dims,
                in_channels=in_channels,
                width=width,
                stride=stride if i == 0 else 1,
                temporal_kernel=temporal,
                alpha_in=alpha_in if i == 0 else alpha,
                alpha=alpha,
                octave_pool=octave_pool,
            )
        )
        in_channels = width * block.expansion
    return nn.Sequential(*blocks)


def stage_alphas(
    alpha: float, *, last_stage_alpha: float | None, num_classes: int, num_stages: int = 4
) -> list[float]:
    """Check a network's arguments and return the per-stage alpha: ``alpha`` everywhere but the
    last stage, which runs at ``last_stage_alpha`` (0 by default, as in the official Oct-ResNets)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    check_alpha(alpha)
    last = 0.0 if last_stage_alpha is None else check_alpha(last_stage_alpha, "last_stage_alpha")
    return [alpha] * (num_stages - 1) + [last]
