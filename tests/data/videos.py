"""Real test videos written with PyAV, whose frames show their own index, and broken files.

Frame ``i`` is a 2 x 4 grid of blocks, one per bit of ``i`` (8 bits, so up to 256 frames): a set
bit is a red block, a clear bit a dark one. The blocks are a quarter of the frame wide and half
of it high, so the index survives lossy compression and downscaling; :func:`frame_index` reads
it back from an RGB frame, and the red blocks also show that channels come back in RGB order.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

ON = (230, 30, 40)
OFF = (20, 20, 20)
_ROWS, _COLS = 2, 4


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    """The RGB image of frame ``index``."""
    if not 0 <= index < 2 ** (_ROWS * _COLS):
        raise ValueError(f"frame index {index} does not fit in {_ROWS * _COLS} bits")
    image = np.empty((height, width, 3), np.uint8)
    for bit in range(_ROWS * _COLS):
        row, col = divmod(bit, _COLS)
        block = image[
            row * height // _ROWS : (row + 1) * height // _ROWS,
            col * width // _COLS : (col + 1) * width // _COLS,
        ]
        block[:] = ON if (index >> bit) & 1 else OFF
    return image


def frame_index(rgb: np.ndarray | torch.Tensor) -> int:
    """The index shown by an ``(H, W, 3)`` RGB frame, read from the middle of each block."""
    rgb = np.asarray(rgb)
    height, width = rgb.shape[:2]
    index = 0
    for bit in range(_ROWS * _COLS):
        row, col = divmod(bit, _COLS)
        top, left = row * height // _ROWS, col * width // _COLS
        bottom, right = (row + 1) * height // _ROWS, (col + 1) * width // _COLS
        dy, dx = (bottom - top) // 4, (right - left) // 4
        red = rgb[top + dy : bottom - dy, left + dx : right - dx, 0].mean()
        index |= int(red > 128) << bit
    return index


def clip_indices(clip: torch.Tensor) -> list[int]:
    """The frame index shown by each frame of a ``(T, H, W, 3)`` clip."""
    return [frame_index(frame) for frame in clip]


class _Unseekable(io.RawIOBase):
    """A write-only file that cannot seek, so muxers cannot go back to fill in the duration."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self._raw = raw

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:
        return self._raw.write(data)


def write_video(
    path: Path,
    *,
    num_frames: int = 60,
    fps: int | Fraction = 30,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int = 10,
    frame_times: Sequence[Fraction] | None = None,
    seekable_output: bool = True,
    faststart: bool = False,
) -> Path:
    """Encode frames 0..num_frames-1 (see :func:`frame_pattern`) and return ``path``.

    ``gop`` is the keyframe interval. ``frame_times`` (seconds) gives a variable frame rate and
    replaces ``num_frames``; otherwise frame ``i`` is shown at ``i / fps``.
    ``seekable_output=False`` writes through a pipe-like file, so containers that patch their
    header at the end (Matroska's duration) cannot.
    """
    if frame_times is None:
        frame_times = [Fraction(i) / Fraction(fps) for i in range(num_frames)]
        time_base = 1 / Fraction(fps)
    else:
        time_base = Fraction(1, 90000)
    # One encoder thread: the same bytes on every machine, so byte-level damage (see
    # with_corrupt_mdat) hits the same packets everywhere.
    options = {"g": str(gop), "keyint_min": str(gop), "threads": "1"}
    if codec == "libx264":
        options |= {"crf": "12", "preset": "veryfast"}
    elif codec == "libvpx-vp9":
        options |= {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
    container_options = {"movflags": "+faststart"} if faststart else {}
    with open(path, "wb") as raw:
        target = raw if seekable_output else _Unseekable(raw)
        with av.open(
            target, "w", format=_format_for(path), options=container_options
        ) as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.codec_context.time_base = time_base
            stream.options = options
            for index, shown_at in enumerate(frame_times):
                frame = av.VideoFrame.from_ndarray(frame_pattern(index, width, height), "rgb24")
                frame.pts, frame.time_base = int(shown_at / time_base), time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    return path


def _format_for(path: Path) -> str | None:
    formats = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".ts": "mpegts", ".h264": "h264"}
    return formats[path.suffix]


def write_audio_only(path: Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """An AAC-in-MP4 (``.m4a``) file with a sine tone and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        samples_per_frame = 1024
        for start in range(0, int(seconds * sample_rate), samples_per_frame):
            t = (start + np.arange(samples_per_frame)) / sample_rate
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n"
    b"<body><h1>Forbidden</h1><p>You don't have permission to access this video.</p>"
    b"</body></html>\n"
)


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of ``data``: an interrupted download."""
    return data[: int(len(data) * keep)]


def mp4_box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset, size) of the first top-level MP4 box of type ``kind``."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        if data[offset + 4 : offset + 8] == kind:
            return offset, size
        offset += size
    raise ValueError(f"no {kind!r} box")


def with_corrupt_mdat(data: bytes, length: int = 400, seed: int = 1) -> bytes:
    """``data`` (an MP4) with ``length`` random bytes written over the middle of its frame data."""
    offset, size = mp4_box(data, b"mdat")
    middle = offset + size // 2
    return data[:middle] + random_bytes(length, seed) + data[middle + length :]


def with_unknown_codec(data: bytes) -> bytes:
    """``data`` (an H.264 MP4) with its sample entry renamed to a codec no decoder knows."""
    return data.replace(b"avc1", b"zzzz")
