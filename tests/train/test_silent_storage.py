"""An S3 endpoint that accepts connections and never answers (a black-holed path, a stuck load
balancer) ends every storage call of a job within its configured bound plus one request's time,
with the endpoint named: the driver's checks and manifest read, the run storage Ray Train
writes to, and the starting weights. A real S3 server (moto) behind a proxy that goes silent."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import fsspec
import pytest
import torch

from octvideo.data.storage import RetryPolicy, StorageUnavailable, is_transient, request_timeout_s
from octvideo.train.config import ConfigError, check_inputs, parse_config
from octvideo.train.job import read_manifest
from octvideo.train.pretrained import read_start, write_start
from octvideo.train.run_storage import run_storage
from tests.conftest import S3Server
from tests.faults.proxy import FaultyProxy

BOUND = 4
SLACK = 2 * request_timeout_s(BOUND) + 3


@pytest.fixture
def silent(s3_server: S3Server, s3_bucket: str):
    """A bucket with a manifest and starting weights, the proxy in front of S3 and an experiment
    that reaches S3 through it; the proxy is silenced by the test."""
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    fs.pipe(f"{s3_bucket}/k/train.csv", b"label,youtube_id,time_start,time_end,split\n")
    proxy = FaultyProxy(urlparse(s3_server.endpoint_url).port)
    options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
    config = parse_config({
        "data": {"train_manifest": f"s3://{s3_bucket}/k/train.csv", "val_manifest": f"s3://{s3_bucket}/k/train.csv",
                 "storage_options": options, "storage_timeout_s": BOUND},
        "checkpoint": {"storage_path": f"s3://{s3_bucket}/runs", "storage_options": options,
                       "storage_timeout_s": BOUND, "name": "silent"},
    })
    yield proxy, config
    proxy.thaw()
    proxy.close()


def within_bound(call) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        call()
    return failure.value, time.monotonic() - started


def test_the_driver_checks_and_manifest_read_end_within_the_bound(silent) -> None:
    proxy, config = silent
    proxy.freeze()
    error, checked = within_bound(lambda: check_inputs(config))
    assert isinstance(error, ConfigError) and proxy.url in str(error), error
    error, read = within_bound(lambda: read_manifest(config, "train_manifest"))
    assert isinstance(error, StorageUnavailable) and proxy.url in str(error), error
    print(f"silent endpoint, bound {BOUND} s: input check failed after {checked:.1f} s, manifest read after {read:.1f} s")
    assert checked < BOUND + SLACK and read < BOUND + SLACK


def test_run_storage_and_starting_weights_end_within_the_bound(silent) -> None:
    proxy, config = silent
    checkpoint = config.checkpoint
    path, fs = run_storage(checkpoint.storage_path, checkpoint.storage_options, RetryPolicy.for_outages_up_to(BOUND))
    write_start({"w": torch.ones(2)}, config)
    proxy.freeze()

    def write_run_state() -> None:
        with fs.open_output_stream(f"{path}/checkpoint_manager_snapshot.json") as out:
            out.write(b"{}")

    error, written = within_bound(write_run_state)
    assert is_transient(error) and proxy.url in str(error), repr(error)
    error, read = within_bound(lambda: read_start(config))
    assert is_transient(error) and proxy.url in str(error), repr(error)
    print(f"silent endpoint, bound {BOUND} s: run state write failed after {written:.1f} s, weights read after {read:.1f} s")
    assert written < BOUND + SLACK and read < request_timeout_s(BOUND) * 3 + 3  # one request, retried by the caller


def test_an_upload_on_a_connection_gone_silent_is_tried_again(silent) -> None:
    """One connection goes silent mid-upload (an S3 PUT waits for "100 Continue" with no timeout
    of its own): the attempt ends after one request's time plus the bytes at the slowest rate
    taken for progress, and the retry on a new connection writes the file, well within the bound."""
    proxy, config = silent
    checkpoint = config.checkpoint
    path, fs = run_storage(checkpoint.storage_path, checkpoint.storage_options, RetryPolicy.for_outages_up_to(BOUND))
    proxy.stall_on(rb"PUT \S*/stalled\.json ")
    started = time.monotonic()
    with fs.open_output_stream(f"{path}/stalled.json") as out:
        out.write(b"{}")
    took = time.monotonic() - started
    puts = [line for line in proxy.requests if line.startswith(b"PUT ") and b"stalled.json" in line]
    print(f"upload on a connection gone silent: {len(puts)} attempts, {took:.1f} s (bound {BOUND} s)")
    assert len(puts) >= 2 and took < BOUND
    with fs.open_input_stream(f"{path}/stalled.json") as stored:
        assert stored.read() == b"{}"
