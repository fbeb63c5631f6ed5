"""Training-clip throughput: this data path against pytorchvideo, decord and a decode-only floor.

A training clip here is 8 frames, one every 8th at 30 fps (64 frames of video), scaled to a
short side of 256 and randomly cropped to 224 x 224. The videos are synthetic 10 s 568x320 H.264
(octvideo.data.synthetic) in one layout per keyframe interval: 250 frames (x264's default, what
downloaded files have), 30 (1 s, the prepared layout), 8 and 1 (all intra, for the adaptive
seeking of octvideo.data.decode), with the bytes each layout costs per video. All contenders run
in one run on the same videos, clip starts and crops:

- octvideo: decode_clip(short_side=...) then the crop, to uint8 (C, T, H, W); on local files
  (adaptive seeking, the default, and again with strategy="window", the choice made before it)
  and from S3 (a moto server on 127.0.0.1 that this script starts, holding the same videos);
- pytorchvideo: EncodedVideo (PyAV) get_clip of the 64 frames, every 8th kept, resized to the
  short side (bilinear, as pytorchvideo's ShortSideScale) and cropped, float32 as it comes;
- decord: VideoReader scaling to the short side, get_batch of the 8 frame indices, cropped;
- floor: PyAV decoding every frame from the keyframe before the clip to its last kept frame,
  nothing else -- what any decoder that visits the whole window pays.

Each contender decodes with one thread, first in this process (one core; rounds interleaved
between contenders, median round reported), then through a torch DataLoader with 2 worker
processes. Clips decoded from the same file open it anew, as a training dataset does.

A second section (``--storage-latency``) measures the whole training data path, KineticsDataset
+ KineticsLoader, from storage at a distance: local disk, the S3 server directly, and the S3
server behind a proxy that adds a fixed round-trip time (0, 20 and 50 ms; tests/faults/proxy.py),
with the videos fetched ahead while others decode (``prefetch_videos``, the default) and
streamed when decoded (``prefetch_videos=0``, how it was before), side by side in one run.

    python benchmarks/decode.py                        # full run, writes BENCHMARKS.md
    python benchmarks/decode.py --quick --no-write     # smoke run, tiny videos
    python benchmarks/decode.py --storage-latency      # the storage-latency section only
    python benchmarks/decode.py --clips-per-decode     # the several-clips-per-decode section only

A third (``--clips-per-decode``) measures training clips per second on one core from local disk
with T temporal clips x S crops per decoded video (``data.clip.train_clips`` x ``train_crops``).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import av
import fsspec
import numpy as np
import torch
from _report import machine_name, write_section
from torch.utils.data import DataLoader, Dataset

from octvideo.data import KineticsDataset, KineticsLoader, decode_clip, write_synthetic_kinetics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the latency-injecting proxy of the fault tests
from tests.faults.proxy import FaultyProxy  # noqa: E402

FPS = 30
FRAMES, SAMPLING = 8, 8
WORKERS = 2  # default DataLoader workers: one per core here
RAW_GOP, PREPARED_GOP = 250, 30  # x264's default keyframe interval; 1 s keyframes


@dataclass(frozen=True)
class Clip:
    """One training clip: where it starts and where its crop lies (fractions of the room left)."""

    video: int
    start_sec: float
    crop_y: float
    crop_x: float


# --- contenders: (source, clip) -> a cropped clip ---------------------------------------------


@dataclass(frozen=True)
class Setup:
    short_side: int
    crop: int


def crop(frames: torch.Tensor, clip: Clip, size: int, height_dim: int) -> torch.Tensor:
    """The ``size`` square of ``frames`` at the clip's crop position; dims height_dim, +1 are H, W."""
    height, width = frames.shape[height_dim], frames.shape[height_dim + 1]
    top = int(clip.crop_y * (height - size + 1))
    left = int(clip.crop_x * (width - size + 1))
    return frames.narrow(height_dim, top, size).narrow(height_dim + 1, left, size)


