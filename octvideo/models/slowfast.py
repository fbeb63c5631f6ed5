"""Oct-SlowFast: SlowFast (Feichtenhofer et al., ICCV 2019) with octave convolutions.

At alpha = 0 ``oct_slowfast_r50`` is pytorchvideo's ``slowfast_r50``: a slow pathway
(8 frames, 64 base channels, temporal kernels only in res4/res5) and a fast pathway
(``speed_ratio`` x the frames, ``1 / channel_ratio`` of the channels, temporal kernels
everywhere), with lateral fast->slow connections (a 7x1x1 convolution at temporal
stride ``speed_ratio``, batch norm, ReLU) concatenated to the slow features after the
stem and after res2, res3 and res4. With alpha > 0 both pathways and the laterals
carry octave features; a lateral's high group joins the slow high group and its low
group the slow low group.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from octvideo.nn import Octave, OctaveChannels, OctaveGlobalPool, StemMaxPool, octave_cat

from .blocks import Bottleneck, ConvBN, make_stage, stage_alphas
from .registry import register_model

SLOW_TEMPORAL_KERNELS = (1, 1, 3, 3)
FAST_TEMPORAL_KERNELS = (3, 3, 3, 3)


class Lateral(nn.Module):
    """Fast -> slow fusion: time-strided convolution, batch norm and ReLU, then channel concat."""

    def __init__(
        self, fast: OctaveChannels, *, alpha: float, speed_ratio: int, kernel: int, octave_pool: tuple[int, int, int]
    ) -> None:
        super().__init__()
        self.fuse = ConvBN(
            3, in_channels=fast, out_channels=2 * fast.total, kernel=(kernel, 1, 1), stride=(speed_ratio, 1, 1),
            alpha_in=alpha, alpha_out=alpha, octave_pool=octave_pool, relu=True,
        )

    @property
    def out_split(self) -> OctaveChannels:
        return self.fuse.out_split

    def forward(self, slow: Octave, fast: Octave) -> Octave:
        return octave_cat([slow, self.fuse(fast)])


def _join(slow: OctaveChannels, lateral: OctaveChannels) -> OctaveChannels:
    return OctaveChannels(slow.high + lateral.high, slow.low + lateral.low)


class SlowFast(nn.Module):
    """Two ResNet-3D pathways of bottleneck blocks with laterals; input ``[slow_clip, fast_clip]``.

    Args:
        layers: Blocks per stage (res2 to res5), the same in both pathways.
        width: Channels of the slow stem and of slow res2's inner convolutions; each stage doubles it.
        channel_ratio: The fast pathway has ``width // channel_ratio`` channels.
        speed_ratio: The fast clip has ``speed_ratio`` times the slow clip's frames; the laterals
            stride time by it.
        lateral_kernel: Temporal kernel of the lateral convolutions.
        alpha: Fraction of low-frequency channels from res2 on, in both pathways and the laterals
            (0: the plain network).
        last_stage_alpha: Alpha of res5; None runs it at 0, as the official Oct-ResNets do.
        octave_pool: How the low group is downsampled.
        num_classes: Outputs of the classifier.
        dropout: Dropout probability before the classifier.
        in_channels: Channels of the input clips (3 for RGB).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        *,
        width: int = 64,
        channel_ratio: int = 8,
        speed_ratio: int = 4,
        lateral_kernel: int = 7,
        alpha: float = 0.0,
        last_stage_alpha: float | None = None,
        octave_pool: tuple[int, int, int] = (1, 2, 2),
        num_classes: int = 400,
        dropout: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        alphas = stage_alphas(alpha, last_stage_alpha=last_stage_alpha, num_classes=num_classes)
        octave_pool = tuple(octave_pool)
        fast_width = width // channel_ratio
        self.speed_ratio = speed_ratio

        def stem(out_channels: int, temporal_kernel: int) -> nn.Sequential:
            conv = ConvBN(
                3, in_channels=in_channels, out_channels=out_channels, kernel=(temporal_kernel, 7, 7), stride=(1, 2, 2),
                octave_pool=octave_pool, relu=True,
            )
            return nn.Sequential(conv, StemMaxPool())

        self.slow_stem = stem(width, temporal_kernel=1)
        self.fast_stem = stem(fast_width, temporal_kernel=5)

        slow_in = OctaveChannels(width, 0)
        fast_in = OctaveChannels(fast_width, 0)
        alpha_in = 0.0
        slow_stages, fast_stages, laterals = [], [], []
        for i, (num_blocks, stage_alpha) in enumerate(zip(layers, alphas)):
            lateral = Lateral(
                fast_in, alpha=alpha_in, speed_ratio=speed_ratio, kernel=lateral_kernel, octave_pool=octave_pool
            )
            laterals.append(lateral)
            stage = partial(
                make_stage, 3, block=Bottleneck, stride=1 if i == 0 else 2,
                alpha_in=alpha_in, alpha=stage_alpha, octave_pool=octave_pool,
            )
            slow = stage(
                in_channels=_join(slow_in, lateral.out_split),
                width=width * 2**i,
                temporal_kernels=(SLOW_TEMPORAL_KERNELS[i],) * num_blocks,
            )
            fast = stage(
                in_channels=fast_in,
                width=fast_width * 2**i,
                temporal_kernels=(FAST_TEMPORAL_KERNELS[i],) * num_blocks,
            )
            slow_stages.append(slow)
            fast_stages.append(fast)
            slow_in, fast_in = slow[-1].out_split, fast[-1].out_split
            alpha_in = stage_alpha
        self.laterals = nn.ModuleList(laterals)
        self.slow_layers = nn.ModuleList(slow_stages)
        self.fast_layers = nn.ModuleList(fast_stages)
        self.pool = OctaveGlobalPool()
        self.dropout = nn.Dropout(dropout)
        self.num_features = slow_in.total + fast_in.total
        self.fc = nn.Linear(self.num_features, num_classes)

    def example_input(self, frames: int = 8, size: int = 224, batch: int = 1) -> list[torch.Tensor]:
        """Random ``[slow, fast]`` clips: ``frames`` slow frames, ``speed_ratio`` times as many fast ones."""
        channels = self.slow_stem[0].conv.in_split.total
        return [
            torch.randn(batch, channels, frames, size, size),
            torch.randn(batch, channels, frames * self.speed_ratio, size, size),
        ]

    def forward_features(self, clips: Sequence[torch.Tensor]) -> tuple[Octave, Octave]:
        slow, fast = clips
        slow, fast = self.slow_stem(slow), self.fast_stem(fast)
        for lateral, slow_stage, fast_stage in zip(self.laterals, self.slow_layers, self.fast_layers):
            slow = slow_stage(lateral(slow, fast))
            fast = fast_stage(fast)
        return slow, fast

    def forward(self, clips: Sequence[torch.Tensor]) -> torch.Tensor:
        """``clips``: ``[slow (B, C, T, H, W), fast (B, C, speed_ratio * T, H, W)]`` -> logits."""
        if len(clips) != 2:
            raise ValueError(f"SlowFast takes [slow_clip, fast_clip], got {len(clips)} inputs")
        slow, fast = self.forward_features(clips)
        features = torch.cat([self.pool(slow), self.pool(fast)], dim=1)
        return self.fc(self.dropout(features))


@register_model(vanilla="pytorchvideo.slowfast_r50")
def oct_slowfast_r50(**kwargs) -> SlowFast:
    """Oct-SlowFast-R50 (4x16 layout with 8x8 sampling: 8 slow, 32 fast frames); at alpha = 0
    pytorchvideo's ``slowfast_r50`` (34,566,488 parameters at 400 classes)."""
    return SlowFast((3, 4, 6, 3), **kwargs)


@register_model()
def oct_slowfast_r14(**kwargs) -> SlowFast:
    """A shallow Oct-SlowFast (one bottleneck per stage) for CPU work; ``width=16`` makes it tiny."""
    return SlowFast((1, 1, 1, 1), **kwargs)
