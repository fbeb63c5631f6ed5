"""The synthetic Kinetics: layout, CSVs, determinism, storage backends, encoding, and that only
motion tells its classes apart."""

from __future__ import annotations

import csv
import io
import math
import uuid

import av
import fsspec
import numpy as np
import pytest
import torch

from octvideo.data.manifest import KINETICS_COLUMNS, load_manifest, read_label_map
from octvideo.data.synthetic import MOTIONS, sample_scene, write_synthetic_kinetics

SMALL = dict(duration=1.0, fps=10, width=64, height=48, gop=5)


def read_csv(fs, path: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(fs.cat_file(path).decode())))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """3 classes x 4 videos (2 train, 1 val, 1 test), written once for the layout tests."""
    root = str(tmp_path_factory.mktemp("synthetic") / "kinetics")
    counts = write_synthetic_kinetics(root, 3, 4, seed=11, val_fraction=0.25, test_fraction=0.25, **SMALL)
    assert counts == {"train": 6, "val": 3, "test": 3}
    return root


def test_layout_and_csvs_match(dataset):
    fs = fsspec.filesystem("file")
    listed = set()
    for split in ("train", "val", "test"):
        rows = read_csv(fs, f"{dataset}/{split}.csv")
        assert list(rows[0]) == list(KINETICS_COLUMNS)
        assert {row["split"] for row in rows} == {split}
        assert sorted(row["label"] for row in rows) == sorted(list(MOTIONS)[:3] * (len(rows) // 3))
        for row in rows:
            assert len(row["youtube_id"]) == 11
            assert int(row["time_end"]) - int(row["time_start"]) == 1
            listed.add(
                f"{dataset}/{split}/{row['label']}/{row['youtube_id']}_"
                f"{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
            )
    assert listed == set(fs.glob(f"{dataset}/*/*/*.mp4"))
    assert read_label_map(f"{dataset}/label_map.json") == {"moving_left": 0, "moving_right": 1, "moving_up": 2}


def test_manifest_round_trip(dataset):
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        manifest = load_manifest(f"{dataset}/{split}.csv", split=split)
        assert len(manifest) == count
        assert manifest.label_map == {"moving_left": 0, "moving_right": 1, "moving_up": 2}
        for entry in manifest:
            assert f"/{split}/{entry.class_name}/" in entry.url
            assert manifest.label_map[entry.class_name] == entry.label


def test_videos_decode_to_the_asked_format(dataset):
    entry = load_manifest(f"{dataset}/train.csv")[0]
    with av.open(entry.url) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 10
        frames = list(container.decode(stream))
    assert len(frames) == 10
    assert {(f.width, f.height, f.format.name) for f in frames} == {(64, 48, "yuv420p")}
    assert [i for i, f in enumerate(frames) if f.key_frame] == [0, 5]


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    # A width that is not a multiple of 16, like the benchmarks' 568: x264 needs care to be repeatable.
    size = {**SMALL, "width": 200, "height": 112}
    kwargs = dict(classes=["growing", "orbiting_clockwise"], videos_per_class=3, seed=3, **size)
    write_synthetic_kinetics(str(tmp_path / "a"), **kwargs)
    write_synthetic_kinetics(str(tmp_path / "b"), workers=2, **kwargs)
    write_synthetic_kinetics(str(tmp_path / "c"), **{**kwargs, "seed": 4})
    fs = fsspec.filesystem("file")

    def files(name):
        root = str(tmp_path / name)
        return {path[len(root):]: fs.cat_file(path) for path in fs.find(root)}

    a, b, c = files("a"), files("b"), files("c")
    assert len(a) == 4 + 6  # 3 CSVs, label map, 6 videos (more than the 2 * workers in flight)
    assert a == b
    assert a.keys() != c.keys()


def test_memory_filesystem():
    root = f"memory://synthetic-{uuid.uuid4().hex}"
    write_synthetic_kinetics(root, 2, 2, seed=0, **SMALL)
    manifest = load_manifest(f"{root}/train.csv")
    assert [e.class_name for e in manifest] == ["moving_left", "moving_left", "moving_right", "moving_right"]
    with fsspec.open(manifest[0].url, "rb") as f, av.open(f) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10


def test_s3(s3_server, s3_bucket):
    options = s3_server.storage_options
    root = f"s3://{s3_bucket}/synthetic"
    write_synthetic_kinetics(root, 2, 1, seed=0, storage_options=options, **SMALL)
    manifest = load_manifest(f"{root}/train.csv", storage_options=options)
    assert [e.class_name for e in manifest] == ["moving_left", "moving_right"]
    with fsspec.open(manifest[1].url, "rb", **options) as f, av.open(f) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (64, 48)
    with pytest.raises(ValueError, match="is not empty"):
        write_synthetic_kinetics(root, 2, 1, storage_options=options, **SMALL)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(classes=0), r"classes must be 1\.\.14"),
        (dict(classes=15), r"classes must be 1\.\.14 \(the motion classes defined\), got 15"),
        (dict(classes=["moving_left", "jumping"]), "classes must be distinct names among moving_left"),
        (dict(classes=["growing", "growing"]), "classes must be distinct names"),
        (dict(videos_per_class=1, val_fraction=0.5), "leaves no training video"),
        (dict(width=65), "width and height must be even"),
        (dict(duration=0.01), "need at least 2"),
        (dict(workers=0), "workers must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_kinetics(str(tmp_path / "out"), **{**SMALL, **kwargs})


# --- only motion tells the classes apart ---------------------------------------------------------

WIDTH, HEIGHT, FPS, SECONDS = 64, 48, 30, 4.0
CLIPS_PER_CLASS = 60


def test_single_frame_state_is_uniform_whatever_the_class():
    """The object's position, angle and log-size at any instant are uniform for every class, so the
    classes differ only in how frames follow each other (Kolmogorov-Smirnov against uniform)."""
    rng = np.random.default_rng(0)
    n = 400
    for class_id, name in enumerate(MOTIONS):
        states = []
        for number in range(n):
            scene = sample_scene(name, np.random.default_rng([1, class_id, number]), WIDTH, HEIGHT)
            x, y, angle, radius = scene.state(rng.uniform(0, 10))
            low, high = scene.log_size_range
            log_size = (math.log(radius) - low) / (high - low)
            states.append((x / WIDTH, y / HEIGHT, angle / (2 * math.pi), log_size))
        for column, what in zip(np.array(states).T, ("x", "y", "angle", "log-size")):
            statistic = np.abs(np.sort(column) - (np.arange(n) + 0.5) / n).max() + 0.5 / n
            assert statistic < 1.63 / math.sqrt(n), f"{name}: {what} is not uniform (KS {statistic:.3f})"


def gray(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def frame_features(frame: np.ndarray) -> np.ndarray:
    """What a leak would show in one frame: a coarse picture (where things are), edge energy, and
    how many pixels stand out from the dominant colour (object size)."""
    image = frame.astype(np.float32) / 255
    blocks = image.reshape(HEIGHT // 8, 8, WIDTH // 8, 8, 3).mean(axis=(1, 3)).ravel()
    dy, dx = np.gradient(gray(frame) / 255)
    edges = np.hypot(dx, dy).reshape(HEIGHT // 8, 8, WIDTH // 8, 8).mean(axis=(1, 3)).ravel()
    distance = np.linalg.norm(image - np.median(image.reshape(-1, 3), axis=0), axis=-1)
    area = [(distance > threshold).mean() for threshold in (0.15, 0.25, 0.35, 0.45)]
    return np.concatenate([blocks, edges, area])


def affine_flow(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Least-squares (vx, vy, rotation, divergence) of the moving pixels around their centre:
    a Lucas-Kanade fit of translation + rotation + scaling on the torus the object lives on."""
    change = after - before
    mean = (before + after) / 2
    ix = (np.roll(mean, -1, 1) - np.roll(mean, 1, 1)) / 2
    iy = (np.roll(mean, -1, 0) - np.roll(mean, 1, 0)) / 2
    weight = np.abs(change)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    relative = []
    for coord, size in ((xs, WIDTH), (ys, HEIGHT)):
        phase = 2 * np.pi * coord / size
        mean_phase = np.arctan2((weight * np.sin(phase)).sum(), (weight * np.cos(phase)).sum())
        centre = size * mean_phase / (2 * np.pi)
        relative.append((coord - centre + size / 2) % size - size / 2)
    rx, ry = relative
    moving = weight > 2.0
    if moving.sum() < 8:
        return np.zeros(4)
    design = np.stack([ix, iy, iy * rx - ix * ry, ix * rx + iy * ry], axis=-1)[moving]
    return np.linalg.lstsq(design, -change[moving], rcond=None)[0]


def motion_features(frames: list[np.ndarray]) -> np.ndarray:
    """Flow of two consecutive frame pairs, and the turn between them (orbits curve, lines do not)."""
    first, second = (affine_flow(gray(a), gray(b)) for a, b in zip(frames, frames[1:]))
    turn = first[0] * second[1] - first[1] * second[0]
    raw = np.concatenate([first, second, [turn]]) * np.array([1, 1, 10, 10, 1, 1, 10, 10, 1])
    return np.sign(raw) * np.log1p(np.abs(raw))


def held_out_accuracy(features: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Multinomial logistic regression (L-BFGS, L2) on 2/3 of the clips, accuracy on the rest."""
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[: len(order) * 2 // 3], order[len(order) * 2 // 3 :]
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=100)

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(model(x[train]), y[train])
        value = value + 1e-2 * model.weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        return (model(x[test]).argmax(1) == y[test]).float().mean().item()


def test_single_frames_are_at_chance_while_three_frames_are_not():
    names = list(MOTIONS)
    rng = np.random.default_rng(1)
    single, motion, labels, xs, radii = [], [], [], [], []
    for class_id, name in enumerate(names):
        for number in range(CLIPS_PER_CLASS):
            scene = sample_scene(name, np.random.default_rng([2, class_id, number]), WIDTH, HEIGHT)
            t = rng.uniform(0, SECONDS)
            single.append(frame_features(scene.frame(t)))
            motion.append(motion_features([scene.frame(t + k * 2 / FPS) for k in range(3)]))
            labels.append(class_id)
            x, _, _, radius = scene.state(t)
            xs.append(x)
            radii.append(radius)
    single, motion, labels = np.array(single), np.array(motion), np.array(labels)
    chance = 1 / len(names)
    # The single-frame features do see what a leak would change: where the object is, how big it is.
    for state in (np.array(xs), np.array(radii)):
        assert held_out_accuracy(single, (state > np.median(state)).astype(int), 2) > 0.75
    # ... yet they cannot tell the classes apart; the motion between frames can.
    assert held_out_accuracy(single, labels, len(names)) < chance + 0.05
    assert held_out_accuracy(motion, labels, len(names)) > 0.7
