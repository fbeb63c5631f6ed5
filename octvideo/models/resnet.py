"""Octave ResNets: Oct-I3D (3-D, video) and Oct-ResNet (2-D, images), one definition for both.

At alpha = 0 ``oct_i3d_r50`` is pytorchvideo's ``i3d_r50`` (the 8x8 Kinetics recipe:
a 5x7x7 stem, a temporal max pool after res2, inflated 3x1x1 kernels in a fixed
pattern of blocks per stage) and ``oct_resnet50`` is torchvision's ``resnet50``.
With alpha > 0 every convolution from res2 on is an octave convolution, and the
last stage runs at alpha = 0 unless asked otherwise (the official Oct-ResNets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from octvideo.nn import FramePairMaxPool, Octave, OctaveApply, OctaveGlobalPool, StemMaxPool

from .blocks import BasicBlock, Block, Bottleneck, ConvBN, kernel_shape, make_stage, stage_alphas
from .registry import register_model

# Temporal kernel of the first convolution of each block, per stage (pytorchvideo's i3d_r50:
# res2 all 3; res3/res4 alternate 3, 1; res5 alternates 1, 3).
I3D_TEMPORAL_PATTERN = ((3,), (3, 1), (3, 1), (1, 3))


def _repeat(pattern: Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(pattern[i % len(pattern)] for i in range(n))


class ResNet(nn.Module):
    """Stem -> res2 -> [temporal pool] -> res3 -> res4 -> res5 -> global pool -> dropout -> fc.

    Args:
        block: The residual block of every stage, :class:`Bottleneck` or :class:`BasicBlock`.
        layers: Blocks per stage (res2 to res5), e.g. ``(3, 4, 6, 3)`` for an R50.
        dims: 3 takes ``(B, C, T, H, W)`` clips, 2 ``(B, C, H, W)`` images (the temporal
            arguments are then ignored).
        temporal_pattern: Per stage, the temporal kernels of the blocks' first convolutions,
            repeated over the stage's blocks.
        stem_temporal_kernel: Temporal kernel of the 7 x 7 stem convolution.
        temporal_pool_after_res2: Halve the frames after res2 (a max over frame pairs).
        width: Channels of the stem and of res2's inner convolutions; each stage doubles it.
        alpha: Fraction of low-frequency channels from res2 on (0: the plain network).
        last_stage_alpha: Alpha of res5; None runs it at 0, as the official Oct-ResNets do.
        octave_pool: How the low group is downsampled; default 2 x 2 spatially, not in time.
        num_classes: Outputs of the classifier.
        dropout: Dropout probability before the classifier.
        in_channels: Channels of the input (3 for RGB).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        dims: int = 3,
        temporal_pattern: Sequence[Sequence[int]] = I3D_TEMPORAL_PATTERN,
        stem_temporal_kernel: int = 5,
        temporal_pool_after_res2: bool = True,
        width: int = 64,
        alpha: float = 0.0,
        last_stage_alpha: float | None = None,
        octave_pool: tuple[int, ...] | None = None,
        num_classes: int = 400,
        dropout: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        alphas = stage_alphas(alpha, last_stage_alpha=last_stage_alpha, num_classes=num_classes)
        octave_pool = tuple(octave_pool or kernel_shape(dims, temporal=1, spatial=2))
        self.stem = ConvBN(
            dims,
            in_channels=in_channels,
            out_channels=width,
            kernel=kernel_shape(dims, temporal=stem_temporal_kernel, spatial=7),
            stride=kernel_shape(dims, temporal=1, spatial=2),
            octave_pool=octave_pool,
            relu=True,
        )
        self.stem_pool = StemMaxPool()

        channels, alpha_in = width, 0.0
        stages = []
        for i, (num_blocks, stage_alpha) in enumerate(zip(layers, alphas)):
            stage_width = width * 2**i
            stages.append(
                make_stage(
                    dims,
                    block=block,
                    in_channels=channels,
                    width=stage_width,
                    temporal_kernels=_repeat(temporal_pattern[i], num_blocks),
                    stride=1 if i == 0 else 2,
                    alpha_in=alpha_in,
                    alpha=stage_alpha,
                    octave_pool=octave_pool,
                )
            )
            channels, alpha_in = stage_width * block.expansion, stage_alpha
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.temporal_pool = (
            OctaveApply(FramePairMaxPool())
            if temporal_pool_after_res2 and dims == 3
            else nn.Identity()
        )
        self.pool = OctaveGlobalPool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels

    def example_input(self, frames: int = 8, size: int = 224, batch: int = 1) -> torch.Tensor:
        """A random input of the shape the network takes (``frames`` is ignored in 2-D)."""
        if self.stem.conv.dims == 2:
            return torch.randn(batch, self.stem.conv.in_split.total, size, size)
        return torch.randn(batch, self.stem.conv.in_split.total, frames, size, size)

    def forward_features(self, x: torch.Tensor) -> Octave:
        x = self.stem_pool(self.stem(x))
        x = self.temporal_pool(self.layer1(x))
        return self.layer4(self.layer3(self.layer2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float clips ``(B, C, T, H, W)`` (or images ``(B, C, H, W)``) -> ``(B, num_classes)`` logits."""
        return self.fc(self.dropout(self.pool(self.forward_features(x))))


@register_model(vanilla="pytorchvideo.i3d_r50")
def oct_i3d_r50(**kwargs) -> ResNet:
    """Oct-I3D-R50; at alpha = 0 pytorchvideo's ``i3d_r50`` (28,043,472 parameters at 400 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model()
def oct_i3d_r18(**kwargs) -> ResNet:
    """An R18-like Oct-I3D (basic blocks, 2-2-2-2) for CPU work; ``width=16`` makes it tiny."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model(vanilla="torchvision.resnet50")
def oct_resnet50(**kwargs) -> ResNet:
    """2-D Oct-ResNet-50 (ImageNet layout); at alpha = 0 torchvision's ``resnet50``."""
    kwargs.setdefault("num_classes", 1000)
    kwargs.setdefault("dropout", 0.0)
    return ResNet(Bottleneck, (3, 4, 6, 3), dims=2, **kwargs)
