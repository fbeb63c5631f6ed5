"""Clip decoding, probing and error reporting on real videos written by tests/data/videos.py.

Each test video's frame ``i`` shows ``i`` (see videos.frame_pattern), so tests assert exactly
which frames a clip kept.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import time
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import pytest
import torch

from octvideo.data import decode
from octvideo.data.decode import VideoInfo, VideoReader, decode_clip, decode_clips, probe_video
from octvideo.data.storage import NO_RETRY, RetryPolicy
from octvideo.data.video_errors import REASONS, VideoDecodeError

from .videos import (
    HTML_ERROR_PAGE,
    clip_indices,
    frame_index,
    random_bytes,
    truncated,
    with_corrupt_mdat,
    with_unknown_codec,
    write_audio_only,
    write_bytes,
    write_video,
)

VFR_TIMES_MS = [0, 10, 50, 60, 200, 210, 400, 430, 700, 1000]


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Good videos, 64x48 and 1-3 s unless named otherwise."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264_30fps": write_video(d / "h264_30fps.mp4", num_frames=90, gop=10),
        "h264_25fps_mkv": write_video(d / "h264_25fps.mkv", num_frames=75, fps=25),
        "h264_29.97fps": write_video(
            d / "h264_2997fps.mp4", num_frames=90, fps=Fraction(30000, 1001)
        ),
        # libvpx takes odd sizes in 4:2:0 (chroma rounds up); libx264 needs 4:4:4 for them.
        "vp9_113x97_webm": write_video(
            d / "vp9.webm", num_frames=60, codec="libvpx-vp9", width=113, height=97
        ),
        "h264_113x97_yuv444": write_video(
            d / "h264_odd.mp4", num_frames=30, width=113, height=97, pix_fmt="yuv444p"
        ),
        "vfr_mkv": write_video(
            d / "vfr.mkv", frame_times=[Fraction(ms, 1000) for ms in VFR_TIMES_MS]
        ),
        "no_duration_mkv": write_video(d / "no_duration.mkv", num_frames=60, seekable_output=False),
        "mpegts": write_video(d / "clip.ts", num_frames=60),
        "raw_h264": write_video(d / "clip.h264", num_frames=60),
        "one_keyframe": write_video(d / "one_keyframe.mp4", num_frames=90, gop=1000),
        "faststart": write_video(d / "faststart.mp4", num_frames=90, faststart=True),
        "three_frames": write_video(d / "three_frames.mp4", num_frames=3),
    }


@pytest.fixture(scope="session")
def broken(tmp_path_factory, videos) -> dict[str, Path]:
    """Broken files, named by the reason they must fail with."""
    d = tmp_path_factory.mktemp("broken")
    good = videos["h264_30fps"].read_bytes()
    return {
        "empty": write_bytes(d / "empty.mp4", b""),
        "random bytes": write_bytes(d / "random.mp4", random_bytes(4096)),
        "html page": write_bytes(d / "error_page.mp4", HTML_ERROR_PAGE),
        "truncated, index at the end": write_bytes(d / "cut.mp4", truncated(good)),
        "truncated, index first": write_bytes(
            d / "cut_faststart.mp4", truncated(videos["faststart"].read_bytes())
        ),
        "corrupt packets": write_bytes(d / "corrupt.mp4", with_corrupt_mdat(good)),
        "audio only": write_audio_only(d / "audio.m4a"),
        "unknown codec": write_bytes(d / "unknown_codec.mp4", with_unknown_codec(good)),
        "missing": d / "missing.mp4",
    }


EXPECTED_REASON = {
    "empty": "empty",
    "random bytes": "not a video",
    "html page": "not a video",
    "truncated, index at the end": "truncated",
    "truncated, index first": "truncated",
    "corrupt packets": "corrupt",
    "audio only": "no video stream",
    "unknown codec": "unsupported codec",
    "missing": "not found",
}


def reference_indices(path: Path, times: list[float]) -> list[int]:
    """The index shown at each time, by decoding every frame with plain PyAV, without seeking.

    A frame is shown from its timestamp, less half a tick of the time base for the container's
    rounding, on. Frames of raw streams have no timestamps; they are 1 / frame rate apart.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start, half_tick = stream.start_time or 0, stream.time_base / 2
        frames = [
            (
                n / stream.guessed_rate
                if f.pts is None
                else (f.pts - start) * stream.time_base - half_tick,
                frame_index(f.to_ndarray(format="rgb24")),
            )
            for n, f in enumerate(container.decode(stream))
        ]
    shown = []
    for t in times:
        before = [index for shown_from, index in frames if shown_from <= t + 1e-9]
        shown.append(before[-1] if before else frames[0][1])
    return shown


