"""Re-encoding raw Kinetics downloads for fast training reads: short side, keyframe interval, H.264.

Each video becomes H.264 (libx264, yuv420p, CRF rate control) in MP4 with its index first
(``+faststart``: one ranged read finds it on an object store), scaled so that its short side is
``short_side`` pixels (aspect kept, both sides even; smaller videos are scaled up, as PySlowFast's
and MMAction2's ``scale=-2:320`` does) with a keyframe exactly every ``gop`` frames (no scene-cut
keyframes): the keyframe interval bounds how far a seek must decode before a clip's first frame,
the largest single lever on decode speed. ``gop=1`` makes every frame a keyframe (all-intra).
Frame timestamps are kept, so variable frame rates survive. Audio, subtitles and metadata are
dropped: the models read frames only.

The output mirrors the source tree (``a/b/x.webm`` -> ``a/b/x.mp4``); CSV, list and JSON files
(manifests, label maps) are copied alongside at the end, with the video extensions named in
``path label`` lists rewritten to ``.mp4``. Work is resumable: a video is written to a temporary
name (``x.mp4.partial`` next to a local destination, a local temporary file for object stores)
and only renamed or uploaded to its final name once complete, so a destination video that exists
is finished and is skipped by the next run. The settings are recorded in
:data:`SETTINGS_NAME` in the destination and a run with other settings is refused.
Broken inputs fail with their reason (see :class:`~octvideo.data.video_errors.VideoDecodeError`);
other videos carry on.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Literal

import av
import av.error
import av.video.reformatter
import fsspec
from av.video.frame import PictureType
from fsspec.core import strip_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from octvideo.data.decode import VideoReader
from octvideo.data.inspect import check_video, scan
from octvideo.data.manifest import LABEL_MAP_NAME, VIDEO_EXTENSIONS, load_manifest
from octvideo.data.storage import NO_RETRY, is_transient, retry_call
from octvideo.data.video_errors import VideoDecodeError

logger = logging.getLogger(__name__)

SETTINGS_NAME = "prepare_settings.json"
PARTIAL_SUFFIX = ".partial"
# Files copied alongside the videos: Kinetics CSVs, ``path label`` lists, label maps.
AUX_EXTENSIONS = (".csv", ".txt", ".list", ".json")
_LIST_EXTENSIONS = (".txt", ".list")
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)
# A stream ending this long before its declared duration counts as cut short (as in decode.py).
_TRUNCATION_SLACK_SEC = 0.5
PREPARE_COLUMNS = ("src", "dst", "reason", "detail")


@dataclass(frozen=True)
class PrepareSettings:
    """How videos are re-encoded. The keyframe interval is ``gop`` frames, or, when
    ``keyframe_interval_sec`` is given instead, that many seconds at each video's average rate."""

    short_side: int = 320
    gop: int | None = 30
    keyframe_interval_sec: float | None = None
    crf: int = 23
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.short_side < 2 or self.short_side % 2:
            raise ValueError(f"short_side must be even and >= 2 (H.264 4:2:0), got {self.short_side}")
        if (self.gop is None) == (self.keyframe_interval_sec is None):
            raise ValueError("give exactly one of gop and keyframe_interval_sec")
        if self.gop is not None and self.gop < 1:
            raise ValueError(f"gop must be >= 1 frame (1: all-intra), got {self.gop}")
        if self.keyframe_interval_sec is not None and not self.keyframe_interval_sec > 0:
            raise ValueError(f"keyframe_interval_sec must be > 0, got {self.keyframe_interval_sec}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be 0..51 (lower is better quality), got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"unknown x264 preset {self.preset!r}; use one of {', '.join(X264_PRESETS)}")

    def gop_for(self, fps: float) -> int:
        if self.gop is not None:
            return self.gop
        return max(1, round(self.keyframe_interval_sec * fps))

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) with the short side ``short_side`` and the long side rounded to even."""
        scale = self.short_side / min(width, height)
        if width <= height:
            return self.short_side, max(2, round(height * scale / 2) * 2)
        return max(2, round(width * scale / 2) * 2), self.short_side


@dataclass(frozen=True)
class PrepareTask:
    """One video to re-encode: source and destination URLs."""

    src: str
    dst: str


@dataclass(frozen=True)
class PreparePlan:
    """What a run has to do: ``tasks`` to encode, ``finished`` ones whose destination exists, and
    the ``aux`` files (source URL, destination URL) copied at the end."""

    src_url: str
    dst_url: str
    settings: PrepareSettings
    tasks: tuple[PrepareTask, ...]
    finished: tuple[PrepareTask, ...]
    aux: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PrepareResult:
    """The outcome for one video; ``reason`` / ``detail`` say why it ``failed``."""

    src: str
    dst: str
    status: Literal["done", "skipped", "failed"]
    reason: str | None = None
    detail: str = ""
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class PrepareSummary:
    """Running totals of a run. ``bytes_in`` / ``bytes_out`` count the videos encoded by it."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    failures: list[PrepareResult] = field(default_factory=list)

    def add(self, result: PrepareResult) -> None:
        setattr(self, result.status, getattr(self, result.status) + 1)
        self.bytes_in += result.bytes_in
        self.bytes_out += result.bytes_out
        if result.status == "failed":
            self.failures.append(result)

    @property
    def growth(self) -> float | None:
        """Output bytes over input bytes of the encoded videos (None before any)."""
        return self.bytes_out / self.bytes_in if self.bytes_in else None

    def line(self, seconds: float) -> str:
        """A one-line account: counts, rate, and the storage growth."""
        rate = self.done / seconds if seconds > 0 else 0.0
        growth = f"{self.growth:.2f}x" if self.growth is not None else "n/a"
        return (
            f"{self.done} done, {self.skipped} skipped, {self.failed} failed in {seconds:.1f} s "
            f"({rate:.2f} videos/s); {_mib(self.bytes_in)} -> {_mib(self.bytes_out)} "
            f"(storage growth {growth})"
        )

    def totals(self) -> dict[str, Any]:
        """The counts, bytes and growth as a dict (the ``summary`` of a JSON report)."""
        keys = ("done", "skipped", "failed", "bytes_in", "bytes_out")
        return {**{key: getattr(self, key) for key in keys}, "growth": self.growth}

    def failure_rows(self) -> list[dict[str, Any]]:
        """Report rows (:data:`PREPARE_COLUMNS`) of the failed videos, sorted by source."""
        return [
            {key: asdict(r)[key] for key in PREPARE_COLUMNS}
            for r in sorted(self.failures, key=lambda r: r.src)
        ]


