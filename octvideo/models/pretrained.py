"""Start a model from the weights people have: ImageNet 2-D checkpoints, plain 3-D Kinetics
checkpoints and this project's own models, converted into the model at hand.

Formats (detected from the parameter names; ``format`` names one to skip the detection):

* ``torchvision``: a torchvision ResNet state dict (e.g. ``resnet50`` on ImageNet), 2-D;
* ``pytorchvideo``: pytorchvideo's ``i3d_r50`` / ``slowfast_r50``, bare or as the hub's
  checkpoint dict (``{"model_state": ...}``, PySlowFast's layout), 3-D;
* ``octvideo``: this project's models (a run's ``model_fp32.pt``, a registered model), 2-D
  (``oct_resnet50``) or 3-D, any alpha. A state dict does not record ``octave_pool``: use the
  one the checkpoint was trained with (a registered model's is checked).

Conversions are exact:

* **alpha.** A plain (alpha = 0) source is split into any alpha: an octave layer's weights
  partition the plain layer's (:mod:`octvideo.models.vanilla`; bottleneck networks, since a
  basic-block network at alpha > 0 has a shortcut convolution that its plain twin lacks). An octave source fills a model
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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from octvideo.nn import OctConv

from .slowfast import SlowFast
from .vanilla import NAMINGS, load_vanilla_weights, plain_names

Format = Literal["auto", "torchvision", "pytorchvideo", "octvideo"]
InflateRule = Literal["centre", "mean"]
HeadPolicy = Literal["auto", "keep", "reset"]

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


def unwrap_state_dict(checkpoint: object) -> dict[str, torch.Tensor]:
    """The state dict in ``checkpoint``: itself, or the ``model_state`` of a pytorchvideo hub /
    PySlowFast checkpoint dict. ``ValueError`` when it holds no state dict."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model_state"), Mapping):
        checkpoint = checkpoint["model_state"]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"holds no state dict (a mapping of parameter names to tensors), but a {type(checkpoint).__name__}")
    if not checkpoint:
        raise ValueError("holds an empty mapping, not a state dict")
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
    """Fill ``model`` from ``checkpoint`` (a state dict, a checkpoint dict holding one, or a model,
    whose ``octave_pool`` must then be the model's too); see the module docstring. ``ValueError``
    (one line) naming what does not match: the format, the architecture, the alpha, the octave
    pooling, the class count or the tensors."""
    _check_options(format, inflate, head)
    if isinstance(checkpoint, nn.Module):
        _check_octave_pool(checkpoint, model)
        checkpoint = checkpoint.state_dict()
    state = unwrap_state_dict(checkpoint)
    naming = detect_naming(state)
    if format != "auto" and naming.split("_")[0] != format:
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


def _check_octave_pool(source: nn.Module, model: nn.Module) -> None:
    pools = [{m.octave_pool for m in net.modules() if isinstance(m, OctConv) and m.is_octave} for net in (source, model)]
    if all(pools) and pools[0] != pools[1]:
        raise ValueError(
            f"was trained with octave_pool {sorted(pools[0])[0]} and the model has {sorted(pools[1])[0]}: "
            "the same weights compute something else; set model.octave_pool as the checkpoint was trained"
        )


def _check_options(format: str, inflate: str, head: str) -> None:
    for name, value, choices in (("format", format, Format), ("inflate", inflate, InflateRule), ("head", head, HeadPolicy)):
        allowed = get_args(choices)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _format_name(naming: str) -> str:
    return {"pytorchvideo_i3d": "pytorchvideo i3d", "pytorchvideo_slowfast": "pytorchvideo slowfast"}.get(naming, naming)


def _kernel_dims(state: Mapping[str, torch.Tensor]) -> int:
    """2 for a checkpoint of a 2-D network, 3 for a video network (from its first convolution)."""
    dims = [v.dim() - 2 for v in state.values() if v.dim() >= 4]
    if not dims:
        raise ValueError("has no convolution weights; is it a complete checkpoint?")
    return dims[0]


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
    model_dims = 3 if slowfast else model.stem.conv.dims
    if source_dims > model_dims:
        raise ValueError(f"is a checkpoint of a 3-D (video) network; it cannot start the 2-D {name}")


def _head(
    model: nn.Module, state: dict[str, torch.Tensor], naming: str, policy: HeadPolicy
) -> tuple[dict[str, torch.Tensor], str]:
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


def _inflate(model: nn.Module, state: dict[str, torch.Tensor], naming: str, rule: InflateRule) -> dict[str, torch.Tensor]:
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


def _load_octave(model: nn.Module, state: dict[str, torch.Tensor], keep: tuple[str, ...]) -> None:
    """Load an octave model's weights into a model of the same architecture and split."""
    own = {k: v for k, v in model.state_dict().items() if not any(k.startswith(m + ".") for m in keep)}
    split = _split_difference(state, own)
    if split:
        raise ValueError(
            f"is an octave model whose frequency split differs from the model's ({split}): an octave model fills "
            "only a model of its own split (its low-frequency channels run at half resolution); set model.alpha "
            "(and last_stage_alpha) as the checkpoint was trained, or start from a plain (alpha 0) checkpoint"
        )
    wrong = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    missing, unused = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if wrong or missing or unused:
        raise ValueError(
            f"does not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unused {unused[:3]}{'...' if len(unused) > 3 else ''}, wrong shape {wrong[:3]}"
        )
    model.load_state_dict(state, strict=not keep)


def _low_outputs(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Each octave layer's (low-frequency, all) output channels, by layer name."""
    layers = {}
    for key, weight in state.items():
        if key.endswith(".weight_hh"):
            layer = key[: -len(".weight_hh")]
            low = next((state[f"{layer}.weight_{p}"].shape[0] for p in ("ll", "hl") if f"{layer}.weight_{p}" in state), 0)
            layers[layer] = (low, low + weight.shape[0])
    return layers


def _split_difference(source: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str:
    """Where the checkpoint's split differs from the model's, in words (the widest such layer, the
    first in the network's order among equals), or ""."""
    theirs, ours = _low_outputs(source), _low_outputs(own)
    differ = [layer for layer in ours if layer in theirs and ours[layer] != theirs[layer] and ours[layer][1] == theirs[layer][1]]
    if not differ:
        return ""
    layer = max(differ, key=lambda name: ours[name][1])
    (low, total), (model_low, _) = theirs[layer], ours[layer]
    return (f"{layer}: {low} of {total} output channels low-frequency, alpha {low / total:.3g}; "
            f"the model's: {model_low}, alpha {model_low / total:.3g}")
