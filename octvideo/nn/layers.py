"""Companion layers for octave features: a network written with these and :class:`OctConv`
works unchanged for alpha = 0 (plain tensors) and alpha > 0 (``(high, low)`` pairs)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .grid import memory_format_of
from .octave import Octave, OctaveChannels, octave_map, pack, unpack


class OctaveBatchNorm(nn.Module):
    """Batch norm with separate statistics per frequency group (``high``, ``low``)."""

    def __init__(self, channels: OctaveChannels, dims: int = 3, **bn_kwargs) -> None:
        super().__init__()
        norm: Callable[..., nn.Module] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        self.channels = channels
        self.high = norm(channels.high, **bn_kwargs)
        self.low: nn.Module | None = norm(channels.low, **bn_kwargs) if channels.low else None

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


class StemMaxPool(nn.Module):
    """The ResNet stem's max pool: a 3x3 window at stride 2 with padding 1 over the last two
    (spatial) dimensions, none over time: ``nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))``
    (``MaxPool2d(3, 2, 1)`` on 4-D input). Without gradients, on contiguous tensors, it is
    computed as elementwise maxima of the even and odd rows, then columns, with the same values:
    PyTorch's pooling kernel is slow there (a (1, 64, 8, 112, 112) input: 47 ms against 13 ms on
    an Intel Xeon, 1 thread). Channels-last inputs (PyTorch's kernel: 5 ms) and training (the
    maxima would keep more for backward than the kernel's indices) use PyTorch's kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if memory_format_of(x) == torch.contiguous_format and not (torch.is_grad_enabled() and x.requires_grad):
            for dim in (x.dim() - 2, x.dim() - 1):
                x = _max3_stride2(x, dim)
            return x
        if x.dim() == 5:
            return F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        return F.max_pool2d(x, 3, 2, 1)


def _max3_stride2(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over windows of 3 at stride 2, padding 1, along ``dim``: output cell i covers input
    cells 2i - 1, 2i, 2i + 1, that is even[i], odd[i] and odd[i - 1]."""
    even = x[(slice(None),) * dim + (slice(0, None, 2),)]
    odd = x[(slice(None),) * dim + (slice(1, None, 2),)]
    size, odd_size = even.shape[dim], odd.shape[dim]
    pad = [0, 0] * (x.dim() - 1 - dim)  # F.pad lists the last dimension first
    before = F.pad(odd, pad + [1, size - 1 - odd_size], value=float("-inf"))  # odd[i - 1]
    same = odd if odd_size == size else F.pad(odd, pad + [0, 1], value=float("-inf"))
    return torch.maximum(torch.maximum(even, same), before)


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
