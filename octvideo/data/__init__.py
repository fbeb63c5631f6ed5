"""The Kinetics data path, one direction:
storage -> decode -> clip plan -> uint8 transforms -> dataset / loader -> device (normalise, pathways).

Clips are uint8 ``(T, H, W, 3)`` from the decoder, uint8 ``(C, T, H, W)`` after the transforms
(batches ``(B, C, T, H, W)`` cross process boundaries at a quarter of the float size), and become
float only on the device.

The names below load their module on first use (PEP 562), so that ``octvideo.data.storage`` and
``octvideo.data.manifest`` can be imported without torch: the job's pre-checks use them before
importing it.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "BadVideo": "dataset",
    "BadVideoTracker": "dataset",
    "KineticsDataset": "dataset",
    "KineticsLoader": "dataset",
    "ShardSampler": "dataset",
    "TooManyBadVideos": "dataset",
    "collate": "dataset",
    "VideoInfo": "decode",
    "VideoReader": "decode",
    "decode_clip": "decode",
    "decode_clips": "decode",
    "probe_video": "decode",
    "DeviceInput": "device",
    "KINETICS_MEAN": "device",
    "KINETICS_STD": "device",
    "model_input": "device",
    "normalize": "device",
    "slowfast_pathways": "device",
    "Manifest": "manifest",
    "VideoEntry": "manifest",
    "load_manifest": "manifest",
    "read_label_map": "manifest",
    "write_label_map": "manifest",
    "ClipPlan": "sampling",
    "ClipSpec": "sampling",
    "Mode": "sampling",
    "multiview_plans": "sampling",
    "multiview_starts": "sampling",
    "train_plan": "sampling",
    "val_plan": "sampling",
    "RayDataLoader": "ray_ingest",
    "RetryPolicy": "storage",
    "open_url": "storage",
    "retry_call": "storage",
    "write_synthetic_kinetics": "synthetic",
    "EvalTransform": "transforms",
    "TrainTransform": "transforms",
    "VideoDecodeError": "video_errors",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
