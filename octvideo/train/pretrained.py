"""A run's starting weights: read ``model.pretrained`` once, on the driver, before cluster work.

The driver reads the source (a checkpoint file through fsspec, or a registered model from
MLflow), converts it into the experiment's network (:func:`octvideo.models.load_pretrained`:
format detection, inflation, alpha split, head) and writes the network's whole state dict, head
included, as ``pretrained_start.pt`` in the run's folder. Every worker of a fresh run loads that
file; a worker that resumes from a checkpoint never reads it, and the source is never read
again by the workers. So the source is checked (a missing, corrupt or mismatched file is a
:class:`ConfigError`) before any cluster work, every rank starts from the same head
initialisation, and the workers need no access to the source's store or to MLflow.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from octvideo.data.storage import (
    bounded_storage_options,
    filesystem,
    storage_error_message,
    storage_errors,
    with_deadline,
)
from octvideo.models import PretrainedLoad, load_pretrained
from octvideo.train.checkpoint import load_weights, save_weights
from octvideo.train.config import ConfigError, ExperimentConfig, PretrainedConfig

logger = logging.getLogger(__name__)

#: The converted starting weights, in the run's folder.
START_FILE = "pretrained_start.pt"


def read_source(source: PretrainedConfig, tracking_uri: str | None, timeout_s: float) -> Any:
    """What ``source`` holds: a registered model (:class:`octvideo.predict.LoadedModel`), or a
    checkpoint file's content (``torch.load`` without code execution), each request bounded by
    ``timeout_s``. ConfigError naming the source when it cannot be read."""
    if source.registered:
        from octvideo.predict import load_registered_model

        try:
            return load_registered_model(source.source, tracking_uri)
        except ValueError as error:
            raise ConfigError(f"model.pretrained.source: {error}") from error
    try:
        fs, path = filesystem(source.source, bounded_storage_options(source.source, source.storage_options, timeout_s))
        with fs.open(path, "rb") as file:
            return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise ConfigError(f"model.pretrained.source: checkpoint {source.source} does not exist") from error
    except IsADirectoryError as error:
        raise ConfigError(f"model.pretrained.source: {source.source} is a folder; name the checkpoint file") from error
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as error:
        raise ConfigError(f"model.pretrained.source: {source.source} {_unreadable(error)}") from error
    except storage_errors() as error:
        raise ConfigError(f"model.pretrained.source: {storage_error_message(source.source, error)}") from error


def _unreadable(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without its advice to load arbitrary code."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()
    else:
        detail = (text.strip().splitlines() or [type(error).__name__])[0]
    if "Unsupported global" in detail:
        return f"holds pickled objects, not only tensors ({detail[:160]}); save a state_dict() instead"
    return f"is not a readable PyTorch checkpoint ({detail[:160]})"


def start_from_source(
    model: nn.Module, config: ExperimentConfig, class_names: Sequence[str], tracking_uri: str | None
) -> PretrainedLoad:
    """Fill ``model`` (the experiment's network, freshly built, for ``class_names``) from
    ``model.pretrained``; ConfigError (one line) when the source does not fit it. A registered
    model knows its classes: with ``head: auto`` its classifier is re-initialised when they are
    not the data's, even at the same count."""
    source = config.model.pretrained
    checkpoint, head = read_source(source, tracking_uri, config.checkpoint.storage_timeout_s), source.head
    if source.registered:
        if head == "auto" and list(checkpoint.class_names) != list(class_names):
            head = "reset"
            logger.info("%s was trained on other classes (%s, ...): its classifier is re-initialised",
                        source.source, ", ".join(checkpoint.class_names[:3]))
        checkpoint = checkpoint.model
    try:
        loaded = load_pretrained(model, checkpoint, format=source.format, inflate=source.inflate, head=head)
    except ValueError as error:
        raise ConfigError(f"model.pretrained.source: {source.source} {error}") from error
    logger.info("starting from %s (%s); head %s", source.source, loaded.format, loaded.head)
    return loaded


def start_file(config: ExperimentConfig) -> str:
    """Where the run's converted starting weights lie (a URL or path on the run's storage)."""
    checkpoint = config.checkpoint
    return f"{checkpoint.storage_path.rstrip('/')}/{checkpoint.name}/{START_FILE}"


def write_start(state: Mapping[str, torch.Tensor], config: ExperimentConfig) -> str:
    """Write the starting weights to :func:`start_file` (driver)."""
    url = start_file(config)
    fs, path = filesystem(url, config.checkpoint.client_options(url))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    weights = io.BytesIO()
    save_weights(state, weights)
    with_deadline(fs, config.checkpoint.storage_timeout_s, fs.pipe_file, path, weights.getvalue())
    return url


def read_start(config: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The starting weights the driver wrote (a worker of a fresh run)."""
    url = start_file(config)
    fs, path = filesystem(url, config.checkpoint.client_options(url))
    with fs.open(path, "rb") as file:
        return load_weights(file)
