"""The adaptive choice between decoding a clip's window forward and seeking to each kept frame.

Test videos have exact keyframe intervals (no scene-cut keyframes) and B-frames, and frame ``i``
shows ``i`` (see videos.frame_pattern). Whatever the reader chooses, it must keep the same frames
as the window strategy; the debug log line of read_clips tells how it got them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
import torch

from octvideo.data import decode
from octvideo.data.decode import VideoReader, decode_clip, decode_clips

from .test_decode import clip_times, reference_indices
from .videos import clip_indices, frame_pattern, write_video

NUM_FRAMES = 255  # the most that frame_pattern can number


def write_exact_gop(path: Path, gop: int, num_frames: int = NUM_FRAMES) -> Path:
    """An H.264 MP4 at 30 fps with a keyframe every ``gop`` frames exactly, and B-frames."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {
            "g": str(gop), "keyint_min": str(gop), "bf": "2", "crf": "12", "preset": "veryfast",
            "threads": "1", "x264-params": "scenecut=0",
        }
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(index, 64, 48), "rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def gop_videos(tmp_path_factory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("gops")
    return {gop: write_exact_gop(d / f"gop{gop}.mp4", gop) for gop in (1, 8, 250)}


def keyframes(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [i for i, e in enumerate(container.streams.video[0].index_entries) if e.is_keyframe]


@dataclass(frozen=True)
class Run:
    decoded: int  # frames
    seeks: int
    how: str  # how the seeks were chosen


class DecodeLog(logging.Handler):
    """One Run per read_clips call, from its debug log line."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = re.search(r"from (\d+) decoded frames and (\d+) seek\(s\); (.*)", message)
        if found:
            self.runs.append(Run(int(found[1]), int(found[2]), found[3]))


@pytest.fixture
def log() -> Iterator[DecodeLog]:
    handler = DecodeLog()
    level = decode.logger.level
    decode.logger.addHandler(handler)
    decode.logger.setLevel(logging.DEBUG)
    yield handler
    decode.logger.removeHandler(handler)
    decode.logger.setLevel(level)


def decode_both(log: DecodeLog, *args, **kwargs) -> tuple[torch.Tensor, Run, Run]:
    """decode_clip by the automatic strategy, checked against the window strategy's clip, and
    the two runs (automatic, window)."""
    window = decode_clip(*args, strategy="window", **kwargs)
    auto = decode_clip(*args, **kwargs)
    assert torch.equal(auto, window)
    return auto, log.runs[-1], log.runs[-2]


def test_the_test_videos_have_exact_keyframe_intervals(gop_videos):
    for gop, path in gop_videos.items():
        assert keyframes(path) == list(range(0, NUM_FRAMES, gop))


@pytest.mark.parametrize("gop", [1, 8, 250])
@pytest.mark.parametrize("threads", [1, 0])
@pytest.mark.parametrize(
    "start, num_frames, sampling_rate",
    [(0.0, 8, 8), (16 / 30, 8, 8), (23 / 30, 8, 8), (1.37, 8, 8), (6.0, 8, 8), (0.42, 6, 3),
     (2.5, 16, 2), (8.3, 4, 4)],  # the last runs past the end of the video
)
def test_same_frames_as_the_window_strategy(gop_videos, gop, threads, start, num_frames,
                                             sampling_rate):
    path = gop_videos[gop]
    auto = decode_clip(path, start, num_frames, sampling_rate, short_side=24, threads=threads)
    window = decode_clip(
        path, start, num_frames, sampling_rate, short_side=24, threads=threads, strategy="window"
    )
    assert torch.equal(auto, window)
    times = clip_times(start, num_frames, sampling_rate)
    assert clip_indices(auto) == reference_indices(path, times)


def test_all_intra_seeks_to_each_kept_frame(gop_videos, log):
    clip, auto, window = decode_both(log, gop_videos[1], 1.0, 8, 8, threads=1)
    assert clip_indices(clip) == list(range(30, 94, 8))
    assert auto.how == "seeks planned by the frame index"
    # One seek per kept frame, each decoding that frame and the next (which shows that the
    # kept one is the last frame before the wanted time), instead of the whole window.
    assert (auto.seeks, auto.decoded) == (8, 16)
    assert (window.seeks, window.decoded) == (0, 88)  # frames 0..87: the clip starts at 1 s


def test_gop_8_seeks_when_kept_frames_lie_early_in_their_gop(gop_videos, log):
    path = gop_videos[8]
    # Kept frames 48, 56, ..., 104 are keyframes: decoding forward would decode the 6 frames
    # between the one after a kept frame and the next keyframe; a seek skips them.
    clip, auto, window = decode_both(log, path, 48 / 30, 8, 8, threads=1)
    assert clip_indices(clip) == list(range(48, 112, 8))
    assert (auto.seeks, auto.decoded) == (8, 16)
    assert (window.seeks, window.decoded) == (1, 58)  # frames 48..105
    # Kept frames 55, 63, ...: each is followed by a keyframe, so no frame lies between and
    # the window is decoded forward from the keyframe before the clip, frames 48..112.
    clip, auto, window = decode_both(log, path, 55 / 30, 8, 8, threads=1)
    assert clip_indices(clip) == list(range(55, 119, 8))
    assert auto.seeks == window.seeks == 1 and auto.decoded == window.decoded == 65


def test_long_gop_decodes_the_window_forward(gop_videos, log):
    # One keyframe before the clip (frame 0): seeking anywhere lands there, so the reader
    # decodes from the first frame without seeking at all.
    clip, auto, window = decode_both(log, gop_videos[250], 2.0, 8, 8, threads=1)
    assert clip_indices(clip) == list(range(60, 124, 8))
    assert auto.seeks == 0 and auto.decoded == window.decoded == 118


def test_far_apart_clips_on_a_long_gop_do_not_seek_back_to_the_same_keyframe(gop_videos, log):
    path = gop_videos[250]
    window_clips = decode_clips(path, [0.5, 5.0], 4, 2, threads=1, strategy="window")
    clips = decode_clips(path, [0.5, 5.0], 4, 2, threads=1)
    assert [clip_indices(c) for c in clips] == [[15, 17, 19, 21], [150, 152, 154, 156]]
    assert all(torch.equal(a, w) for a, w in zip(clips, window_clips))
    # The window strategy seeks across the 4 s gap, back to frame 0, and decodes 0..21 again.
    window, auto = log.runs[-2:]
    assert window.seeks == 1 and auto.seeks == 0 and auto.decoded < window.decoded


def test_several_clips_and_a_reused_reader_agree_with_single_clips(gop_videos):
    path = gop_videos[8]
    starts = [3.1, 0.2, 0.25, 7.5]  # unsorted, overlapping, running past the end
    expected = [decode_clip(path, s, 8, 4, strategy="window") for s in starts]
    with VideoReader(path, threads=1) as video:
        for _ in range(2):  # the second call starts away from the first frame
            for clip, single in zip(video.read_clips(starts, 8, 4), expected):
                assert torch.equal(clip, single)


def test_containers_without_a_frame_index_keep_the_gap_rule(tmp_path, log):
    # Matroska's cues list keyframes only: the reader cannot tell what frames lie between.
    path = write_video(tmp_path / "intra.mkv", num_frames=90, gop=1)
    clip, auto, window = decode_both(log, path, 1.0, 8, 4, threads=1)
    assert clip_indices(clip) == list(range(30, 62, 4))
    assert auto == window and auto.how == "seeks across long gaps only"


def test_unknown_strategy_is_a_value_error(gop_videos):
    with pytest.raises(ValueError, match="strategy"):
        decode_clip(gop_videos[1], 0.0, 2, 2, strategy="seek")