def plan_prepare(
    src_url: str,
    dst_url: str,
    settings: PrepareSettings,
    storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
    *,
    root: str | None = None,
) -> PreparePlan:
    """List the work: every video under the folder ``src_url``, or the videos of the manifest
    ``src_url`` (a Kinetics CSV or ``path label`` list; ``root`` as in ``load_manifest``).

    One listing of the destination tells which videos are finished. Records ``settings`` in the
    destination, or raises ValueError if it holds videos prepared with other settings.
    ``dst_storage_options`` defaults to ``storage_options``.
    """
    options = dict(storage_options or {})
    dst_options = dict(options if dst_storage_options is None else dst_storage_options)
    src_fs, src_path = url_to_fs(src_url, **options)
    dst_fs, dst_root = url_to_fs(dst_url, **dst_options)
    src_path, dst_root = src_path.rstrip("/"), dst_root.rstrip("/")
    if src_fs.isdir(src_path):
        if root is not None:
            raise ValueError(f"root= applies to manifests; {src_url} is a folder")
        src_root = src_path
        videos, aux = _list_tree(src_fs, src_root)
    elif src_fs.isfile(src_path):
        src_root = strip_protocol(root).rstrip("/") if root else posixpath.dirname(src_path)
        if isinstance(src_fs, LocalFileSystem):
            src_root = os.path.abspath(src_root)
        videos, aux = _list_manifest(src_url, src_fs, src_path, src_root, root, options)
    else:
        raise ValueError(f"source {src_url} does not exist; check the URL and storage options")
    if type(src_fs) is type(dst_fs) and (dst_root + "/").startswith(src_root + "/"):
        raise ValueError(f"destination {dst_url} lies inside the source {src_url}; pick another")
    _record_settings(dst_fs, dst_root, settings, dst_url)

    dst_fs.invalidate_cache(dst_root)  # object-store listings may be cached from an earlier run
    existing = set(dst_fs.find(dst_root))
    tasks, finished, targets = [], [], {}
    for relative in sorted(videos, key=lambda r: (r, not r.endswith(".mp4"))):
        target = posixpath.splitext(relative)[0] + ".mp4"
        if target in targets:
            logger.warning("%s and %s both become %s; keeping the first", targets[target], relative, target)
            continue
        targets[target] = relative
        task = PrepareTask(_url(src_fs, f"{src_root}/{relative}"), _url(dst_fs, f"{dst_root}/{target}"))
        (finished if f"{dst_root}/{target}" in existing else tasks).append(task)
    copies = tuple(
        (_url(src_fs, f"{src_root}/{r}"), _url(dst_fs, f"{dst_root}/{r}")) for r in sorted(aux)
    )
    logger.info(
        "%s -> %s: %d video(s) to encode, %d finished, %d file(s) to copy",
        src_url, dst_url, len(tasks), len(finished), len(copies),
    )
    return PreparePlan(src_url, dst_url, settings, tuple(tasks), tuple(finished), copies)


