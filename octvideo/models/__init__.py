"""Octave video and image networks, built by name: ``build_model("oct_i3d_r50", alpha=0.5)``."""

from .pretrained import PretrainedLoad, load_pretrained
from .registry import build_model, list_models, similar_models, vanilla_twin
from .resnet import ResNet  # importing a model module registers its builders
from .slowfast import SlowFast
from .vanilla import load_vanilla_weights

__all__ = [
    "PretrainedLoad", "ResNet", "SlowFast", "build_model", "list_models", "load_pretrained", "load_vanilla_weights",
    "similar_models", "vanilla_twin",
]
