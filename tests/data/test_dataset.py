"""KineticsDataset, ShardSampler and KineticsLoader on real, tiny synthetic Kinetics videos:
local and S3 storage, DataLoader workers under every start method, sharding, epochs, test
views, broken videos, and one epoch of training."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

import octvideo.data.dataset as dataset_module
from octvideo.data.dataset import (
    KineticsDataset,
    KineticsLoader,
    ShardSampler,
    TooManyBadVideos,
)
from octvideo.data.decode import VideoReader, decode_clip, probe_video
from octvideo.data.device import model_input
from octvideo.data.manifest import load_manifest
from octvideo.data.sampling import ClipSpec, multiview_starts
from octvideo.data.synthetic import write_synthetic_kinetics
from octvideo.data.transforms import EvalTransform
from octvideo.models import build_model

from .videos import (
    HTML_ERROR_PAGE,
    random_bytes,
    truncated,
    with_corrupt_mdat,
    write_audio_only,
    write_bytes,
)

# 12 videos (4 classes x 3) of 2.5 s at 96 x 72; small clips keep decoding and transfers cheap.
SYNTHETIC = dict(
    classes=4, videos_per_class=3, duration=2.5, width=96, height=72, val_fraction=0,
    test_fraction=0,
)
SMALL = dict(num_frames=4, sampling_rate=4, short_side_range=(40, 56), eval_short_side=40,
             crop_size=32)
# 64 frames: every clip of a 2.5 s video covers its middle, where with_corrupt_mdat damages it.
WHOLE = dict(SMALL, num_frames=8, sampling_rate=8)

BROKEN_REASONS = {
    "empty.mp4": "empty",
    "random.mp4": "not a video",
    "error_page.mp4": "not a video",
    "cut.mp4": "truncated",
    "corrupt.mp4": "corrupt",
    "audio.m4a": "no video stream",
    "missing.mp4": "not found",
}


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinetics") / "k"
    write_synthetic_kinetics(str(root), **SYNTHETIC)
    return root


@pytest.fixture(scope="module")
def manifest(kinetics):
    return load_manifest(str(kinetics / "train.csv"))


@pytest.fixture(scope="module")
def mixed(kinetics, manifest) -> Path:
    """A ``path label`` list of the 12 good videos and one of each broken kind (one missing)."""
    broken = kinetics / "broken"
    broken.mkdir()
    good = Path(manifest[0].url).read_bytes()
    write_bytes(broken / "empty.mp4", b"")
    write_bytes(broken / "random.mp4", random_bytes(4096))
    write_bytes(broken / "error_page.mp4", HTML_ERROR_PAGE)
    write_bytes(broken / "cut.mp4", truncated(good))
    write_bytes(broken / "corrupt.mp4", with_corrupt_mdat(good))
    write_audio_only(broken / "audio.m4a")
    lines = [f"{Path(e.url).relative_to(kinetics)} {e.label}" for e in manifest]
    lines += [f"broken/{name} {i % 4}" for i, name in enumerate(BROKEN_REASONS)]
    listing = kinetics / "mixed.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def broken_urls(mixed: Path) -> dict[str, str]:
    return {str(mixed.parent / "broken" / name): reason for name, reason in BROKEN_REASONS.items()}


def batches(loader: KineticsLoader, epoch: int = 0) -> list[dict]:
    loader.set_epoch(epoch)
    return list(loader)


def clips_by_video(loader: KineticsLoader, epoch: int) -> dict[int, torch.Tensor]:
    return {
        int(v): clip
        for batch in batches(loader, epoch)
        for v, clip in zip(batch["video_index"], batch["clip"])
    }


# --- items ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, crop_index", [("train", -1), ("val", 1)])
def test_items_are_uint8_clips_with_their_label(manifest, mode, crop_index):
    dataset = KineticsDataset(manifest, mode, **SMALL)
    assert len(dataset) == 12
    item = dataset[5]
    assert item["clip"].shape == (3, 4, 32, 32) and item["clip"].dtype == torch.uint8
    assert (item["label"], item["video_index"]) == (manifest[5].label, 5)
    assert (item["clip_index"], item["spatial_index"], item["bad"]) == (0, crop_index, [])


def test_a_manifest_url_is_read(kinetics, manifest):
    dataset = KineticsDataset(str(kinetics / "train.csv"), "val", **SMALL)
    assert dataset.manifest == manifest
    assert torch.equal(dataset[3]["clip"], KineticsDataset(manifest, "val", **SMALL)[3]["clip"])


def test_validation_is_the_centre_clip_centre_crop(manifest):
    url = manifest[2].url
    duration = probe_video(url).duration_sec
    start = (duration - ClipSpec(4, 4).span_sec) / 2
    expected = EvalTransform(40, 32)(decode_clip(url, start, 4, 4, short_side=40))
    assert torch.equal(KineticsDataset(manifest, "val", **SMALL)[2]["clip"], expected)


def test_training_items_depend_on_seed_epoch_and_index_only(manifest):
    dataset = KineticsDataset(manifest, "train", **SMALL)
    first = [dataset[i]["clip"] for i in range(12)]
    assert all(torch.equal(a, dataset[i]["clip"]) for i, a in enumerate(first))
    dataset.set_epoch(1)
    second = [dataset[i]["clip"] for i in range(12)]
    assert sum(not torch.equal(a, b) for a, b in zip(first, second)) >= 10
    assert torch.equal(dataset[(0, 4)]["clip"], first[4])  # (epoch, index) keys
    other_seed = KineticsDataset(manifest, "train", seed=1, **SMALL)
    assert sum(not torch.equal(a, other_seed[i]["clip"]) for i, a in enumerate(first)) >= 10


def test_test_mode_has_every_view_and_decodes_each_video_once(manifest, monkeypatch):
    dataset = KineticsDataset(manifest, "test", num_clips=3, num_crops=3, **SMALL)
    assert len(dataset) == 12 * 9
    opened = []

    def counting(url, *args, **kwargs):
        opened.append(url)
        return VideoReader(url, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "VideoReader", counting)
    items = [dataset[i] for i in range(9, 27)]  # all views of videos 1 and 2
    assert opened == [manifest[1].url, manifest[2].url]
    assert [(it["video_index"], it["clip_index"], it["spatial_index"]) for it in items[:4]] == [
        (1, 0, 0), (1, 0, 1), (1, 0, 2), (1, 1, 0)
    ]
    url = manifest[2].url
    starts = multiview_starts(probe_video(url).duration_sec, ClipSpec(4, 4), 3)
    for clip_index, start in enumerate(starts):
        frames = decode_clip(url, start, 4, 4, short_side=40)
        for crop in range(3):
            expected = EvalTransform(40, 32)(frames, crop)
            assert torch.equal(items[9 + 3 * clip_index + crop]["clip"], expected)
    assert not torch.equal(items[9]["clip"], items[11]["clip"])  # left and right crops differ


# --- loading: workers, storage, shards --------------------------------------------------------


@pytest.mark.parametrize("context", ["fork", "forkserver", "spawn"])
def test_workers_under_every_start_method_give_the_same_batches(manifest, context):
    dataset = KineticsDataset(manifest, "train", **SMALL)
    expected = batches(KineticsLoader(dataset, 4, num_workers=0), epoch=1)
    loader = KineticsLoader(dataset, 4, num_workers=2, multiprocessing_context=context)
    got = batches(loader, epoch=1)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert a["clip"].dtype == torch.uint8 and a["clip"].shape == (4, 3, 4, 32, 32)
        assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["video_index"], b["video_index"]) and a["bad"] == []


def test_persistent_workers_follow_the_epoch(manifest):
    dataset = KineticsDataset(manifest, "train", **SMALL)
    loader = KineticsLoader(dataset, 4, num_workers=2, multiprocessing_context="fork",
                            persistent_workers=True)
    reference = KineticsLoader(dataset, 4)
    for epoch in (0, 1):
        for a, b in zip(batches(loader, epoch), batches(reference, epoch)):
            assert torch.equal(a["clip"], b["clip"])


def test_s3_gives_the_same_clips_as_local_files(kinetics, manifest, s3_server, s3_bucket):
    options = s3_server.storage_options
    url = f"s3://{s3_bucket}/k"
    write_synthetic_kinetics(url, storage_options=options, **SYNTHETIC)
    remote = KineticsDataset(f"{url}/train.csv", "train", storage_options=options, **SMALL)
    assert remote.manifest[0].url.startswith("s3://")
    loader = KineticsLoader(remote, 4, num_workers=2, multiprocessing_context="fork")
    local = KineticsLoader(KineticsDataset(manifest, "train", **SMALL), 4)
    for a, b in zip(batches(loader), batches(local), strict=True):
        assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["label"], b["label"])


@pytest.mark.parametrize("num_items, world_size", [(12, 1), (12, 3), (10, 4), (3, 5)])
def test_shards_are_equal_disjoint_and_cover_every_item(num_items, world_size):
    shards = [
        [index for _, index in ShardSampler(num_items, rank=r, world_size=world_size, seed=0)]
        for r in range(world_size)
    ]
    size = math.ceil(num_items / world_size)
    assert all(len(shard) == size for shard in shards)
    everything = [index for shard in shards for index in shard]
    assert set(everything) == set(range(num_items))
    if num_items % world_size == 0:
        assert len(set(everything)) == len(everything)


def test_shard_order_changes_with_the_epoch_and_not_without():
    sampler = ShardSampler(50, seed=3)
    first = list(sampler)
    assert list(sampler) == first and {epoch for epoch, _ in first} == {0}
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in first]
    assert [i for _, i in ShardSampler(50, shuffle=False)] == list(range(50))


def test_an_epoch_resumes_part_way_without_the_items_before():
    sampler = ShardSampler(50, rank=1, world_size=2, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start=10)
    assert list(sampler) == whole[10:] and len(sampler) == len(whole) - 10


def test_ranks_see_the_same_clips_as_a_single_process(manifest):
    dataset = KineticsDataset(manifest, "train", **SMALL)
    single = clips_by_video(KineticsLoader(dataset, 2), epoch=2)
    merged = {}
    for rank in range(3):
        loader = KineticsLoader(dataset, 2, rank=rank, world_size=3)
        assert len(loader) == 2
        shard = clips_by_video(loader, epoch=2)
        assert not merged.keys() & shard.keys()
        merged |= shard
    assert merged.keys() == single.keys() == set(range(12))
    assert all(torch.equal(merged[v], single[v]) for v in merged)


# --- bad videos -------------------------------------------------------------------------------


def test_an_epoch_over_broken_videos_completes_and_reports_each_once(mixed, caplog):
    dataset = KineticsDataset(str(mixed), "train", max_bad_fraction=0.5, **WHOLE)
    assert len(dataset) == 19
    loader = KineticsLoader(dataset, 4, num_workers=2, multiprocessing_context="fork",
                            drop_last=False)
    expected = broken_urls(mixed)
    good = {i for i, entry in enumerate(dataset.manifest) if entry.url not in expected}
    with caplog.at_level(logging.WARNING, logger="octvideo.data.dataset"):
        for epoch in range(2):
            got = batches(loader, epoch)
            assert sum(len(batch["label"]) for batch in got) == 19
            assert {int(v) for batch in got for v in batch["video_index"]} <= good
    assert loader.bad_videos == expected
    warned = [r.getMessage() for r in caplog.records if r.name == "octvideo.data.dataset"]
    for url, reason in expected.items():
        assert sum(url in message for message in warned) == 1
        assert any(f"({reason})" in message and url in message for message in warned)
    assert loader.tracker.num_tried == 19


def test_test_views_of_a_broken_video_are_the_same_views_of_one_substitute(mixed):
    dataset = KineticsDataset(str(mixed), "test", num_clips=2, num_crops=3, **SMALL)
    urls = [entry.url for entry in dataset.manifest]
    broken = urls.index(next(iter(broken_urls(mixed))))
    views = [dataset[broken * 6 + view] for view in range(6)]
    assert len({item["video_index"] for item in views}) == 1
    substitute = views[0]["video_index"]
    for view, item in enumerate(views):
        assert (item["clip_index"], item["spatial_index"]) == divmod(view, 3)
        assert torch.equal(item["clip"], dataset[substitute * 6 + view]["clip"])
    assert [bad.url for bad in views[0]["bad"]] == [urls[broken]]
    assert all(item["bad"] == [] for item in views[1:])  # reported once per process


def test_past_the_bad_fraction_one_error_lists_examples(mixed):
    dataset = KineticsDataset(str(mixed), "val", max_bad_fraction=0.2, **WHOLE)
    loader = KineticsLoader(dataset, 4, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(TooManyBadVideos) as raised:
        batches(loader)
    message = str(raised.value)
    assert "7 of 19 videos tried are unreadable" in message and "max_bad_fraction" in message
    assert any(url in message for url in broken_urls(mixed))
    assert "1 empty" in message and "2 not a video" in message


def test_the_fraction_is_judged_once_enough_videos_were_tried(mixed):
    dataset = KineticsDataset(str(mixed), "val", max_bad_fraction=0.2, min_videos_tried=8, **WHOLE)
    loader = KineticsLoader(dataset, 4, shuffle=False)
    got = []
    with pytest.raises(TooManyBadVideos):
        for batch in loader:
            got.append(batch)
    # Items 12-18 are the broken ones: the 4th of 5 batches meets them and raises, mid-epoch.
    assert len(got) == 3


def test_an_item_whose_substitutes_all_fail_raises_with_its_type_through_workers(mixed):
    urls = broken_urls(mixed)
    dataset = KineticsDataset(str(mixed), "train", max_retries=3, **WHOLE)
    manifest = type(dataset.manifest)(
        tuple(e for e in dataset.manifest if e.url in urls), dataset.manifest.label_map
    )
    only_bad = KineticsDataset(manifest, "train", max_retries=3, **WHOLE)
    with pytest.raises(TooManyBadVideos, match="3 substitute"):
        only_bad[0]
    loader = KineticsLoader(only_bad, 2, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(TooManyBadVideos, match="unreadable"):
        batches(loader)


def test_training_runs_to_the_end_of_an_epoch_over_broken_videos(mixed):
    torch.manual_seed(0)
    dataset = KineticsDataset(
        str(mixed), "train", num_frames=8, sampling_rate=8, short_side_range=(64, 80),
        crop_size=64, max_bad_fraction=0.5,
    )
    loader = KineticsLoader(dataset, 4, num_workers=2, multiprocessing_context="fork",
                            drop_last=False)
    model = build_model("oct_i3d_r18", width=8, num_classes=4, alpha=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    loader.set_epoch(0)
    for batch in loader:
        loss = torch.nn.functional.cross_entropy(model(model_input(batch["clip"])), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
    assert loader.bad_videos == broken_urls(mixed)


def test_bad_options_are_value_errors(manifest):
    for kwargs in [
        dict(mode="training"),
        dict(max_bad_fraction=1.5),
        dict(num_crops=2, mode="test"),
        dict(crop_size=64, short_side_range=(40, 56)),
    ]:
        with pytest.raises(ValueError):
            KineticsDataset(manifest, **kwargs)


# --- several training clips per decode -----------------------------------------------------


def test_several_clips_per_decode_are_deterministic_views_of_each_video_once(manifest):
    dataset = KineticsDataset(manifest, "train", train_clips=2, train_crops=2, **SMALL)
    assert dataset.views_per_video == 4 and len(dataset) == 48
    loader = KineticsLoader(dataset, 8, num_workers=2, multiprocessing_context="fork")
    reference = KineticsLoader(KineticsDataset(manifest, "train", train_clips=2, train_crops=2, **SMALL), 8)
    assert len(loader) == 6  # batches count clips: 12 videos x 4 clips / 8
    seen = []
    for batch, expected in zip(batches(loader, epoch=1), batches(reference, epoch=1), strict=True):
        assert torch.equal(batch["clip"], expected["clip"])  # the same in any number of workers
        videos = batch["video_index"].view(-1, 4)
        assert (videos == videos[:, :1]).all()  # a video's clips are together, from one decode
        assert batch["clip_index"].view(-1, 4).tolist() == [[0, 0, 1, 1]] * 2
        clips = batch["clip"].view(2, 4, *batch["clip"].shape[1:])
        assert all(not torch.equal(group[i], group[j]) for group in clips for i in range(4) for j in range(i))
        seen += videos[:, 0].tolist()
    assert sorted(seen) == list(range(12))  # each video once per epoch
    assert [b["clip"] for b in batches(loader, epoch=2)][0].shape == batch["clip"].shape


def test_several_clips_per_decode_open_each_video_once(manifest, monkeypatch):
    opened = []
    real = dataset_module.VideoReader

    def counting(source, *args, **kwargs):
        opened.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "VideoReader", counting)
    dataset = KineticsDataset(manifest, "train", train_clips=1, train_crops=2, **SMALL)
    batches(KineticsLoader(dataset, 4))
    assert len(opened) == 12
