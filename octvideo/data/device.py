"""The device side of the data path: uint8 batches become the float inputs of a model.

Batches cross process boundaries and the host-to-device copy as uint8 ``(B, C, T, H, W)`` (a
quarter of float32's bytes); :func:`model_input` converts them where they land, on whatever
device that is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# PySlowFast's Kinetics statistics, per RGB channel, of pixels scaled to [0, 1].
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def _check_batch(clips: torch.Tensor) -> None:
    if clips.dim() != 5 or clips.dtype != torch.uint8:
        raise ValueError(
            f"expected a uint8 (B, C, T, H, W) batch, got {clips.dtype} {tuple(clips.shape)}"
        )


def _affine(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``x / 255 * scale - shift == (x / 255 - mean) / std``, per channel."""
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"mean and std need one value per channel and std > 0; got {mean}, {std}")
    stats = dict(dtype=torch.float32, device=device)
    scale = (1 / (255 * torch.tensor(std, **stats))).view(-1, 1, 1, 1)
    shift = (torch.tensor(mean, **stats) / torch.tensor(std, **stats)).view(-1, 1, 1, 1)
    return scale, shift


def normalize(
    clips: torch.Tensor,
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 ``(B, C, T, H, W)`` -> ``(x / 255 - mean) / std`` as ``dtype``, on ``clips``' device;
    in ``torch.channels_last_3d`` memory format when ``channels_last``."""
    return model_input(clips, None, mean=mean, std=std, dtype=dtype, channels_last=channels_last)


def slowfast_pathways(clips: torch.Tensor, speed_ratio: int = 4) -> list[torch.Tensor]:
    """``[slow, fast]`` from one ``(B, C, T, H, W)`` clip: fast is the clip, slow keeps
    ``T // speed_ratio`` frames at ``linspace(0, T - 1)`` (truncated), PySlowFast's PackPathway."""
    if speed_ratio < 1:
        raise ValueError(f"speed_ratio must be >= 1, got {speed_ratio}")
    frames = clips.shape[2]
    if frames < speed_ratio:
        raise ValueError(
            f"a clip of {frames} frames has no slow frames at speed_ratio {speed_ratio}; "
            "use num_frames >= speed_ratio"
        )
    index = torch.linspace(0, frames - 1, frames // speed_ratio, device=clips.device).long()
    return [clips.index_select(2, index), clips]


def model_input(
    clips: torch.Tensor,
    speed_ratio: int | None = None,
    *,
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """A uint8 batch as a model's input: normalised, and split into ``[slow, fast]`` for a
    SlowFast network (give its ``speed_ratio``; None for single-pathway networks)."""
    return DeviceInput(clips.device, speed_ratio, mean=mean, std=std, dtype=dtype, channels_last=channels_last)(clips)


class DeviceInput:
    """uint8 batches -> a model's input on ``device``, for a training or evaluation loop.

    The batch is copied without blocking the host (from pinned memory, as a DataLoader with
    ``pin_memory`` gives it), normalised with constants built once on ``device``, laid out
    channels-last when asked, and split into ``[slow, fast]`` for a SlowFast network
    (``speed_ratio``). :func:`model_input` does the same for one batch where it lies.
    """

    def __init__(
        self,
        device: torch.device | str,
        speed_ratio: int | None = None,
        *,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        self.device, self.speed_ratio = torch.device(device), speed_ratio
        self.dtype, self.channels_last = dtype, channels_last
        self.channels = len(mean)
        self.scale, self.shift = _affine(mean, std, self.device)

    def __call__(self, clips: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        _check_batch(clips)
        if clips.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got a batch of {tuple(clips.shape)}")
        clips = clips.to(self.device, non_blocking=True)
        if self.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        # float32 arithmetic whatever ``dtype``, so that bfloat16 inputs are rounded only once.
        x = (clips.to(torch.float32) * self.scale - self.shift).to(self.dtype)
        return x if self.speed_ratio is None else slowfast_pathways(x, self.speed_ratio)