def clip_times(start: float, num_frames: int, sampling_rate: int, fps: float = 30) -> list[float]:
    return [start + i * sampling_rate / fps for i in range(num_frames)]


# --- which frames are kept ------------------------------------------------------------------


def test_30fps_keeps_every_sampling_rate_th_frame(videos):
    clip = decode_clip(videos["h264_30fps"], start_sec=0.5, num_frames=8, sampling_rate=2)
    assert clip.dtype == torch.uint8 and clip.shape == (8, 48, 64, 3)
    assert clip_indices(clip) == [15, 17, 19, 21, 23, 25, 27, 29]


def test_25fps_is_sampled_by_time(videos):
    clip = decode_clip(videos["h264_25fps_mkv"], 0.0, num_frames=8, sampling_rate=2)
    # t_i = i / 15 s; the 25 fps frame on screen then is floor(25 * i / 15).
    assert clip_indices(clip) == [0, 1, 3, 5, 6, 8, 10, 11]


def test_29_97fps_is_sampled_by_time_not_by_frame_count(videos):
    clip = decode_clip(videos["h264_29.97fps"], 1.0, num_frames=8, sampling_rate=4)
    # Frame k is shown at k * 1001 / 30000 s, so t = 1 + 4i/30 shows frame 29 + 4i
    # (counting frames as if they were 30 fps would give 30 + 4i).
    assert clip_indices(clip) == [29, 33, 37, 41, 45, 49, 53, 57]


def test_variable_frame_rate_keeps_the_frame_on_screen(videos):
    clip = decode_clip(videos["vfr_mkv"], 0.0, num_frames=10, sampling_rate=3)
    # Wanted every 100 ms; frames start at 0, 10, 50, 60, 200, 210, 400, 430, 700, 1000 ms.
    assert clip_indices(clip) == [0, 3, 4, 5, 6, 7, 7, 8, 8, 8]


def test_a_video_shorter_than_the_clip_repeats_its_last_frame(videos):
    assert clip_indices(decode_clip(videos["three_frames"], 0.0, 8, 2)) == [0, 2, 2, 2, 2, 2, 2, 2]
    assert clip_indices(decode_clip(videos["three_frames"], 5.0, 2, 2)) == [2, 2]


@pytest.mark.parametrize(
    "name",
    [
        "h264_30fps",
        "h264_25fps_mkv",
        "h264_29.97fps",
        "vp9_113x97_webm",
        "h264_113x97_yuv444",
        "vfr_mkv",
        "no_duration_mkv",
        "mpegts",
        "raw_h264",
        "one_keyframe",
    ],
)
@pytest.mark.parametrize("start, sampling_rate", [(0.0, 1), (0.42, 3), (1.37, 2), (2.5, 4)])
def test_frames_match_a_full_decode(videos, name, start, sampling_rate):
    clip = decode_clip(videos[name], start, num_frames=6, sampling_rate=sampling_rate, threads=1)
    assert clip_indices(clip) == reference_indices(
        videos[name], clip_times(start, 6, sampling_rate)
    )