def _list_tree(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[str], list[str]]:
    """Relative paths of the videos and of the aux files under ``root``."""
    videos, aux = [], []
    for path in fs.find(root):
        relative = path[len(root):].lstrip("/")
        extension = posixpath.splitext(relative)[1].lower()
        if extension in VIDEO_EXTENSIONS:
            videos.append(relative)
        elif extension in AUX_EXTENSIONS and relative != SETTINGS_NAME:
            aux.append(relative)
    if not videos:
        raise ValueError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
    return videos, aux


def _list_manifest(
    url: str, fs: fsspec.AbstractFileSystem, path: str, root: str, root_arg: str | None, options: dict
) -> tuple[list[str], list[str]]:
    """Relative paths of a manifest's videos, and of the manifest and label map (aux)."""
    manifest = load_manifest(url, root=root_arg, storage_options=options)
    videos = []
    for entry in manifest:
        entry_path = strip_protocol(entry.url)
        if not entry_path.startswith(root + "/"):
            raise ValueError(
                f"{entry.url} (listed in {url}) is not under the root {root}; pass as root (--root) the "
                "folder that holds every video"
            )
        videos.append(entry_path[len(root) + 1:])
    aux = []
    for candidate in (path, f"{root}/{LABEL_MAP_NAME}"):
        if candidate.startswith(root + "/") and fs.isfile(candidate):
            aux.append(candidate[len(root) + 1:])
    return videos, sorted(set(aux))


def _record_settings(
    fs: fsspec.AbstractFileSystem, root: str, settings: PrepareSettings, dst_url: str
) -> None:
    path = f"{root}/{SETTINGS_NAME}"
    wanted = asdict(settings)
    if fs.isfile(path):
        recorded = json.loads(fs.cat_file(path))
        if recorded != wanted:
            raise ValueError(
                f"{dst_url} was prepared with {recorded}, not {wanted}; use a new destination "
                f"(or delete {SETTINGS_NAME} there and the videos made with the old settings)"
            )
        return
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(path, (json.dumps(wanted, indent=2) + "\n").encode())


