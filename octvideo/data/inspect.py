"""Scanning a dataset's videos: an integrity check, probe statistics, and the failure report.

Videos are scanned by a pool of threads: storage reads wait on the network and PyAV releases the
GIL while it demuxes, decodes and scales, so threads keep cores busy without the start-up cost and
pickling of processes, and share one fsspec filesystem (connection pool) per store. Each video is
read with one FFmpeg thread; the parallelism is across videos.

:func:`check_video` opens a video the way training does (:class:`~octvideo.data.decode.VideoReader`)
and, by default, does a *quick* check: it probes the header (duration, size, codec) and decodes
the first two frames and the last two (from the keyframe before them). That finds missing, empty,
non-video and audio-only files, files cut short (a missing index, or frames that end before the
declared duration) and unknown codecs, reading about the header, the first GOP and the last GOP.
Damage in the middle of a file (corrupt packets, a bad byte range) is found only by the *full*
check, which decodes every frame: the decoding cost of reading the whole video once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import fsspec

from octvideo.data.decode import DEFAULT_TIMEOUT_SEC, VideoInfo, VideoReader, probe_video
from octvideo.data.storage import DEFAULT_RETRY, NO_RETRY, RetryPolicy, retry_call
from octvideo.data.video_errors import VideoDecodeError, is_storage_hiccup

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Checked frames are scaled to this short side: the check needs them decoded, not looked at.
_CHECK_SHORT_SIDE = 8
_REPORT_FORMATS = ("json", "csv")
CHECK_COLUMNS = ("url", "reason", "detail")


def scan(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``fn(item)`` for every item in a pool of ``workers`` threads, yielded in completion order.

    ``workers=None`` uses ThreadPoolExecutor's default (cores + 4, at most 32). At most
    ``2 * workers`` items are in flight, so a listing of any size is consumed lazily. An exception
    from ``fn`` is raised here, after the pool has stopped taking new items.
    """
    if workers is None:
        workers = min(32, (os.cpu_count() or 1) + 4)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(workers, thread_name_prefix="octvideo-scan") as pool:
        limit = 2 * workers
        pending: set[Future[R]] = set()
        try:
            for item in items:
                if len(pending) >= limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
                pending.add(pool.submit(fn, item))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        finally:
            for future in pending:
                future.cancel()


@dataclass(frozen=True)
class CheckResult:
    """The outcome of checking one video: ``reason`` is None when it is readable, else one of
    :data:`~octvideo.data.video_errors.REASONS`; ``detail`` is the underlying error."""

    url: str
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def check_video(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    full: bool = False,
    timeout_sec: float = DEFAULT_TIMEOUT_SEC,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> CheckResult:
    """Check that ``url`` opens and decodes (quick: start and end; ``full``: every frame).

    Broken videos give a result with a reason, never an exception; transient storage errors are
    retried under ``retry`` first. ``timeout_sec`` bounds each decoding pass.
    """

    def attempt() -> None:
        with VideoReader(url, storage_options, threads=1, retry=NO_RETRY) as video:
            info = video.info(timeout_sec)
            fps = info.fps or 30.0
            if full:
                # One pass over the whole duration: every frame is decoded on the way.
                frames = math.ceil(info.duration_sec * fps) + 1
                starts = [0.0]
            else:
                frames = 2
                starts = [0.0, max(0.0, info.duration_sec - frames / fps)]
            for start in starts:
                video.read_clips(
                    [start], frames, 1, fps, _CHECK_SHORT_SIDE, timeout_sec=timeout_sec
                )

    try:
        retry_call(
            attempt,
            retry,
            retryable=is_storage_hiccup,
            what=f"checking {url}",
        )
    except VideoDecodeError as error:
        return CheckResult(url, error.reason, error.detail)
    return CheckResult(url)


def check_videos(
    urls: Iterable[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    full: bool = False,
    workers: int | None = None,
) -> Iterator[CheckResult]:
    """:func:`check_video` over many videos in parallel threads, in completion order."""
    return scan(lambda url: check_video(url, storage_options, full=full), urls, workers)


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`~octvideo.data.decode.probe_video` said about one video, or why it failed."""

    url: str
    info: VideoInfo | None
    error: VideoDecodeError | None = None


def probe_videos(
    urls: Iterable[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    workers: int | None = None,
) -> Iterator[ProbeResult]:
    """:func:`~octvideo.data.decode.probe_video` over many videos in parallel threads, in
    completion order; broken videos give a result with the error."""

    def probe(url: str) -> ProbeResult:
        try:
            return ProbeResult(url, probe_video(url, storage_options))
        except VideoDecodeError as error:
            return ProbeResult(url, None, error)

    return scan(probe, urls, workers)


@dataclass(frozen=True)
class Summary:
    """One property over the probed videos. ``minimum`` / ``median`` / ``maximum`` are None for
    categorical properties (codec, resolution); ``most_common`` lists (value, videos) pairs, with
    durations rounded to 0.1 s and frame rates to 0.01 fps so that near-equal values group."""

    name: str
    count: int
    minimum: float | None
    median: float | None
    maximum: float | None
    most_common: list[tuple[Any, int]]


def summarize(infos: Iterable[VideoInfo], top: int = 3) -> list[Summary]:
    """Count, min / median / max and the ``top`` most common values of duration, frame rate,
    width, height, short side, frame count, resolution and codec."""
    infos = list(infos)
    numeric: dict[str, tuple[list[float], Callable[[float], Any]]] = {
        "duration (s)": ([i.duration_sec for i in infos], lambda v: round(v, 1)),
        "fps": ([i.fps for i in infos if i.fps is not None], lambda v: round(v, 2)),
        "width": ([i.width for i in infos], int),
        "height": ([i.height for i in infos], int),
        "short side": ([min(i.width, i.height) for i in infos], int),
        "frames": ([i.num_frames for i in infos if i.num_frames is not None], int),
    }
    rows = []
    for name, (values, key) in numeric.items():
        counts = Counter(key(v) for v in values).most_common(top)
        if values:
            rows.append(
                Summary(name, len(values), min(values), statistics.median(values), max(values), counts)
            )
        else:
            rows.append(Summary(name, 0, None, None, None, []))
    for name, values in (
        ("resolution", [f"{i.width}x{i.height}" for i in infos]),
        ("codec", [i.codec for i in infos]),
    ):
        rows.append(Summary(name, len(values), None, None, None, Counter(values).most_common(top)))
    return rows


def report_format(url: str) -> str:
    """``json`` or ``csv``, from the report URL's extension; ValueError for anything else."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension not in _REPORT_FORMATS:
        raise ValueError(f"report {url} must end in .json or .csv")
    return extension


def write_report(
    failures: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    summary: Mapping[str, Any] | None = None,
) -> None:
    """Write failure rows (dicts keyed by ``columns``) to ``url``: ``.json`` (an object with
    ``summary`` and ``failures``) or ``.csv`` (a header of ``columns``, one row per failure)."""
    rows = [dict(row) for row in failures]
    if report_format(url) == "json":
        text = json.dumps({"summary": dict(summary or {}), "failures": rows}, indent=2) + "\n"
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = out.getvalue()
    with fsspec.open(url, "w", encoding="utf-8", **dict(storage_options or {})) as f:
        f.write(text)
    logger.info("wrote %d failure(s) to %s", len(rows), url)


def check_failures(results: Iterable[CheckResult]) -> list[dict[str, Any]]:
    """The report rows (:data:`CHECK_COLUMNS`) of the videos that failed, sorted by URL."""
    return [asdict(r) for r in sorted(results, key=lambda r: r.url) if not r.ok]
