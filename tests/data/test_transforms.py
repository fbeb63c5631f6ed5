"""uint8 clip transforms (scale, crop, flip) and the device side (normalisation, pathways)."""

from __future__ import annotations

import pytest
import torch

from octvideo.data.device import model_input, normalize, slowfast_pathways
from octvideo.data.transforms import EvalTransform, TrainTransform, resize_short_side
from octvideo.models import build_model


def coded_clip(frames: int = 4, height: int = 72, width: int = 96) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)``: red is the column, green the row, blue the frame index."""
    clip = torch.empty(frames, height, width, 3, dtype=torch.uint8)
    clip[..., 0] = torch.arange(width, dtype=torch.uint8)
    clip[..., 1] = torch.arange(height, dtype=torch.uint8)[:, None]
    clip[..., 2] = torch.arange(frames, dtype=torch.uint8)[:, None, None]
    return clip


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- train ------------------------------------------------------------------------------------


def test_train_output_is_a_contiguous_uint8_c_t_h_w_crop():
    out = TrainTransform((40, 48), 32)(coded_clip(), generator(0))
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()
    assert out[2, :, 0, 0].tolist() == [0, 1, 2, 3]  # frames keep their order


def test_short_sides_cover_the_range_inclusive():
    transform = TrainTransform((40, 43), 32)
    g = generator(0)
    assert {transform.draw_short_side(g) for _ in range(200)} == {40, 41, 42, 43}


def test_resize_keeps_aspect_and_skips_clips_already_at_size():
    frames = coded_clip().permute(0, 3, 1, 2)
    assert resize_short_side(frames, 48).shape == (4, 3, 48, 64)
    assert resize_short_side(frames, 72) is frames


def test_resize_is_antialiased():
    board = ((torch.arange(64)[:, None] + torch.arange(64)) % 2 * 255).to(torch.uint8)
    small = resize_short_side(board.expand(1, 3, 64, 64), 16)
    assert small.dtype == torch.uint8
    assert small.min() >= 100 and small.max() <= 155  # averaged, not point-sampled


def test_scaling_in_the_decoder_or_the_transform_gives_the_same_crop_and_flip():
    transform, clip = TrainTransform((40, 56), 32), coded_clip()
    g = generator(5)
    short_side = transform.draw_short_side(g)
    scaled = resize_short_side(clip.permute(0, 3, 1, 2), short_side).permute(0, 2, 3, 1)
    by_decoder = transform(scaled, g, short_side)
    assert torch.equal(by_decoder, transform(clip, generator(5)))


def test_flip_mirrors_the_crop():
    clip = coded_clip()
    kept = TrainTransform((72, 72), 32, flip_prob=0.0)(clip, generator(1))
    flipped = TrainTransform((72, 72), 32, flip_prob=1.0)(clip, generator(1))
    assert torch.equal(flipped, kept.flip(-1))
    assert (kept[0, 0, 0, 1:].int() - kept[0, 0, 0, :-1].int()).eq(1).all()  # columns ascend
    assert (flipped[0, 0, 0, 1:].int() - flipped[0, 0, 0, :-1].int()).eq(-1).all()


def test_crops_and_flips_are_random_and_deterministic_per_generator():
    transform, clip = TrainTransform((72, 72), 32), coded_clip()
    outputs = [transform(clip, generator(seed)) for seed in range(20)]
    assert torch.equal(transform(clip, generator(3)), outputs[3])
    corners = {(int(o[0, 0, 0, 0]), int(o[1, 0, 0, 0])) for o in outputs}  # column, row of (0, 0)
    assert len(corners) > 10


# --- eval -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, channel, expected",
    [
        (40, 100, 0, {0: 0, 1: 30, 2: 60}),  # landscape: left, centre, right columns
        (100, 40, 1, {0: 0, 1: 30, 2: 60}),  # portrait: top, centre, bottom rows
    ],
)
def test_three_crops_run_along_the_long_side(height, width, channel, expected):
    clip = coded_clip(2, height, width)
    transform = EvalTransform(short_side=40, crop_size=40)
    for spatial_index, first in expected.items():
        out = transform(clip, spatial_index)
        assert out.shape == (3, 2, 40, 40)
        assert int(out[channel].min()) == first and int(out[channel].max()) == first + 39
        assert int(out[1 - channel].min()) == 0  # the short side is covered whole


def test_centre_crop_after_scaling():
    out = EvalTransform(short_side=36, crop_size=32)(coded_clip())
    assert out.shape == (3, 4, 32, 32)
    assert torch.equal(out, EvalTransform(36, 32)(coded_clip(), 1))


@pytest.mark.parametrize(
    "call",
    [
        lambda: TrainTransform((30, 40), 32),
        lambda: TrainTransform((48, 40), 32),
        lambda: TrainTransform(flip_prob=2.0),
        lambda: EvalTransform(short_side=32, crop_size=40),
        lambda: EvalTransform()(coded_clip(), 3),
        lambda: EvalTransform()(coded_clip().float()),
        lambda: EvalTransform()(coded_clip().permute(0, 3, 1, 2)),
    ],
)
def test_bad_arguments_are_value_errors(call):
    with pytest.raises(ValueError):
        call()


# --- device side ------------------------------------------------------------------------------


def test_normalize_uses_kinetics_statistics():
    batch = torch.tensor([0, 255, 115], dtype=torch.uint8).view(1, 1, 3, 1, 1).expand(2, 3, 3, 2, 2)
    out = normalize(batch)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    expected = (torch.tensor([0, 255, 115]) / 255 - 0.45) / 0.225
    assert torch.allclose(out[0, 0, :, 0, 0], expected)
    assert out[0, 0, 0, 0, 0] == pytest.approx(-2.0)


def test_normalize_per_channel_dtype_and_layout():
    batch = torch.full((1, 3, 2, 4, 4), 255, dtype=torch.uint8)
    out = normalize(batch, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25), dtype=torch.bfloat16,
                    channels_last=True)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert out[0, :, 0, 0, 0].float().tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        normalize(batch.float())
    with pytest.raises(ValueError):
        normalize(batch, mean=(0.5,), std=(0.5,))


def test_slowfast_pathways_take_every_speed_ratio_th_frame_of_one_clip():
    clips = torch.arange(32, dtype=torch.uint8).view(1, 1, 32, 1, 1).expand(2, 3, 32, 4, 4)
    slow, fast = slowfast_pathways(clips, speed_ratio=4)
    assert fast is clips
    assert slow.shape == (2, 3, 8, 4, 4)
    # PySlowFast's PackPathway: linspace(0, T - 1, T // ratio), truncated.
    assert slow[0, 0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slowfast_pathways(clips[:, :, :8], 4)[0][0, 0, :, 0, 0].tolist() == [0, 7]
    with pytest.raises(ValueError):
        slowfast_pathways(clips[:, :, :3], 4)


def test_model_input_feeds_single_and_two_pathway_models():
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    i3d = build_model("oct_i3d_r18", width=8, num_classes=5, alpha=0.5).eval()
    slowfast = build_model("oct_slowfast_r14", width=8, num_classes=5, alpha=0.5).eval()
    with torch.no_grad():
        assert i3d(model_input(batch)).shape == (2, 5)
        slow, fast = model_input(batch, slowfast.speed_ratio)
        assert (slow.shape[2], fast.shape[2]) == (2, 8)
        assert slowfast([slow, fast]).shape == (2, 5)