def prepare_video(
    task: PrepareTask,
    settings: PrepareSettings,
    storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
) -> PrepareResult:
    """Re-encode one video and commit it to ``task.dst`` once complete.

    A broken input gives a ``failed`` result with its reason and leaves no output. Transient
    storage errors are retried (the whole video); other storage errors, and encoder errors
    (a full disk), are raised.
    """
    options = dict(storage_options or {})
    dst_options = dict(options if dst_storage_options is None else dst_storage_options)
    dst_fs, dst_path = url_to_fs(task.dst, **dst_options)
    src_fs, src_path = url_to_fs(task.src, **options)

    def attempt() -> int:
        if isinstance(dst_fs, LocalFileSystem):
            partial = dst_path + PARTIAL_SUFFIX
            dst_fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
            try:
                _transcode(task.src, options, partial, settings)
                os.replace(partial, dst_path)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
            return os.path.getsize(dst_path)
        with tempfile.TemporaryDirectory(prefix="octvideo-prepare-") as scratch:
            local = os.path.join(scratch, "video.mp4")
            _transcode(task.src, options, local, settings)
            dst_fs.put_file(local, dst_path)
            return os.path.getsize(local)

    try:
        bytes_out = retry_call(
            attempt,
            retryable=lambda exc: is_transient(exc) or is_transient(exc.__cause__),
            what=f"preparing {task.src}",
        )
    except VideoDecodeError as error:
        logger.warning("skipping %s", error)
        return PrepareResult(task.src, task.dst, "failed", error.reason, error.detail)
    return PrepareResult(task.src, task.dst, "done", bytes_in=src_fs.size(src_path), bytes_out=bytes_out)


