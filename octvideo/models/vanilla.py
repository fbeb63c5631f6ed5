"""Load plain (alpha = 0) pretrained weights into an Oct model of any alpha, exactly.

An octave convolution's four weights are a partition of the plain weight along its
output and input channels (high channels first), and an octave batch norm's
parameters and statistics split per channel the same way (Chen et al. 2019, Fig. 2b).
So a pytorchvideo ``i3d_r50`` / ``slowfast_r50`` or torchvision ``resnet50`` state
dict fills the matching Oct model for every alpha, and at alpha = 0 the result is the
same function as the source network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from octvideo.nn import OctaveBatchNorm, OctaveChannels, OctConv

from .resnet import ResNet
from .slowfast import SlowFast

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_CONV_LETTER = {"a": "1", "b": "2", "c": "3"}


def _pytorchvideo_block(prefix: str, rest: str) -> str | None:
    """``res_blocks.B.branch2.conv_a`` -> ``{prefix}.B.conv1.conv`` and friends."""
    rules = (
        (r"res_blocks\.(\d+)\.branch2\.conv_([abc])$", lambda m: f"{m[1]}.conv{_CONV_LETTER[m[2]]}.conv"),
        (r"res_blocks\.(\d+)\.branch2\.norm_([abc])$", lambda m: f"{m[1]}.conv{_CONV_LETTER[m[2]]}.bn"),
        (r"res_blocks\.(\d+)\.branch1_conv$", lambda m: f"{m[1]}.downsample.conv"),
        (r"res_blocks\.(\d+)\.branch1_norm$", lambda m: f"{m[1]}.downsample.bn"),
    )
    for pattern, target in rules:
        match = re.match(pattern, rest)
        if match:
            return f"{prefix}.{target(match)}"
    return None


def _i3d_module(name: str) -> str | None:
    stage_of_block = {"1": "layer1", "3": "layer2", "4": "layer3", "5": "layer4"}
    fixed = {"blocks.0.conv": "stem.conv", "blocks.0.norm": "stem.bn", "blocks.6.proj": "fc"}
    if name in fixed:
        return fixed[name]
    match = re.match(r"blocks\.(\d+)\.(.*)$", name)
    if match and match[1] in stage_of_block:
        return _pytorchvideo_block(stage_of_block[match[1]], match[2])
    return None


def _slowfast_module(name: str) -> str | None:
    pathway = {"0": "slow", "1": "fast"}
    match = re.match(r"blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)$", name)
    if match:
        return f"{pathway[match[1]]}_stem.0.{'conv' if match[2] == 'conv' else 'bn'}"
    match = re.match(r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)$", name)
    if match:
        return f"laterals.{match[1]}.fuse.{'conv' if match[2] == 'conv_fast_to_slow' else 'bn'}"
    match = re.match(r"blocks\.([1-4])\.multipathway_blocks\.([01])\.(.*)$", name)
    if match:
        return _pytorchvideo_block(f"{pathway[match[2]]}_layers.{int(match[1]) - 1}", match[3])
    return "fc" if name == "blocks.6.proj" else None


def _torchvision_module(name: str) -> str | None:
    rules = (
        (r"conv1$", lambda m: "stem.conv"),
        (r"bn1$", lambda m: "stem.bn"),
        (r"(layer\d\.\d+)\.conv(\d)$", lambda m: f"{m[1]}.conv{m[2]}.conv"),
        (r"(layer\d\.\d+)\.bn(\d)$", lambda m: f"{m[1]}.conv{m[2]}.bn"),
        (r"(layer\d\.\d+)\.downsample\.0$", lambda m: f"{m[1]}.downsample.conv"),
        (r"(layer\d\.\d+)\.downsample\.1$", lambda m: f"{m[1]}.downsample.bn"),
        (r"fc$", lambda m: "fc"),
    )
    for pattern, target in rules:
        match = re.match(pattern, name)
        if match:
            return target(match)
    return None


def _concat_order(slow: OctaveChannels, lateral: OctaveChannels) -> list[int]:
    """Plain channel indices of ``cat(slow, lateral)`` in octave order (high groups, then low groups)."""
    s, total = slow.total, slow.total + lateral.total
    high = list(range(0, slow.high)) + list(range(s, s + lateral.high))
    low = list(range(slow.high, s)) + list(range(s + lateral.high, total))
    return high + low


def _slowfast_input_orders(model: SlowFast) -> dict[str, list[int]]:
    """The slow convolutions that read ``cat(slow, lateral)`` need their input channels reordered."""
    orders = {}
    slow = model.slow_stem[0].out_split
    for i, lateral in enumerate(model.laterals):
        order = _concat_order(slow, lateral.out_split)
        orders[f"slow_layers.{i}.0.conv1.conv"] = order
        orders[f"slow_layers.{i}.0.downsample.conv"] = order
        slow = model.slow_layers[i][-1].out_split
    return orders


def _split_conv(conv: OctConv, key: str, weight: torch.Tensor, order: list[int] | None) -> dict[str, torch.Tensor]:
    expected = (conv.out_split.total, conv.in_split.total // conv.groups, *conv.kernel_size)
    if tuple(weight.shape) != expected:
        raise ValueError(f"{key}: plain weight has shape {tuple(weight.shape)}, the octave layer needs {expected}")
    if order is not None:
        weight = weight[:, order]
    oh, ih = conv.out_split.high, conv.in_split.high
    if conv.depthwise:
        parts = {"hh": weight[:oh], "ll": weight[oh:]}
    elif conv.groups == 1:
        parts = {"hh": weight[:oh, :ih], "hl": weight[oh:, :ih], "lh": weight[:oh, ih:], "ll": weight[oh:, ih:]}
    else:
        raise ValueError(f"{key}: plain weights cannot be split into a grouped (non-depthwise) octave layer")
    return {f"weight_{path}": parts[path] for path in conv.path_weights()}


def _split_channels(values: torch.Tensor, split: OctaveChannels) -> tuple[torch.Tensor, torch.Tensor]:
    return values[: split.high], values[split.high :]


#: The plain networks whose parameter names :func:`load_vanilla_weights` reads, and how each
#: names this project's modules.
NAMINGS: dict[str, Callable[[str], str | None]] = {
    "pytorchvideo_i3d": _i3d_module,
    "pytorchvideo_slowfast": _slowfast_module,
    "torchvision": _torchvision_module,
    "octvideo": lambda name: name,  # this project's own names, at alpha = 0 (see plain_names)
}


def default_naming(model: nn.Module) -> str:
    """The plain twin's naming of ``model``: pytorchvideo's for video networks, torchvision's for 2-D ones."""
    if isinstance(model, SlowFast):
        return "pytorchvideo_slowfast"
    if isinstance(model, ResNet):
        return "pytorchvideo_i3d" if model.stem.conv.dims == 3 else "torchvision"
    raise ValueError(f"no plain twin is known for {type(model).__name__}")


