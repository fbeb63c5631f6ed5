"""RayDataLoader against KineticsLoader on real synthetic videos, with a local Ray started here:
the same batches in the same order for every rank, epoch and resume position; bad videos reported
once and counted; an error of the decode actors reaches the training process with its type."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from octvideo.data.dataset import KineticsDataset, KineticsLoader, TooManyBadVideos
from octvideo.data.ray_ingest import RayDataLoader
from octvideo.data.synthetic import write_synthetic_kinetics

from .videos import random_bytes, write_bytes

CLIPS = dict(num_frames=4, sampling_rate=4, short_side_range=(40, 56), crop_size=32, seed=5)


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 good training videos and 2 that are not videos, as a ``path label`` list."""
    root = tmp_path_factory.mktemp("kinetics") / "k"
    write_synthetic_kinetics(str(root), classes=4, videos_per_class=3, duration=2.0, width=96, height=72, val_fraction=0, test_fraction=0)
    write_bytes(root / "bad_a.mp4", random_bytes(2048, seed=1))
    write_bytes(root / "bad_b.mp4", random_bytes(2048, seed=2))
    good = sorted(str(path.relative_to(root)) for path in root.rglob("*.mp4") if "bad_" not in path.name)
    assert len(good) == 12
    (root / "mixed.txt").write_text("".join(f"{name} {i % 4}\n" for i, name in enumerate([*good, "bad_a.mp4", "bad_b.mp4"])))
    return root


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def dataset(kinetics: Path, **options) -> KineticsDataset:
    return KineticsDataset(str(kinetics / "mixed.txt"), "train", **{**CLIPS, "min_videos_tried": 1, "max_bad_fraction": 0.5, **options})


def test_same_batches_as_the_dataloader_for_every_rank_epoch_and_resume_position(kinetics: Path, local_ray) -> None:
    batch_size, world_size = 2, 2
    for rank in range(world_size):
        reference = KineticsLoader(dataset(kinetics), batch_size, rank=rank, world_size=world_size, num_workers=1)
        ingest = RayDataLoader(dataset(kinetics), batch_size, rank=rank, world_size=world_size, decoders=2)
        assert len(ingest) == len(reference) == 3
        for epoch, skip in ((0, 0), (1, 1)):  # epoch 1 resumed after its first batch
            reference.set_epoch(epoch, skip_batches=skip)
            ingest.set_epoch(epoch, skip_batches=skip)
            expected, got = list(reference), list(ingest)
            assert len(got) == len(expected) == 3 - skip
            for want, batch in zip(expected, got):
                assert batch["clip"].dtype == torch.uint8 and batch["clip"].shape == (2, 3, 4, 32, 32)
                for field in ("clip", "label", "video_index", "clip_index", "spatial_index"):
                    assert torch.equal(batch[field], want[field]), (rank, epoch, field)
                assert batch["bad"] == want["bad"]
            assert set(ingest.decoded_on) == {ray.get_runtime_context().get_node_id()}
        assert ingest.bad_videos == reference.bad_videos
        assert torch.equal(ingest.tracker.tried, reference.tracker.tried) and torch.equal(ingest.tracker.bad, reference.tracker.bad)


def test_bad_videos_are_reported_once_and_counted(kinetics: Path, local_ray) -> None:
    ingest = RayDataLoader(dataset(kinetics), 7, decoders=1)
    for epoch in range(2):
        ingest.set_epoch(epoch)
        list(ingest)
    assert ingest.bad_videos == {str(kinetics / "bad_a.mp4"): "not a video", str(kinetics / "bad_b.mp4"): "not a video"}
    assert int(ingest.tracker.bad.sum()) == 2 and ingest.tracker.num_tried == 14


def test_an_error_of_the_decode_actors_reaches_the_training_process_with_its_type(kinetics: Path, local_ray) -> None:
    ingest = RayDataLoader(dataset(kinetics, max_retries=0, max_bad_fraction=0.0), 14, decoders=1)
    ingest.set_epoch(0)
    with pytest.raises(TooManyBadVideos, match="bad_[ab].mp4: not a video"):
        list(ingest)


def test_bad_arguments(kinetics: Path) -> None:
    with pytest.raises(ValueError, match="decoders >= 1"):
        RayDataLoader(dataset(kinetics), 2, decoders=0)