def _transcode(src: str, options: dict, out_path: str, settings: PrepareSettings) -> None:
    """Decode ``src`` and encode it to the local file ``out_path`` (see the module docstring)."""
    with VideoReader(src, options, threads=1, retry=NO_RETRY) as video:
        # The stream's header, not VideoReader.info(): that may scan (use up) the packets.
        source = video.stream
        rate = source.average_rate or source.guessed_rate or Fraction(30)
        fps = float(rate)
        width, height = settings.output_size(source.codec_context.width, source.codec_context.height)
        gop = settings.gop_for(fps)
        time_base = source.time_base or Fraction(1, 90000)
        scaler = av.video.reformatter.VideoReformatter()
        frames = source.container.decode(source)
        last_pts, index = None, 0
        with av.open(out_path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # The encoder counts in the source's time base, so that every timestamp is kept exactly.
            stream.time_base = stream.codec_context.time_base = time_base
            stream.options = {
                "crf": str(settings.crf),
                "preset": settings.preset,
                "g": str(gop),
                "keyint_min": str(gop),
                "threads": "1",
                "x264-params": "scenecut=0",
            }
            while True:
                try:
                    frame = next(frames, None)
                except (av.error.FFmpegError, EOFError) as exc:
                    raise _diagnose(src, options, exc) from exc
                if frame is None:
                    break
                pts = frame.pts if frame.pts is not None else round(index / fps / time_base)
                index += 1
                if last_pts is not None and pts <= last_pts:
                    continue  # a repeated timestamp: the muxer needs them increasing
                last_pts = pts
                scaled = scaler.reformat(
                    frame, width=width, height=height, format="yuv420p",
                    interpolation="BICUBIC", threads=1,
                )
                scaled.pts, scaled.time_base = pts, time_base
                # Decoded frames keep the source's picture types, which x264 would obey.
                scaled.pict_type = PictureType.NONE
                out.mux(stream.encode(scaled))
            if last_pts is None:
                raise VideoDecodeError(video.name, "corrupt", "no frame could be decoded")
            _check_complete(video, last_pts, time_base)
            out.mux(stream.encode(None))


def _diagnose(src: str, options: dict, exc: Exception) -> VideoDecodeError:
    """The error for a video whose decoding failed: the reason decode.py's full check gives
    (a cut file is "truncated"), else "corrupt"."""
    found = check_video(src, options, full=True, retry=NO_RETRY)
    if found.ok:
        return VideoDecodeError(src, "corrupt", f"{type(exc).__name__}: {exc}")
    return VideoDecodeError(src, found.reason, found.detail)


def _check_complete(video: VideoReader, last_pts: int, time_base: Fraction) -> None:
    declared = video.stream.duration
    if not declared:
        return
    start = video.stream.start_time or 0
    end_sec = float((last_pts - start) * time_base)
    declared_sec = float(declared * video.stream.time_base)
    if end_sec + _TRUNCATION_SLACK_SEC < declared_sec:
        raise VideoDecodeError(
            video.name, "truncated", f"frames end at {end_sec:.2f}s of a declared {declared_sec:.2f}s"
        )


def copy_aux_files(
    plan: PreparePlan,
    storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Copy the plan's manifests and label maps; in ``path label`` lists, video paths with
    another extension are renamed to the ``.mp4`` they became. Returns the files copied."""
    options = dict(storage_options or {})
    dst_options = dict(options if dst_storage_options is None else dst_storage_options)
    for src, dst in plan.aux:
        src_fs, src_path = url_to_fs(src, **options)
        dst_fs, dst_path = url_to_fs(dst, **dst_options)
        data = src_fs.cat_file(src_path)
        if posixpath.splitext(src_path)[1].lower() in _LIST_EXTENSIONS:
            data = _rename_listed_videos(data.decode("utf-8")).encode("utf-8")
        dst_fs.pipe_file(dst_path, data)
    return len(plan.aux)


def _rename_listed_videos(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        parts = line.rstrip("\r\n").rsplit(maxsplit=1)
        stem, extension = posixpath.splitext(parts[0]) if len(parts) == 2 else ("", "")
        if extension.lower() in VIDEO_EXTENSIONS and extension != ".mp4":
            line = line.replace(parts[0], stem + ".mp4", 1)
        lines.append(line)
    return "".join(lines)


def run_prepare(
    plan: PreparePlan,
    storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
    *,
    workers: int | None = None,
    on_ray: bool = False,
) -> Iterator[PrepareResult]:
    """Carry out a plan: ``skipped`` results for finished videos, then :func:`prepare_video` for
    the others, in completion order; the aux files are copied last.

    Locally the videos run in ``workers`` threads (default: one per core; the encoder runs without
    the GIL). With ``on_ray`` they run as Ray tasks of one CPU each across the cluster that
    ``ray.init()`` connects to (``RAY_ADDRESS``, as set by ``ray job submit``, or a new local Ray).
    """
    started = time.monotonic()
    for task in plan.finished:
        yield PrepareResult(task.src, task.dst, "skipped")
    if on_ray:
        yield from _on_ray(plan, storage_options, dst_storage_options)
    else:
        yield from scan(
            lambda task: prepare_video(task, plan.settings, storage_options, dst_storage_options),
            plan.tasks,
            workers or os.cpu_count() or 1,
        )
    copy_aux_files(plan, storage_options, dst_storage_options)
    logger.info("prepared %s in %.1f s", plan.dst_url, time.monotonic() - started)


def _on_ray(
    plan: PreparePlan, storage_options: Mapping[str, Any] | None, dst_storage_options: Mapping[str, Any] | None
) -> Iterator[PrepareResult]:
    """:func:`prepare_video` as Ray tasks, at most two per cluster CPU in flight."""
    import ray

    if not ray.is_initialized():
        ray.init()
    remote = ray.remote(num_cpus=1)(prepare_video)
    shared = [ray.put(value) for value in (plan.settings, storage_options, dst_storage_options)]
    max_in_flight = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    logger.info("%d video(s) to encode on %d CPU(s)", len(plan.tasks), max_in_flight // 2)
    todo, in_flight = list(reversed(plan.tasks)), []
    while todo or in_flight:
        while todo and len(in_flight) < max_in_flight:
            in_flight.append(remote.remote(todo.pop(), *shared))
        done, in_flight = ray.wait(in_flight, num_returns=1)
        yield ray.get(done[0])


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URL for ``path`` on ``fs``; local paths stay plain paths."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
