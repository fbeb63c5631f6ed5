"""The files a registered model is made of, none of them pickled code.

``weights.pt`` is the fp32 ``state_dict`` (``torch.save``, read back with
``torch.load(weights_only=True)``); ``network.json`` the ``build_model`` name and arguments that
rebuild the network from the installed ``octvideo``; ``labels.json`` the label map (class name ->
index); ``clip.json`` the clip settings (:class:`~octvideo.train.config.ClipConfig`). The keys of
:data:`FILES` name them as the ``artifacts`` of the MLflow pyfunc.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from octvideo.models import build_model
from octvideo.train.config import ClipConfig

#: Artifact name -> file name.
FILES = {"weights": "weights.pt", "network": "network.json", "labels": "labels.json", "clip": "clip.json"}


@dataclass
class RegisteredNetwork:
    """A network rebuilt from its files, in eval mode, with its class names (by index) and clip settings."""

    model: nn.Module
    class_names: list[str]
    clip: ClipConfig


def write_model_files(
    model: nn.Module, build_kwargs: Mapping[str, Any], label_map: Mapping[str, int], clip: ClipConfig, folder: Path
) -> dict[str, str]:
    """Write ``model`` (built by ``build_model(model.model_name, **build_kwargs)``) and what
    classifying with it needs into ``folder``; the artifact name -> path of each file."""
    paths = {name: str(folder / file) for name, file in FILES.items()}
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save({key: value.float() if value.is_floating_point() else value for key, value in state.items()},
               paths["weights"])
    documents = {
        "network": {"model_name": model.model_name, "build_kwargs": dict(build_kwargs)},
        "labels": dict(label_map),
        "clip": clip.model_dump(mode="json"),
    }
    for name, document in documents.items():
        Path(paths[name]).write_text(json.dumps(document, indent=1) + "\n")
    return paths


def read_model_files(paths: Mapping[str, str]) -> RegisteredNetwork:
    """The network that :func:`write_model_files` wrote (artifact name -> local path)."""
    network = json.loads(Path(paths["network"]).read_text())
    model = build_model(network["model_name"], **network["build_kwargs"])
    model.load_state_dict(torch.load(paths["weights"], map_location="cpu", weights_only=True))
    label_map = json.loads(Path(paths["labels"]).read_text())
    class_names = [name for name, _ in sorted(label_map.items(), key=lambda item: item[1])]
    clip = ClipConfig(**json.loads(Path(paths["clip"]).read_text()))
    return RegisteredNetwork(model.eval(), class_names, clip)


__all__ = ["FILES", "RegisteredNetwork", "read_model_files", "write_model_files"]
