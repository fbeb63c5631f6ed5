"""Streamed opening of fsspec URLs, and the retry helper for transient storage errors."""

from __future__ import annotations

import errno
import pickle
import time

import aiohttp
import botocore.exceptions
import fsspec
import pytest

from octvideo.data import storage
from octvideo.data.storage import (
    DEFAULT_BLOCK_SIZE,
    RetryPolicy,
    StorageUnavailable,
    is_transient,
    open_url,
    retry_call,
)

FAST = RetryPolicy(max_attempts=4, initial_delay_sec=0.001, max_delay_sec=0.004)


class FailsThenSucceeds:
    """A callable that raises ``error`` on its first ``failures`` calls, then returns "ok"."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error, self.failures, self.calls = error, failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The delays retry_call waits, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", recorded.append)
    return recorded


def test_retry_recovers_from_transient_errors_with_growing_delays(sleeps):
    policy = RetryPolicy(max_attempts=5, initial_delay_sec=0.1, max_delay_sec=10)
    fn = FailsThenSucceeds(ConnectionResetError("connection reset by peer"), failures=3)
    assert retry_call(fn, policy) == "ok"
    assert fn.calls == 4
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps, start=1):
        base = 0.1 * 2 ** (attempt - 1)
        assert base / 2 <= delay <= base


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("s3://bucket/missing.mp4"),
        PermissionError("access denied"),
        ValueError("bad argument"),
    ],
)
def test_retry_does_not_retry_permanent_errors(error, sleeps):
    fn = FailsThenSucceeds(error, failures=1)
    with pytest.raises(type(error)) as raised:
        retry_call(fn, FAST)
    assert raised.value is error
    assert fn.calls == 1 and sleeps == []


def test_retry_gives_up_after_max_attempts_with_the_last_error(sleeps):
    fn = FailsThenSucceeds(TimeoutError("read timed out"), failures=10)
    with pytest.raises(TimeoutError):
        retry_call(fn, FAST)
    assert fn.calls == FAST.max_attempts
    assert len(sleeps) == FAST.max_attempts - 1


def test_retry_respects_the_total_time_budget():
    policy = RetryPolicy(
        max_attempts=1000, initial_delay_sec=0.02, max_delay_sec=0.02, max_total_sec=0.2
    )
    fn = FailsThenSucceeds(OSError(errno.EBUSY, "SlowDown"), failures=1000)
    started = time.monotonic()
    with pytest.raises(OSError):
        retry_call(fn, policy)
    assert time.monotonic() - started < 0.5
    assert 2 <= fn.calls < 30


def test_retry_with_a_custom_predicate(sleeps):
    fn = FailsThenSucceeds(KeyError("flaky"), failures=2)
    assert retry_call(fn, FAST, retryable=lambda exc: isinstance(exc, KeyError)) == "ok"
    assert fn.calls == 3


@pytest.mark.parametrize(
    "error, transient",
    [
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset"), True),
        (BrokenPipeError("pipe"), True),
        (OSError(errno.EREMOTEIO, "InternalError"), True),  # s3fs: HTTP 500
        (OSError(errno.EBUSY, "SlowDown"), True),  # s3fs: HTTP 503
        (aiohttp.ServerDisconnectedError(), True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), True),
        (aiohttp.ClientResponseError(None, (), status=503), True),
        (aiohttp.ClientResponseError(None, (), status=429), True),
        (aiohttp.ClientResponseError(None, (), status=404), False),
        (aiohttp.ClientResponseError(None, (), status=403), False),
        (FileNotFoundError("missing"), False),
        (PermissionError("denied"), False),
        (IsADirectoryError("a directory"), False),
        (OSError(errno.EINVAL, "InvalidRange"), False),
        (ValueError("bad"), False),
        (None, False),
    ],
)
def test_is_transient(error, transient):
    assert is_transient(error) is transient


def test_is_transient_reads_the_http_status_of_the_cause():
    response = {"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}
    cause = botocore.exceptions.ClientError(response, "GetObject")
    error = RuntimeError("wrapped")
    error.__cause__ = cause
    assert is_transient(error)


@pytest.mark.parametrize(
    "policy",
    [
        dict(max_attempts=0),
        dict(initial_delay_sec=-1),
        dict(max_total_sec=-1),
    ],
)
def test_retry_policy_rejects_nonsense(policy):
    with pytest.raises(ValueError):
        RetryPolicy(**policy)


def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"0123456789")
    for url in (str(path), path, f"file://{path}"):
        with open_url(url) as f:
            f.seek(3)
            assert f.read(4) == b"3456"


def test_open_url_memory():
    with fsspec.open("memory://test-open-url/data.bin", "wb") as f:
        f.write(b"abcdef")
    with open_url("memory://test-open-url/data.bin") as f:
        assert f.read() == b"abcdef"


def test_open_url_missing_local_file_fails_at_once(tmp_path):
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        open_url(tmp_path / "missing.mp4", retry=RetryPolicy(initial_delay_sec=5))
    assert time.monotonic() - started < 1


def test_open_url_unknown_protocol_is_a_value_error():
    with pytest.raises(ValueError, match="nosuchproto"):
        open_url("nosuchproto://bucket/video.mp4")


def test_open_url_s3_streams_ranges_through_a_block_cache(s3_server, s3_bucket):
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    size = 3 * 2**20
    payload = bytes(range(256)) * (size // 256)
    fs.pipe(f"{s3_bucket}/big.bin", payload)
    block = 2**20
    url = f"s3://{s3_bucket}/big.bin"
    with open_url(url, s3_server.storage_options, block_size=block) as f:
        assert f.blocksize == block and f.cache.name == "blockcache"
        f.seek(2 * block + 10)
        assert f.read(16) == payload[2 * block + 10 : 2 * block + 26]
        f.seek(5)
        assert f.read(3) == payload[5:8]
        # Two blocks fetched, not the whole object.
        assert f.cache.total_requested_bytes == 2 * block


def test_open_url_s3_defaults(s3_server, s3_bucket):
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    fs.pipe(f"{s3_bucket}/small.bin", b"hello")
    with open_url(f"s3://{s3_bucket}/small.bin", s3_server.storage_options) as f:
        assert f.blocksize == DEFAULT_BLOCK_SIZE and f.cache.name == "blockcache"
        assert f.read() == b"hello"


def test_open_url_s3_missing_object_is_not_retried(s3_server, s3_bucket):
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        open_url(
            f"s3://{s3_bucket}/missing.mp4",
            s3_server.storage_options,
            retry=RetryPolicy(initial_delay_sec=5),
        )
    assert time.monotonic() - started < 3


def test_storage_unavailable_names_what_failed_and_crosses_processes():
    """Ray sends a worker's error to the driver pickled: it must come back whole."""
    error = StorageUnavailable.after("reading s3://b/v.mp4", 60, ConnectionRefusedError(111, "refused"))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is StorageUnavailable and str(copy) == str(error)
    assert "reading s3://b/v.mp4 kept failing for 60 s (ConnectionRefusedError" in str(copy)