def plain_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An alpha = 0 state dict of this project renamed as a plain network would name it
    (``conv.weight_hh`` -> ``conv.weight``, ``bn.high.running_mean`` -> ``bn.running_mean``),
    for :func:`load_vanilla_weights` with ``naming="octvideo"``."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"\.weight_hh$", ".weight", re.sub(r"\.bias_h$", ".bias", key))
        renamed[re.sub(r"\.high\.([a-z_]+)$", r".\1", key)] = value
    return renamed


def load_vanilla_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, naming: str | None = None, keep: Sequence[str] = ()
) -> None:
    """Fill ``model`` (an Oct model of any alpha) from a plain network's ``state_dict``.

    Accepted sources: pytorchvideo ``i3d_r50`` for ``oct_i3d_r50``, pytorchvideo
    ``slowfast_r50`` for ``oct_slowfast_r50``, torchvision ``resnet50`` for
    ``oct_resnet50`` (bottleneck networks of any width/depth built the same way work too; a
    basic-block network at alpha > 0 has a shortcut convolution its plain twin lacks).
    ``naming`` (a key of :data:`NAMINGS`) says whose parameter names the state dict uses;
    by default the model's plain twin's. Every tensor of the source must be used and every
    tensor of the model filled, except the modules named in ``keep`` (and what is under them),
    which keep their values; otherwise a ``ValueError`` lists what did not match.
    """
    naming = naming or default_naming(model)
    module_map = NAMINGS[naming]
    orders = _slowfast_input_orders(model) if isinstance(model, SlowFast) else {}

    modules = dict(model.named_modules())
    target: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in state_dict.items():
        module_name, _, field = key.rpartition(".")
        ours = module_map(module_name)
        module = modules.get(ours) if ours else None
        if module is None:
            unused.append(key)
        elif isinstance(module, OctConv):
            if field == "weight":
                target.update({f"{ours}.{k}": v for k, v in _split_conv(module, key, value, orders.get(ours)).items()})
            else:
                high, low = _split_channels(value, module.out_split)
                target[f"{ours}.bias_h"] = high
                if module.bias_l is not None:
                    target[f"{ours}.bias_l"] = low
        elif isinstance(module, OctaveBatchNorm):
            if field == "num_batches_tracked":
                target[f"{ours}.high.{field}"] = value
                if module.low is not None:
                    target[f"{ours}.low.{field}"] = value
            elif field in _BN_FIELDS:
                high, low = _split_channels(value, module.channels)
                target[f"{ours}.high.{field}"] = high
                if module.low is not None:
                    target[f"{ours}.low.{field}"] = low
            else:
                unused.append(key)
        else:
            target[f"{ours}.{field}"] = value

    own = {k: v for k, v in model.state_dict().items() if not _under(k, keep)}
    missing = sorted(set(own) - set(target))
    unused += sorted(set(target) - set(own))
    wrong_shape = [k for k in target if k in own and own[k].shape != target[k].shape]
    shortcuts = sorted({k.split(".downsample.")[0] + ".downsample" for k in missing if ".downsample." in k})
    if shortcuts and not unused and not wrong_shape and all(".downsample." in k for k in missing):
        raise ValueError(
            f"the plain network has no shortcut convolution at {', '.join(shortcuts)}: the octave model has one there "
            "(a block that keeps its width but enters the octave split), so no plain checkpoint fills it; "
            "start from an octave checkpoint of the model's alpha"
        )
    if missing or unused or wrong_shape:
        raise ValueError(
            "the state dict does not match the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unused {unused[:5]}{'...' if len(unused) > 5 else ''}, "
            f"wrong shape {wrong_shape[:5]}"
        )
    model.load_state_dict({k: v.contiguous() for k, v in target.items()}, strict=not keep)


def _under(key: str, modules: Sequence[str]) -> bool:
    return any(key == m or key.startswith(m + ".") for m in modules)
