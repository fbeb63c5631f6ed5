"""What a video file that FFmpeg could not read is, told from its bytes: empty, not a video at
all (an HTML error page, say), or an MP4 cut short (its top-level boxes run past its end, or its
index box is missing)."""

from __future__ import annotations

import os
from typing import IO

# Types of the boxes an MP4 / MOV file starts with, found at byte 4.
_MP4_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide")
# Leading bytes of the containers FFmpeg reads video from: (offset, magic).
_CONTAINER_MAGIC = (
    *((4, box) for box in _MP4_FIRST_BOXES),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x00\x00\x00\x01"),  # H.264 / HEVC elementary stream
)


def diagnose_bytes(
    file: IO[bytes] | None, fallback: tuple[str, str], opening: bool
) -> tuple[str, str]:
    """Tell empty, not-a-video and truncated files apart by their bytes: a (reason, detail)
    pair; else ``fallback``. Only while ``opening`` can a file be "not a video"."""
    if file is None or file.closed or not file.seekable():
        return fallback
    try:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return "empty", "the file has 0 bytes"
        file.seek(0)
        head = file.read(512)
        if head[4:8] in _MP4_FIRST_BOXES and _iso_boxes_truncated(file, size):
            return "truncated", f"its MP4 boxes need more than its {size} bytes, or it has no index"
    except OSError:
        return fallback
    is_ts = head[:1] == b"\x47" and head[188:189] in (b"", b"\x47")
    if opening and not is_ts and not any(head[o : o + len(m)] == m for o, m in _CONTAINER_MAGIC):
        looks = "an HTML/XML page" if head.lstrip()[:1] == b"<" else "no known video format"
        return "not a video", f"{size} bytes that look like {looks}, starting {head[:24]!r}"
    return fallback


def _iso_boxes_truncated(file: IO[bytes], size: int) -> bool:
    """Whether the top-level MP4 boxes run past the end of the file, or the index box is missing."""
    offset, kinds = 0, set()
    for _ in range(10_000):  # real files have a handful of top-level boxes
        if offset + 8 > size:
            break
        file.seek(offset)
        header = file.read(16)
        box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
        kinds.add(kind)
        if box_size == 1:  # 64-bit size follows the type
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:  # box runs to the end of the file
            box_size = size - offset
        if box_size < 8:
            return False  # garbage rather than a cut
        offset += box_size
    return offset > size or b"moov" not in kinds
