"""The network of an experiment's model settings: :class:`~octvideo.train.config.ModelConfig` ->
``build_model`` arguments -> ``nn.Module`` (fresh weights). Free of DeepSpeed: the job's driver
and the registry build networks without loading it."""

from __future__ import annotations

from typing import Any

from torch import nn

from octvideo.models import build_model
from octvideo.train.config import ModelConfig


def network_options(config: ModelConfig, num_classes: int) -> dict[str, Any]:
    """The ``build_model(config.name, **options)`` arguments of ``config`` with ``num_classes`` outputs."""
    options: dict[str, Any] = {
        "alpha": config.alpha,
        "octave_pool": list(config.octave_pool),
        "last_stage_alpha": config.last_stage_alpha,
        "num_classes": num_classes,
        "dropout": config.dropout,
    }
    if config.width is not None:
        options["width"] = config.width
    return options


def build_network(config: ModelConfig, num_classes: int) -> nn.Module:
    """The model of ``config`` (fresh weights) with ``num_classes`` outputs."""
    return build_model(config.name, **network_options(config, num_classes))
