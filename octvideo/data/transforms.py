"""Spatial transforms of uint8 clips with torchvision.transforms.v2: short-side scale, crop, flip.

Clips come in as the decoder returns them, uint8 ``(T, H, W, C)``, and leave as contiguous uint8
``(C, T, H, W)``, so that a batch is ``(B, C, T, H, W)``; conversion to float and normalisation
happen on the device (:mod:`octvideo.data.device`). Internally frames are ``(T, C, H, W)`` views
of the decoder's channels-last memory, the layout v2's uint8 antialiased resize is fastest on.

Scaling is best left to the decoder, which scales inside FFmpeg before RGB conversion: decode at
:meth:`TrainTransform.draw_short_side` (train) or :attr:`EvalTransform.short_side` (val / test)
with ``decode_clip(short_side=...)`` and the resize here is skipped, so only cropping and flipping
cost anything. A clip of any other size is resized here (bilinear, antialiased).

Random choices are drawn from the ``torch.Generator`` passed in, in a fixed order (short side,
crop position, flip), so the same generator state gives the same result whether the decoder or
the transform scaled the clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

from octvideo.data.sampling import CENTRE_CROP


@dataclass(frozen=True)
class TrainTransform:
    """Random short side in ``short_side_range`` (inclusive, aspect kept), random
    ``crop_size`` square crop, horizontal flip with probability ``flip_prob``."""

    short_side_range: tuple[int, int] = (256, 320)
    crop_size: int = 224
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        low, high = self.short_side_range
        if not self.crop_size <= low <= high:
            raise ValueError(
                f"need crop_size <= short_side_range[0] <= short_side_range[1], got crop_size "
                f"{self.crop_size} and short_side_range {self.short_side_range}"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def draw_short_side(self, generator: torch.Generator) -> int:
        """The first draw of a clip's transform: the short side to decode (or resize) to."""
        low, high = self.short_side_range
        return int(torch.randint(low, high + 1, (), generator=generator))

    def __call__(
        self, clip: torch.Tensor, generator: torch.Generator, short_side: int | None = None
    ) -> torch.Tensor:
        """``(T, H, W, C)`` -> ``(C, T, crop, crop)``. ``short_side`` is the one already drawn
        with :meth:`draw_short_side` (and decoded at); when None it is drawn here."""
        if short_side is None:
            short_side = self.draw_short_side(generator)
        frames = resize_short_side(_frames(clip), short_side)
        height, width = frames.shape[-2:]
        top = int(torch.randint(0, height - self.crop_size + 1, (), generator=generator))
        left = int(torch.randint(0, width - self.crop_size + 1, (), generator=generator))
        frames = F.crop(frames, top, left, self.crop_size, self.crop_size)
        if torch.rand((), generator=generator) < self.flip_prob:
            frames = F.horizontal_flip(frames)
        return _clip(frames)


@dataclass(frozen=True)
class EvalTransform:
    """Short side ``short_side``, then a ``crop_size`` square crop: the centre one, or
    PySlowFast's ``spatial_index`` 0 / 1 / 2 (start / centre / end of the long side)."""

    short_side: int = 256
    crop_size: int = 224

    def __post_init__(self) -> None:
        if not 1 <= self.crop_size <= self.short_side:
            raise ValueError(
                f"need 1 <= crop_size <= short_side, got crop_size {self.crop_size} and "
                f"short_side {self.short_side}"
            )

    def __call__(self, clip: torch.Tensor, spatial_index: int = CENTRE_CROP) -> torch.Tensor:
        """``(T, H, W, C)`` -> ``(C, T, crop, crop)``."""
        if spatial_index not in (0, 1, 2):
            raise ValueError(f"spatial_index must be 0, 1 or 2, got {spatial_index}")
        frames = resize_short_side(_frames(clip), self.short_side)
        return _clip(three_crop(frames, self.crop_size, spatial_index))


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., H, W)`` frames with the short side scaled to ``size``, aspect kept; unchanged
    (no copy) when it already is ``size``."""
    if min(frames.shape[-2:]) == size:
        return frames
    return F.resize(frames, [size], antialias=True)


def three_crop(frames: torch.Tensor, size: int, spatial_index: int) -> torch.Tensor:
    """A ``size`` square crop of ``(..., H, W)`` frames, centred on the short side and at the
    start (0), centre (1) or end (2) of the long side: left / centre / right of a landscape
    frame, top / centre / bottom of a portrait one."""
    height, width = frames.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"crop size {size} exceeds the frames' short side ({height}x{width})")
    top, left = (height - size) // 2, (width - size) // 2
    end = {0: 0, 1: None, 2: 1}[spatial_index]
    if end is not None:
        if height > width:
            top = end * (height - size)
        else:
            left = end * (width - size)
    return F.crop(frames, top, left, size, size)


def _frames(clip: torch.Tensor) -> torch.Tensor:
    """A decoder clip ``(T, H, W, 3)`` uint8 as a ``(T, 3, H, W)`` view."""
    if clip.dim() != 4 or clip.shape[-1] != 3 or clip.dtype != torch.uint8:
        raise ValueError(
            f"expected a uint8 (T, H, W, 3) clip as decode_clip returns, got {clip.dtype} "
            f"{tuple(clip.shape)}"
        )
    return clip.permute(0, 3, 1, 2)


def _clip(frames: torch.Tensor) -> torch.Tensor:
    """``(T, C, H, W)`` frames as a contiguous ``(C, T, H, W)`` clip."""
    return frames.permute(1, 0, 2, 3).contiguous()
