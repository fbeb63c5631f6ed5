"""Parameters, multiply-accumulates and activation memory, per layer and per stage.

MACs are counted by PyTorch's own ``torch.utils.flop_counter`` on a real forward
pass (its FLOPs are 2 x MACs), so they describe the operations that actually run.
The paper's "FLOPs" are multiply-adds, i.e. the MACs reported here. Activation
memory is the size of every convolution's and classifier's output (both frequency
groups), the feature maps the paper's memory figures count and the ones training
keeps for the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from octvideo.nn import OctConv, unpack

MEASURED_TYPES = (OctConv, nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class LayerProfile:
    name: str
    kind: str
    params: int
    macs: int
    activations: int  # elements in the layer's output, both frequency groups
    output_shape: str = ""


@dataclass
class ModelProfile:
    layers: list[LayerProfile]
    stage_macs: dict[str, int]
    stage_params: dict[str, int]
    total_params: int
    total_macs: int
    bytes_per_element: int = 4
    input_shape: str = ""
    stages: list[str] = field(default_factory=list)

    @property
    def total_activations(self) -> int:
        return sum(layer.activations for layer in self.layers)

    def stage_activations(self, stage: str) -> int:
        return sum(layer.activations for layer in self.layers if _stage_of(layer.name) == stage)


def _stage_of(name: str) -> str:
    return name.split(".", 1)[0]


def _shape_of(output: Any) -> str:
    high, low = unpack(output)
    shape = "x".join(str(s) for s in high.shape[1:])
    return shape if low is None else f"{shape} + {'x'.join(str(s) for s in low.shape[1:])}"


def _numel(output: Any) -> int:
    high, low = unpack(output)
    return high.numel() + (0 if low is None else low.numel())


def profile_model(model: nn.Module, inputs: Any) -> ModelProfile:
    """Run one forward pass of ``model`` on ``inputs`` (no gradients) and measure every layer."""
    outputs: dict[str, Any] = {}
    hooks = []
    measured = {name: m for name, m in model.named_modules() if isinstance(m, MEASURED_TYPES)}
    for name, module in measured.items():
        hooks.append(module.register_forward_hook(lambda m, i, out, name=name: outputs.__setitem__(name, out)))
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    counts = counter.get_flop_counts()
    root = type(model).__name__

    def macs_of(name: str) -> int:
        return sum(counts.get(f"{root}.{name}", {}).values()) // 2

    layers = []
    for name, module in measured.items():
        if name not in outputs:
            continue
        out = outputs[name]
        layers.append(
            LayerProfile(
                name=name,
                kind=type(module).__name__,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=macs_of(name),
                activations=_numel(out),
                output_shape=_shape_of(out),
            )
        )
    stages = [name for name, _ in model.named_children()]
    children = dict(model.named_children())
    first = next(iter(model.parameters()))
    shape = inputs.shape if isinstance(inputs, torch.Tensor) else [tuple(x.shape) for x in inputs]
    return ModelProfile(
        layers=layers,
        stage_macs={s: macs_of(s) for s in stages},
        stage_params={s: sum(p.numel() for p in children[s].parameters()) for s in stages},
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=sum(counts.get("Global", {}).values()) // 2,
        bytes_per_element=first.element_size(),
        input_shape=str(tuple(shape)) if isinstance(inputs, torch.Tensor) else str(shape),
        stages=stages,
    )


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:6.3f}" if base else "      "


def format_profile(profile: ModelProfile, baseline: ModelProfile | None = None, per_layer: bool = False) -> str:
    """A plain-text table: per stage (and optionally per layer), totals, and ratios to ``baseline``."""
    mb = profile.bytes_per_element / 2**20
    header = f"{'':32} {'params':>12} {'GMACs':>9} {'act. MiB':>9}"
    if baseline:
        header += f" {'MAC ratio':>9} {'mem ratio':>9}"
    lines = [f"input {profile.input_shape}; MACs = multiply-accumulates (the paper's 'FLOPs')", header]

    def row(label: str, params: int, macs: int, acts: int, base: tuple | None) -> str:
        text = f"{label[:32]:32} {params:12,d} {macs / 1e9:9.3f} {acts * mb:9.2f}"
        if base is not None:
            text += f" {_ratio(macs, base[0]):>9} {_ratio(acts, base[1]):>9}"
        return text

    base_layers = {layer.name: layer for layer in baseline.layers} if baseline else {}
    for stage in profile.stages:
        if not (profile.stage_params[stage] or profile.stage_macs[stage] or profile.stage_activations(stage)):
            continue  # pooling, dropout: nothing to count
        base = (baseline.stage_macs.get(stage, 0), baseline.stage_activations(stage)) if baseline else None
        acts = profile.stage_activations(stage)
        lines.append(row(stage, profile.stage_params[stage], profile.stage_macs[stage], acts, base))
        if per_layer:
            for layer in (x for x in profile.layers if _stage_of(x.name) == stage and x.name != stage):
                b = base_layers.get(layer.name)
                lb = (b.macs, b.activations) if b else None
                lines.append(row(f"  {layer.name}", layer.params, layer.macs, layer.activations, lb))
    total_base = (baseline.total_macs, baseline.total_activations) if baseline else None
    lines.append(row("total", profile.total_params, profile.total_macs, profile.total_activations, total_base))
    return "\n".join(lines)


def profile_by_name(
    name: str,
    alpha: float,
    frames: int = 8,
    size: int = 224,
    octave_pool: Sequence[int] | None = None,
    **model_kwargs: Any,
) -> tuple:
    """Profile a registered model at ``alpha`` and its alpha = 0 twin on the same input."""
    from octvideo.models import build_model

    if octave_pool is not None:
        model_kwargs["octave_pool"] = tuple(octave_pool)
    model = build_model(name, alpha=alpha, **model_kwargs)
    plain = build_model(name, alpha=0.0, **model_kwargs)
    inputs = model.example_input(frames=frames, size=size)
    try:
        return profile_model(model, inputs), profile_model(plain, inputs)
    except RuntimeError as error:  # a shape error: the input is too small for the network's strides
        reason = str(error).strip().splitlines()[0]
        pool = f", octave_pool {model_kwargs['octave_pool']}" if "octave_pool" in model_kwargs else ""
        raise ValueError(
            f"{name} (alpha {alpha}{pool}) cannot run on a {frames}-frame {size}x{size} input: {reason}; "
            "try more frames or a larger size"
        ) from error
