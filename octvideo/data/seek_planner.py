"""When seeking beats decoding forward, by a cost model over the container's index of every frame
(MP4 / MOV); :class:`SeekPlanner` steers ``VideoReader.read_clips`` with ``strategy="auto"``."""

from __future__ import annotations

import av

# The cost model of SeekPlanner, in bytes of compressed video: decoding a frame costs about its
# packet's bytes plus one byte per _PIXELS_PER_BYTE pixels (FFmpeg's H.264 decoder on one core at
# 568x320: 0.1 ms + 0.08 ms per KiB), and a seek about _SEEK_FRAMES frames' fixed part.
_PIXELS_PER_BYTE = 100
_SEEK_FRAMES = 2


class SeekPlanner:
    """Tells, from the container's index of every frame, whether seeking to the keyframe before a
    wanted time costs less than decoding forward to it.

    Both ways end up decoding the frames from that keyframe to the wanted one, so a seek pays
    when the frames between the one decoded last and that keyframe cost more to decode than a
    seek (the cost model by :data:`_PIXELS_PER_BYTE`). So all-intra videos seek to each kept
    frame, long keyframe intervals decode a clip's window forward, and short ones do either per
    kept frame, depending on where it lies in its GOP. Index entries are in decoding order,
    timed by decoding timestamp; a time is mapped to an entry by the offset of the first entry
    from the stream's start, which is exact for constant frame rates. The estimate only steers
    the choice: which frame is kept never depends on it.
    """

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.entries = stream.index_entries
        self.time_base = stream.time_base
        self.first_tick = self.entries[0].timestamp
        context = stream.codec_context
        self.frame_bytes = context.width * context.height / _PIXELS_PER_BYTE
        self.seek_bytes = _SEEK_FRAMES * self.frame_bytes

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream) -> SeekPlanner | None:
        """A planner where the index lists every frame (MP4 / MOV read it with the header); None
        where it lists keyframes only (Matroska cues) or nothing (MPEG-TS, raw streams)."""
        if stream.start_time is None or not 0 < stream.frames <= len(stream.index_entries):
            return None
        return cls(stream)

    def seek_pays(self, after: float | None, t: float) -> bool:
        """Whether to seek for ``t`` rather than decode forward from the frame shown at
        ``after`` (None: from the first frame, nothing decoded yet)."""
        keyframe = self._entry_at(t, any_frame=False)
        first = 0 if after is None else self._entry_at(after, any_frame=True) + 1
        saved = 0.0
        for entry in range(keyframe - 1, first - 1, -1):
            saved += self.entries[entry].size + self.frame_bytes
            if saved > self.seek_bytes:
                return True
        return False

    def _entry_at(self, t: float, any_frame: bool) -> int:
        """The entry of the frame (or keyframe) shown at ``t`` seconds from the first frame."""
        tick = self.first_tick + round(t / self.time_base)
        return max(0, self.entries.search_timestamp(tick, backward=True, any_frame=any_frame))
