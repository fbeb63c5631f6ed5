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
    if clips.dim() != 5 or clips.dtype != torch.uint8:
        raise ValueError(
            f"expected a uint8 (B, C, T, H, W) batch, got {clips.dtype} {tuple(clips.shape)}"
        )
    channels = clips.shape[1]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(
            f"mean and std need one value per channel ({channels}) and std > 0; got {mean}, {std}"
        )
    stats = dict(dtype=torch.float32, device=clips.device)
    scale = (1 / (255 * torch.tensor(std, **stats))).view(-1, 1, 1, 1)
    shift = (torch.tensor(mean, **stats) / torch.tensor(std, **stats)).view(-1, 1, 1, 1)
    if channels_last:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    # float32 arithmetic whatever ``dtype``, so that bfloat16 inputs are rounded only once.
    return (clips.to(torch.float32) * scale - shift).to(dtype)


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
    x = normalize(clips, mean, std, dtype=dtype, channels_last=channels_last)
    return x if speed_ratio is None else slowfast_pathways(x, speed_ratio)