def test_decode_clips_opens_once_and_matches_single_clips(videos, monkeypatch):
    path = videos["one_keyframe"]
    starts = [2.0, 0.1, 0.15, 1.2, 2.9]  # unsorted, overlapping, near the end
    expected = [decode_clip(path, s, 5, 3) for s in starts]
    opened = []
    real_open = av.open
    monkeypatch.setattr(decode.av, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    clips = decode_clips(path, starts, num_frames=5, sampling_rate=3)
    assert len(opened) == 1
    for clip, single, start in zip(clips, expected, starts):
        assert torch.equal(clip, single)
        assert clip_indices(clip) == reference_indices(path, clip_times(start, 5, 3))


def test_reader_probes_and_decodes_with_one_open(videos):
    with VideoReader(videos["no_duration_mkv"], threads=1) as video:
        info = video.info()  # scans every packet: the header has no duration
        first, last = video.read_clips([0.0, 1.5], num_frames=4, sampling_rate=2)
        again = video.read_clips([0.2], num_frames=2, sampling_rate=1)[0]
    assert info.num_frames == 60
    assert clip_indices(first) == [0, 2, 4, 6]
    assert clip_indices(last) == reference_indices(videos["no_duration_mkv"], clip_times(1.5, 4, 2))
    assert clip_indices(again) == [6, 7]


def decoded_frames(caplog) -> int:
    """How many frames the last read_clips decoded, from its debug log line."""
    message = [r for r in caplog.records if "decoded frames" in r.getMessage()][-1].getMessage()
    return int(re.search(r"from (\d+) decoded frames", message).group(1))


def test_decoding_starts_at_the_keyframe_before_the_clip_and_stops_after_it(videos, caplog):
    caplog.set_level(logging.DEBUG, logger=decode.__name__)
    # Keyframes every 10 frames: the clip wants frames 75..78, so decoding runs from keyframe
    # 70 to frame 79 (the first one after the clip), not through the 90 frames of the video.
    clip = decode_clip(videos["h264_30fps"], 2.5, num_frames=4, sampling_rate=1, threads=1)
    assert clip_indices(clip) == [75, 76, 77, 78]
    assert decoded_frames(caplog) <= 12
    # With a single keyframe the same clip needs every frame from the start.
    decode_clip(videos["one_keyframe"], 2.5, num_frames=4, sampling_rate=1, threads=1)
    assert decoded_frames(caplog) == 80
    # Far-apart clips seek instead of decoding the gap between them.
    decode_clips(videos["h264_30fps"], [0.0, 2.5], num_frames=2, sampling_rate=1, threads=1)
    assert decoded_frames(caplog) <= 16


def test_a_closed_reader_refuses_work(videos):
    video = VideoReader(videos["h264_30fps"])
    video.close()
    video.close()  # closing twice is fine
    with pytest.raises(ValueError, match="closed"):
        video.read_clips([0.0], 2, 1)


def test_threaded_and_single_threaded_decoding_agree(videos):
    for threads in (0, 1, 2):
        clip = decode_clip(videos["h264_30fps"], 1.0, 8, 2, threads=threads)
        assert clip_indices(clip) == list(range(30, 46, 2))


# --- output size and colour -----------------------------------------------------------------


def test_short_side_scaling_keeps_aspect(videos):
    clip = decode_clip(videos["h264_30fps"], 0.0, 4, 2, short_side=24)
    assert clip.shape == (4, 24, 32, 3)
    assert clip_indices(clip) == [0, 2, 4, 6]
    odd = decode_clip(videos["vp9_113x97_webm"], 0.0, 4, 2, short_side=48)
    assert odd.shape == (4, 48, 56, 3)  # 113 * 48 / 97 = 55.9
    assert clip_indices(odd) == [0, 2, 4, 6]


def test_odd_sizes_decode_at_full_size(videos):
    assert decode_clip(videos["vp9_113x97_webm"], 0, 2, 1).shape == (2, 97, 113, 3)
    assert decode_clip(videos["h264_113x97_yuv444"], 0, 2, 1).shape == (2, 97, 113, 3)


def test_frames_are_rgb(videos):
    frame = decode_clip(videos["h264_30fps"], 1 / 30, 1, 1)[0].numpy()  # index 1: bit 0 set
    red_block = frame[6:18, 4:12].reshape(-1, 3).mean(axis=0)
    assert red_block[0] > 180 and red_block[1] < 70 and red_block[2] < 80


# --- sources --------------------------------------------------------------------------------


def test_every_kind_of_source_gives_the_same_clip(videos):
    path = videos["h264_30fps"]
    data = path.read_bytes()
    with fsspec.open("memory://decode-sources/clip.mp4", "wb") as f:
        f.write(data)
    expected = decode_clip(path, 1.0, 4, 2)
    with open(path, "rb") as local_file:
        sources = [
            str(path),
            f"file://{path}",
            "memory://decode-sources/clip.mp4",
            local_file,
            io.BytesIO(data),
        ]
        for source in sources:
            assert torch.equal(decode_clip(source, 1.0, 4, 2), expected), source
        assert not local_file.closed  # the caller's file object stays open


def test_s3(videos, s3_server, s3_bucket):
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    fs.put(str(videos["h264_29.97fps"]), f"{s3_bucket}/kinetics/clip.mp4")
    url = f"s3://{s3_bucket}/kinetics/clip.mp4"
    options = s3_server.storage_options
    clips = decode_clips(url, [0.0, 1.0], 8, 4, storage_options=options)
    assert clip_indices(clips[1]) == [29, 33, 37, 41, 45, 49, 53, 57]
    assert torch.equal(clips[0], decode_clip(videos["h264_29.97fps"], 0.0, 8, 4))
    assert probe_video(url, options).num_frames == 90
    with pytest.raises(VideoDecodeError) as raised:
        decode_clip(f"s3://{s3_bucket}/kinetics/missing.mp4", 0, 2, 2, storage_options=options)
    assert raised.value.reason == "not found"
    assert f"s3://{s3_bucket}/kinetics/missing.mp4" in str(raised.value)


def test_http(videos, s3_server, s3_bucket):
    # moto serves objects over plain HTTP (with Range support) without checking signatures.
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    fs.put(str(videos["h264_30fps"]), f"{s3_bucket}/clip.mp4")
    fs.chmod(f"{s3_bucket}/clip.mp4", "public-read")
    url = f"{s3_server.endpoint_url}/{s3_bucket}/clip.mp4"
    assert clip_indices(decode_clip(url, 1.0, 4, 2)) == [30, 32, 34, 36]
    with pytest.raises(VideoDecodeError) as raised:
        decode_clip(f"{s3_server.endpoint_url}/{s3_bucket}/missing.mp4", 0, 2, 2)
    assert raised.value.reason == "not found", str(raised.value)


# --- probing --------------------------------------------------------------------------------


def test_probe(videos):
    assert probe_video(videos["h264_30fps"]) == VideoInfo(
        duration_sec=3.0, fps=30.0, width=64, height=48, codec="h264", num_frames=90
    )
    ntsc = probe_video(videos["h264_29.97fps"])
    assert ntsc.fps == pytest.approx(29.97, abs=1e-3) and ntsc.duration_sec == pytest.approx(3.003)
    vp9 = probe_video(videos["vp9_113x97_webm"])
    assert (vp9.codec, vp9.width, vp9.height, vp9.duration_sec) == ("vp9", 113, 97, 2.0)
    assert probe_video(videos["h264_25fps_mkv"]).fps == 25.0


@pytest.mark.parametrize("name", ["no_duration_mkv", "raw_h264"])
def test_probe_without_duration_in_the_header_scans_packets(videos, name):
    with av.open(str(videos[name])) as container:
        assert container.duration is None and container.streams.video[0].duration is None
    info = probe_video(videos[name])
    assert info.duration_sec == pytest.approx(2.0, abs=1 / 30)
    assert info.num_frames == 60


# --- broken sources -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, via",
    [
        (kind, via)
        for kind in sorted(EXPECTED_REASON)
        for via in ("path", "memory", "file object")
        if not (kind == "missing" and via == "file object")
    ],
)
def test_broken_sources_fail_with_their_reason(broken, kind, via):
    path = broken[kind]
    if via == "path":
        source = str(path)
    elif via == "memory":
        source = f"memory://decode-broken/{path.name}"
        if path.exists():
            with fsspec.open(source, "wb") as f:
                f.write(path.read_bytes())
    else:
        source = io.BytesIO(path.read_bytes())
    with pytest.raises(VideoDecodeError) as raised:
        decode_clip(source, 0.0, num_frames=16, sampling_rate=6, retry=NO_RETRY)
    error = raised.value
    assert error.reason == EXPECTED_REASON[kind], str(error)
    assert f": {error.reason}" in str(error)
    if via != "file object":
        assert error.source == source and str(error).startswith(source)


