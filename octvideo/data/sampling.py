"""Where in a video the clips come from: the temporal side of PySlowFast's sampling protocol.

A clip is ``num_frames`` frames taken every ``sampling_rate`` frames of the video resampled to
``target_fps``; it spans ``num_frames * sampling_rate / target_fps`` seconds (8 x 8 at 30 fps:
64 frames, 2.13 s). Per mode:

* train: one clip, its start uniform in ``[0, duration - span]``, drawn from a given generator;
* val: the centre clip;
* test: ``num_clips`` clips evenly spaced from the first possible start to the last one
  (``start_i = i * (duration - span) / (num_clips - 1)``; one clip is the centre clip), each
  seen through ``num_crops`` spatial crops: PySlowFast's 10 x 3 = 30 views. PySlowFast's default
  ``i * (duration - span) / num_clips`` never reaches the end of the video; this spacing is its
  ``USE_OFFSET_SAMPLING`` variant, which covers both ends symmetrically.

A video shorter than the span gives start 0: the decoder repeats its last frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

#: ``ClipPlan.spatial_index`` of a training clip, whose crop is drawn at random.
RANDOM_CROP = -1
#: ``ClipPlan.spatial_index`` of the centre crop (PySlowFast's spatial_idx 1).
CENTRE_CROP = 1


class Mode(str, enum.Enum):
    """How clips are sampled: one random clip (train), the centre clip (val), all views (test)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class ClipSpec:
    """The frames of one clip: ``num_frames`` every ``sampling_rate`` frames at ``target_fps``."""

    num_frames: int = 8
    sampling_rate: int = 8
    target_fps: float = 30.0

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.sampling_rate < 1 or self.target_fps <= 0:
            raise ValueError(
                "ClipSpec needs num_frames >= 1, sampling_rate >= 1 and target_fps > 0; got "
                f"{self.num_frames}, {self.sampling_rate}, {self.target_fps}"
            )

    @property
    def span_sec(self) -> float:
        return self.num_frames * self.sampling_rate / self.target_fps


@dataclass(frozen=True)
class ClipPlan:
    """One view of a video: the clip's start, its temporal index among the test clips (0 for
    train / val) and its spatial crop (0, 1, 2 along the long side, or :data:`RANDOM_CROP`)."""

    start_sec: float
    clip_index: int = 0
    spatial_index: int = CENTRE_CROP


def max_start_sec(duration_sec: float, spec: ClipSpec) -> float:
    """The latest start at which the clip still ends inside the video; 0 for short videos."""
    if not duration_sec >= 0:  # also rejects NaN
        raise ValueError(f"video duration must be >= 0 s, got {duration_sec}")
    return max(0.0, duration_sec - spec.span_sec)


def train_plan(duration_sec: float, spec: ClipSpec, generator: torch.Generator) -> ClipPlan:
    """One clip starting uniformly at random in ``[0, max_start_sec]`` (one draw from
    ``generator``), with a random crop."""
    latest = max_start_sec(duration_sec, spec)
    start = torch.rand((), generator=generator, dtype=torch.float64).item() * latest
    return ClipPlan(start, 0, RANDOM_CROP)


def val_plan(duration_sec: float, spec: ClipSpec) -> ClipPlan:
    """The clip in the middle of the video, centre crop."""
    return ClipPlan(max_start_sec(duration_sec, spec) / 2, 0, CENTRE_CROP)


def multiview_starts(duration_sec: float, spec: ClipSpec, num_clips: int = 10) -> list[float]:
    """Start of each of the ``num_clips`` evenly spaced test clips, first to last."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    latest = max_start_sec(duration_sec, spec)
    if num_clips == 1:
        return [latest / 2]
    return [i * latest / (num_clips - 1) for i in range(num_clips)]


def multiview_plans(
    duration_sec: float, spec: ClipSpec, num_clips: int = 10, num_crops: int = 3
) -> list[ClipPlan]:
    """All ``num_clips * num_crops`` test views, clip-major: view ``v`` is clip ``v // num_crops``
    through crop ``v % num_crops`` (one crop is the centre crop)."""
    if num_crops not in (1, 3):
        raise ValueError(
            f"num_crops must be 1 (centre) or 3 (both ends and centre), got {num_crops}"
        )
    crops = [CENTRE_CROP] if num_crops == 1 else [0, 1, 2]
    return [
        ClipPlan(start, clip, crop)
        for clip, start in enumerate(multiview_starts(duration_sec, spec, num_clips))
        for crop in crops
    ]

