"""The network an experiment trains, its DeepSpeed engine, and the fp32 weights that come out of it.

Precision. ``deepspeed.precision: bf16`` (or ``fp16``) runs as PyTorch autocast, through
DeepSpeed's ``torch_autocast`` mode, not DeepSpeed's ``bf16`` mode: the weights, the optimizer
and every batch norm (parameters and running statistics) stay fp32, the convolutions run in
bf16, and gradients are fp32. DeepSpeed's ``bf16`` mode casts the whole module, batch norm
included, and under ZeRO-0 keeps the fp32 master weights inside its optimizer only. With
autocast the fp32 weights are the module's, at every ZeRO stage, and
:func:`fp32_state_dict` exports exactly what the optimizer updates.

Gradients are all-reduced in ``deepspeed.communication_dtype`` (fp32 by default: sums over many
ranks lose nothing; bf16 halves the traffic).

DeepSpeed is imported where an engine is made: the job's driver, which builds networks but no
engine, never loads it (nor prints its accelerator banner on a user's error).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from octvideo.models import build_model
from octvideo.nn import OctConv2d, OctConv3d
from octvideo.train.config import ExperimentConfig, ModelConfig
from octvideo.train.finetune import freeze
from octvideo.train.optim import build_optimizer, build_scheduler

_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
#: Module classes whose gradients may be all-reduced in the autocast dtype (communication_dtype).
_LOW_PRECISION_GRADIENT_MODULES = [
    f"{cls.__module__}.{cls.__name__}" for cls in (OctConv3d, OctConv2d, nn.Conv3d, nn.Conv2d, nn.Linear)
]


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


def deepspeed_config(config: ExperimentConfig) -> dict[str, Any]:
    """DeepSpeed's configuration dict for an experiment."""
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=ds.overlap_comm, contiguous_gradients=True)
    if ds.zero_stage and ds.reduce_bucket_size is not None:
        zero["reduce_bucket_size"] = ds.reduce_bucket_size
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    options: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.optim.batch_size_per_worker,
        "gradient_accumulation_steps": config.optim.grad_accumulation,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
    }
    if ds.precision != "fp32":
        low_precision = ds.communication_dtype != "fp32"
        options["torch_autocast"] = {
            "enabled": True,
            "dtype": _AUTOCAST_DTYPES[ds.precision],
            # Parameters of these classes are reduced in the autocast dtype; none: all in fp32.
            "lower_precision_safe_modules": _LOW_PRECISION_GRADIENT_MODULES if low_precision else [],
        }
    if ds.zero_stage and config.optim.optimizer == "sgd":
        # DeepSpeed lists only Adam-like optimizers as tested with ZeRO; SGD is element-wise, so
        # it works unchanged on the flat partitions ZeRO gives it.
        options["zero_allow_untested_optimizer"] = True
    if ds.offload_optimizer:
        options["zero_force_ds_cpu_optimizer"] = False  # keep the configured torch optimizer
    if config.optim.clip_grad_norm is not None:
        options["gradient_clipping"] = config.optim.clip_grad_norm
    return options


def build_engine(
    config: ExperimentConfig, num_classes: int, steps_per_epoch: int, start: Mapping[str, torch.Tensor] | None = None
) -> Any:
    """The experiment's network in a DeepSpeed engine on the current process group and device,
    compiled in place when ``model.compile`` (checkpoints keep the plain parameter names).
    The network starts from ``start`` (a state dict) when given, else from its initialisation;
    the parts of ``model.freeze`` take no gradient and stay out of the optimizer.

    ``model.memory_format`` is the activations' layout, set on the input
    (:class:`~octvideo.data.DeviceInput`): convolutions keep a channels-last input's layout.
    Weights stay contiguous, since DeepSpeed broadcasts them as bytes and ZeRO packs them into
    flat buffers; a convolution converts its (small) weight on the fly."""
    import deepspeed

    model = build_network(config.model, num_classes)
    if start is not None:
        model.load_state_dict(start)
    freeze(model, config.model.freeze)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, config.optim),
        lr_scheduler=functools.partial(build_scheduler, config=config.optim, steps_per_epoch=steps_per_epoch),
        config=deepspeed_config(config),
        dist_init_required=False,  # the caller's process group (Ray Train's, or the harness')
    )
    if config.model.compile:
        engine.compile(backend=config.model.compile_backend)
    return engine


def fp32_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The trained weights as a plain fp32 ``state_dict`` on the CPU: the fp32 weights the
    optimizer updates, gathered from every rank's partition under ZeRO 1-3, and the buffers
    (batch-norm statistics: average them across ranks first). Collective under ZeRO 1-3:
    every rank must call it; all ranks get the whole dict."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    state = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)  # None outside ZeRO: the parameter is the fp32 weight
        state[name] = (param.detach() if full is None else full).float().cpu().clone()
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().cpu().clone()
        if buffer.is_floating_point():
            state[name] = state[name].float()
    # named_parameters lists shared parameters once; state_dict's order and names are the reference.
    return {name: state[name] for name in module.state_dict()}
