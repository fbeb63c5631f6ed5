"""Clip plans: random training starts, the centre clip, the 30-view test protocol."""

from __future__ import annotations

import math

import pytest
import torch

from octvideo.data.sampling import (
    CENTRE_CROP,
    RANDOM_CROP,
    ClipSpec,
    max_start_sec,
    multiview_plans,
    multiview_starts,
    train_plan,
    val_plan,
)

SPEC = ClipSpec()  # 8 x 8 at 30 fps


def test_default_clip_is_64_frames_at_30fps():
    assert SPEC.span_sec == pytest.approx(64 / 30)


@pytest.mark.parametrize("duration", [10.0, 2.5, 64 / 30])
def test_training_starts_lie_in_bounds_and_spread_over_them(duration):
    generator = torch.Generator().manual_seed(0)
    plans = [train_plan(duration, SPEC, generator) for _ in range(300)]
    starts = [plan.start_sec for plan in plans]
    latest = duration - SPEC.span_sec
    assert all(0 <= start <= latest + 1e-12 for start in starts)
    assert all(plan.spatial_index == RANDOM_CROP and plan.clip_index == 0 for plan in plans)
    if latest > 0:
        assert min(starts) < 0.1 * latest and max(starts) > 0.9 * latest


def test_training_starts_are_deterministic_per_seed():
    def starts(seed: int) -> list[float]:
        generator = torch.Generator().manual_seed(seed)
        return [train_plan(10.0, SPEC, generator).start_sec for _ in range(5)]

    assert starts(1) == starts(1)
    assert starts(1) != starts(2)


def test_validation_takes_the_centre_clip():
    plan = val_plan(10.0, SPEC)
    assert plan.start_sec == pytest.approx((10.0 - SPEC.span_sec) / 2)
    assert plan.start_sec + SPEC.span_sec / 2 == pytest.approx(5.0)
    assert (plan.clip_index, plan.spatial_index) == (0, CENTRE_CROP)


def test_test_views_are_10_evenly_spaced_clips_times_3_crops():
    plans = multiview_plans(10.0, SPEC)
    assert len(plans) == 30
    assert [(p.clip_index, p.spatial_index) for p in plans[:6]] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)
    ]
    starts = [plan.start_sec for plan in plans[::3]]
    assert starts == multiview_starts(10.0, SPEC)
    assert starts[0] == 0 and starts[-1] == pytest.approx(10.0 - SPEC.span_sec)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == pytest.approx([(10.0 - SPEC.span_sec) / 9] * 9)


def test_one_test_clip_is_the_centre_clip_and_one_crop_the_centre_crop():
    assert multiview_starts(10.0, SPEC, num_clips=1) == [val_plan(10.0, SPEC).start_sec]
    plans = multiview_plans(10.0, SPEC, 4, num_crops=1)
    assert [p.spatial_index for p in plans] == [CENTRE_CROP] * 4


@pytest.mark.parametrize("duration", [0.0, 0.5, SPEC.span_sec - 0.01])
def test_videos_shorter_than_a_clip_start_at_zero(duration):
    assert max_start_sec(duration, SPEC) == 0
    assert train_plan(duration, SPEC, torch.Generator().manual_seed(3)).start_sec == 0
    assert val_plan(duration, SPEC).start_sec == 0
    assert {p.start_sec for p in multiview_plans(duration, SPEC)} == {0.0}


@pytest.mark.parametrize(
    "call",
    [
        lambda: ClipSpec(num_frames=0),
        lambda: ClipSpec(target_fps=0),
        lambda: max_start_sec(-1.0, SPEC),
        lambda: max_start_sec(math.nan, SPEC),
        lambda: multiview_starts(10.0, SPEC, num_clips=0),
        lambda: multiview_plans(10.0, SPEC, num_crops=2),
    ],
)
def test_bad_arguments_are_value_errors(call):
    with pytest.raises(ValueError):
        call()
