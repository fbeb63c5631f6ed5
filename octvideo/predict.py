"""Classify videos with a registered model: ``load_registered_model("models:/kinetics@champion")``
then :func:`predict_video` per video.

A video is seen through the test protocol's ``num_clips x num_crops`` views (see
:func:`octvideo.data.multiview_plans`), with the clip settings the model was trained with; the
softmax of the views is averaged.

The network is rebuilt from the registered model's files (:mod:`octvideo.serving.model_files`:
weights read with ``torch.load(weights_only=True)``, build arguments, label map and clip settings
as JSON), so loading runs none of the model's code. Models registered in octvideo's earlier format
(``mlflow.pytorch``'s pickle) still load, through ``mlflow.pytorch.load_model``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octvideo.train.config import ClipConfig

if TYPE_CHECKING:  # torch and the data path are imported once a model is found: a wrong --model fails fast
    from torch import nn

    from octvideo.serving.model_files import RegisteredNetwork


@dataclass
class LoadedModel:
    """A registered model in eval mode with what it needs to read videos and name classes."""

    model: nn.Module
    class_names: list[str]
    clip: ClipConfig
    uri: str

    @property
    def speed_ratio(self) -> int | None:
        """The SlowFast pathway ratio, None for single-pathway networks."""
        return getattr(self.model, "speed_ratio", None)


def compiled_for_inference(model: nn.Module) -> nn.Module:
    """``model`` under ``torch.compile`` (Inductor, one graph) with freezing: the weights are folded
    in as constants, batch norm into the convolutions, and oneDNN's weight layouts are prepared once.
    The first call compiles (10 to 50 s for Oct-I3D-R50 on a 2-core CPU); BENCHMARKS.md has its
    speed against eager. For inference only: the weights must not change afterwards. The result
    has the model's attributes (``speed_ratio``, ...)."""
    import torch

    class FrozenCompiled(torch.nn.Module):
        # Freezing is switched on in Inductor's config around each call, not through
        # torch.compile(options=...): torch 2.14 reads that option after the options' patch has
        # ended and compiles without freezing (measured: no weight prepacked, the small batch-1
        # convolutions on PyTorch's im2col path, slower than eager).
        def __init__(self) -> None:
            super().__init__()
            self.compiled = torch.compile(model, fullgraph=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch._inductor.config.patch(freezing=True):
                return self.compiled(x)

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(model, name)

    return FrozenCompiled()


_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(@[^/@]+|/[^/@]+)")
#: Registered model names listed when the one asked for is not there.
SHOWN_NAMES = 10


def _check_store(uri: str) -> None:
    """ValueError at once for a store that is not there: a SQLite file that does not exist (MLflow
    would create an empty one) or a server that does not answer (MLflow would retry for minutes)."""
    where = "set the tracking URI the model was registered in (--tracking-uri or MLFLOW_TRACKING_URI)"
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ValueError(f"no MLflow store at {uri} (the file does not exist); {where}")
    elif uri.startswith(("http://", "https://")):
        from octvideo.train.tracking import TrackingUnavailable, check_tracking_available

        try:
            check_tracking_available(uri)
        except TrackingUnavailable as err:
            raise ValueError(f"MLflow tracking server {uri} does not answer ({err.detail}); {where}") from err


def _registered_hint(client: Any, name: str) -> str:
    """What the store holds instead: ``NAME``'s aliases and versions, else the registered names."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            names = sorted(m.name for m in client.search_registered_models(max_results=SHOWN_NAMES + 1))
            more = ", ..." if len(names) > SHOWN_NAMES else ""
            return f"; registered models there: {', '.join(names[:SHOWN_NAMES])}{more}" if names else "; no model is registered there"
        versions = sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)
    except MlflowException:
        return ""
    aliases = ", ".join(f"@{alias}" for alias in sorted(model.aliases))
    return f"; {name} has aliases {aliases or '(none)'} and versions {', '.join(map(str, versions)) or '(none)'}"


def load_registered_model(model_uri: str, tracking_uri: str | None = None) -> LoadedModel:
    """Load ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) as registered by
    :func:`octvideo.train.model_registry.register_trained_model`; ValueError when it cannot be,
    saying what the store holds instead."""
    match = _MODEL_URI.fullmatch(model_uri)
    if match is None:
        raise ValueError(
            f"{model_uri!r} does not name a registered model: use models:/NAME@ALIAS or models:/NAME/VERSION, "
            "e.g. models:/kinetics@champion"
        )
    from octvideo.train.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    _check_store(uri)

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
    except MlflowException as err:
        hint = _registered_hint(MlflowClient(uri), match["name"])
        raise ValueError(f"cannot load {model_uri} from {uri}: {err.message.rstrip('.')}{hint}") from err
    meta = (info.metadata or {}).get("octvideo")
    if not meta:
        raise ValueError(f"{model_uri} was not registered by octvideo (no label map or clip settings)")
    try:
        if "pytorch" in info.flavors:
            network = _load_pickled(model_uri, meta)
        else:
            network = _load_files(model_uri, info.flavors["python_function"]["artifacts"])
    except MlflowException as err:
        raise ValueError(f"cannot load {model_uri} from {uri}: {err.message}") from err
    return LoadedModel(network.model, network.class_names, network.clip, model_uri)


def _load_files(model_uri: str, artifacts: Mapping[str, Mapping[str, str]]) -> RegisteredNetwork:
    """The network of a model in octvideo's format (:mod:`octvideo.serving.model_files`), read
    from its weights and JSON files: no code of the model runs. Downloaded as MLflow's own loaders
    do (read in place from a local store)."""
    import mlflow

    from octvideo.serving.model_files import read_model_files  # torch: only once the model is known to be there

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    return read_model_files({name: str(local / entry["path"]) for name, entry in artifacts.items()})


def _load_pickled(model_uri: str, meta: Mapping[str, Any]) -> RegisteredNetwork:
    """A model registered in octvideo's earlier format, ``mlflow.pytorch``'s pickle of the
    ``nn.Module`` (unpickling it runs code, as any pickle's), with the ``octvideo`` metadata."""
    import mlflow.pytorch

    from octvideo.serving.model_files import RegisteredNetwork

    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    by_index = sorted(meta["label_map"].items(), key=lambda item: item[1])
    return RegisteredNetwork(model.eval(), [name for name, _ in by_index], ClipConfig(**meta["clip"]))


def predict_video(
    loaded: LoadedModel,
    url: str,
    *,
    num_clips: int | None = None,
    num_crops: int | None = None,
    top_k: int = 5,
    storage_options: Mapping[str, Any] | None = None,
) -> list[tuple[str, float]]:
    """The ``top_k`` (class name, probability) of one video, most likely first. ``num_clips`` /
    ``num_crops`` default to the model's test settings. Raises VideoDecodeError for a video
    that cannot be read."""
    import torch

    from octvideo.data import ClipSpec, EvalTransform, decode_clips, model_input, multiview_plans, probe_video

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


__all__ = ["LoadedModel", "compiled_for_inference", "load_registered_model", "predict_video"]
