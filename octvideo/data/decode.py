"""Decode clips of RGB frames from a video at any storage location (PyAV / FFmpeg).

Clip semantics follow PySlowFast: a clip of ``num_frames`` frames with ``sampling_rate`` covers
``num_frames * sampling_rate`` frames at ``target_fps``; frame ``i`` is the decoded frame shown at
time ``start_sec + i * sampling_rate / target_fps`` (the last frame whose timestamp is <= that
time). Times are seconds from the first frame of the video stream, so variable frame rates and
25 / 29.97 fps sources are sampled by time, not by frame count. A clip that runs past the end of
the video repeats the last frame.

Every failure caused by the video or its storage raises
:class:`~octvideo.data.video_errors.VideoDecodeError`; bad arguments and unknown URL protocols
raise ValueError.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Literal

import av
import av.error
import av.video.reformatter
import numpy as np
import torch

from octvideo.data.seek_planner import SeekPlanner
from octvideo.data.storage import DEFAULT_RETRY, NO_RETRY, RetryPolicy, open_url, retry_call
from octvideo.data.video_errors import VideoDecodeError, classify, is_storage_hiccup

logger = logging.getLogger(__name__)

VideoSource = str | os.PathLike[str] | IO[bytes]

DEFAULT_TIMEOUT_SEC = 60.0
# How read_clips chooses between decoding forward and seeking: "auto" weighs the two with the
# container's index where it lists every frame (see octvideo.data.seek_planner), "window"
# always uses the SEEK_GAP_SEC rule.
Strategy = Literal["auto", "window"]
STRATEGIES: tuple[Strategy, ...] = ("auto", "window")
# Without an index, decoding forward through this much video is assumed cheaper than a seek,
# which restarts decoding at a keyframe that can lie up to a GOP (often 2-5 s) before the target.
SEEK_GAP_SEC = 1.0
# Slack for float round-off when comparing a wanted time with a frame timestamp, on top of
# half a tick of the stream's time base (see _FrameCursor.slack).
_TIME_EPS = 1e-6
# A stream ending this long before its declared duration is treated as cut short.
_TRUNCATION_SLACK_SEC = 0.5


@dataclass(frozen=True)
class VideoInfo:
    """What clip planning needs to know about a video stream."""

    duration_sec: float
    fps: float | None  # average frame rate; None when the file states none
    width: int
    height: int
    codec: str
    num_frames: int | None  # None when neither the header nor a packet scan gave it


class VideoReader:
    """One opened video from which any number of clips is decoded, and which can be probed.

    Use as a context manager: the container, and the file if the reader opened it, are closed on
    exit. ``threads`` is the FFmpeg decoding thread count (0: one per core; DataLoader workers
    usually want 1). ``retry`` covers transient errors while opening a URL. ``stream`` is the
    PyAV video stream decoded (the first one that is not cover art).
    """

    def __init__(
        self,
        source: VideoSource,
        storage_options: Mapping[str, Any] | None = None,
        *,
        threads: int = 0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = one per core), got {threads}")
        self.name = _source_name(source)
        self._threads = threads
        self._file: IO[bytes] | None = None
        self._owned_file: IO[bytes] | None = None
        self._container: av.container.InputContainer | None = None
        try:
            with self._errors(opening=True):
                if isinstance(source, (str, os.PathLike)):
                    self._file = self._owned_file = open_url(source, storage_options, retry=retry)
                else:
                    self._file = source
                    if self._file.seekable():
                        self._file.seek(0)
                self._open_container()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the container and the file this reader opened (not a file object it was given)."""
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._owned_file is not None:
            self._owned_file.close()
            self._owned_file = None

    def info(self, timeout_sec: float = DEFAULT_TIMEOUT_SEC) -> VideoInfo:
        """Probe the video stream. Reads only the header, unless the header states no duration:
        then all packets are scanned (the whole file is read) and the last one's end is used."""
        self._require_open()
        stream, container = self.stream, self._container
        with self._errors():
            duration = None
            if stream.duration:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            num_frames = stream.frames or None
            if duration is None:
                duration, num_frames = self._scan_packets(time.monotonic() + timeout_sec)
            rate = stream.average_rate or stream.guessed_rate
            return VideoInfo(
                duration_sec=duration,
                fps=float(rate) if rate else None,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                codec=stream.codec_context.codec.canonical_name,
                num_frames=num_frames,
            )

    def read_clips(
        self,
        start_secs: Sequence[float],
        num_frames: int,
        sampling_rate: float,
        target_fps: float = 30.0,
        short_side: int | None = None,
        *,
        timeout_sec: float = DEFAULT_TIMEOUT_SEC,
        strategy: Strategy = "auto",
    ) -> list[torch.Tensor]:
        """Decode one uint8 ``(num_frames, H, W, 3)`` RGB clip per start time, in the given order.

        All wanted timestamps are visited in time order; decoding stops after the last wanted
        frame. Before each one the reader either decodes forward or seeks to the keyframe before
        it: with ``strategy="auto"`` and an index of every frame (MP4 / MOV), whichever decodes
        less (short keyframe intervals make it seek to each kept frame, long ones decode each
        clip's window forward from the keyframe before it); otherwise (``"window"``, or other
        containers) it seeks only across gaps longer than :data:`SEEK_GAP_SEC`. Only kept frames
        are converted to RGB, scaled by FFmpeg so that the short side is ``short_side`` (aspect
        kept) when given. Overlapping clips share decoded frames.
        """
        _check_clip_args(
            start_secs, num_frames, sampling_rate, target_fps, short_side, timeout_sec, strategy
        )
        self._require_open()
        wanted = sorted(
            (start + i * sampling_rate / target_fps, clip, i)
            for clip, start in enumerate(start_secs)
            for i in range(num_frames)
        )
        with self._errors():
            planner = SeekPlanner.of(self.stream) if strategy == "auto" else None
            cursor = _FrameCursor(self, time.monotonic() + timeout_sec, planner)
            # One scaler for the whole call, single-threaded: creating a threaded swscale context
            # per frame costs milliseconds, far more than converting a video frame.
            scaler = av.video.reformatter.VideoReformatter()
            clips: list[np.ndarray] = []
            last_frame, rgb = None, None
            for t, clip, i in wanted:
                frame = cursor.frame_at(t)
                if frame is not last_frame:
                    if not clips:
                        width, height = _output_size(frame.width, frame.height, short_side)
                        shape = (num_frames, height, width, 3)
                        clips = [np.empty(shape, np.uint8) for _ in start_secs]
                    rgb = scaler.reformat(
                        frame, width=width, height=height, format="rgb24", threads=1
                    ).to_ndarray()
                    last_frame = frame
                clips[clip][i] = rgb
        logger.debug(
            "%s: %d clip(s) from %d decoded frames and %d seek(s); %s",
            self.name, len(clips), cursor.decoded, cursor.seeks,
            "seeks planned by the frame index" if planner else "seeks across long gaps only",
        )
        return [torch.from_numpy(clip) for clip in clips]

    @property
    def at_start(self) -> bool:
        """Whether nothing has been read since the container was (re)opened: decoding from the
        first frame then needs neither a seek nor a reopen."""
        return self._at_start

    def seek(self, pts: int) -> None:
        """Move the stream to the keyframe at or before ``pts`` (in the stream's time base), from
        which :meth:`frames` then decodes. Raises av.error.FFmpegError where the container cannot
        seek; :meth:`frames_from_start` still works after that."""
        self._require_open()
        self._at_start = False
        self._container.seek(pts, backward=True, any_frame=False, stream=self.stream)

    def frames(self) -> Iterator[av.VideoFrame]:
        """The stream's frames, decoded from where the container stands (see :meth:`seek`)."""
        self._require_open()
        self._at_start = False
        return self._container.decode(self.stream)

    def frames_from_start(self) -> Iterator[av.VideoFrame]:
        """The stream's frames from the first one: the container is reopened unless nothing
        has been read from it yet."""
        self._require_open()
        if not self._at_start:
            self._open_container()
        return self.frames()

    def _require_open(self) -> None:
        if self._container is None:
            raise ValueError(f"the VideoReader of {self.name} is closed")

    def _open_container(self) -> None:
        """(Re)open the container at the start of the file: the way back to the first frame
        for formats that cannot seek."""
        if self._container is not None:
            self._container.close()
            self._file.seek(0)
        self._container = av.open(self._file, "r", metadata_errors="replace")
        self.stream = self._video_stream()
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = self._threads
        self._at_start = True  # nothing demuxed yet, so decoding can start without a seek

    def _video_stream(self) -> av.video.stream.VideoStream:
        streams = [
            s
            for s in self._container.streams.video
            if not s.disposition & av.stream.Disposition.attached_pic  # cover art, not video
        ]
        if not streams:
            kinds = ", ".join(s.type for s in self._container.streams) or "none"
            raise VideoDecodeError(self.name, "no video stream", f"streams found: {kinds}")
        if streams[0].codec_context is None:
            raise VideoDecodeError(self.name, "unsupported codec", "no decoder for its video codec")
        return streams[0]

    def _scan_packets(self, deadline: float) -> tuple[float, int]:
        """Duration (end of the last packet, or packets / frame rate when untimed) and count."""
        stream, start = self.stream, self.stream.start_time or 0
        end, count, untimed_duration = None, 0, 0
        self._at_start = False
        for packet in self._container.demux(stream):
            _check_deadline(deadline, self.name)
            if packet.size == 0:  # the flush packet at the end
                continue
            count += 1
            untimed_duration += packet.duration or 0
            if packet.pts is not None:
                packet_end = packet.pts + (packet.duration or 0) - start
                end = packet_end if end is None else max(end, packet_end)
        if count == 0:
            raise EOFError("the video stream has no packets")
        ticks = end if end is not None else untimed_duration
        return float(ticks * stream.time_base), count

    @contextmanager
    def _errors(self, opening: bool = False) -> Iterator[None]:
        """Turn what storage, FFmpeg and the cursor raise into VideoDecodeError."""
        try:
            yield
        except VideoDecodeError:
            raise
        except Exception as exc:
            failure = classify(exc, self._file, opening)
            if failure is None:
                raise
            raise VideoDecodeError(self.name, *failure) from exc


