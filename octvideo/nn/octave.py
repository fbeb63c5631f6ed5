"""The octave feature pair and the channel split that defines it.

An octave feature is either a plain tensor (alpha = 0) or a tuple ``(high, low)``:
``high`` at full resolution, ``low`` downsampled by the octave pooling factor
(``(1, 2, 2)`` for video by default) on the grid described in ``grid``. Only this
package looks inside the pair; networks just pass it along.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

Octave = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


class OctaveChannels(NamedTuple):
    """How many channels a layer has in each frequency group."""

    high: int
    low: int

    @property
    def total(self) -> int:
        return self.high + self.low


def check_alpha(alpha: float, name: str = "alpha") -> float:
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {alpha!r}")
    return float(alpha)


def split_channels(channels: int, alpha: float, name: str = "alpha") -> OctaveChannels:
    """Split ``channels`` into (high, low) with ``low = int(alpha * channels)``, the official rounding."""
    alpha = check_alpha(alpha, name)
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    low = int(alpha * channels)
    return OctaveChannels(channels - low, low)


def as_channels(channels: int | Sequence[int], alpha: float, name: str) -> OctaveChannels:
    """Accept a total (split by ``alpha``) or an explicit ``(high, low)`` split."""
    if isinstance(channels, int):
        return split_channels(channels, alpha, name)
    high, low = channels
    if high < 1 or low < 0:
        raise ValueError(f"an explicit channel split needs high >= 1 and low >= 0, got {tuple(channels)}")
    return OctaveChannels(int(high), int(low))


def unpack(x: Octave) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(high, low)`` for a pair, ``(x, None)`` for a plain tensor."""
    if isinstance(x, torch.Tensor):
        return x, None
    high, low = x
    return high, low


def pack(high: torch.Tensor, low: torch.Tensor | None) -> Octave:
    """The inverse of :func:`unpack`: a plain tensor when there is no low group."""
    return high if low is None else (high, low)


def octave_map(fn: Callable[[torch.Tensor], torch.Tensor], x: Octave) -> Octave:
    """Apply a per-tensor function to each frequency group."""
    high, low = unpack(x)
    return pack(fn(high), None if low is None else fn(low))


def octave_add(x: Octave, y: Octave) -> Octave:
    """Residual add of two features with the same channel split."""
    xh, xl = unpack(x)
    yh, yl = unpack(y)
    if (xl is None) != (yl is None):
        raise ValueError("cannot add an octave pair to a plain tensor: their channel splits differ")
    return pack(xh + yh, None if xl is None else xl + yl)


def octave_cat(features: Sequence[Octave]) -> Octave:
    """Concatenate along channels, high with high and low with low."""
    parts = [unpack(f) for f in features]
    lows = [low for _, low in parts if low is not None]
    if lows and len(lows) != len(parts):
        raise ValueError("cannot concatenate octave pairs with plain tensors")
    high = torch.cat([h for h, _ in parts], dim=1)
    return pack(high, torch.cat(lows, dim=1) if lows else None)
