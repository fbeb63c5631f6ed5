"""A synthetic Kinetics: the official layout and CSVs, with classes that only motion tells apart.

Each clip shows one random light shape on a static random darker texture. The class fixes only the direction of
a motion (translation, spin, growth, orbit); everything else is drawn per clip: position, orientation,
size, shape, colours, background and the speed of the motion. Every motion runs on a circle -- the
object wraps around the frame edges (a torus), its angle wraps, its log-size wraps from largest to
smallest -- and starts from a uniform state, so the state of any single frame is uniformly distributed
whatever the class. A single frame therefore carries no information about the class; the order of
frames does. Classes come in time-reversed pairs (left / right, clockwise / counter-clockwise, growing /
shrinking, ...) and a clip played backwards is a clip of its pair, so even a model that sees every frame
but not their order cannot tell a class from its pair.

Same seed, same bytes on one machine and set of library versions (float rounding in numpy can differ
between CPUs).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing
import os
import string
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from fsspec.core import url_to_fs

from octvideo.data.manifest import (
    KINETICS_COLUMNS,
    KINETICS_SPLITS,
    LABEL_MAP_NAME,
    derive_label_map,
    write_label_map,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Motion:
    """The class-defining part of a clip: directions only (speeds are random per clip).

    Angles grow clockwise on screen (image y points down), so +1 spin or orbit is clockwise.
    """

    direction: tuple[float, float] = (0.0, 0.0)
    spin: int = 0
    growth: int = 0
    orbit: int = 0


_DIAGONAL = math.sqrt(0.5)

# Ordered so that the first N classes make a good N-class dataset (each class next to its pair).
MOTIONS: dict[str, Motion] = {
    "moving_left": Motion(direction=(-1.0, 0.0)),
    "moving_right": Motion(direction=(1.0, 0.0)),
    "moving_up": Motion(direction=(0.0, -1.0)),
    "moving_down": Motion(direction=(0.0, 1.0)),
    "rotating_clockwise": Motion(spin=1),
    "rotating_counterclockwise": Motion(spin=-1),
    "growing": Motion(growth=1),
    "shrinking": Motion(growth=-1),
    "orbiting_clockwise": Motion(orbit=1),
    "orbiting_counterclockwise": Motion(orbit=-1),
    "moving_up_left": Motion(direction=(-_DIAGONAL, -_DIAGONAL)),
    "moving_down_right": Motion(direction=(_DIAGONAL, _DIAGONAL)),
    "moving_up_right": Motion(direction=(_DIAGONAL, -_DIAGONAL)),
    "moving_down_left": Motion(direction=(-_DIAGONAL, _DIAGONAL)),
}

# Per-clip ranges; lengths are fractions of the frame's shorter side, rates are per second.
_SIZE_RANGE = (0.07, 0.2)  # object radius, drawn log-uniformly
_SPEED_RANGE = (0.15, 0.35)
_SPIN_RANGE = (0.8, 2.0)  # radians
_GROWTH_RANGE = (0.2, 0.4)  # log-size
_ORBIT_RADIUS_RANGE = (0.08, 0.2)
_ORBIT_SPEED_RANGE = (1.0, 2.5)  # radians
_HARMONICS = 3  # outline r(angle) = 1 + sum_k a_k cos(k angle + phase_k), a_k < _HARMONIC_AMPLITUDE
_HARMONIC_AMPLITUDE = 0.15
_MIN_CONTRAST = 90.0  # RGB distance between the object's colour and the background's mean
# Lit objects in front of a darker scene: every background channel stays below _BACKGROUND_MAX and
# every object channel (its shaded half included) above it, so motion has one contrast polarity. With
# random polarity the direction of motion is a second-order feature (the product of the temporal
# and spatial gradients) that small 3-D networks take many times longer to learn.
_BACKGROUND_MAX = 140.0
_OBJECT_MIN = _BACKGROUND_MAX / 0.65  # the shaded half is 0.65 as bright

# B-frames and CABAC like YouTube's H.264. No scene-cut keyframes: one every `gop` frames exactly.
# Same bytes for the same frames: one thread (no dependence on the machine's cores), and no mbtree,
# whose lookahead gives run-to-run differences when the width is not a multiple of 16 (568 wide:
# seen with the x264 in PyAV 18's wheels). mbtree only moves bits between frames; decoders never see it.
_X264_OPTIONS = {"preset": "veryfast", "crf": "23", "threads": "1", "x264-params": "scenecut=0:mbtree=0"}
_YOUTUBE_ID_ALPHABET = string.ascii_letters + string.digits + "-_"


@dataclass(frozen=True, eq=False)
class Scene:
    """One clip's random draws; ``frame(t)`` renders the picture at ``t`` seconds."""

    motion: Motion
    background: np.ndarray  # (height, width, 3) uint8
    colour: np.ndarray  # (3,) float32
    harmonics: np.ndarray  # (_HARMONICS, 2): amplitude, phase
    position: tuple[float, float]  # pixels (x, y) at t = 0
    angle: float
    log_size: float  # log of the radius in pixels, within log_size_range
    log_size_range: tuple[float, float]
    speed: float  # pixels per second
    spin_rate: float
    growth_rate: float
    orbit_radius: float
    orbit_phase: float
    orbit_rate: float

    def state(self, t: float) -> tuple[float, float, float, float]:
        """Object centre x, y (pixels, wrapped), angle and radius at ``t`` seconds."""
        height, width = self.background.shape[:2]
        m = self.motion
        phase = self.orbit_phase + m.orbit * self.orbit_rate * t
        x = self.position[0] + m.direction[0] * self.speed * t + self.orbit_radius * math.cos(phase)
        y = self.position[1] + m.direction[1] * self.speed * t + self.orbit_radius * math.sin(phase)
        low, high = self.log_size_range
        log_size = low + (self.log_size - low + m.growth * self.growth_rate * t) % (high - low)
        angle = (self.angle + m.spin * self.spin_rate * t) % (2 * math.pi)
        return x % width, y % height, angle, math.exp(log_size)

    def frame(self, t: float) -> np.ndarray:
        """The (height, width, 3) uint8 RGB picture at ``t`` seconds; the object wraps at the edges."""
        height, width = self.background.shape[:2]
        x, y, angle, radius = self.state(t)
        # Half-size of the box drawn around the centre; below half the frame, so no pixel repeats.
        reach = math.ceil(radius * (1 + self.harmonics[:, 0].sum())) + 1
        reach = min(reach, (min(height, width) - 1) // 2)
        offsets = np.arange(-reach, reach + 1, dtype=np.float32)
        dy = (offsets - (y - math.floor(y)))[:, None]
        dx = (offsets - (x - math.floor(x)))[None, :]
        rows = (math.floor(y) + np.arange(-reach, reach + 1)) % height
        cols = (math.floor(x) + np.arange(-reach, reach + 1)) % width
        # Outline in polar coordinates around the centre, rotated by `angle`, anti-aliased over a pixel.
        theta = np.arctan2(dy, dx) - angle
        outline = np.ones_like(theta)
        for k, (amplitude, phase) in enumerate(self.harmonics, start=1):
            outline += amplitude * np.cos(k * theta + phase)
        alpha = np.clip(radius * outline - np.hypot(dx, dy) + 0.5, 0.0, 1.0)[..., None]
        # One half of the shape darker, so that its orientation shows even when it is nearly round.
        along = dx * math.cos(angle) + dy * math.sin(angle)
        shade = (0.65 + 0.35 * np.clip(along / max(radius, 1.0) * 4 + 0.5, 0.0, 1.0))[..., None]
        picture = self.background.copy()
        box = np.ix_(rows, cols)
        picture[box] = (picture[box] * (1 - alpha) + self.colour * shade * alpha).astype(np.uint8)
        return picture


def sample_scene(class_name: str, rng: np.random.Generator, width: int, height: int) -> Scene:
    """Draw one clip of ``class_name``; the draws and their order do not depend on the class."""
    if class_name not in MOTIONS:
        raise ValueError(f"unknown synthetic class {class_name!r}; known: {', '.join(MOTIONS)}")
    side = min(width, height)
    background = _texture(rng, width, height)
    mean = background.reshape(-1, 3).mean(axis=0)
    colour = rng.uniform(_OBJECT_MIN, 255, 3)
    while np.linalg.norm(colour - mean) < _MIN_CONTRAST:
        colour = rng.uniform(_OBJECT_MIN, 255, 3)
    low, high = math.log(_SIZE_RANGE[0] * side), math.log(_SIZE_RANGE[1] * side)
    return Scene(
        motion=MOTIONS[class_name],
        background=background,
        colour=colour.astype(np.float32),
        harmonics=np.stack(
            [rng.uniform(0, _HARMONIC_AMPLITUDE, _HARMONICS), rng.uniform(0, 2 * math.pi, _HARMONICS)],
            axis=1,
        ).astype(np.float32),
        position=(rng.uniform(0, width), rng.uniform(0, height)),
        angle=rng.uniform(0, 2 * math.pi),
        log_size=rng.uniform(low, high),
        log_size_range=(low, high),
        speed=rng.uniform(*_SPEED_RANGE) * side,
        spin_rate=rng.uniform(*_SPIN_RANGE),
        growth_rate=rng.uniform(*_GROWTH_RANGE),
        orbit_radius=rng.uniform(*_ORBIT_RADIUS_RANGE) * side,
        orbit_phase=rng.uniform(0, 2 * math.pi),
        orbit_rate=rng.uniform(*_ORBIT_SPEED_RANGE),
    )


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A static background: two random colours mixed by smooth noise, plus fine grain."""
    mix = np.zeros((height, width), np.float32)
    for cells, weight in ((3, 0.6), (9, 0.3), (27, 0.1)):
        grid = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
        mix += weight * _interpolation(height, cells) @ grid @ _interpolation(width, cells).T
    first, second = rng.uniform(0, _BACKGROUND_MAX, 3), rng.uniform(0, _BACKGROUND_MAX, 3)
    picture = first + (second - first) * mix[..., None] + rng.normal(0, 6, (height, width, 3))
    return np.clip(picture, 0, _BACKGROUND_MAX).astype(np.uint8)


def _interpolation(size: int, cells: int) -> np.ndarray:
    """(size, cells + 1) matrix that linearly interpolates a grid of cells + 1 knots onto size pixels."""
    position = np.linspace(0, cells, size, dtype=np.float32)
    knots = np.arange(cells + 1, dtype=np.float32)
    return np.clip(1 - np.abs(position[:, None] - knots[None, :]), 0, None)


@dataclass(frozen=True)
class _Clip:
    """One video to write: its CSV row and the seed of its scene."""

    label: str
    split: str
    youtube_id: str
    time_start: int
    time_end: int
    entropy: tuple[int, ...]

    @property
    def path(self) -> str:
        name = f"{self.youtube_id}_{self.time_start:06d}_{self.time_end:06d}.mp4"
        return f"{self.split}/{self.label}/{name}"


@dataclass(frozen=True)
class _Encoding:
    width: int
    height: int
    fps: int
    num_frames: int
    gop: int


def write_synthetic_kinetics(
    out_url: str,
    classes: int | Sequence[str] = 4,
    videos_per_class: int = 10,
    seed: int = 0,
    *,
    duration: float = 4.0,
    fps: int = 30,
    width: int = 128,
    height: int = 96,
    gop: int = 60,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    workers: int = 1,
    storage_options: Mapping | None = None,
) -> dict[str, int]:
    """Write a synthetic Kinetics to ``out_url`` (any fsspec URL) and return the videos per split.

    ``classes`` is a count (the first N of ``MOTIONS``) or class names. ``videos_per_class`` is split
    into val / test by the fractions (rounded) and train (the rest, at least one). Each video lasts
    ``duration`` seconds (its CSV row spans the whole seconds that cover it). ``gop`` is the keyframe
    interval in frames, exactly. ``workers`` processes render and encode; uploads stay in this process,
    and the output does not depend on ``workers``. ``out_url`` must be empty or not exist yet.
    """
    names = _class_names(classes)
    counts = _split_counts(videos_per_class, val_fraction, test_fraction)
    encoding = _check_encoding(duration, fps, width, height, gop)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    options = dict(storage_options or {})
    fs, root = url_to_fs(out_url, **options)
    root = root.rstrip("/")
    if fs.exists(root) and fs.ls(root):
        raise ValueError(f"{out_url} is not empty; write the synthetic dataset to a new location")

    clips = _plan(names, counts, seed, math.ceil(duration))
    for folder in sorted({clip.path.rsplit("/", 1)[0] for clip in clips}):
        fs.makedirs(f"{root}/{folder}", exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="octvideo-synth-") as scratch:
        for clip, local in zip(clips, _encode_all(clips, encoding, scratch, workers)):
            fs.put_file(local, f"{root}/{clip.path}")
            os.remove(local)
    elapsed = time.monotonic() - started
    logger.info("wrote %d videos to %s in %.1f s (%.1f videos/s)", len(clips), out_url, elapsed,
                len(clips) / elapsed)

    for split in KINETICS_SPLITS:
        rows = sorted((c for c in clips if c.split == split), key=lambda c: (c.label, c.youtube_id))
        fs.pipe_file(f"{root}/{split}.csv", _csv(rows).encode("utf-8"))
    write_label_map(f"{out_url.rstrip('/')}/{LABEL_MAP_NAME}", derive_label_map(names), options)
    return {split: sum(clip.split == split for clip in clips) for split in KINETICS_SPLITS}


def _class_names(classes: int | Sequence[str]) -> list[str]:
    if isinstance(classes, int):
        if not 1 <= classes <= len(MOTIONS):
            raise ValueError(
                f"classes must be 1..{len(MOTIONS)} (the motion classes defined), got {classes}"
            )
        return list(MOTIONS)[:classes]
    names = list(classes)
    unknown = [name for name in names if name not in MOTIONS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names among {', '.join(MOTIONS)}; got {names}")
    return names


def _split_counts(videos_per_class: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in [0, 1), got {val_fraction}, {test_fraction}"
        )
    val = math.floor(videos_per_class * val_fraction + 0.5)
    test = math.floor(videos_per_class * test_fraction + 0.5)
    if videos_per_class - val - test < 1:
        raise ValueError(
            f"videos_per_class={videos_per_class} leaves no training video after val {val} and "
            f"test {test}; raise videos_per_class or lower the fractions"
        )
    return {"train": videos_per_class - val - test, "val": val, "test": test}


def _check_encoding(duration: float, fps: int, width: int, height: int, gop: int) -> _Encoding:
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 32 (H.264 4:2:0), got {width}x{height}")
    if fps < 1 or gop < 1:
        raise ValueError(f"fps and gop must be >= 1, got fps={fps}, gop={gop}")
    num_frames = round(duration * fps)
    if num_frames < 2:
        raise ValueError(
            f"duration {duration} s at {fps} fps gives {num_frames} frame(s); need at least 2"
        )
    return _Encoding(width, height, fps, num_frames, gop)


def _plan(names: list[str], counts: dict[str, int], seed: int, seconds: int) -> list[_Clip]:
    """Every clip's row and seed; a clip depends on (seed, its class, its number) only."""
    splits = [split for split in KINETICS_SPLITS for _ in range(counts[split])]
    clips = []
    for name in names:
        class_id = list(MOTIONS).index(name)
        for number, split in enumerate(splits):
            rng = np.random.default_rng([seed, class_id, number, 0])
            youtube_id = "".join(rng.choice(list(_YOUTUBE_ID_ALPHABET), 11))
            start = int(rng.integers(0, 600))
            entropy = (seed, class_id, number, 1)
            clips.append(_Clip(name, split, youtube_id, start, start + seconds, entropy))
    return clips


def _encode_all(clips: list[_Clip], encoding: _Encoding, scratch: str, workers: int) -> Iterator[str]:
    """Local paths of the encoded clips, in order; at most 2 * ``workers`` wait for upload."""
    paths = [os.path.join(scratch, f"{number}.mp4") for number in range(len(clips))]
    if workers == 1:
        for clip, path in zip(clips, paths):
            yield _encode(clip, encoding, path)
        return
    # spawn: the parent may hold threads (fsspec's event loop, torch) that fork would copy broken.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future[str]] = deque()
        for clip, path in zip(clips, paths):
            pending.append(pool.submit(_encode, clip, encoding, path))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _encode(clip: _Clip, encoding: _Encoding, path: str) -> str:
    rng = np.random.default_rng(clip.entropy)
    scene = sample_scene(clip.label, rng, encoding.width, encoding.height)
    # bitexact: no muxer version strings, so that equal inputs give equal bytes.
    with av.open(path, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        options = {**_X264_OPTIONS, "g": str(encoding.gop)}
        stream = container.add_stream("libx264", rate=encoding.fps, options=options)
        stream.width, stream.height, stream.pix_fmt = encoding.width, encoding.height, "yuv420p"
        stream.time_base = Fraction(1, encoding.fps)
        for index in range(encoding.num_frames):
            frame = av.VideoFrame.from_ndarray(scene.frame(index / encoding.fps), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _csv(clips: list[_Clip]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(KINETICS_COLUMNS)
    writer.writerows((c.label, c.youtube_id, c.time_start, c.time_end, c.split) for c in clips)
    return text.getvalue()
