"""Streamed reads from any fsspec location, and retries for transient storage errors.

A location is a plain path or an fsspec URL (``file://``, ``s3://``, ``gs://``, ``memory://``,
``http(s)://``, ...). Credentials and endpoints come from ``storage_options`` (passed to the
fsspec filesystem) or from the backend's usual environment variables (``AWS_*`` for S3).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import fsspec.asyn
import fsspec.core
import fsspec.exceptions

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Video reads are "read the index, then read a run of frames": a few ranged GETs of a few MiB
# amortise object-store latency (tens of ms per request) while a Kinetics clip (1-5 MB) needs
# only one or two of them. "blockcache" keeps an LRU of fixed blocks, so an index stored at the
# end of the file (mp4 without faststart) stays cached while frames are read from the middle;
# "readahead" keeps a single window and would fetch the index again after every such jump.
# Memory per open file is bounded by DEFAULT_BLOCK_SIZE * DEFAULT_MAX_BLOCKS.
DEFAULT_BLOCK_SIZE = 4 * 2**20
DEFAULT_CACHE_TYPE = "blockcache"
DEFAULT_MAX_BLOCKS = 8

# errno values that mean "the service or network hiccuped", not "the request is wrong".
# s3fs maps HTTP 500 to EREMOTEIO, 503/SlowDown to EBUSY and unknown service errors to EIO.
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EIO", "EREMOTEIO", "EBUSY", "EAGAIN", "ETIMEDOUT", "ECONNRESET", "ECONNABORTED",
        "ECONNREFUSED", "EPIPE", "ENETUNREACH", "ENETDOWN", "EHOSTUNREACH",
    )
    if hasattr(errno, name)
)
_PERMANENT_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt n (from 1) waits ``initial_delay_sec * 2**(n-1)`` capped at
    ``max_delay_sec``, scaled by a random factor in [0.5, 1] so that many workers hitting the same
    outage do not retry in lockstep. Gives up after ``max_attempts`` attempts or when the next wait
    would end later than ``max_total_sec`` after the first attempt started."""

    max_attempts: int = 5
    initial_delay_sec: float = 0.5
    max_delay_sec: float = 8.0
    max_total_sec: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if min(self.initial_delay_sec, self.max_delay_sec, self.max_total_sec) < 0:
            raise ValueError(f"RetryPolicy delays must be >= 0, got {self}")

    def delay_sec(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay_sec, self.initial_delay_sec * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)

    @classmethod
    def for_outages_up_to(cls, seconds: float) -> RetryPolicy:
        """Retry for ``seconds`` in all (the time bounds it, not the number of attempts)."""
        return cls(max_attempts=2**31, max_total_sec=seconds)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


class StorageUnavailable(RuntimeError):
    """Storage kept failing with transient errors (connection refused, timeouts, HTTP 5xx) for
    longer than the retry policy allows: an outage, not a problem of one file."""

    @classmethod
    def after(cls, what: str, seconds: float, error: BaseException) -> StorageUnavailable:
        """The error for ``what`` (say, "reading s3://...") failing with ``error`` for ``seconds``."""
        return cls.failed(f"{what} kept failing for {seconds:.0f} s", error)

    @classmethod
    def failed(cls, what: str, error: BaseException) -> StorageUnavailable:
        """The error for ``what`` failing with the transient ``error``, after the caller's retries."""
        return cls(
            f"storage unavailable: {what} ({type(error).__name__}: {error}); "
            "check that the object store is up and reachable from every node"
        )


@functools.cache
def _library_transient_errors() -> tuple[type[BaseException], ...]:
    """Connection/timeout errors of the HTTP stacks under fsspec that are not builtin OSErrors."""
    errors: list[type[BaseException]] = []
    try:
        import aiohttp

        errors += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    try:
        import botocore.exceptions

        errors += [botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError]
    except ImportError:
        pass
    return tuple(errors)


@functools.cache
def storage_errors() -> tuple[type[BaseException], ...]:
    """What reading a store with wrong settings raises: OSError (fsspec's missing objects and
    denied access) and the client libraries' own errors that are not OSErrors (no S3 credentials,
    an endpoint that does not answer). Catch them where a bad URL is a user error."""
    errors: list[type[BaseException]] = [OSError, *_library_transient_errors()]
    try:
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
    except ImportError:
        pass
    return tuple(errors)


