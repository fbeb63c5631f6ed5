"""Model registry: ``build_model(name, **kwargs)`` and ``list_models()``, timm-style."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_VANILLA: dict[str, str] = {}


def register_model(vanilla: str | None = None) -> Callable:
    """Register a builder under its function name; ``vanilla`` names the plain twin it can load."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[builder.__name__] = builder
        if vanilla:
            _VANILLA[builder.__name__] = vanilla
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def vanilla_twin(name: str) -> str | None:
    """The reference network a model equals at alpha = 0, e.g. ``"torchvision.resnet50"``."""
    return _VANILLA.get(name)


def similar_models(name: str) -> list[str]:
    """Registered names that look like ``name`` (a typo's likely intent), closest first."""
    return difflib.get_close_matches(name, _BUILDERS, n=3)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model and record its name as ``model.model_name``.

    Args:
        name: A name from :func:`list_models`, e.g. ``"oct_i3d_r50"``.
        **kwargs: The builder's keyword arguments (those of :class:`~octvideo.models.resnet.ResNet`
            or :class:`~octvideo.models.slowfast.SlowFast`); every model takes ``alpha``,
            ``num_classes`` and ``octave_pool``.

    Raises:
        ValueError: ``name`` is not registered (the message names the closest registered ones).
    """
    if name not in _BUILDERS:
        close = similar_models(name)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {name!r}.{hint} Known models: {', '.join(list_models())}")
    model = _BUILDERS[name](**kwargs)
    model.model_name = name
    return model