def test_messages_say_what_to_do(broken):
    with pytest.raises(VideoDecodeError, match=r"HTML.*download it again") as raised:
        decode_clip(broken["html page"], 0.0, 2, 2)
    assert raised.value.source == str(broken["html page"])


@pytest.mark.parametrize(
    "kind", ["empty", "random bytes", "truncated, index at the end", "audio only", "missing"]
)
def test_probe_reports_broken_headers(broken, kind):
    with pytest.raises(VideoDecodeError) as raised:
        probe_video(broken[kind])
    assert raised.value.reason == EXPECTED_REASON[kind]


def test_a_cut_file_decodes_before_the_cut_and_fails_after_it(broken):
    path = broken["truncated, index first"]
    assert clip_indices(decode_clip(path, 0.0, 4, 2)) == [0, 2, 4, 6]
    with pytest.raises(VideoDecodeError, match="truncated"):
        decode_clip(path, 2.0, 4, 2)


def test_error_survives_pickling():
    error = VideoDecodeError("s3://bucket/v.mp4", "truncated", "cut at 1.2s")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.reason, copy.detail, str(copy)) == (
        error.source, error.reason, error.detail, str(error)
    )


def test_reasons_are_a_fixed_vocabulary():
    assert REASONS == {
        "not found", "empty", "not a video", "no video stream", "truncated", "corrupt",
        "unsupported codec", "timeout",
    }
    with pytest.raises(ValueError, match="reason"):
        VideoDecodeError("x.mp4", "broken")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(start_sec=-1.0),
        dict(start_sec=float("nan")),
        dict(num_frames=0),
        dict(sampling_rate=0),
        dict(target_fps=-30),
        dict(short_side=0),
        dict(timeout_sec=0),
        dict(threads=-1),
    ],
)
def test_bad_arguments_are_value_errors(videos, kwargs):
    args = dict(start_sec=0.0, num_frames=4, sampling_rate=2) | kwargs
    with pytest.raises(ValueError):
        decode_clip(videos["h264_30fps"], **args)


