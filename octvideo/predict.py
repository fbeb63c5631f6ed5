"""Classify videos with a registered model: ``load_registered_model("models:/kinetics@champion")``
then :func:`predict_video` per video.

A video is seen through the test protocol's ``num_clips x num_crops`` views (see
:func:`octvideo.data.multiview_plans`), with the clip settings the model was trained with; the
softmax of the views is averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

import torch
from torch import nn

from octvideo.data import (
    ClipSpec,
    EvalTransform,
    decode_clips,
    model_input,
    multiview_plans,
    probe_video,
)
from octvideo.train.config import ClipConfig


@dataclass
class LoadedModel:
    """A registered model in eval mode with what it needs to read videos and name classes."""

    model: nn.Module
    class_names: List[str]
    clip: ClipConfig
    uri: str

    @property
    def speed_ratio(self) -> Optional[int]:
        """The SlowFast pathway ratio, None for single-pathway networks."""
        return getattr(self.model, "speed_ratio", None)


def load_registered_model(model_uri: str, tracking_uri: Optional[str] = None) -> LoadedModel:
    """Load ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) as registered by
    :func:`octvideo.train.registry.register_model`; ValueError when it cannot be."""
    import mlflow
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from octvideo.train.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except MlflowException as err:
        raise ValueError(f"cannot load {model_uri} from {uri}: {err.message}") from None
    meta = (info.metadata or {}).get("octvideo")
    if not meta:
        raise ValueError(f"{model_uri} was not registered by octvideo (no label map or clip settings)")
    by_index = sorted(meta["label_map"].items(), key=lambda item: item[1])
    return LoadedModel(model.eval(), [name for name, _ in by_index], ClipConfig(**meta["clip"]), model_uri)


def predict_video(
    loaded: LoadedModel,
    url: str,
    *,
    num_clips: Optional[int] = None,
    num_crops: Optional[int] = None,
    top_k: int = 5,
    storage_options: Optional[Mapping[str, Any]] = None,
) -> List[Tuple[str, float]]:
    """The ``top_k`` (class name, probability) of one video, most likely first. ``num_clips`` /
    ``num_crops`` default to the model's test settings. Raises VideoDecodeError for a video
    that cannot be read."""
    clip = loaded.clip
    spec = ClipSpec(clip.num_frames, clip.sampling_rate, clip.target_fps)
    duration = probe_video(url, storage_options).duration_sec
    plans = multiview_plans(duration, spec, num_clips or clip.test_clips, num_crops or clip.test_crops)
    starts = sorted({plan.start_sec for plan in plans})
    clips = decode_clips(
        url, starts, clip.num_frames, clip.sampling_rate, clip.target_fps,
        short_side=clip.eval_short_side, storage_options=storage_options,
    )
    by_start = dict(zip(starts, clips))
    transform = EvalTransform(clip.eval_short_side, clip.eval_crop)
    views = torch.stack([transform(by_start[plan.start_sec], plan.spatial_index) for plan in plans])
    with torch.no_grad():
        probs = torch.softmax(loaded.model(model_input(views, loaded.speed_ratio)), dim=-1).mean(dim=0)
    values, indices = probs.topk(min(top_k, probs.numel()))
    return [(loaded.class_names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]


__all__ = ["LoadedModel", "load_registered_model", "predict_video"]