class _FrameCursor:
    """Walks the decoded frames of a reader's stream in presentation order, answering
    :meth:`frame_at` for non-decreasing times. ``planner`` decides when to seek; without one,
    gaps longer than :data:`SEEK_GAP_SEC` are sought across. Of the reader it uses ``name``,
    ``stream``, ``at_start``, :meth:`~VideoReader.seek` and the ``frames`` methods."""

    def __init__(
        self, reader: VideoReader, deadline: float, planner: SeekPlanner | None = None
    ) -> None:
        self.reader, self.deadline, self.planner = reader, deadline, planner
        stream = reader.stream
        self.start_pts = stream.start_time or 0
        self.time_base = stream.time_base
        # Containers round timestamps to their time base (1 ms in Matroska / WebM: frame 2 of a
        # 30 fps video is stored at 67 ms, not 66.67 ms), so a frame counts as shown at ``t``
        # when its timestamp is within half a tick after ``t``.
        self.slack = float(self.time_base) / 2 + _TIME_EPS
        # Raw elementary streams state no start time: there are no timestamps to seek by.
        self.seekable = stream.start_time is not None
        # Frames without timestamps are timed by FFmpeg's best guess of the frame rate.
        self.untimed_step = float(1 / (stream.guessed_rate or stream.average_rate or 30))
        self.frames: Iterator[av.VideoFrame] | None = None
        self.current = self.next = None
        self.current_time = self.next_time = None
        self.decoded = self.seeks = 0

    def frame_at(self, t: float) -> av.VideoFrame:
        """The last frame shown at or before ``t`` (the first frame if ``t`` precedes it)."""
        if self.frames is None:
            if self.seekable and (not self.reader.at_start or self._seek_pays(None, t)):
                self._seek(t)
            else:
                self._restart(from_start=True)
        elif (
            self.seekable
            and self.next is not None
            and self.next_time <= t + self.slack
            and self._seek_pays(self.next_time, t)
        ):
            self._seek(t)
        while self.next is not None and self.next_time <= t + self.slack:
            self._step()
        if self.next is None:
            self._check_complete(t)
        return self.current if self.current is not None else self.next

    def _seek_pays(self, after: float | None, t: float) -> bool:
        """Whether to seek for ``t`` rather than decode forward from the frame shown at
        ``after`` (None: from the first frame)."""
        if self.planner is not None:
            return self.planner.seek_pays(after, t)
        return t - (after or 0.0) > SEEK_GAP_SEC

    def _restart(self, from_start: bool) -> None:
        self.frames = self.reader.frames_from_start() if from_start else self.reader.frames()
        self.current = self.next = self.current_time = self.next_time = None
        self._step()

    def _seek(self, t: float) -> None:
        """Seek to the keyframe before ``t``. Where that fails, lands after ``t`` (imprecise
        indexes such as MPEG-TS) or on frames without timestamps, decode forward from the start
        instead and stop seeking."""
        reader = self.reader
        self.seeks += 1
        # To the frame shown at t, not the one before it when t is a hair below its timestamp.
        target = self.start_pts + math.floor((t + self.slack) / self.time_base)
        try:
            reader.seek(target)
        except av.error.FFmpegError as exc:
            logger.debug("%s: cannot seek (%s); decoding from the start", reader.name, exc)
            self.seekable = False
            self._restart(from_start=True)
            return
        self._restart(from_start=False)
        if self.next is None or self.next.pts is None or self.next_time > t + self.slack:
            logger.debug("%s: seek to %.3fs missed; decoding from the start", reader.name, t)
            self.seekable = False
            self._restart(from_start=True)

    def _step(self) -> None:
        _check_deadline(self.deadline, self.reader.name)
        self.current, self.current_time = self.next, self.next_time
        self.next = next(self.frames, None)
        if self.next is None:
            self.next_time = None
            return
        self.decoded += 1
        if self.next.pts is None:
            last = self.current_time
            self.next_time = 0.0 if last is None else last + self.untimed_step
        else:
            self.next_time = float((self.next.pts - self.start_pts) * self.time_base)

    def _check_complete(self, t: float) -> None:
        """At the end of the stream: fail if there were no frames at all, or if the stream
        stopped well before the duration its header declares while frames after that are wanted."""
        if self.current is None:
            raise EOFError("no frame could be decoded")
        declared = self.reader.stream.duration
        if declared and t > self.current_time:
            declared_sec = float(declared * self.time_base)
            if self.current_time + _TRUNCATION_SLACK_SEC < declared_sec:
                raise VideoDecodeError(
                    self.reader.name,
                    "truncated",
                    f"frames end at {self.current_time:.2f}s of a declared {declared_sec:.2f}s",
                )