def octvideo_clip(source: str, clip: Clip, setup: Setup, **kwargs: Any) -> torch.Tensor:
    frames = decode_clip(
        source, clip.start_sec, FRAMES, SAMPLING, FPS, short_side=setup.short_side, threads=1,
        **kwargs,
    )
    return crop(frames, clip, setup.crop, 1).permute(3, 0, 1, 2).contiguous()  # C, T, H, W


def pytorchvideo_clip(source: str, clip: Clip, setup: Setup) -> torch.Tensor:
    from pytorchvideo.data.encoded_video import EncodedVideo

    video = EncodedVideo.from_path(source, decode_audio=False, decoder="pyav")
    # One decoding thread like every contender (FFmpeg would otherwise start several).
    video._container.streams.video[0].codec_context.thread_count = 1
    frames = video.get_clip(clip.start_sec, clip.start_sec + FRAMES * SAMPLING / FPS)["video"]
    video.close()
    frames = frames[:, ::SAMPLING]  # C, T, H, W float32 in [0, 255], as pytorchvideo gives it
    height, width = frames.shape[-2:]
    scale = setup.short_side / min(height, width)
    size = (math.floor(height * scale), math.floor(width * scale))
    frames = torch.nn.functional.interpolate(frames, size=size, mode="bilinear", align_corners=False)
    return crop(frames, clip, setup.crop, 2).contiguous()


def decord_clip(source: str, clip: Clip, setup: Setup, size: tuple[int, int]) -> torch.Tensor:
    """``size`` (width, height): what the short side scales the video to; decord wants both."""
    import decord

    reader = decord.VideoReader(source, width=size[0], height=size[1], num_threads=1)
    first = math.floor(clip.start_sec * FPS + 1e-6)
    indices = [min(first + i * SAMPLING, len(reader) - 1) for i in range(FRAMES)]
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy())
    return crop(frames, clip, setup.crop, 1).permute(3, 0, 1, 2).contiguous()


def floor_clip(source: str, clip: Clip) -> int:
    """Decode from the keyframe before the clip to its last kept frame; the frame count."""
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        start = stream.start_time or 0
        first = start + int(clip.start_sec / stream.time_base)
        last = start + int((clip.start_sec + (FRAMES - 1) * SAMPLING / FPS) / stream.time_base)
        container.seek(first, backward=True, any_frame=False, stream=stream)
        decoded = 0
        for frame in container.decode(stream):
            decoded += 1
            if frame.pts >= last:
                break
    return decoded


# --- running them --------------------------------------------------------------------------


class ClipDataset(Dataset):
    """The clips of one contender, one item each, for a DataLoader."""

    def __init__(
        self, fn: Callable[[str, Clip], Any], sources: Sequence[str], clips: Sequence[Clip]
    ) -> None:
        self.fn, self.sources, self.clips = fn, sources, clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Any:
        clip = self.clips[index]
        return self.fn(self.sources[clip.video], clip)


def one_thread_per_worker(_: int) -> None:
    torch.set_num_threads(1)


def time_in_process(dataset: ClipDataset) -> float:
    started = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - started


def time_data_loader(dataset: ClipDataset, workers: int) -> float:
    """Seconds for the clips after the first ``workers * 2``, which include the workers' start."""
    loader = DataLoader(
        dataset, batch_size=None, num_workers=workers, worker_init_fn=one_thread_per_worker
    )
    warm_up = workers * 2
    started = None
    for index, _ in enumerate(loader):
        if index == warm_up - 1:
            started = time.perf_counter()
    return time.perf_counter() - started


# --- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Videos:
    width: int
    height: int
    duration: float
    count: int


