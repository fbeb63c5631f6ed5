"""Start a model from the weights people have: ImageNet 2-D checkpoints, plain 3-D Kinetics
checkpoints and this project's own models, converted into the model at hand.

Formats (detected from the parameter names; ``format`` names one to skip the detection):

* ``torchvision``: a torchvision ResNet state dict (e.g. ``resnet50`` on ImageNet), 2-D;
* ``pytorchvideo``: pytorchvideo's ``i3d_r50`` / ``slowfast_r50``, bare or as the hub's
  checkpoint dict (``{"model_state": ...}``, PySlowFast's layout), 3-D;
* ``octvideo``: this project's models (a run's ``model_fp32.pt``, a registered model), 2-D
  (``oct_resnet50``) or 3-D, any alpha.

Conversions are exact:

* **alpha.** A plain (alpha = 0) source is split into any alpha: an octave layer's weights
  partition the plain layer's (:mod:`octvideo.models.vanilla`). An octave source fills a model
  of its own alpha only: its low-frequency channels run at half resolution, so no other split
  computes what it learned.
* **inflation** (2-D into 3-D; Carreira & Zisserman, "Quo Vadis, Action Recognition?", 2017):
  each 2-D kernel becomes the target layer's temporal kernel, either ``centre`` (the 2-D kernel in
  the middle temporal slice, zeros elsewhere) or ``mean`` (repeated over time, divided by its
  length); batch-norm parameters and statistics are copied. A clip of one repeated frame then
  gives the 2-D network's output on that frame: exactly with ``centre``, and with ``mean`` where
  temporal zero padding does not reach (away from the clip's first and last frames).
* **head.** The classifier (``fc``) comes along when the class counts agree. Otherwise
  ``head="auto"`` leaves the model's freshly initialised classifier in place; ``"reset"`` always
  does; ``"keep"`` makes a different class count an error.

SlowFast from a 2-D checkpoint is not offered: its fast pathway and lateral connections have no
2-D counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Mapping, Optional, Tuple

import torch
from torch import nn

from octvideo.nn import OctConv

from .slowfast import SlowFast
from .vanilla import NAMINGS, load_vanilla_weights, plain_names

Format = Literal["auto", "torchvision", "pytorchvideo", "octvideo"]
InflateRule = Literal["centre", "mean"]
HeadPolicy = Literal["auto", "keep", "reset"]

FORMATS = ("torchvision", "pytorchvideo", "octvideo")
#: The classifier's parameter names in each naming.
_HEAD_KEYS = {
    "torchvision": ("fc.weight", "fc.bias"),
    "pytorchvideo_i3d": ("blocks.6.proj.weight", "blocks.6.proj.bias"),
    "pytorchvideo_slowfast": ("blocks.6.proj.weight", "blocks.6.proj.bias"),
    "octvideo": ("fc.weight", "fc.bias"),
}
_LOW_PATH = (".weight_hl", ".weight_lh", ".weight_ll", ".bias_l", ".low.")


@dataclass(frozen=True)
class PretrainedLoad:
    """What :func:`load_pretrained` did, in words for logs and tracking."""

    format: str  # e.g. "torchvision (2-D, inflated: centre)"
    head: str  # "loaded" or "re-initialised (400 -> 101 classes)"

    @property
    def head_reinitialised(self) -> bool:
        return self.head != "loaded"


def unwrap_state_dict(checkpoint: object) -> Dict[str, torch.Tensor]:
    """The state dict in ``checkpoint``: itself, or the ``model_state`` of a pytorchvideo hub /
    PySlowFast checkpoint dict. ``ValueError`` when it holds no state dict."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model_state"), Mapping):
        checkpoint = checkpoint["model_state"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"holds no state dict (a mapping of parameter names to tensors), but a {type(checkpoint).__name__}")
    not_tensors = [k for k, v in checkpoint.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if not_tensors:
        keys = ", ".join(map(str, not_tensors[:3]))
        raise ValueError(f"is not a state dict: entries {keys} are not named tensors (a training checkpoint? pass its model's state dict)")
    return dict(checkpoint)


def detect_naming(state: Mapping[str, torch.Tensor]) -> str:
    """Whose parameter names ``state`` uses: a key of :data:`octvideo.models.vanilla.NAMINGS`."""
    keys = set(state)
    if any(k.endswith(".weight_hh") for k in keys):
        return "octvideo"
    if any(k.startswith("blocks.0.multipathway_blocks.") for k in keys):
        return "pytorchvideo_slowfast"
    if "blocks.0.conv.weight" in keys:
        return "pytorchvideo_i3d"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    sample = ", ".join(sorted(keys)[:3])
    raise ValueError(
        f"is not a checkpoint of a known network (keys {sample}, ...); expected a torchvision ResNet, "
        "pytorchvideo i3d_r50 / slowfast_r50, or an octvideo model"
    )


def load_pretrained(
    model: nn.Module,
    checkpoint: object,
    *,
    format: Format = "auto",
    inflate: InflateRule = "centre",
    head: HeadPolicy = "auto",
) -> PretrainedLoad:
    """Fill ``model`` from ``checkpoint`` (a state dict, or a checkpoint dict holding one); see
    the module docstring. ``ValueError`` (one line) naming what does not match: the format, the
    architecture, the alpha, the class count or the tensors."""
    state = unwrap_state_dict(checkpoint)
    naming = detect_naming(state)
    if format != "auto" and not naming.startswith(format):
        raise ValueError(f"is {_a(_format_name(naming))} checkpoint, not {format} as configured")
    _check_architecture(model, naming, _kernel_dims(state), any(k.startswith("slow_stem.") for k in state))
    state, head_note = _head(model, state, naming, head)
    keep = () if head_note == "loaded" else ("fc",)
    inflated = _inflate(model, state, naming, inflate)
    if naming == "octvideo" and any(marker in key for key in state for marker in _LOW_PATH):
        _load_octave(model, inflated, keep)
    else:
        source = plain_names(inflated) if naming == "octvideo" else inflated
        load_vanilla_weights(model, source, naming=naming, keep=keep)
    described = _format_name(naming) + (f" (2-D, inflated: {inflate})" if inflated is not state else "")
    return PretrainedLoad(described, head_note)


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _format_name(naming: str) -> str:
    return {"pytorchvideo_i3d": "pytorchvideo i3d", "pytorchvideo_slowfast": "pytorchvideo slowfast"}.get(naming, naming)


def _kernel_dims(state: Mapping[str, torch.Tensor]) -> int:
    """2 for a checkpoint of a 2-D network, 3 for a video network (from its first convolution)."""
    return next(v.dim() - 2 for v in state.values() if v.dim() >= 4)


def _check_architecture(model: nn.Module, naming: str, source_dims: int, source_slowfast: bool) -> None:
    name = getattr(model, "model_name", type(model).__name__)
    slowfast = isinstance(model, SlowFast)
    source_slowfast = source_slowfast or naming == "pytorchvideo_slowfast"
    if source_slowfast != slowfast:
        source = {"torchvision": "torchvision ResNet", "octvideo": f"octvideo {'SlowFast' if source_slowfast else 'ResNet'}"}
        raise ValueError(
            f"is {_a(source.get(naming, _format_name(naming)))} checkpoint; it cannot start {name}, "
            f"a {'SlowFast' if slowfast else 'ResNet'} (use a model of the checkpoint's architecture)"
        )
    if source_dims == 2 and slowfast:
        raise ValueError(f"is a 2-D checkpoint; {name} cannot be inflated from it (its fast pathway has no 2-D counterpart)")
    model_dims = 3 if slowfast else model.stem.conv.dims
    if source_dims > model_dims:
        raise ValueError(f"is a checkpoint of a 3-D (video) network; it cannot start the 2-D {name}")


def _head(
    model: nn.Module, state: Dict[str, torch.Tensor], naming: str, policy: HeadPolicy
) -> Tuple[Dict[str, torch.Tensor], str]:
    """The source without its classifier when the model's is to stay, and what happened to the head."""
    weight_key, bias_key = _HEAD_KEYS[naming]
    if weight_key not in state:
        raise ValueError(f"has no classifier ({weight_key}); is it a complete {_format_name(naming)} checkpoint?")
    source_classes, classes = state[weight_key].shape[0], model.fc.out_features
    if policy == "keep" and source_classes != classes:
        raise ValueError(
            f"has a {source_classes}-class head and the model {classes} classes; with head: keep they must "
            "agree (head: auto re-initialises it)"
        )
    if policy == "reset" or source_classes != classes:
        without = {k: v for k, v in state.items() if k not in (weight_key, bias_key)}
        return without, f"re-initialised ({source_classes} -> {classes} classes)"
    return state, "loaded"


def _inflate(model: nn.Module, state: Dict[str, torch.Tensor], naming: str, rule: InflateRule) -> Dict[str, torch.Tensor]:
    """``state`` with every 2-D convolution kernel inflated to its target layer's temporal size
    (``state`` itself when it is 3-D already, or the model is 2-D)."""
    modules = dict(model.named_modules())
    module_map = NAMINGS[naming]
    inflated = dict(state)
    for key, value in state.items():
        module_name, _, _ = key.rpartition(".")
        module = modules.get(module_map(module_name) or "")
        if isinstance(module, OctConv) and module.dims == 3 and value.dim() == 4:
            inflated[key] = inflate_kernel(value, module.kernel_size[0], rule)
    return inflated if any(inflated[k] is not state[k] for k in state) else state


def inflate_kernel(weight: torch.Tensor, frames: int, rule: InflateRule) -> torch.Tensor:
    """A 2-D kernel ``(O, I, H, W)`` as a 3-D one ``(O, I, frames, H, W)`` (see the module docstring)."""
    if rule == "mean":
        return weight.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
    if rule != "centre":
        raise ValueError(f"unknown inflation rule {rule!r}; use centre or mean")
    kernel = weight.new_zeros(weight.shape[:2] + (frames,) + weight.shape[2:])
    kernel[:, :, frames // 2] = weight
    return kernel


def _load_octave(model: nn.Module, state: Dict[str, torch.Tensor], keep: Tuple[str, ...]) -> None:
    """Load an octave model's weights into a model of the same architecture and alpha."""
    own = {k: v for k, v in model.state_dict().items() if not any(k.startswith(m + ".") for m in keep)}
    wrong = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    missing, unused = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    source_alpha, alpha = _alpha(state), _alpha(own)
    if source_alpha != alpha and (wrong or missing or unused):
        raise ValueError(
            f"is an octave model at alpha {source_alpha:g} and the model has alpha {alpha or 0:g}: an octave model "
            "fills only a model of its own alpha (its low-frequency channels run at half resolution); "
            f"set model.alpha: {source_alpha:g}, or start from a plain (alpha 0) checkpoint"
        )
    if wrong or missing or unused:
        raise ValueError(
            f"does not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unused {unused[:3]}{'...' if len(unused) > 3 else ''}, wrong shape {wrong[:3]}"
        )
    model.load_state_dict(state, strict=not keep)


def _alpha(state: Mapping[str, torch.Tensor]) -> Optional[float]:
    """The low-frequency share of the widest layer with both groups, to 3 places (channel counts
    round ``alpha * channels`` down); None when no layer has both."""
    splits = [
        (state[key].shape[0], state[key[: -len("_ll")] + "_hh"].shape[0])
        for key in state if key.endswith(".weight_ll")
    ]
    if not splits:
        return None
    low, high = max(splits, key=sum)
    return round(low / (low + high), 3)
