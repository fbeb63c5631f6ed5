"""Why a video could not be read: :class:`VideoDecodeError` and its :data:`REASONS`, each with
advice, and the classification of what storage and FFmpeg raise into those reasons."""

from __future__ import annotations

from typing import IO, Any

import av.error

from octvideo.data.byte_diagnosis import diagnose_bytes
from octvideo.data.storage import http_status, is_transient

_ADVICE = {
    "not found": "check the path or URL, and the credentials / storage_options for that store",
    "empty": "download or copy it again",
    "not a video": "download it again (the server may have sent an error page) or drop it",
    "no video stream": "drop it from the dataset",
    "truncated": "download or copy it again (the last transfer was probably interrupted)",
    "corrupt": "download it again or re-encode it",
    "unsupported codec": "re-encode it (e.g. to H.264 or VP9) or use an FFmpeg with its decoder",
    "timeout": "check the network and the storage endpoint, or raise timeout_sec",
}
REASONS = frozenset(_ADVICE)


class VideoDecodeError(RuntimeError):
    """A video could not be read: ``reason`` (one of :data:`REASONS`) says why, ``source`` names
    the video, ``detail`` gives the underlying error."""

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        if reason not in _ADVICE:
            raise ValueError(f"unknown reason {reason!r}; use one of {sorted(REASONS)}")
        self.source, self.reason, self.detail = source, reason, detail
        what = f"{reason} ({detail})" if detail else reason
        super().__init__(f"{source}: {what}; {_ADVICE[reason]}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the type when pickled across DataLoader worker / Ray process boundaries.
        return type(self), (self.source, self.reason, self.detail)


def is_storage_hiccup(exc: BaseException) -> bool:
    """Whether ``exc`` is a VideoDecodeError caused by a transient storage error (worth a retry)."""
    return isinstance(exc, VideoDecodeError) and is_transient(exc.__cause__)


def classify(exc: Exception, file: IO[bytes] | None, opening: bool) -> tuple[str, str] | None:
    """(reason, detail) for an error raised while reading a video from ``file`` (``opening``:
    while opening its container); None for programming errors."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (TimeoutError, av.error.ExitError)):
        return "timeout", detail
    if isinstance(exc, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError)):
        return "unsupported codec", detail
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return "not found", detail
    if isinstance(exc, PermissionError) and not isinstance(exc, av.error.FFmpegError):
        return "not found", f"access denied: {detail}"
    if is_transient(exc):
        return "timeout", f"storage kept failing: {detail}"
    if http_status(exc) is not None:  # 4xx from an HTTP store: missing, forbidden, bad request
        return "not found", f"HTTP {http_status(exc)}: {detail}"
    if isinstance(exc, (av.error.FFmpegError, EOFError)):
        return diagnose_bytes(file, ("not a video" if opening else "corrupt", detail), opening)
    if isinstance(exc, OSError):  # the file object refused a read or seek FFmpeg asked for
        return diagnose_bytes(file, ("not found", f"cannot read it: {detail}"), opening)
    return None
