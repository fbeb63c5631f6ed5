"""Companion layers for octave features: a network written with these and :class:`OctConv`
works unchanged for alpha = 0 (plain tensors) and alpha > 0 (``(high, low)`` pairs)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .octave import Octave, OctaveChannels, octave_map, pack, unpack


class OctaveBatchNorm(nn.Module):
    """Batch norm with separate statistics per frequency group (``high``, ``low``)."""

    def __init__(self, channels: OctaveChannels, dims: int = 3, **bn_kwargs) -> None:
        super().__init__()
        norm: Callable[..., nn.Module] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        self.channels = channels
        self.high = norm(channels.high, **bn_kwargs)
        self.low: Optional[nn.Module] = norm(channels.low, **bn_kwargs) if channels.low else None

    def forward(self, x: Octave) -> Octave:
        high, low = unpack(x)
        return pack(self.high(high), None if self.low is None else self.low(low))


class OctaveApply(nn.Module):
    """Apply a stateless per-tensor module (activation, pooling, dropout) to each group.

    Pooling applies to both groups alike, so a stride-2 pool keeps the octave grid:
    ``ceil(ceil(n / 2) / 2) == ceil(n / 4)`` when the pool uses "same" padding.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Octave) -> Octave:
        return octave_map(self.module, x)


class FramePairMaxPool(nn.Module):
    """``nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))``: the max of each pair of frames (an odd
    last frame dropped), computed as one elementwise maximum of the even and odd frames.
    Same values; PyTorch's pooling kernel is slow on contiguous CPU tensors (a
    (1, 256, 8, 56, 56) clip: 21.6 ms against 0.9 ms on an Intel Xeon, 2 threads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] < 2:  # as MaxPool3d: a shape error, not an empty output
            raise RuntimeError(f"a frame-pair max pool needs at least 2 frames, got input of shape {tuple(x.shape)}")
        frames = x.shape[2] - x.shape[2] % 2
        return torch.maximum(x[:, :, 0:frames:2], x[:, :, 1:frames:2])


class OctaveGlobalPool(nn.Module):
    """Global average pooling of each group, concatenated high first: ``(B, C_high + C_low)``.

    The order matches the plain network's channel order, so a classifier on top is
    the plain classifier's weight unchanged.
    """

    def forward(self, x: Octave) -> torch.Tensor:
        high, low = unpack(x)
        pooled = [high.flatten(2).mean(-1)]
        if low is not None:
            pooled.append(low.flatten(2).mean(-1))
        return torch.cat(pooled, dim=1)
