"""The run storage Ray Train gets retries through outages: Ray Train's controller writes the run
state there after every report. A real S3 server (moto) behind a proxy that resets every connection."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import pytest

from octvideo.data.storage import RetryPolicy, is_transient
from octvideo.train.run_storage import run_storage
from tests.conftest import S3Server
from tests.faults.proxy import FaultyProxy


@pytest.fixture
def proxied(s3_server: S3Server, s3_bucket: str):
    proxy = FaultyProxy(urlparse(s3_server.endpoint_url).port)
    options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
    yield proxy, f"s3://{s3_bucket}/runs", options
    proxy.close()


def test_writes_and_reads_retry_through_a_short_outage(proxied) -> None:
    proxy, url, options = proxied
    path, fs = run_storage(url, options, RetryPolicy.for_outages_up_to(60))
    proxy.down()
    threading.Timer(12.0, proxy.up).start()  # longer than s3fs and botocore retry on their own
    with fs.open_output_stream(f"{path}/checkpoint_manager_snapshot.json") as out:
        out.write(b'{"step": 2}')
    assert proxy.resets > 0  # the write met the outage
    with fs.open_input_stream(f"{path}/checkpoint_manager_snapshot.json") as stream:
        assert stream.read() == b'{"step": 2}'


def test_storage_down_for_good_fails_within_the_bound(proxied) -> None:
    proxy, url, options = proxied
    path, fs = run_storage(url, options, RetryPolicy.for_outages_up_to(3))
    proxy.down()
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        with fs.open_output_stream(f"{path}/checkpoint_manager_snapshot.json") as out:
            out.write(b"{}")
    assert is_transient(failure.value), repr(failure.value)
    assert time.monotonic() - started < 60
