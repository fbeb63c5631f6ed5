"""Fetching the videos a process will decode next while it decodes: object-store latency overlaps
with decoding instead of adding to every clip.

A store tens of milliseconds away answers each request that late. Streamed through a range cache
(:func:`~octvideo.data.storage.open_url`), a video costs a HEAD and one or more GETs before its
first frame, every one waited for. :class:`VideoFetcher` instead downloads whole videos in one GET
each (no HEAD: a ranged GET of up to ``max_bytes + 1`` bytes returns a smaller object whole), a
bounded number at a time, in threads, and hands the bytes to the decoder as an in-memory file.

What stays as it was: anything a fetch cannot do well goes the streamed way, which retries under
the dataset's policy and classifies errors as before. That is a video the fetcher was not asked
for, a fetch that failed for any reason (a missing object, an outage), a video larger than
``max_bytes``, and a local file (read directly, nothing to hide).

Memory: at most ``max_videos`` videos of at most ``max_bytes`` each per process, fetched or in
flight (:attr:`VideoFetcher.bound_bytes`).
"""

from __future__ import annotations

import io
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import fsspec.core

from octvideo.data.storage import bounded_storage_options, filesystem

logger = logging.getLogger(__name__)

#: Videos larger than this are streamed rather than held in memory (Kinetics clips are 1-5 MB).
DEFAULT_MAX_BYTES = 64 * 2**20
_LOCAL = ("file", "local", "memory")


class VideoFetcher:
    """Whole-object downloads of up to ``max_videos`` videos ahead, through fsspec, each request
    bounded by ``timeout_s`` (:func:`~octvideo.data.storage.bounded_storage_options`).

    Call :meth:`prefetch` with the URLs about to be decoded, then :meth:`take` each one: the
    bytes as a named in-memory file when its fetch succeeded, else the URL itself. Threads start
    on first use in the process that uses the fetcher (a forked copy starts its own).
    """

    def __init__(
        self,
        storage_options: Mapping[str, Any] | None,
        timeout_s: float,
        *,
        max_videos: int = 8,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_videos < 1 or max_bytes < 1:
            raise ValueError(f"need max_videos >= 1 and max_bytes >= 1, got {max_videos}, {max_bytes}")
        self.storage_options, self.timeout_s = dict(storage_options or {}), timeout_s
        self.max_videos, self.max_bytes = max_videos, max_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._pending: OrderedDict[str, Future[bytes | None]] = OrderedDict()

    @property
    def bound_bytes(self) -> int:
        """The most video bytes this fetcher holds at once."""
        return self.max_videos * self.max_bytes

    def prefetch(self, urls: Iterable[str]) -> None:
        """Start fetching ``urls`` (remote ones not already fetched), in order, while fewer than
        ``max_videos`` are held; the rest are streamed when taken."""
        if self._pid != os.getpid():  # first use here, or a forked copy: the threads are not ours
            self._pool, self._pending, self._pid = None, OrderedDict(), os.getpid()
        for url in urls:
            if len(self._pending) >= self.max_videos:
                break
            if url in self._pending or fsspec.core.split_protocol(url)[0] in (None, *_LOCAL):
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_videos, thread_name_prefix="octvideo-fetch")
            self._pending[url] = self._pool.submit(self._fetch, url)

    def take(self, url: str) -> str | IO[bytes]:
        """``url``'s bytes as an in-memory file named ``url`` if it was fetched, else ``url``."""
        future = self._pending.pop(url, None) if self._pid == os.getpid() else None
        if future is None:
            return url
        try:
            data = future.result()
        except Exception as error:  # noqa: BLE001 - the streamed read meets it again and reports it
            logger.debug("fetching %s failed (%r); streaming it instead", url, error)
            return url
        if data is None:
            return url
        file = io.BytesIO(data)
        file.name = url
        return file

    def discard(self) -> None:
        """Drop what was fetched and not taken (a batch that ended early)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None, "_pid": 0, "_pending": OrderedDict()}

    def _fetch(self, url: str) -> bytes | None:
        """The whole object in one GET; None when it is larger than ``max_bytes``."""
        fs, path = filesystem(url, bounded_storage_options(url, self.storage_options, self.timeout_s))
        data = fs.cat_file(path, start=0, end=self.max_bytes + 1)
        return None if len(data) > self.max_bytes else data