# --- time bounds and storage errors ---------------------------------------------------------


class FlakyFile(io.BytesIO):
    """Bytes read in small, slow pieces; the reads numbered in ``failing`` raise ``error``."""

    def __init__(self, data: bytes, delay_sec: float = 0.0, error=None, failing=range(0)):
        super().__init__(data)
        self.delay_sec, self.error, self.failing, self.reads = delay_sec, error, failing, 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads in self.failing:
            raise self.error
        time.sleep(self.delay_sec)
        return super().read(min(size, 256) if size > 0 else size)


def test_decoding_is_bounded_by_timeout(videos):
    slow = FlakyFile(videos["h264_30fps"].read_bytes(), delay_sec=0.01)
    started = time.monotonic()
    with pytest.raises(VideoDecodeError) as raised:
        decode_clip(slow, 0.0, 30, 3, timeout_sec=0.1)
    assert raised.value.reason == "timeout"
    assert time.monotonic() - started < 2.0


def test_transient_read_errors_are_retried(videos):
    data = videos["h264_30fps"].read_bytes()
    flaky = FlakyFile(data, error=ConnectionResetError("reset by peer"), failing=range(5, 7))
    retry = RetryPolicy(max_attempts=3, initial_delay_sec=0.001)
    assert clip_indices(decode_clip(flaky, 1.0, 4, 2, retry=retry)) == [30, 32, 34, 36]


def test_transient_read_errors_fail_as_timeout_when_retries_run_out(videos):
    data = videos["h264_30fps"].read_bytes()
    flaky = FlakyFile(data, error=TimeoutError("read timed out"), failing=range(5, 10**6))
    with pytest.raises(VideoDecodeError) as raised:
        decode_clip(flaky, 1.0, 4, 2, retry=RetryPolicy(max_attempts=2, initial_delay_sec=0.001))
    assert raised.value.reason == "timeout"
    assert isinstance(raised.value.__cause__, TimeoutError)


def test_clip_arrays_are_independent(videos):
    a, b = decode_clips(videos["h264_30fps"], [0.0, 0.0], 2, 1)
    a[:] = 0
    assert b.sum() > 0
    assert a.is_contiguous() and b.is_contiguous()