def storage_error_message(url: str, error: BaseException) -> str:
    """One line for a location that cannot be read: the URL, the error, what to check."""
    return (
        f"cannot read {url}: {error} ({type(error).__name__}); check the URL, the endpoint and the "
        "credentials / storage_options for that store"
    )


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries: aiohttp's ``status``, gcsfs's ``code``, botocore's
    ``response``."""
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def is_transient(exc: BaseException | None) -> bool:
    """Whether retrying the operation that raised ``exc`` may succeed: timeouts, dropped
    connections, HTTP 408/429/5xx. Missing objects and permission errors are permanent."""
    if exc is None or isinstance(exc, _PERMANENT_ERRORS):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError) + _library_transient_errors()):
        return True
    for err in (exc, exc.__cause__):
        status = None if err is None else http_status(err)
        if status is not None:
            return status >= 500 or status in (408, 429)
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def retry_call(
    fn: Callable[[], T],
    policy: RetryPolicy = DEFAULT_RETRY,
    *,
    retryable: Callable[[BaseException], bool] = is_transient,
    what: str = "storage call",
) -> T:
    """Call ``fn()`` until it succeeds, retrying errors for which ``retryable`` is true.

    The last error is re-raised unchanged once the policy's attempts or total time run out.
    """
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            delay = policy.delay_sec(attempt)
            if (
                attempt >= policy.max_attempts
                or not retryable(exc)
                or time.monotonic() - started + delay > policy.max_total_sec
            ):
                raise
            logger.warning(
                "%s failed (attempt %d/%d), retrying in %.2fs: %r",
                what, attempt, policy.max_attempts, delay, exc,
            )
        time.sleep(delay)
        attempt += 1


def retry_storage_call(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """:func:`retry_call` for a storage transfer: a transient error that outlasts ``policy``
    becomes :class:`StorageUnavailable` naming ``what`` (say, "reading s3://...")."""
    try:
        return retry_call(fn, policy, what=what)
    except Exception as error:
        if is_transient(error):
            raise StorageUnavailable.after(what, policy.max_total_sec, error) from error
        raise


def request_timeout_s(timeout_s: float) -> float:
    """How long one storage request may wait for an answer when the caller gives up on storage
    after ``timeout_s``: a small share of it, never under 1 s nor over 10 s."""
    return min(10.0, max(1.0, timeout_s / 10))


# The slowest upload rate taken for progress: an upload attempt of n bytes that takes longer than
# one request's answer time plus n bytes at this rate is treated as stalled and tried again.
MIN_UPLOAD_BYTES_PER_S = 2**20


def upload_deadline_s(nbytes: int, timeout_s: float) -> float:
    """How long one attempt to upload ``nbytes`` may take when the caller gives up on storage
    after ``timeout_s``: :func:`request_timeout_s` plus the bytes at ``MIN_UPLOAD_BYTES_PER_S``,
    never over ``timeout_s``. A connection that goes silent mid-upload then costs one attempt,
    not the whole budget: aiohttp waits for an S3 PUT's "100 Continue" with no timeout of its own."""
    return min(timeout_s, request_timeout_s(timeout_s) + nbytes / MIN_UPLOAD_BYTES_PER_S)


def bounded_storage_options(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None, timeout_s: float
) -> dict[str, Any]:
    """``storage_options`` for ``url``'s store whose client gives up on a request that gets no
    answer within :func:`request_timeout_s` of ``timeout_s``, the bound the caller's retries
    (:meth:`RetryPolicy.for_outages_up_to`) put on an outage.

    Without this, an S3 endpoint that accepts connections and never answers blocks a read for
    s3fs's 15 s read timeout times botocore's attempts times s3fs's (nested) retries: many
    minutes, with no log line. With it, botocore does not retry and :func:`filesystem` turns
    s3fs's retries off, so the caller's retry loop (with backoff, until ``timeout_s``) is the only
    one, and a silent endpoint becomes a transient error within ``timeout_s`` plus one request.
    Settings the user gave in ``config_kwargs`` win. Other stores are returned unchanged.
    """
    options = dict(storage_options or {})
    if fsspec.core.split_protocol(os.fspath(url))[0] not in ("s3", "s3a"):
        return options
    request_s = request_timeout_s(timeout_s)
    options["config_kwargs"] = {
        "connect_timeout": request_s,
        "read_timeout": request_s,
        "retries": {"mode": "standard", "max_attempts": 1},
        **options.get("config_kwargs", {}),
    }
    return options


def filesystem(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's filesystem and path for ``url``. An S3 client made from
    :func:`bounded_storage_options` makes one attempt per request: its caller retries."""
    fs, path = fsspec.core.url_to_fs(os.fspath(url), **dict(storage_options or {}))
    config = (storage_options or {}).get("config_kwargs") or {}
    if "read_timeout" in config and "s3" in fs.protocol:
        fs.retries = 1
    return fs, path


def with_deadline(fs: fsspec.AbstractFileSystem, seconds: float, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, a method of ``fs``, ended after ``seconds`` with a TimeoutError
    that names the endpoint (fsspec's own ``timeout`` of async filesystems; others are called as
    they are). Uploads need it: botocore sends them with ``Expect: 100-continue``, and aiohttp
    waits for the "100 Continue" of a silent endpoint with no timeout at all."""
    if not isinstance(fs, fsspec.asyn.AsyncFileSystem):
        return call(*args, **kwargs)
    try:
        return call(*args, timeout=seconds, **kwargs)
    except fsspec.exceptions.FSTimeoutError:
        client = getattr(fs, "_s3", None)  # s3fs's botocore client, once connected
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or f"the {fs.protocol[0]} endpoint"
        raise TimeoutError(f"{endpoint} did not answer within {seconds:g} s") from None  # fsspec's error says no more


def open_url(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    cache_type: str = DEFAULT_CACHE_TYPE,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> IO[bytes]:
    """Open ``url`` for binary, seekable, streamed reading (ranged requests, never a full download).

    ``block_size``/``cache_type`` apply to remote filesystems; local and ``memory://`` files are
    read directly. Opening (which asks the store for the object's size) is retried on transient
    errors; a missing object raises FileNotFoundError at once. Each request is bounded in time
    by ``retry`` (:func:`bounded_storage_options`). The caller closes the file.
    """
    fs, path = filesystem(url, bounded_storage_options(url, storage_options, retry.max_total_sec))
    cache_options = {"maxblocks": max_blocks} if cache_type == "blockcache" else None
    return retry_call(
        lambda: fs.open(
            path, "rb", block_size=block_size, cache_type=cache_type, cache_options=cache_options
        ),
        retry,
        what=f"opening {url}",
    )