def decode_clips(
    source: VideoSource,
    start_secs: Sequence[float],
    num_frames: int,
    sampling_rate: float,
    target_fps: float = 30.0,
    short_side: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    threads: int = 0,
    timeout_sec: float = DEFAULT_TIMEOUT_SEC,
    retry: RetryPolicy = DEFAULT_RETRY,
    strategy: Strategy = "auto",
) -> list[torch.Tensor]:
    """Decode one clip per start time from a single open of ``source`` (see
    :meth:`VideoReader.read_clips`). ``timeout_sec`` bounds each attempt's decoding; transient
    storage errors restart the attempt under ``retry``; a missing object fails at once."""

    def attempt() -> list[torch.Tensor]:
        with VideoReader(source, storage_options, threads=threads, retry=NO_RETRY) as video:
            return video.read_clips(
                start_secs, num_frames, sampling_rate, target_fps, short_side,
                timeout_sec=timeout_sec, strategy=strategy,
            )

    return retry_call(
        attempt, retry, retryable=is_storage_hiccup, what=f"decoding {_source_name(source)}"
    )


def decode_clip(
    source: VideoSource,
    start_sec: float,
    num_frames: int,
    sampling_rate: float,
    target_fps: float = 30.0,
    short_side: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    threads: int = 0,
    timeout_sec: float = DEFAULT_TIMEOUT_SEC,
    retry: RetryPolicy = DEFAULT_RETRY,
    strategy: Strategy = "auto",
) -> torch.Tensor:
    """One uint8 ``(num_frames, H, W, 3)`` RGB clip starting at ``start_sec``; see decode_clips."""
    return decode_clips(
        source, [start_sec], num_frames, sampling_rate, target_fps, short_side, storage_options,
        threads=threads, timeout_sec=timeout_sec, retry=retry, strategy=strategy,
    )[0]


