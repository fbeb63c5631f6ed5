"""Progress of a long loop: a bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS_LOG_SEC = 10.0


def progress(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """A progress bar on stderr while ``items`` are consumed; when stderr is not a terminal
    (a Ray job's log, CI), a log line every ``PROGRESS_LOG_SEC`` instead."""
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    if console.is_terminal:
        yield from track(items, description, total=total, console=console, transient=True)
        return
    last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        if time.monotonic() - last >= PROGRESS_LOG_SEC:
            last = time.monotonic()
            log.info("%s: %d/%d", description, done, total)