def synthetic_videos(cache: Path, gop: int, videos: Videos, workers: int) -> list[str]:
    """``videos.count`` synthetic videos with keyframes every ``gop`` frames, made once per cache
    by ``workers`` processes."""
    folder = cache / f"{videos.width}x{videos.height}_{videos.duration:g}s_gop{gop}_{videos.count}"
    if not folder.exists():
        scratch = Path(tempfile.mkdtemp(dir=cache))
        write_synthetic_kinetics(
            str(scratch / "kinetics"), classes=2, videos_per_class=math.ceil(videos.count / 2),
            duration=videos.duration, fps=FPS, width=videos.width, height=videos.height, gop=gop,
            val_fraction=0, test_fraction=0, workers=workers,
        )
        scratch.rename(folder)
    return [str(p) for p in sorted(folder.glob("kinetics/train/*/*.mp4"))[: videos.count]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server(log: Path) -> Iterator[tuple[dict, int]]:
    """A moto S3 server on 127.0.0.1 for the run; yields the storage_options that reach it and
    the server's process id."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    with open(log, "wb") as out:
        server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"moto_server exited; see {log}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto_server did not answer on {endpoint} within 30 s; see {log}")
        options = {"key": "bench", "secret": "bench",
                   "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        yield options, server.pid
    finally:
        server.terminate()
        server.wait(timeout=10)


def cpu_sec(pid: int) -> float:
    """CPU time a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def upload(paths: Sequence[str], bucket: str, options: dict) -> list[str]:
    """Copy ``paths`` into a new ``bucket``; their s3:// URLs."""
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    fs.call_s3("create_bucket", Bucket=bucket)  # mkdir would add a us-east-1 location constraint
    urls = []
    for path in paths:
        key = f"{bucket}/{Path(path).name}"
        fs.put_file(path, key)
        urls.append(f"s3://{key}")
    return urls


def draw_clips(count: int, videos: Videos, seed: int) -> list[Clip]:
    rng = np.random.default_rng(seed)
    latest = videos.duration - FRAMES * SAMPLING / FPS
    return [
        Clip(int(rng.integers(videos.count)), float(rng.uniform(0, latest)),
             float(rng.random()), float(rng.random()))
        for _ in range(count)
    ]


def contenders_for(
    paths: list[str], urls: list[str], options: dict, setup: Setup, videos: Videos, with_decord: bool
) -> dict[str, tuple[Callable[[str, Clip], Any], list[str]]]:
    """Each contender's clip function and the sources it reads (``urls``: the same on S3)."""
    contenders = {
        "octvideo": (partial(octvideo_clip, setup=setup), paths),
        "octvideo, window strategy": (partial(octvideo_clip, setup=setup, strategy="window"), paths),
        "octvideo, S3 (moto)": (partial(octvideo_clip, setup=setup, storage_options=options), urls),
        "pytorchvideo": (partial(pytorchvideo_clip, setup=setup), paths),
        "floor (PyAV decode only)": (floor_clip, paths),
    }
    if with_decord:
        scale = setup.short_side / min(videos.width, videos.height)
        size = (round(videos.width * scale), round(videos.height * scale))
        contenders["decord"] = (partial(decord_clip, setup=setup, size=size), paths)
    return contenders


# --- report --------------------------------------------------------------------------------


@dataclass
class Result:
    gop: int
    contender: str
    one_core_sec: float  # per clip
    workers_sec: float  # per clip, through the DataLoader
    server_cpu_sec: float  # per clip: CPU the S3 server used during the DataLoader run


def measure(
    gop: int,
    contenders: dict[str, tuple[Callable, list[str]]],
    clips: list[Clip],
    rounds: int,
    server_pid: int,
    workers: int,
) -> list[Result]:
    datasets = {name: ClipDataset(fn, sources, clips) for name, (fn, sources) in contenders.items()}
    for dataset in datasets.values():
        dataset[0]  # warm-up: imports, page cache, S3 connections
    times: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            times[name].append(time_in_process(dataset) / len(clips))
    results = []
    for name, dataset in datasets.items():
        server_before = cpu_sec(server_pid)
        per_clip = time_data_loader(dataset, workers) / (len(clips) - workers * 2)
        server = (cpu_sec(server_pid) - server_before) / len(clips)
        results.append(Result(gop, name, statistics.median(times[name]), per_clip, server))
        print(f"  gop {gop:>3} {name:<26} 1 core {1 / results[-1].one_core_sec:6.1f} clips/s   "
              f"{workers} workers {1 / per_clip:6.1f} clips/s", flush=True)
    return results


def table(results: list[Result], sizes: dict[int, float], workers: int) -> str:
    by = {(r.gop, r.contender): r for r in results}
    lines = [
        f"| keyframe every | MB / video | contender | 1 core: clips/s | ms / clip | vs pytorchvideo "
        f"| vs floor | {workers} workers: clips/s | vs pytorchvideo |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reference = by[(r.gop, "pytorchvideo")]
        floor = by[(r.gop, "floor (PyAV decode only)")]
        lines.append(
            f"| {r.gop} | {sizes[r.gop] / 1e6:.2f} | {r.contender} | {1 / r.one_core_sec:.1f} | "
            f"{r.one_core_sec * 1e3:.1f} | {reference.one_core_sec / r.one_core_sec:.2f} | "
            f"{floor.one_core_sec / r.one_core_sec:.2f} | {1 / r.workers_sec:.1f} | "
            f"{reference.workers_sec / r.workers_sec:.2f} |"
        )
    return "\n".join(lines)


def targets(results: list[Result], sizes: dict[int, float], workers: int) -> list[str]:
    by = {(r.gop, r.contender): r for r in results}
    gops = sorted(sizes, reverse=True)
    notes = []
    if (PREPARED_GOP, "octvideo") in by and (RAW_GOP, "pytorchvideo") in by:
        ours, theirs = by[(PREPARED_GOP, "octvideo")], by[(RAW_GOP, "pytorchvideo")]
        speed_up = theirs.one_core_sec / ours.one_core_sec
        notes.append(
            f"Prepared layout (keyframe every {PREPARED_GOP}) against pytorchvideo on the raw files "
            f"(every {RAW_GOP}), one core: {1 / ours.one_core_sec:.1f} vs "
            f"{1 / theirs.one_core_sec:.1f} clips/s = {speed_up:.2f}x (target at least 3x: "
            f"{'reached' if speed_up >= 3 else 'NOT reached'})."
        )
    for gop in gops:
        s3, local = by[(gop, "octvideo, S3 (moto)")], by[(gop, "octvideo")]
        ratio = local.workers_sec / s3.workers_sec
        notes.append(
            f"S3 with {workers} DataLoader workers, keyframe every {gop}: {ratio:.2f}x local-disk "
            f"throughput (target at least 0.9x: {'reached' if ratio >= 0.9 else 'NOT reached'}); "
            f"the moto server used {s3.server_cpu_sec * 1e3:.1f} ms of CPU per clip on the same "
            f"cores."
        )
    for gop in gops:
        auto, window = by[(gop, "octvideo")], by[(gop, "octvideo, window strategy")]
        notes.append(
            f"Adaptive seeking, keyframe every {gop}: {window.one_core_sec / auto.one_core_sec:.2f}x "
            f"the window strategy's clips/s on one core, for {sizes[gop] / sizes[gops[0]]:.2f}x "
            f"the bytes of keyframes every {gops[0]}."
        )
    return notes


# --- storage latency: the training data path from a store far away ---------------------------


def synthetic_kinetics(cache: Path, videos: Videos) -> Path:
    """A synthetic Kinetics (train split, 2 classes, prepared keyframes), made once per cache."""
    folder = cache / f"kinetics_{videos.width}x{videos.height}_{videos.count}"
    if not folder.exists():
        scratch = Path(tempfile.mkdtemp(dir=cache))
        write_synthetic_kinetics(str(scratch), classes=2, videos_per_class=videos.count // 2,
                                 duration=videos.duration, width=videos.width, height=videos.height,
                                 gop=PREPARED_GOP, val_fraction=0, test_fraction=0, workers=os.cpu_count() or 1)
        scratch.rename(folder)
    return folder


@dataclass(frozen=True)
class Store:
    """Where a latency contender reads the dataset: its manifest URL, options and prefetch depth."""

    name: str
    manifest: str
    options: dict
    prefetch_videos: int


def loader_clips_per_sec(store: Store, batches: int, batch_size: int, workers: int, short: bool) -> float:
    """Training clips per second through KineticsLoader, timed after each worker's first batch."""
    size = dict(short_side_range=(64, 80), crop_size=56) if short else {}
    dataset = KineticsDataset(store.manifest, "train", storage_options=store.options,
                              prefetch_videos=store.prefetch_videos, min_videos_tried=10**6, **size)
    loader = KineticsLoader(dataset, batch_size, num_workers=workers, drop_last=False,
                            multiprocessing_context="forkserver", persistent_workers=True)
    clips, started = 0, None
    for epoch in range(10**6):
        loader.set_epoch(epoch)
        for batch in loader:
            if started is None and (clips := clips + 1) == workers:
                started, clips = time.perf_counter(), 0
            elif started is not None:
                clips += len(batch["clip"])
                if clips >= batches * batch_size:
                    return clips / (time.perf_counter() - started)
    raise AssertionError("unreachable")


def latency_stores(local: str, url: str, options: dict, proxies: dict[float, FaultyProxy]) -> list[Store]:
    stores = [Store("local disk", local, {}, 0), Store("S3, direct", url, options, 8)]
    for rtt, proxy in proxies.items():
        proxied = {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": proxy.url}}
        for prefetch in (8, 0):
            label = "fetched ahead" if prefetch else "streamed (before)"
            stores.append(Store(f"S3 + {rtt * 1e3:.0f} ms RTT, {label}", url, proxied, prefetch))
    return stores


def storage_latency(args: argparse.Namespace) -> str:
    """The storage-latency section's body: setup line, table, goals."""
    videos = Videos(128, 72, 3.0, 8) if args.quick else Videos(426, 320, 10.0, 48)
    rounds, batches, batch_size = (1, 2, 4) if args.quick else (args.rounds, 12, 8)
    machine = f"{machine_name('cpu').rsplit(', ', 1)[0]}, {os.cpu_count()} cores"
    folder = synthetic_kinetics(args.data, videos)
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch, s3_server(Path(scratch) / "moto.log") as (options, _):
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
        fs.call_s3("create_bucket", Bucket="latency")
        fs.put(str(folder) + "/", "latency/kinetics/", recursive=True)
        port = int(options["client_kwargs"]["endpoint_url"].rsplit(":", 1)[1])
        proxies = {rtt: FaultyProxy(port, rtt_s=rtt) for rtt in (0.0, 0.020, 0.050)}
        stores = latency_stores(str(folder / "train.csv"), "s3://latency/kinetics/train.csv", options, proxies)
        for _ in range(rounds):
            for store in stores:
                rate = loader_clips_per_sec(store, batches, batch_size, args.workers, args.quick)
                results.setdefault(store.name, []).append(rate)
                print(f"  {store.name:<40} {rate:6.1f} clips/s", flush=True)
        for proxy in proxies.values():
            proxy.close()
    rate = {name: statistics.median(rates) for name, rates in results.items()}
    local = rate["local disk"]
    lines = ["| storage | clips/s | vs local disk | vs the same proxy at 0 ms |", "|---|---|---|---|"]
    for name, value in rate.items():
        zero = next((rate[n] for n in rate if n.startswith("S3 + 0 ms") and n.endswith(name.rsplit(", ", 1)[-1])), None)
        versus_zero = f"{value / zero:.2f}" if " ms RTT" in name and zero else ""
        lines.append(f"| {name} | {value:.1f} | {value / local:.2f} | {versus_zero} |")
    ahead = "fetched ahead"
    hidden_20 = rate[f"S3 + 20 ms RTT, {ahead}"] / rate[f"S3 + 0 ms RTT, {ahead}"]
    hidden_50 = rate[f"S3 + 50 ms RTT, {ahead}"] / rate[f"S3 + 0 ms RTT, {ahead}"]
    overhead = rate["S3, direct"] / local
    goals = [
        f"Latency hidden at 20 ms RTT: {hidden_20:.2f}x the clips/s at 0 ms (goal at least 0.9x: "
        f"{'reached' if hidden_20 >= 0.9 else 'NOT reached'}); at 50 ms: {hidden_50:.2f}x (goal at least 0.8x: "
        f"{'reached' if hidden_50 >= 0.8 else 'NOT reached'}).",
        f"Client overhead: S3 direct at {overhead:.2f}x local disk (goal at least 0.75x: "
        f"{'reached' if overhead >= 0.75 else 'NOT reached'}); the S3 server and the proxy share the "
        f"{os.cpu_count()} cores with the loader.",
    ]
    setup = (
        f"Machine: {machine}. KineticsDataset + KineticsLoader in train mode, "
        f"{args.workers} DataLoader workers, batch {batch_size}, {FRAMES}x{SAMPLING} clips at {FPS} fps, "
        f"short side 256-320, crop 224, from {videos.count} synthetic {videos.duration:g} s "
        f"{videos.width}x{videos.height} H.264 videos (keyframe every {PREPARED_GOP}); "
        f"{batches * batch_size} clips timed per cell after each worker's first batch, median of "
        f"{rounds} interleaved rounds. S3 = a moto server on 127.0.0.1; the proxy delays each "
        f"direction by half the RTT. Fetched ahead: prefetch_videos=8 (the default); streamed: 0."
    )
    return "\n\n".join([setup, "\n".join(lines), *goals])


# --- several training clips per decode -------------------------------------------------------

VIEWS = ((1, 1), (1, 2), (2, 2))  # (temporal clips, crops) per decoded training video


def clips_per_decode(args: argparse.Namespace) -> str:
    """The several-clips-per-decode section's body: clips/s on one core at each T x S."""
    videos = Videos(128, 72, 3.0, 8) if args.quick else Videos(426, 320, 10.0, 48)
    size = dict(short_side_range=(64, 80), crop_size=56) if args.quick else {}
    machine = machine_name("cpu").rsplit(", ", 1)[0]
    manifest = str(synthetic_kinetics(args.data, videos) / "train.csv")
    torch.set_num_threads(1)
    rates: dict[tuple[int, int], list[float]] = {}
    for _ in range(1 if args.quick else args.rounds):
        for clips, crops in VIEWS:
            dataset = KineticsDataset(manifest, "train", train_clips=clips, train_crops=crops, **size)
            loader = KineticsLoader(dataset, 4 * clips * crops, drop_last=False)
            loader.set_epoch(len(rates.get((clips, crops), [])))
            started = time.perf_counter()
            count = sum(len(batch["clip"]) for batch in loader)
            rates.setdefault((clips, crops), []).append(count / (time.perf_counter() - started))
            print(f"  {clips} x {crops}: {rates[(clips, crops)][-1]:6.1f} clips/s", flush=True)
    rate = {views: statistics.median(values) for views, values in rates.items()}
    lines = ["| clips x crops per decode | training clips/s, one core | vs 1 x 1 |", "|---|---|---|"]
    lines += [f"| {t} x {s} | {r:.1f} | {r / rate[(1, 1)]:.2f} |" for (t, s), r in rate.items()]
    gain = rate[(1, 2)] / rate[(1, 1)]
    goal = f"1 x 2 gives {gain:.2f}x the clips/s of 1 x 1 (goal at least 1.7x: {'reached' if gain >= 1.7 else 'NOT reached'})."
    setup = (
        f"Machine: {machine}, one core (this process, one thread). KineticsDataset + KineticsLoader in train "
        f"mode, no worker processes, from local disk: {videos.count} synthetic {videos.duration:g} s "
        f"{videos.width}x{videos.height} H.264 videos (keyframe every {PREPARED_GOP}), {FRAMES}x{SAMPLING} clips, "
        f"short side 256-320, crop 224; every video once per epoch, one epoch per cell, median of "
        f"{1 if args.quick else args.rounds} interleaved rounds."
    )
    return "\n\n".join([setup, "\n".join(lines), goal])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=16, help="videos per layout")
    parser.add_argument("--clips", type=int, default=64, help="clips per layout and contender")
    parser.add_argument("--rounds", type=int, default=3, help="single-process rounds (median)")
    parser.add_argument("--gops", type=int, nargs="+", default=[250, 30, 8, 1])
    parser.add_argument("--data", type=Path, help="cache of the synthetic videos (made once); "
                        "default: octvideo-benchmarks in the temporary directory",
                        default=Path(tempfile.gettempdir()) / "octvideo-benchmarks")
    parser.add_argument("--workers", type=int, default=WORKERS, help="DataLoader worker processes")
    parser.add_argument("--quick", action="store_true", help="tiny videos and few clips (smoke test)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--storage-latency", action="store_true",
                        help="only the section on storage latency (KineticsLoader from S3 at 0-50 ms RTT)")
    parser.add_argument("--clips-per-decode", action="store_true",
                        help="only the section on several training clips per decoded video")
    args = parser.parse_args()
    sections = {
        "storage_latency": ("Training clips from object storage at a distance, CPU", storage_latency,
                            f"--storage-latency --workers {args.workers}"),
        "clips_per_decode": ("Several training clips per decode, CPU", clips_per_decode, "--clips-per-decode"),
    }
    for flag, (title, measure_section, reproduce) in sections.items():
        if getattr(args, flag):
            args.data.mkdir(parents=True, exist_ok=True)
            body = measure_section(args)
            print(body)
            if not args.no_write:
                write_section(args.output, title, body + f"\n\nReproduce: `python benchmarks/decode.py {reproduce}`")
            return
    videos = Videos(568, 320, 10.0, args.videos)
    setup = Setup(short_side=256, crop=224)
    if args.quick:
        videos = Videos(128, 72, 3.0, min(args.videos, 2))
        setup = Setup(short_side=64, crop=56)
        args.clips, args.rounds = min(args.clips, args.workers * 2 + 2), 1
    if args.clips <= args.workers * 2:
        parser.error(f"--clips must be more than {args.workers * 2} (the DataLoader warm-up)")

    machine = machine_name("cpu")
    torch.set_num_threads(1)
    try:
        import decord
        decord_note = f"decord {decord.__version__}"
    except ImportError:
        decord = None
        decord_note = "decord not installed: skipped (`pip install decord`)"
    setup_line = (
        f"Machine: {machine}. Synthetic {videos.duration:g} s {videos.width}x{videos.height} "
        f"{FPS} fps H.264 (x264 veryfast, crf 23, B-frames), {videos.count} videos per layout; "
        f"{args.clips} clips of {FRAMES}x{SAMPLING} at {FPS} fps, short side {setup.short_side}, "
        f"random crop {setup.crop}; one decoding thread per process; 1 core = this process, median "
        f"of {args.rounds} interleaved rounds; {args.workers} workers = torch DataLoader. S3 = a moto "
        f"server on 127.0.0.1, on the same cores. torch "
        f"{torch.__version__}, PyAV {av.__version__}, {decord_note}."
    )
    print(setup_line, flush=True)

    args.data.mkdir(parents=True, exist_ok=True)
    clips = draw_clips(args.clips, videos, seed=0)
    results, sizes = [], {}
    with tempfile.TemporaryDirectory() as scratch, s3_server(Path(scratch) / "moto.log") as (
        options, server_pid
    ):
        for gop in args.gops:
            print(f"keyframe every {gop}: videos in {args.data}", flush=True)
            workers = 1 if args.quick else os.cpu_count() or 1
            paths = synthetic_videos(args.data, gop, videos, workers)
            sizes[gop] = statistics.mean(os.path.getsize(p) for p in paths)
            urls = upload(paths, f"decode-bench-gop{gop}", options)
            contenders = contenders_for(
                paths, urls, options, setup, videos, with_decord=decord is not None
            )
            results += measure(gop, contenders, clips, args.rounds, server_pid, args.workers)

    body = [setup_line, table(results, sizes, args.workers), *targets(results, sizes, args.workers)]
    print("\n\n".join(body[1:]))
    if not args.no_write:
        write_section(args.output, "Training-clip decoding, CPU", "\n\n".join(body)
                      + f"\n\nReproduce: `python benchmarks/decode.py --workers {args.workers}`")


if __name__ == "__main__":
    main()