def probe_video(
    source: VideoSource,
    storage_options: Mapping[str, Any] | None = None,
    *,
    timeout_sec: float = DEFAULT_TIMEOUT_SEC,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> VideoInfo:
    """Duration, frame rate, size, codec and frame count of the video stream of ``source``."""

    def attempt() -> VideoInfo:
        with VideoReader(source, storage_options, threads=1, retry=NO_RETRY) as video:
            return video.info(timeout_sec)

    return retry_call(
        attempt, retry, retryable=is_storage_hiccup, what=f"probing {_source_name(source)}"
    )


def _source_name(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if hasattr(source, "fs") and hasattr(source, "path"):  # an fsspec file
        return source.fs.unstrip_protocol(source.path)
    name = getattr(source, "name", None)
    return str(name) if name else f"<{type(source).__name__}>"


def _check_clip_args(
    start_secs: Sequence[float],
    num_frames: int,
    sampling_rate: float,
    target_fps: float,
    short_side: int | None,
    timeout_sec: float,
    strategy: str,
) -> None:
    if not start_secs:
        raise ValueError("start_secs is empty: give at least one clip start time")
    if any(not math.isfinite(s) or s < 0 for s in start_secs):
        raise ValueError(f"clip start times must be finite and >= 0 s, got {list(start_secs)}")
    if num_frames < 1 or sampling_rate <= 0 or target_fps <= 0:
        raise ValueError(
            "num_frames must be >= 1 and sampling_rate, target_fps > 0; got "
            f"num_frames={num_frames}, sampling_rate={sampling_rate}, target_fps={target_fps}"
        )
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be a number of pixels >= 1 or None, got {short_side}")
    if timeout_sec <= 0:
        raise ValueError(f"timeout_sec must be > 0, got {timeout_sec}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")


def _output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_deadline(deadline: float, name: str) -> None:
    if time.monotonic() > deadline:
        raise VideoDecodeError(name, "timeout", "decoding exceeded its time limit (timeout_sec)")
