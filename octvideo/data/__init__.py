"""The Kinetics data path: storage -> decode -> (sample -> transform -> dataset, in progress).

Clips stay ``uint8`` ``(T, H, W, 3)`` until they reach the device.
"""

from .decode import VideoDecodeError, VideoInfo, VideoReader, decode_clip, decode_clips, probe_video
from .manifest import Manifest, VideoEntry, load_manifest, read_label_map, write_label_map
from .storage import RetryPolicy, open_url, retry_call
from .synthetic import write_synthetic_kinetics

__all__ = [
    "Manifest",
    "RetryPolicy",
    "VideoDecodeError",
    "VideoEntry",
    "VideoInfo",
    "VideoReader",
    "decode_clip",
    "decode_clips",
    "load_manifest",
    "open_url",
    "probe_video",
    "read_label_map",
    "retry_call",
    "write_label_map",
    "write_synthetic_kinetics",
]
