"""The octave feature pair and the channel split that defines it.

An octave feature is either a plain tensor (alpha = 0) or a tuple ``(high, low)``:
``high`` at full resolution, ``low`` downsampled by the octave pooling factor
(``(1, 2, 2)`` for video by default). Sizes follow one rule everywhere:
``low_size = ceil(high_size / factor)``, so odd sizes have an exact, documented
mapping (low cell ``i`` covers high cells ``factor*i .. factor*i + factor - 1``).
Only this package looks inside the pair; networks just pass it along.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Octave = Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]


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


def as_channels(channels: Union[int, Sequence[int]], alpha: float, name: str) -> OctaveChannels:
    """Accept a total (split by ``alpha``) or an explicit ``(high, low)`` split."""
    if isinstance(channels, int):
        return split_channels(channels, alpha, name)
    high, low = channels
    if high < 1 or low < 0:
        raise ValueError(f"an explicit channel split needs high >= 1 and low >= 0, got {tuple(channels)}")
    return OctaveChannels(int(high), int(low))


def unpack(x: Octave) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(high, low)`` for a pair, ``(x, None)`` for a plain tensor."""
    if isinstance(x, torch.Tensor):
        return x, None
    high, low = x
    return high, low


def pack(high: torch.Tensor, low: Optional[torch.Tensor]) -> Octave:
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


def octave_downsample(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Average pooling by ``factor`` with ceil rounding: the octave grid's down step."""
    if all(f == 1 for f in factor):
        return x
    pool = F.avg_pool3d if x.dim() == 5 else F.avg_pool2d
    return pool(x, kernel_size=tuple(factor), stride=tuple(factor), ceil_mode=True)


def add_upsampled_(target: torch.Tensor, low: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """``target += nearest_upsample(low)`` in one pass, matched to ``target``'s exact size.

    When every size divides, the add broadcasts ``low`` over a blocked view of
    ``target`` (no upsampled copy is made). Otherwise the upsampled tensor is
    built and its trailing partial cells (the part beyond ``target``) dropped,
    which is exactly the octave grid's mapping of high cells to low cells.
    """
    spatial = target.shape[2:]
    if all(s == f * l for s, f, l in zip(spatial, factor, low.shape[2:])):
        blocked_shape = [target.shape[0], target.shape[1]]
        low_view = [low.shape[0], low.shape[1]]
        for size, f in zip(low.shape[2:], factor):
            blocked_shape += [size, f]
            low_view += [size, 1]
        target.view(blocked_shape).add_(low.view(low_view))
        return target
    up = F.interpolate(low, scale_factor=tuple(float(f) for f in factor), mode="nearest")
    index = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    for s, u in zip(spatial, up.shape[2:]):
        if u < s:
            raise ValueError(
                f"low-frequency size {tuple(low.shape[2:])} is too small for high-frequency size "
                f"{tuple(spatial)} at octave factor {tuple(factor)}"
            )
    return target.add_(up[index])
