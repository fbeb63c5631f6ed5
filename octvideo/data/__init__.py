"""The Kinetics data path, one direction:
storage -> decode -> clip plan -> uint8 transforms -> dataset / loader -> device (normalise, pathways).

Clips are uint8 ``(T, H, W, 3)`` from the decoder, uint8 ``(C, T, H, W)`` after the transforms
(batches ``(B, C, T, H, W)`` cross process boundaries at a quarter of the float size), and become
float only on the device.
"""

from .dataset import (
    BadVideo,
    BadVideoTracker,
    KineticsDataset,
    KineticsLoader,
    ShardSampler,
    TooManyBadVideos,
    collate,
)
from .decode import VideoDecodeError, VideoInfo, VideoReader, decode_clip, decode_clips, probe_video
from .device import KINETICS_MEAN, KINETICS_STD, DeviceInput, model_input, normalize, slowfast_pathways
from .manifest import Manifest, VideoEntry, load_manifest, read_label_map, write_label_map
from .sampling import ClipPlan, ClipSpec, Mode, multiview_plans, multiview_starts, train_plan, val_plan
from .storage import RetryPolicy, open_url, retry_call
from .synthetic import write_synthetic_kinetics
from .transforms import EvalTransform, TrainTransform

__all__ = [
    "BadVideo",
    "BadVideoTracker",
    "ClipPlan",
    "ClipSpec",
    "DeviceInput",
    "EvalTransform",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "KineticsDataset",
    "KineticsLoader",
    "Manifest",
    "Mode",
    "RetryPolicy",
    "ShardSampler",
    "TooManyBadVideos",
    "TrainTransform",
    "VideoDecodeError",
    "VideoEntry",
    "VideoInfo",
    "VideoReader",
    "collate",
    "decode_clip",
    "decode_clips",
    "load_manifest",
    "model_input",
    "multiview_plans",
    "multiview_starts",
    "normalize",
    "open_url",
    "probe_video",
    "read_label_map",
    "retry_call",
    "slowfast_pathways",
    "train_plan",
    "val_plan",
    "write_label_map",
    "write_synthetic_kinetics",
]
