"""The data path on a real S3 server (moto) behind a proxy: videos fetched ahead in one GET each,
broken videos reported as when streamed, and an endpoint that goes silent ending reads and
manifest reads within their bound, with the endpoint named."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import fsspec
import pytest
import torch

from octvideo.data.dataset import KineticsDataset, KineticsLoader
from octvideo.data.fetch import VideoFetcher
from octvideo.data.storage import RetryPolicy, StorageUnavailable, request_timeout_s
from tests.conftest import S3Server
from tests.faults.proxy import FaultyProxy

from .test_dataset import BROKEN_REASONS, SMALL, WHOLE, kinetics, manifest, mixed  # noqa: F401 (fixtures)


@pytest.fixture
def remote(mixed, s3_server: S3Server, s3_bucket: str):  # noqa: F811
    """The test videos (good ones, broken ones and their list) on S3, and options that reach
    them through a proxy."""
    fsspec.filesystem("s3", **s3_server.storage_options).put(f"{mixed.parent}/", f"{s3_bucket}/k/", recursive=True)
    proxy = FaultyProxy(urlparse(s3_server.endpoint_url).port)
    options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
    yield f"s3://{s3_bucket}/k", options, proxy
    proxy.close()


def requests(proxy: FaultyProxy, method: bytes) -> list[bytes]:
    return [line for line in proxy.requests if line.startswith(method + b" ")]


def test_a_batch_gets_each_video_whole_in_one_request(remote) -> None:
    url, options, proxy = remote
    fetched = KineticsDataset(f"{url}/train.csv", "train", storage_options=options, **SMALL)
    streamed = KineticsDataset(f"{url}/train.csv", "train", storage_options=options, prefetch_videos=0, **SMALL)
    keys = list(range(8))

    proxy.requests.clear()
    items = fetched.__getitems__(keys)
    assert len(requests(proxy, b"GET")) == len(keys) and not requests(proxy, b"HEAD"), proxy.requests

    reference = streamed.__getitems__(keys)
    for item, expected in zip(items, reference, strict=True):
        assert torch.equal(item["clip"], expected["clip"]) and item["video_index"] == expected["video_index"]


def test_broken_videos_are_reported_alike_fetched_or_streamed(remote) -> None:
    url, options, _ = remote
    found = {}
    for prefetch in (8, 0):
        dataset = KineticsDataset(
            f"{url}/mixed.txt", "train", storage_options=options, prefetch_videos=prefetch, max_bad_fraction=1.0, **WHOLE
        )
        items = dataset.__getitems__(list(range(len(dataset))))
        found[prefetch] = {bad.url.rsplit("/", 1)[1]: bad.reason for item in items for bad in item["bad"]}
    assert found[8] == found[0] == BROKEN_REASONS


def test_a_video_larger_than_the_fetch_limit_is_streamed(remote) -> None:
    url, options, _ = remote
    video = f"{url}/train.csv"  # any object: what matters is its size
    fetcher = VideoFetcher(options, 10, max_videos=2, max_bytes=16)
    fetcher.prefetch([video])
    assert fetcher.take(video) == video
    fetcher = VideoFetcher(options, 10, max_videos=2)
    fetcher.prefetch([video])
    data = fetcher.take(video)
    assert data.name == video and data.read() == fsspec.open(video, "rb", **options).open().read()


def test_a_silent_endpoint_ends_reads_and_manifest_reads_within_the_bound(remote) -> None:
    url, options, proxy = remote
    bound = 4
    slack = 2 * request_timeout_s(bound) + 3
    dataset = KineticsDataset(f"{url}/train.csv", "train", storage_options=options,
                              retry=RetryPolicy.for_outages_up_to(bound), **SMALL)
    proxy.freeze()  # connections are accepted, nothing is answered
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match=f"reading {url}/.*{proxy.url}"):
            dataset.__getitems__([0, 1, 2])
        reads = time.monotonic() - started

        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match=f"reading {url}/train.csv.*{proxy.url}"):
            KineticsDataset(f"{url}/train.csv", "train", storage_options=options,
                            retry=RetryPolicy.for_outages_up_to(bound), **SMALL)
        manifest_read = time.monotonic() - started
    finally:
        proxy.thaw()
    print(f"silent endpoint, bound {bound} s: reads failed after {reads:.1f} s, the manifest after {manifest_read:.1f} s")
    assert reads < bound + slack and manifest_read < bound + slack


def test_throttling_is_retried_through_and_no_video_is_counted_bad(remote) -> None:
    url, options, proxy = remote
    proxy.throttle_every(4)  # HTTP 503 SlowDown on every 4th GET
    dataset = KineticsDataset(f"{url}/train.csv", "train", storage_options=options, **SMALL)
    loader = KineticsLoader(dataset, 4, num_workers=2, multiprocessing_context="fork", drop_last=False)
    loader.set_epoch(0)
    clips = sum(len(batch["clip"]) for batch in loader)
    assert proxy.throttled > 0
    assert clips == len(dataset) and not loader.bad_videos
